"""SAE architectures (the ``arch`` plugin family): one module each, imported by ``registry.discover``."""
from saefw.arch.base import SAE, LossOutput, SparsityInput  # noqa: F401
