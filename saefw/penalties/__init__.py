"""Sparsity penalties (the ``penalty`` plugin family): one module each, imported by ``registry.discover``."""
from saefw.penalties.base import Penalty, PenaltyConfig  # noqa: F401
