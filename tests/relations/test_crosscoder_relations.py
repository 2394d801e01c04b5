"""``python -m saefw.relations crosscoder=<dir>``: a hand-set crosscoder saved as training saves it, its layer
profile written by the real CLI (numbers = the hand-set decoder norms; no model needed), the profile beside a
``runs=`` chain (a section of relations.html), and the errors for an SAE that is not a crosscoder."""
import json
import logging

import pytest
import torch
from helpers import read_csv, run_cli, run_clis, set_params

from saefw.io.saved import save_sae
from saefw.registry import build, discover
from saefw.relations.command import crosscoder_layers, load_crosscoder

LAYERS = [5, 6, 7]
# per-layer decoder segments (width 2) in raw units: latent 0 only at L5, 1 only at L7, 2 evenly over all three,
# 3 mostly (0.7) at L6, 4 spread 0.5 / 0.3 / 0.2 (shared: no layer above 0.6), 5 mostly at L5 (0.8)
SEGMENTS = torch.tensor([[[3.0, 4.0], [0, 0], [0, 0]],
                         [[0, 0], [0, 0], [0, 2.0]],
                         [[1.0, 0], [0, 1.0], [0.6, 0.8]],
                         [[0, 0.2], [0.7, 0], [0, 0.1]],
                         [[0.5, 0], [0, 0.3], [0.2, 0]],
                         [[0, 0.8], [0.1, 0], [0.1, 0]]])
NORMS = SEGMENTS.norm(dim=-1)  # [6, 3]
CLASSES = ["L5", "L7", "shared", "L6", "shared", "L5"]
PNG = b"\x89PNG\r\n\x1a\n"


def _provenance(model: str, layer: int, **extra) -> dict:
    return {"model_name": model, "hook_name": f"blocks.{layer}.hook_resid_post", "hook_layer": layer,
            "site": "resid_post", "context_size": 32, "dataset_path": "factbook", "prepend_bos": True,
            "source": "hf", "penalty": "l1_decoder_norm", **extra}


def save_crosscoder(folder, model: str = "no-such/model", layers=LAYERS):
    """The hand-set crosscoder, trained-looking: per-layer scales (folded into the weights on save, so the saved
    norms are still the raw ones above) and the provenance a crosscoder run records (``layers``)."""
    discover()
    sae = build("arch", {"name": "crosscoder"}, d_in=6, d_sae=6, n_layers=3)
    scales = torch.tensor([2.0, 0.5, 4.0])
    set_params(sae, W_dec=(SEGMENTS * scales[None, :, None]).reshape(6, 6), layer_scales=scales)
    torch.testing.assert_close(sae.layer_norms(), NORMS)
    save_sae(sae, folder, _provenance(model, (layers or [5])[0], **({"layers": layers} if layers else {})))
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("crosscoder")
    save_crosscoder(root / "cc")
    discover()
    save_sae(build("arch", {"name": "l1"}, d_in=6, d_sae=4), root / "l1", _provenance("no-such/model", 5))
    save_sae(build("arch", {"name": "l1"}, d_in=2, d_sae=4), root / "l1_at_4", _provenance("no-such/model", 4))
    return root


def _check_profile(out, norms=NORMS, layers=LAYERS):
    rows = read_csv(out / "layer_profile.csv")
    assert [int(r["latent"]) for r in rows] == list(range(len(norms)))
    got = torch.tensor([[float(r[f"norm_L{layer}"]) for layer in layers] for r in rows])
    torch.testing.assert_close(got, norms, rtol=1e-5, atol=1e-6)
    fractions = torch.tensor([[float(r[f"fraction_L{layer}"]) for layer in layers] for r in rows])
    torch.testing.assert_close(fractions, norms / norms.sum(-1, keepdim=True), rtol=1e-5, atol=1e-6)
    assert [r["class"] for r in rows] == CLASSES
    assert [int(r["top_layer"]) for r in rows] == [layers[i] for i in norms.argmax(-1).tolist()]
    summary = json.loads((out / "layer_profile.json").read_text())
    assert summary["format"] == "saefw.layer_profile/1" and summary["layers"] == layers
    assert summary["counts"] == {"shared": 2, f"L{layers[0]}": 2, f"L{layers[1]}": 1, f"L{layers[2]}": 1, "zero": 0}
    assert summary["n_latents"] == 6 and summary["shared_above"] == 0.6
    png = out / "layer_profile.png"
    assert png.read_bytes()[:8] == PNG
    from PIL import Image

    with Image.open(png) as im:
        im.verify()
        assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100
    return summary


