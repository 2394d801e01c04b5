"""Activation sources (the ``source`` plugin family): one module each, imported by ``registry.discover``."""
from saefw.sources.base import ActivationSource, RunSpec  # noqa: F401
