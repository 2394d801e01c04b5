"""Which torch device a command runs on."""
from __future__ import annotations

import torch


def resolve_device(device: str) -> str:
    """``auto``: CUDA when a GPU is visible, else the CPU; anything else as given (``cpu``, ``cuda:1``, ...)."""
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
