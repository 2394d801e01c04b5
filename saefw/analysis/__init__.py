"""Sweep analysis: collect the jobs of sweeps and runs, the L0 / loss-recovered trade-off table, Pareto frontiers,
PNG and interactive HTML plots, and the W&B compare run (``python -m saefw.compare``)."""
