"""The ``objective`` key: what a training job hands back to an optimising sweeper."""
import pytest

from saefw.errors import SaefwError
from saefw.training.objective import parse_objective

RECORD = {"l0": 40.0, "ce_loss_recovered": 0.9, "explained_variance": 0.7, "arch": "l1", "steps": 3}


def test_forms_and_values():
    assert parse_objective(None) is None
    assert parse_objective("l0").values(RECORD) == 40.0  # one metric: a float (Optuna's single objective)
    assert parse_objective(["l0"]).values(RECORD) == 40.0
    assert parse_objective(["l0", "ce_loss_recovered"]).values(RECORD) == [40.0, 0.9]
    # a target turns the metric into the distance |value - target|
    target = parse_objective({"metrics": ["l0"], "targets": {"l0": 32}})
    assert target.values(RECORD) == 8.0
    assert target.values({"l0": 20.0}) == 12.0
    both = parse_objective({"metrics": ["l0", "explained_variance"], "targets": {"explained_variance": 0.8}})
    assert both.values(RECORD) == pytest.approx([40.0, 0.1])


def test_bad_specs_name_the_valid_forms():
    with pytest.raises(SaefwError, match="objective=3 is invalid; valid forms: null, a metric name"):
        parse_objective(3)
    with pytest.raises(SaefwError, match="unknown keys \\['target'\\]; valid keys: metrics, targets"):
        parse_objective({"metrics": ["l0"], "target": 3})
    with pytest.raises(SaefwError, match="objective.targets.ce names no metric"):
        parse_objective({"metrics": ["l0"], "targets": {"ce": 1}})
    with pytest.raises(SaefwError, match="objective.targets.l0='x' must be a finite number"):
        parse_objective({"metrics": ["l0"], "targets": {"l0": "x"}})
    with pytest.raises(SaefwError, match="must be one or more metric names"):
        parse_objective([])


def test_unknown_metric_lists_the_run_metrics():
    with pytest.raises(SaefwError, match="objective metric 'l1' is not in this run's metrics; available: "
                                         "ce_loss_recovered, explained_variance, l0, steps"):
        parse_objective(["l1"]).values(RECORD)
