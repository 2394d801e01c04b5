"""Evaluators (the ``evaluators`` plugin family): one module each, imported by ``registry.discover``."""
from saefw.evals.base import Evaluator, run_evaluators  # noqa: F401
