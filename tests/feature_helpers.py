"""Helpers for the feature-reading tests: one tiny SAE trained through the real CLI per test session, the other
commands run as subprocesses, and brute-force references."""
from __future__ import annotations

from pathlib import Path

import torch
from helpers import run_cli
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
# a small TopK SAE (d_in 32, d_sae 128) on the tiny Llama of conftest, layer 1, contexts of 32 tokens
TRAIN_ARGS = ["layer=1", "total_tokens=6000", "train.batch_size=256", "source.context_size=32",
              "source.eval_contexts=6", "expansion_factor=4", "arch=topk", "arch.k=8", "wandb.mode=disabled"]


def trained_run(tmp_path_factory, model: Path) -> Path:
    """The session's tiny trained run (trained on first use through ``python -m saefw``)."""
    out = tmp_path_factory.getbasetemp() / "tiny_topk_run"
    if not (out / "metrics.json").is_file():
        r = run_cli(f"model={model}", *TRAIN_ARGS, f"hydra.run.dir={out}", cwd=out.parent)
        assert r.returncode == 0, r.stderr[-3000:]
    return out


def features_cfg(run: Path, **overrides):
    """A features command config, as Hydra would compose it."""
    from saefw.features.command import FeaturesConfig

    cfg = OmegaConf.structured(FeaturesConfig(run=str(run)))
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    return cfg


@torch.no_grad()
def all_activations(lm, sae, tokens: torch.Tensor) -> torch.Tensor:
    """f [N, T, d_sae] for every context at once (no streaming), BOS positions set to 0."""
    f = torch.cat([sae.encode(lm.activations(tokens[i: i + 7].long())) for i in range(0, len(tokens), 7)])
    f[:, 0] = 0
    return f


def window(f_feature: torch.Tensor, position: int, before: int, after: int) -> torch.Tensor:
    """f_feature [T] around ``position``, 0 outside the context and at BOS."""
    T = len(f_feature)
    return torch.tensor([f_feature[p].item() if 1 <= p < T else 0.0
                         for p in range(position - before, position + after + 1)])


def copy_sae(run: Path, dst: Path) -> Path:
    """A fresh folder holding only the SAE of ``run`` (so each test module owns its feature store)."""
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    from saefw.io.saved import CONFIG, LEGACY_WEIGHTS, WEIGHTS

    for name in (WEIGHTS, LEGACY_WEIGHTS, CONFIG):  # a run saved in either format
        if (run / name).is_file():
            shutil.copy(run / name, dst / name)
    return dst


class Node:
    """An element of a parsed HTML document (just enough DOM to inspect a rendered page)."""

    def __init__(self, tag: str, attrs: dict, parent=None):
        self.tag, self.attrs, self.parent, self.children = tag, attrs, parent, []

    @property
    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs) -> list["Node"]:
        out = []
        for c in self.children:
            if isinstance(c, Node):
                if ((tag is None or c.tag == tag) and (cls is None or cls in c.classes)
                        and all(c.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())):
                    out.append(c)
                out.extend(c.find_all(tag, cls, **attrs))
        return out

    def find(self, tag: str | None = None, cls: str | None = None, **attrs) -> "Node":
        found = self.find_all(tag, cls, **attrs)
        assert found, f"no <{tag} class={cls} {attrs}> in the page"
        return found[0]


def parse_html(html: str) -> Node:
    """A tree of :class:`Node` from an HTML string (Chromium's --dump-dom output)."""
    from html.parser import HTMLParser

    void = {"meta", "input", "br", "img", "link", "hr", "source", "wbr", "area", "base", "col"}
    root = Node("#document", {})

    class Builder(HTMLParser):
        cur = root

        def handle_starttag(self, tag, attrs):
            node = Node(tag, {k: (v if v is not None else "") for k, v in attrs}, self.cur)
            self.cur.children.append(node)
            if tag not in void:
                self.cur = node

        def handle_endtag(self, tag):
            node = self.cur
            while node is not root and node.tag != tag:
                node = node.parent
            if node is not root:
                self.cur = node.parent

        def handle_data(self, data):
            self.cur.children.append(data)

    b = Builder(convert_charrefs=True)
    b.feed(html)
    return root
