"""A quiet console: what saefw's commands print is their own (a line per phase, progress bars, the summary).

The libraries saefw drives print lines that tell a saefw user nothing they can act on: Lightning's info lines
("GPU available: ...", "TPU available: ...", "`Trainer.fit` stopped: `max_steps=...` reached") and its tips
(litlogger, litmodels), the model-summary table, W&B's "The anonymous setting has no effect" warning (Lightning
passes that setting to ``wandb.init``), a FutureWarning torch raises in Lightning's pytree helper and transformers'
"Loading weights" bar. :func:`apply` silences exactly these, once per command (:func:`saefw.app.cli.command`); their
warnings, errors and everything else still show. ``verbose=true`` (or Hydra's ``hydra.verbose``) keeps them all.
"""
from __future__ import annotations

import logging
import warnings

# Lightning's rank-zero info lines and tips go to these loggers at INFO; its warnings go through `warnings`
_LIGHTNING_INFO = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
                   "lightning_fabric.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
_PYTREE = r"`isinstance\(treespec, LeafSpec\)` is deprecated"

_quiet = False


def is_quiet() -> bool:
    """Whether :func:`apply` silenced the libraries' noise in this process (the model summary is off too)."""
    return _quiet


def apply(verbose: bool) -> None:
    """Silence the libraries' noise (``verbose`` false) or leave everything as the libraries make it."""
    global _quiet
    _quiet = not verbose
    if verbose:
        return
    for name in _LIGHTNING_INFO:
        logging.getLogger(name).setLevel(logging.WARNING)
    # raised by torch>=2.10 where Lightning's helper still builds a LeafSpec (each fit); nothing a user can change
    warnings.filterwarnings("ignore", message=_PYTREE, category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return
    hf_logging.disable_progress_bar()  # "Loading weights": instant for saefw's models, a bar of its own per load


def tidy_wandb_logger(logger) -> None:
    """Drop the ``anonymous=None`` Lightning's WandbLogger hands ``wandb.init``: W&B ignores the setting and
    warns that it has no effect. Only in a quiet process, and only when the value is the one that does nothing."""
    init = getattr(logger, "_wandb_init", None)
    if _quiet and isinstance(init, dict) and init.get("anonymous", False) is None:
        del init["anonymous"]
