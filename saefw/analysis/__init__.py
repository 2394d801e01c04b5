"""Analysis of trained SAEs and of sweeps.

Reading features: feature statistics and top activations from a scan of text, logit lens, the on-disk feature
store, the HTML dashboard, and steering (``python -m saefw.features``, ``python -m saefw.steer``).
Sweeps: collect the jobs of sweeps and runs, the L0 / loss-recovered trade-off table, Pareto frontiers, PNG and
interactive HTML plots, and the W&B compare run (``python -m saefw.compare``)."""
