"""Config fields carry their help text in the dataclass (``field(metadata={"help": ...})``) and ``--help`` shows it:
every registered plugin's options with type, default and help, local plugins included. A new config field
without help fails here."""
import shutil

from helpers import REPO, run_cli

from saefw.app.plugin_help import missing_help, options_text, plugin_options
from saefw.registry import discover


def test_every_registered_plugin_config_field_has_help():
    discover(plugin_dirs=[REPO])  # the built-ins and the worked example in plugins/
    # within REPO: a test sharing this worker may have registered a throwaway plugin of its own (tests/app/test_cli.py)
    assert missing_help(within=REPO.resolve()) == []


def test_options_list_type_default_and_help():
    discover(plugin_dirs=[REPO])
    assert ("arch.k_aux", "int | None", "null", "dead latents the AuxK loss may use; null: d_in // 2 (Gao et al.)"
            ) in plugin_options("arch", "topk")
    text = options_text()
    assert "evaluators.loss_recovered.from_hook: bool = true" in text
    assert "$$SAEFW_CACHE" in text  # escaped for Hydra's string.Template


def test_help_shows_each_plugins_options_with_their_help(tmp_path):
    shutil.copytree(REPO / "plugins", tmp_path / "plugins")  # a local plugin is listed like a built-in
    r = run_cli("--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    assert "== Plugin options ==" in out and "arch=topk" in out
    assert "  arch.k_aux: int | None = null" in out
    assert "dead latents the AuxK loss may use" in out
    assert "  source.store_dir: str | None = null" in out and "$SAEFW_CACHE/stores" in out
    assert "arch=matryoshka" in out and "the nested dictionary sizes as fractions of d_sae" in out
    assert "source=npy_file" in out and "  source.path: str" in out  # the local plugin
    assert "arch: " in out and "loss_recovered" in out  # Hydra's group listing is still there
