"""Training one SAE: the run (``python -m saefw``), its config, budget plan, Lightning module, sparsity control,
checkpoints and reporting."""
