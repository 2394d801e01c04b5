"""Multirun sweeps through the real CLI on the tiny model: the compare callback, a failing job that does not stop
the sweep, the compare command, and Optuna searches returning their objective."""
import json
import math
import re

import pytest
import yaml
from browser import needs_chromium, rendered_dom
from helpers import TINY, read_csv, run_cli


def _pareto_by_hand(rows):
    """Frontier per arch straight from the definition (no saefw code): not beaten in both l0 and ce."""
    out = set()
    for r in rows:
        l0, ce = float(r["l0"]), float(r["ce_loss_recovered"])
        beaten = any(o["arch"] == r["arch"] and o is not r and float(o["l0"]) <= l0
                     and float(o["ce_loss_recovered"]) >= ce
                     and (float(o["l0"]) < l0 or float(o["ce_loss_recovered"]) > ce) for o in rows)
        if not beaten:
            out.add(r["job"])
    return out


@pytest.fixture(scope="module")
def grid_sweep(tiny_model, tmp_path_factory):
    """A 2 x 2 grid: arch=l1,topk x seed=0,1 (a knob valid for both archs)."""
    tmp = tmp_path_factory.mktemp("grid")
    sweep = tmp / "sweep"
    r = run_cli("-m", f"model={tiny_model}", *TINY, "arch=l1,topk", "seed=0,1", f"hydra.sweep.dir={sweep}",
                cwd=tmp, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return sweep, r


def test_grid_multirun_writes_compare_outputs_via_callback(grid_sweep):
    sweep, r = grid_sweep
    jobs = sorted(p.parent.name for p in sweep.glob("*/metrics.json"))
    assert jobs == ["0_l1", "1_l1", "2_topk", "3_topk"]
    for job in jobs:  # run.py writes no status key: ok by default
        assert "status" not in json.loads((sweep / job / "metrics.json").read_text())
    rows = read_csv(sweep / "tradeoff.csv")
    assert [x["job"] for x in rows] == jobs and {x["status"] for x in rows} == {"ok"}
    assert [x["seed"] for x in rows] == ["0", "1", "0", "1"]
    assert {x["job"] for x in rows if x["frontier"] == "True"} == _pareto_by_hand(rows)
    for name in ("tradeoff.png", "tradeoff.html"):
        assert (sweep / name).stat().st_size > 1000, name
    assert len(list((sweep / "wandb").glob("offline-run-*"))) == 1  # the compare run, in the sweep dir
    assert re.search(r"0_l1\s+ok\s+l1", r.stdout) and "compare wrote:" in r.stdout
    # each job logged to a W&B run of its own (not to the first job's, which Lightning would reuse)
    run_ids = {next((sweep / j / "wandb").glob("offline-run-*")).name.rsplit("-", 1)[1] for j in jobs}
    assert len(run_ids) == 4


@needs_chromium
def test_compare_command_on_the_grid(grid_sweep, tmp_path):
    from PIL import Image

    sweep, _ = grid_sweep
    out = tmp_path / "cmp"
    r = run_cli(str(sweep), f"out={out}", cwd=tmp_path, module="saefw.compare")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_csv(out / "tradeoff.csv")
    assert len(rows) == 4 and [x["arch"] for x in rows] == ["l1", "l1", "topk", "topk"]
    frontier = {x["job"] for x in rows if x["frontier"] == "True"}
    assert frontier == _pareto_by_hand(rows) and frontier  # at least one per arch
    assert {x["arch"] for x in rows if x["frontier"] == "True"} == {"l1", "topk"}
    topk_l0 = {float(x["l0"]) for x in rows if x["arch"] == "topk"}
    assert topk_l0 == {32.0}  # topk's default k
    for x in rows:
        m = json.loads((sweep / x["job"] / "metrics.json").read_text())
        assert math.isclose(float(x["ce_loss_recovered"]), m["ce_loss_recovered"], rel_tol=1e-12)
    with Image.open(out / "tradeoff.png") as im:
        assert im.format == "PNG" and im.size == (1144, 440)
    dom = rendered_dom(out / "tradeoff.html")
    assert dom.count('<path class="point"') == 4 * 2  # 4 jobs in each of the 2 panels
    assert dom.count('<tr class="') == 4
    wb = list(out.glob("wandb/offline-run-*/files/media/table/tradeoff/table_*.table.json"))
    assert len(wb) == 1 and len(json.loads(wb[0].read_text())["data"]) == 4


def test_failing_job_is_recorded_and_the_sweep_goes_on(tiny_model, tmp_path):
    sweep = tmp_path / "sweep"
    # job 0 fails at build time (k > d_sae = 128); job 1 must still run
    r = run_cli("-m", f"model={tiny_model}", *TINY, "arch=topk", "arch.k=100000,8", f"hydra.sweep.dir={sweep}",
                cwd=tmp_path)
    assert r.returncode == 1
    line = "arch.k=100000 is invalid for topk: it must be an integer in [1, d_sae=128] (null: the run's target_l0)"
    assert any(e.startswith(f"error: {line}") for e in r.stderr.splitlines())
    assert f"error: 1 of 2 jobs failed: {sweep / '0_topk'}" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    failed = json.loads((sweep / "0_topk" / "metrics.json").read_text())
    assert failed["status"] == "failed" and failed["error"] == line and "arch.k=100000" in failed["overrides"]
    assert json.loads((sweep / "1_topk" / "metrics.json").read_text())["l0"] == 8.0
    rows = read_csv(sweep / "tradeoff.csv")  # written by the callback despite the failure
    assert [(x["job"], x["status"], x["error"]) for x in rows] == [("0_topk", "failed", line), ("1_topk", "ok", "")]
    assert [x["frontier"] for x in rows] == ["False", "True"]
    assert f"failed {sweep.parent.name}/sweep/0_topk: {line}" in r.stdout


def test_single_run_failure_still_stops_with_one_line(tiny_model, tmp_path):
    out = tmp_path / "run"
    r = run_cli(f"model={tiny_model}", *TINY, "arch=topk", "arch.k=100000", f"hydra.run.dir={out}", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: arch.k=100000 is invalid for topk: it must be an integer in [1, d_sae=128]" in r.stderr
    assert not (out / "metrics.json").exists()


def test_optuna_target_l0_search(tiny_model, tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli("-m", "+experiment=find_lambda", "hydra.sweeper.n_trials=2", "objective.targets.l0=20",
                f"model={tiny_model}", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    lam = result["best_params"]["penalty.coefficient"]
    assert 0.1 <= lam <= 100
    rows = read_csv(sweep / "tradeoff.csv")
    assert len(rows) == 2 and [x["optuna_best"] for x in rows].count("True") == 1
    best = next(x for x in rows if x["optuna_best"] == "True")
    assert math.isclose(float(best["penalty.coefficient"]), lam, rel_tol=1e-9)
    # the job returned |l0 - target| to the sweeper; the study's best is the smallest of them
    distances = [abs(float(x["l0"]) - 20) for x in rows]
    assert math.isclose(result["best_value"], abs(float(best["l0"]) - 20), rel_tol=1e-9)
    assert math.isclose(result["best_value"], min(distances), rel_tol=1e-9)
    assert "Optuna best trial in" in r.stdout


def test_optuna_pareto_search(tiny_model, tmp_path):
    sweep = tmp_path / "sweep"
    r = run_cli("-m", "+experiment=pareto_search", "hydra.sweeper.n_trials=2", f"model={tiny_model}", *TINY,
                f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    solutions = yaml.safe_load((sweep / "optimization_results.yaml").read_text())["solutions"]
    rows = read_csv(sweep / "tradeoff.csv")
    marked = [x for x in rows if x["optuna_best"] == "True"]
    assert len(rows) == 2 and len(marked) == len(solutions) >= 1
    for sol in solutions:  # each Pareto trial's values are [l0, ce_loss_recovered] of the job that ran it
        job = next(x for x in marked if math.isclose(float(x["penalty.coefficient"]),
                                                     sol["params"]["penalty.coefficient"], rel_tol=1e-9))
        assert sol["values"] == pytest.approx([float(job["l0"]), float(job["ce_loss_recovered"])], rel=1e-9)
        assert job["frontier"] == "True"  # the study's Pareto set is on our frontier too
    assert "Optuna Pareto set" in r.stdout
