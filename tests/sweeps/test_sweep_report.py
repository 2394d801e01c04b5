"""The compare step on hand-made sweep dirs: table, frontiers, failed jobs, Optuna marks, PNG, HTML, W&B."""
import json
import math
import re

import pytest
import yaml
from browser import needs_chromium, rendered_dom
from helpers import make_job, read_csv

from saefw.errors import SaefwError
from saefw.sweeps.jobs import find_jobs
from saefw.sweeps.report import compare
from saefw.sweeps.tradeoff import build_tradeoff
from saefw.sweeps.wandb_compare import WandbSettings

BASE = {"layer": 6, "site": "resid_post", "model": "m", "steps": 10, "tokens": 100, "wall_seconds": 1.0,
        "history": [{"step": 5, "l0": 1.0}]}
# (name, arch, knob override, l0, ce_loss_recovered, explained_variance); frontier by hand noted per row
JOBS = [
    ("0_l1", "l1", "penalty.coefficient=1", 80.0, 0.95, 0.90),    # frontier
    ("1_l1", "l1", "penalty.coefficient=3", 40.0, 0.90, 0.80),    # frontier
    ("2_l1", "l1", "penalty.coefficient=10", 45.0, 0.85, 0.85),   # dominated by 1_l1 (ce), not in EV
    ("3_topk", "topk", "arch.k=16", 16.0, 0.92, 0.70),            # frontier
    ("4_topk", "topk", "arch.k=32", 32.0, 0.97, 0.75),            # frontier
]
FRONTIER = {"0_l1", "1_l1", "3_topk", "4_topk"}


def _sweep(root, site="resid_post", with_se=True):
    sweep = root / "2026-01-01" / "10-00-00"
    for num, (name, arch, knob, l0, ce, ev) in enumerate(JOBS):
        rec = {**BASE, "site": site, "arch": arch, "l0": l0, "ce_loss_recovered": ce, "explained_variance": ev,
               "ce_delta": (1 - ce) * 0.5, "kl_div": (1 - ce) * 0.4}
        if with_se:
            rec.update(ce_loss_recovered_se=0.01, explained_variance_se=0.02, ce_delta_se=0.003)
        make_job(sweep, name, rec, overrides=[f"arch={arch}", knob], num=num)
    make_job(sweep, "5_topk", {"status": "failed", "error": "arch.k=100000 is invalid for topk", "arch": "topk",
                               "layer": 6, "site": site, "model": "m",
                               "overrides": ["arch=topk", "arch.k=100000"]},
             overrides=["arch=topk", "arch.k=100000"], num=5)
    return sweep


def test_table_rows_status_overrides_and_frontier(tmp_path):
    sweep = _sweep(tmp_path)
    out = compare([sweep], sweep, WandbSettings(mode="disabled"), echo=False)
    rows = read_csv(out.csv)
    assert [r["job"] for r in rows] == ["0_l1", "1_l1", "2_l1", "3_topk", "4_topk", "5_topk"]
    # run.py writes no status: a metrics.json without one is ok
    assert [r["status"] for r in rows] == ["ok"] * 5 + ["failed"]
    assert {r["job"] for r in rows if r["frontier"] == "True"} == FRONTIER
    assert rows[5]["error"] == "arch.k=100000 is invalid for topk" and rows[5]["frontier"] == "False"
    assert rows[0]["penalty.coefficient"] == "1" and rows[3]["arch.k"] == "16" and rows[5]["arch.k"] == "100000"
    assert rows[1]["overrides"] == "arch=l1 penalty.coefficient=3"
    assert float(rows[2]["ce_loss_recovered_se"]) == 0.01 and rows[0]["sweep"] == "2026-01-01/10-00-00"
    assert "history" not in rows[0]
    for r in rows[:5]:
        assert float(r["l0"]) == dict((n, l0) for n, _, _, l0, _, _ in JOBS)[r["job"]]


def test_printed_table_lists_failed_job_with_its_error(tmp_path, capsys):
    sweep = _sweep(tmp_path)
    compare([sweep], tmp_path / "out", WandbSettings(mode="disabled"))
    text = capsys.readouterr().out
    assert re.search(r"5_topk\s+failed\s+topk", text)
    assert "failed 2026-01-01/10-00-00/5_topk: arch.k=100000 is invalid for topk" in text
    assert "0.9500±0.0100" in text  # ce_loss_recovered ± se
    assert (tmp_path / "out" / "tradeoff.csv").is_file()


def test_png_is_a_real_image(tmp_path):
    from PIL import Image

    out = compare([_sweep(tmp_path)], tmp_path / "o", WandbSettings(mode="disabled"), echo=False)
    with Image.open(out.png) as im:
        im.load()
        assert im.format == "PNG" and im.size == (1144, 440)  # 2 panels of 5.2 x 4.0 in at 110 dpi
        assert len(set(im.convert("RGB").getdata())) > 50  # drawn, not blank


