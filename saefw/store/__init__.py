"""The activation store (shards of harvested activations on disk), harvesting into it, and ``python -m saefw.store``."""
