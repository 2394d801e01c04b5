"""Failed-job records of a multirun."""
import json
import math

import pytest
from omegaconf import OmegaConf

from saefw.app.failures import check_finite, error_line, write_failed_record
from saefw.errors import SaefwError


def test_error_line_is_one_line():
    assert error_line(SaefwError("arch.k=9 is invalid")) == "arch.k=9 is invalid"
    assert error_line(ValueError("bad\n  thing\n")) == "ValueError: bad thing"
    assert error_line(RuntimeError()) == "RuntimeError"


def test_divergence_is_an_error():
    check_finite({"l0": 3.0, "mse": 0.1, "ce_loss_recovered": math.nan})  # ce alone can be NaN legitimately
    with pytest.raises(SaefwError, match="training diverged: l0=nan, mse=inf"):
        check_finite({"l0": math.nan, "mse": math.inf, "explained_variance": 0.3})


def test_failed_record_keeps_earlier_metrics_and_identity(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"l0": math.nan, "mse": 1.0, "history": [{"step": 1}]}))
    cfg = OmegaConf.create({"model": "m", "layer": 2, "site": "mlp_out", "arch": {"name": "topk"},
                            "penalty": {"name": "none"}})
    try:
        raise SaefwError("training diverged: l0=nan")
    except SaefwError as exc:
        rec = write_failed_record(tmp_path, exc, cfg, ["arch=topk", "arch.k=4"], job_num=3)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == rec
    assert rec["status"] == "failed" and rec["error"] == "training diverged: l0=nan" and rec["job_num"] == 3
    assert (rec["arch"], rec["penalty"], rec["layer"], rec["site"], rec["model"]) == ("topk", "none", 2, "mlp_out", "m")
    assert rec["overrides"] == ["arch=topk", "arch.k=4"] and rec["mse"] == 1.0 and "history" not in rec
    assert "SaefwError: training diverged" in (tmp_path / "error.txt").read_text()