@needs_chromium
def test_html_page_renders_points_error_bars_and_table_in_chromium(tmp_path):
    out = compare([_sweep(tmp_path)], tmp_path / "o", WandbSettings(mode="disabled"), echo=False)
    dom = rendered_dom(out.html)
    # every ok job is one marker in each of the 2 panels, each with an error bar (its _se)
    assert dom.count('<path class="point"') == 5 * 2
    assert dom.count('class="errorbar"') == 5 * 2
    assert re.search(r'class="legendtext"[^>]*>l1<', dom) and re.search(r'class="legendtext"[^>]*>topk<', dom)
    assert "<script src=\"http" not in dom  # offline: plotly inlined, nothing fetched
    assert dom.count('<tr class="failed"') == 1 and "arch.k=100000 is invalid for topk" in dom


@needs_chromium
def test_mlp_out_sweeps_add_ce_delta_and_kl_panels(tmp_path):
    from PIL import Image

    out = compare([_sweep(tmp_path, site="mlp_out", with_se=False)], tmp_path / "o",
                  WandbSettings(mode="disabled"), echo=False)
    dom = rendered_dom(out.html)
    assert dom.count('<path class="point"') == 5 * 4
    assert 'class="errorbar"' not in dom  # no _se in these records: no error bars
    for title in ("CE delta", "KL("):
        assert title in dom
    with Image.open(out.png) as im:
        assert im.size == (1144, 880)  # 2 x 2 panels


def test_sweeps_and_run_dirs_from_different_days_side_by_side(tmp_path):
    a = _sweep(tmp_path / "a")
    run = make_job(tmp_path / "runs" / "2026-02-02", "11-00-00_gated_L6",
                   {**BASE, "arch": "gated", "l0": 20.0, "ce_loss_recovered": 0.93, "explained_variance": 0.8})
    jobs = find_jobs([a, run, a / "0_l1"])  # a job given twice is listed once
    assert len(jobs) == 7
    table = build_tradeoff(jobs)
    assert {r["sweep"] for r in table.rows} == {"2026-01-01/10-00-00", "runs/2026-02-02"}
    gated = [r for r in table.rows if r["arch"] == "gated"]
    assert len(gated) == 1 and gated[0]["frontier"] and gated[0]["status"] == "ok"


def test_groups_split_by_layer_when_layers_differ(tmp_path):
    make_job(tmp_path / "s", "0_l1", {**BASE, "arch": "l1", "layer": 3, "l0": 10.0, "ce_loss_recovered": 0.5})
    make_job(tmp_path / "s", "1_l1", {**BASE, "arch": "l1", "layer": 6, "l0": 20.0, "ce_loss_recovered": 0.4})
    table = build_tradeoff(find_jobs([tmp_path / "s"]))
    # different layers are different trade-offs: each is its own line and frontier
    assert [r["group"] for r in table.rows] == ["l1 L3", "l1 L6"] and all(r["frontier"] for r in table.rows)


def test_bad_dirs_are_clear_errors(tmp_path):
    with pytest.raises(SaefwError, match="is not a directory"):
        find_jobs([tmp_path / "nope"])
    with pytest.raises(SaefwError, match="holds no metrics.json"):
        find_jobs([tmp_path])
    with pytest.raises(SaefwError, match="no directories to compare"):
        find_jobs([])


def test_optuna_best_trial_and_pareto_set_are_marked(tmp_path, capsys):
    single = tmp_path / "single"
    for i, (lam, l0) in enumerate([(0.5, 60.0), (2.0, 33.0), (8.0, 12.0)]):
        make_job(single, f"{i}_l1", {**BASE, "arch": "l1", "l0": l0, "ce_loss_recovered": 0.9 - i * 0.1},
                 overrides=[f"penalty.coefficient={lam}", "+experiment=target_l0"], num=i)
    (single / "optimization_results.yaml").write_text(yaml.safe_dump(
        {"name": "optuna", "best_params": {"penalty.coefficient": 2.0}, "best_value": 1.0}))
    rows = read_csv(compare([single], single, WandbSettings(mode="disabled")).csv)
    assert [r["optuna_best"] for r in rows] == ["False", "True", "False"]
    assert "Optuna best trial in" in capsys.readouterr().out

    multi = tmp_path / "multi"
    for i, k in enumerate([8, 16, 24]):
        make_job(multi, f"{i}_topk", {**BASE, "arch": "topk", "l0": float(k), "ce_loss_recovered": 0.5 + k / 100},
                 overrides=[f"arch.k={k}"], num=i)
    (multi / "optimization_results.yaml").write_text(yaml.safe_dump({"name": "optuna", "solutions": [
        {"params": {"arch.k": 8}, "values": [8.0, 0.58]}, {"params": {"arch.k": 24}, "values": [24.0, 0.74]}]}))
    rows = read_csv(compare([multi], multi, WandbSettings(mode="disabled")).csv)
    assert [r["optuna_best"] for r in rows] == ["True", "False", "True"]
    text = capsys.readouterr().out
    assert "Optuna Pareto set (2 trials)" in text and "0_topk: arch.k=8 -> 8, 0.58" in text


