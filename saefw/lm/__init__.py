"""The language model (loading, hooks, resuming at a hook point), the embedded default model and the text corpora."""
