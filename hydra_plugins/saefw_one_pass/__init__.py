"""Hydra finds launchers only in the ``hydra_plugins`` namespace package: this names saefw's one-pass launcher
there (``hydra/launcher=one_pass``, conf/hydra/launcher/one_pass.yaml); the launcher is
:mod:`saefw.sweeps.one_pass`."""
from saefw.sweeps import one_pass


class OnePassLauncher(one_pass.OnePassLauncher):
    """:class:`saefw.sweeps.one_pass.OnePassLauncher`."""
