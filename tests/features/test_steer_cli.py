"""``python -m saefw.steer`` through the real CLI on the tiny trained SAE."""
import pytest
from feature_helpers import trained_run
from helpers import run_cli

from saefw.features.steer import quote_prompt, side_by_side


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_model):
    return trained_run(tmp_path_factory, tiny_model)


def _columns(stdout: str) -> tuple[str, str]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("unsteered ")) + 2
    rows = [line.split(" | ", 1) for line in lines[start:] if " | " in line]
    return " ".join(r[0].strip() for r in rows).strip(), " ".join(r[1].strip() for r in rows).strip()


def test_steer_prints_both_continuations_side_by_side(run, tmp_path):
    r = run_cli(f"run={run}", "feature=[3,7]", "scale=[40,-20]", "prompt=The capital, Paris, is",
                   "max_new_tokens=12", cwd=tmp_path, module="saefw.steer")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "prompt:   The capital, Paris, is" in r.stdout  # commas kept: the prompt is quoted for Hydra
    assert "add +40 × d_3, -20 × d_7 at blocks.1.hook_resid_post" in r.stdout
    unsteered, steered = _columns(r.stdout)
    assert unsteered and steered and unsteered != steered
    assert not (tmp_path / "outputs").exists()


def test_sampling_is_deterministic_with_a_seed_and_clamp_mode_runs(run, tmp_path):
    args = [f"run={run}", "feature=11", "mode=clamp", "value=30", "prompt=The population of", "max_new_tokens=10",
            "temperature=1.0", "top_p=0.9"]
    a = run_cli(*args, "seed=1", cwd=tmp_path, module="saefw.steer")
    b = run_cli(*args, "seed=1", cwd=tmp_path, module="saefw.steer")
    assert a.returncode == 0, a.stderr[-3000:]
    assert "clamp f_11 := 30 (SAE error term kept)" in a.stdout and "sampled (temperature 1.0" in a.stdout
    assert _columns(a.stdout) == _columns(b.stdout)


@pytest.mark.parametrize("args, message", [
    (["feature=999", "scale=2"], "error: feature=999 is out of range: the SAE has 128 features (0-127)"),
    (["feature=3", "mode=clamp"], "error: mode=clamp needs value=<v>: the activation to set (one per feature)"),
    (["feature=3", "mode=swap", "scale=1"], "error: mode='swap' is not a steering mode; choices: add, clamp"),
    (["feature=[3,4]", "scale=[1,2,3]"], "error: scale has 3 values for 2 features: give one per feature"),
])
def test_bad_requests_are_one_line_errors(run, tmp_path, args, message):
    r = run_cli(f"run={run}", "prompt=Hello", *args, cwd=tmp_path, module="saefw.steer")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert message in r.stderr.splitlines()


def test_prompt_quoting_and_columns():
    assert quote_prompt(["prompt=a, b's [c]", "feature=1", "prompt='kept'"]) == [
        "prompt='a, b\\'s [c]'", "feature=1", "prompt='kept'"]
    text = side_by_side("one two three four", "five", width=30)
    assert text.splitlines()[0].startswith("unsteered") and "| steered" in text.splitlines()[0]
    assert [row.split(" | ") for row in text.splitlines()[2:]] == [["one two three", "five"], ["four         ", ""]]
