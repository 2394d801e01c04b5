"""What the console of a training run shows: saefw's own lines (a line per phase, progress bars, the summary) and,
only with ``verbose=true``, the libraries' info lines, tips, model summary and warnings (saefw/app/quiet.py); and its
wall time, which counts the whole process."""
import json
import re
import subprocess
import sys
import time

import pytest
from helpers import REPO, run_clis

RUN = ["source=synthetic", "arch=topk", "total_tokens=4096", "train.batch_size=256", "trainer.log_every_n_steps=5",
       "wandb.mode=offline"]  # offline W&B: its "anonymous setting" warning is one of the silenced lines
NOISE = {"tip": "💡 Tip", "gpu line": "GPU available:", "tpu line": "TPU available:",
         "fit stopped line": "`Trainer.fit` stopped", "model summary": "Trainable params",
         "wandb anonymous warning": "anonymous setting", "pytree warning": "isinstance(treespec, LeafSpec)"}
PHASES = ("startup", "model_load", "data_setup", "init", "train", "evaluate", "save")


@pytest.fixture(scope="module")
def consoles(tmp_path_factory):
    """(quiet run, verbose run, the seconds both took): the same tiny synthetic run, twice at once."""
    root = tmp_path_factory.mktemp("quiet")
    t0 = time.time()
    quiet, verbose = run_clis([[*RUN, f"hydra.run.dir={root / 'quiet'}"],
                               [*RUN, "verbose=true", f"hydra.run.dir={root / 'verbose'}"]], cwd=root)
    elapsed = time.time() - t0
    for r in (quiet, verbose):
        assert r.returncode == 0, r.stderr[-3000:]
    return quiet, verbose, elapsed, root


def _lines(text: str) -> list[str]:
    """The console's lines, a progress bar's redraws (carriage returns) dropped."""
    return [part for line in text.splitlines() for part in line.split("\r")[-1:] if part.strip()]


def _is_bar(line: str) -> bool:
    return bool(re.search(r"\d+%\||\|\s*\d+/\??\d*\s*\[", line)) or line.startswith(("Training:", "Epoch "))


def test_default_console_is_saefws_own(consoles):
    quiet, _, _, _ = consoles
    console = quiet.stdout + quiet.stderr
    for what, text in NOISE.items():
        assert text not in console, f"{what} on the default console"
    names = [line.split()[0] for line in _lines(quiet.stdout) if line.split()[0] in PHASES]
    assert names == list(PHASES), quiet.stdout  # one line per phase, in order
    assert "saefw run summary" in quiet.stdout
    assert [line for line in _lines(quiet.stderr) if not _is_bar(line)] == [], quiet.stderr


def test_verbose_shows_everything_again(consoles):
    _, verbose, _, _ = consoles
    console = verbose.stdout + verbose.stderr
    for what in ("tip", "gpu line", "tpu line", "fit stopped line", "model summary"):
        assert NOISE[what] in console, f"no {what} with verbose=true"
    assert "saefw run summary" in verbose.stdout


def test_wall_time_counts_the_process(consoles):
    """wall_seconds runs from the process start (interpreter start-up and imports: the startup phase) to the
    summary; the phases add up to it, and the summary says what it counts."""
    quiet, _, elapsed, root = consoles
    record = json.loads((root / "quiet" / "metrics.json").read_text())
    t = record["timings"]
    assert record["wall_from"] == "process"
    assert abs(sum(t.values()) - record["wall_seconds"]) < 1.0, (t, record["wall_seconds"])
    assert 0.5 < t["startup"] < record["wall_seconds"] <= elapsed  # the imports alone take seconds
    line = next(line for line in quiet.stdout.splitlines() if line.startswith("wall time"))
    assert re.fullmatch(rf"wall time\s+{record['wall_seconds']:.0f} s \(process; startup \d+ s, harvest \d+ s, "
                        r"train \d+ s, evaluate \d+ s\)", line), line


def test_process_start_is_the_interpreters():
    """The wall clock's process start comes from /proc: before anything the interpreter did, not when saefw was
    imported (here a second later)."""
    code = "import time; time.sleep(1); import saefw, saefw.app.cli; print(saefw.IMPORTED - saefw.app.cli.process_start())"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert 1.0 <= float(r.stdout) < 10.0
