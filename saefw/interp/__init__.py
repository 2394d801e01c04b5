"""Automatic interpretation: explaining features with an LLM and scoring the explanations (detection, fuzzing,
simulation). Prompts, parsing and metrics are pure functions; :mod:`saefw.explain` is the command."""
