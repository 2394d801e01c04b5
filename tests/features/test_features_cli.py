"""``python -m saefw.features``: bad input is one clear error line."""
import pytest
from helpers import run_cli


@pytest.mark.parametrize("args, message", [
    (["run=/no/such/run"], "error: run='/no/such/run' is not a directory"),
    (["run=.", "split=dev"], "error: split='dev' is not a split; choices: heldout, train, all"),
    (["run=.", "n_tokens=0"], "error: n_tokens=0 must be at least 1"),
    (["run=."], None),  # a folder with no SAE: the loader's own message
])
def test_bad_input_is_one_error_line(tmp_path, args, message):
    r = run_cli(*args, cwd=tmp_path, module="saefw.features")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and (message is None and "SAE" in errors[0] or errors[0] == message), errors
    assert not (tmp_path / "features").exists()
