"""Helpers behind ``python -m sim.report``: find runs, label them, tabulate, plot, write files."""