def test_crosscoder_profile_through_the_cli_without_the_model(saved):
    """The model the file names does not exist: the profile reads the decoder only."""
    out = saved / "out"
    r = run_cli(f"crosscoder={saved / 'cc'}", f"out={out}", module="saefw.relations", cwd=saved)
    assert r.returncode == 0, r.stderr[-3000:]
    _check_profile(out)
    assert sorted(p.name for p in out.iterdir()) == ["layer_profile.csv", "layer_profile.json", "layer_profile.png"]
    text = r.stdout
    assert "crosscoder L5–7 resid_post" in text and "6 latents by decoder norm per layer" in text
    assert "shared (no layer above 0.6 of its norm): 2 (33 %)" in text
    assert "L5 only or mostly: 2 (33 %)" in text and "L6 only or mostly: 1 (17 %)" in text
    assert "L7 only or mostly: 1 (17 %)" in text and "no decoder" not in text
    assert str(out / "layer_profile.png") in text


def test_layers_come_from_the_metadata_or_positions(tmp_path, caplog):
    folder, sae = load_crosscoder(str(save_crosscoder(tmp_path / "cc")))
    torch.testing.assert_close(sae.layer_norms(), NORMS, rtol=1e-5, atol=1e-6)  # the scales were folded on save
    assert crosscoder_layers(folder, 3) == LAYERS
    bare = save_crosscoder(tmp_path / "bare", layers=None)
    with caplog.at_level(logging.WARNING, logger="saefw.relations"):
        assert crosscoder_layers(bare, 3) == [0, 1, 2]
    assert "does not record the 3 layers" in caplog.text


def test_crosscoder_beside_runs_adds_a_section_to_the_page(saved, tiny_model):
    """Both at once: the chain's relations and the crosscoder's profile in one out dir, the page showing it."""
    discover()
    torch.manual_seed(0)
    runs = []
    for layer in (1, 2):
        sae = build("arch", {"name": "l1"}, d_in=32, d_sae=4)
        save_sae(sae, saved / f"run{layer}", _provenance(str(tiny_model), layer))
        runs.append(saved / f"run{layer}")
    out = saved / "both"
    r = run_cli(f"runs=[{runs[0]},{runs[1]}]", f"crosscoder={saved / 'cc'}", f"out={out}", "n_tokens=62",
                "features=[0,1]", "batch_rows=8", module="saefw.relations", cwd=saved)
    assert r.returncode == 0, r.stderr[-3000:]
    _check_profile(out)
    assert {"relations.json", "relations.csv", "relations.html", "relations.png"} <= {p.name for p in out.iterdir()}
    html = (out / "relations.html").read_text()
    data = json.loads(html.split("var DATA = ", 1)[1].split(";\n", 1)[0])
    lp = data["layer_profile"]
    assert lp["figure"] == "layer_profile.png" and lp["table"] == "layer_profile.csv"
    assert lp["counts"] == {"shared": 2, "L5": 2, "L6": 1, "L7": 1, "zero": 0} and lp["layers"] == LAYERS
    assert 'id="layer-profile"' in html
    assert "6 latents by decoder norm per layer" in r.stdout and "edges" in r.stdout


def test_not_a_crosscoder_is_a_one_line_error(saved):
    cases = [([f"crosscoder={saved / 'l1'}"], "holds an arch=l1 SAE (layout 'site'); expected arch=crosscoder"),
             ([f"crosscoder={saved / 'nowhere'}"], "is not a directory"),
             ([], "give runs=[<dir L>,<dir L+1>,...]"),
             ([f"runs=[{saved / 'l1_at_4'},{saved / 'cc'}]"], "pass a crosscoder as crosscoder=<dir>"),
             ([f"crosscoder={saved / 'cc'}", "shared_above=0"], "shared_above=0.0 must be in (0, 1]")]
    results = run_clis([[*args, f"out={saved / 'bad'}"] for args, _ in cases], cwd=saved, module="saefw.relations")
    for (args, message), r in zip(cases, results):
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr[-2000:])
        assert any(line.startswith("error: ") and message in line for line in r.stderr.splitlines()), \
            (args, r.stderr)
    assert not (saved / "bad" / "layer_profile.csv").exists()
