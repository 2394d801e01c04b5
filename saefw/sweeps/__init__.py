"""Sweeps and their comparison: the jobs, the L0 / loss-recovered trade-off table, Pareto frontiers, plots, the
W&B compare run and the multirun callback (``python -m saefw.compare``)."""
