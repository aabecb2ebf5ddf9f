"""gossipsoup's FedAU (or any gossipsoup strategy) as a Flower app; see docs/flower.md."""
