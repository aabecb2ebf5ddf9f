"""``python -m sim [overrides]``: run the simulator through Hydra (see README.md)."""

from sim.cli import main

if __name__ == "__main__":
    main()