def test_wandb_offline_compare_run_holds_the_table(tmp_path):
    sweep = _sweep(tmp_path)
    out = compare([sweep], sweep, WandbSettings(mode="offline", project="p"), echo=False)
    assert out.wandb_dir is not None and out.wandb_dir.name.startswith("offline-run-")
    assert out.wandb_dir.parent == sweep / "wandb"
    tables = list(out.wandb_dir.glob("files/media/table/tradeoff/table_*.table.json"))
    assert len(tables) == 1
    logged = json.loads(tables[0].read_text())
    assert logged["columns"][:3] == ["sweep", "job", "status"] and len(logged["data"]) == 6
    status = logged["columns"].index("status")
    assert [row[status] for row in logged["data"]].count("failed") == 1
    assert list(out.wandb_dir.glob("files/media/images/tradeoff/plot_*.png"))
    assert list(out.wandb_dir.glob("run-*.wandb"))


def test_wandb_mode_is_checked(tmp_path):
    with pytest.raises(SaefwError, match="wandb.mode='sometimes' is invalid; valid: offline, online, disabled"):
        compare([_sweep(tmp_path)], tmp_path / "o", WandbSettings(mode="sometimes"), echo=False)


def test_interrupted_run_is_listed_but_not_on_the_frontier(tmp_path):
    make_job(tmp_path / "s", "0_l1", {**BASE, "arch": "l1", "l0": 5.0, "ce_loss_recovered": 0.9, "interrupted": True})
    make_job(tmp_path / "s", "1_l1", {**BASE, "arch": "l1", "l0": 20.0, "ce_loss_recovered": 0.4, "interrupted": False})
    rows = read_csv(compare([tmp_path / "s"], tmp_path / "o", WandbSettings(mode="disabled"), echo=False).csv)
    assert [(r["status"], r["frontier"]) for r in rows] == [("interrupted", "False"), ("ok", "True")]


def test_nan_metrics_stay_in_the_table_but_off_the_frontier(tmp_path):
    make_job(tmp_path / "s", "0_l1", {**BASE, "arch": "l1", "l0": math.nan, "ce_loss_recovered": 0.5})
    make_job(tmp_path / "s", "1_l1", {**BASE, "arch": "l1", "l0": 20.0, "ce_loss_recovered": 0.4})
    rows = read_csv(compare([tmp_path / "s"], tmp_path / "o", WandbSettings(mode="disabled"), echo=False).csv)
    assert rows[0]["l0"] == "nan" and rows[0]["frontier"] == "False" and rows[1]["frontier"] == "True"


def test_absorption_and_sparse_probing_get_panels_with_their_own_frontier(tmp_path):
    from saefw.sweeps.panels import panels_for, series_for

    sweep = tmp_path / "2026-01-01" / "10-00-00"
    # (l0, absorption_rate, sparse_probing_sae_top_1_acc): by hand, lower absorption and higher accuracy win
    points = [(16.0, 0.30, 0.50), (32.0, 0.10, 0.40), (64.0, 0.20, 0.70), (128.0, 0.05, 0.60)]
    for num, (l0, absorption, probing) in enumerate(points):
        make_job(sweep, f"{num}_topk", {**BASE, "arch": "topk", "l0": l0, "explained_variance": 0.8,
                                        "absorption_rate": absorption, "absorption_rate_se": 0.01,
                                        "sparse_probing_sae_top_1_acc": probing},
                 overrides=["arch=topk", f"arch.k={int(l0)}"], num=num)
    table = build_tradeoff(find_jobs([sweep]))
    panels = {p.metric: p for p in panels_for(table)}
    assert list(panels) == ["explained_variance", "absorption_rate", "sparse_probing_sae_top_1_acc"]
    (absorption,) = series_for(table, panels["absorption_rate"])
    assert absorption.frontier == [True, True, False, True]  # 64 has more absorption than 32 at a higher L0
    assert absorption.se == [0.01] * 4
    (probing,) = series_for(table, panels["sparse_probing_sae_top_1_acc"])
    assert probing.frontier == [True, False, True, False]
    assert {"absorption_rate", "absorption_rate_se", "sparse_probing_sae_top_1_acc"} <= set(table.columns)
