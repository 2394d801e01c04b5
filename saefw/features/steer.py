"""``python -m saefw.steer run=<dir> feature=<i> scale=<s> prompt="..."``: generate with and without steering
by SAE features at the SAE's hook point, printed side by side.

A transcoder steers the site it writes (``site_out``, e.g. mlp_out: its decoder rows live there); its clamp mode
reads the latents from the site it reads (mlp_in) in the same forward. Crosscoders are refused with a clear error.

``mode=add`` (default) adds scale × the unit decoder direction of each feature at every position after BOS
(prompt and generated tokens); ``mode=clamp value=<v>`` sets the features' activations to v through
encode → edit → decode, keeping the SAE's error term. Several features at once: ``feature=[3,7] scale=[4,-2]``.
"""
from __future__ import annotations

import shutil
import textwrap
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, ListConfig

from saefw.errors import SaefwError
from saefw.features.sites import dictionary_points
from saefw.features.steering import reading_input


@dataclass
class SteerConfig:
    run: str = MISSING  # a run directory (or any saved SAE directory)
    prompt: str = MISSING
    feature: Any = MISSING  # an index or a list of indices
    mode: str = "add"  # add | clamp
    scale: Any = None  # mode=add: one scale per feature (a single number applies to all)
    value: Any = None  # mode=clamp: one activation value per feature (a single number applies to all)
    max_new_tokens: int = 40
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0
    stop_at_eos: bool = True
    device: str = "auto"


def register_schema() -> None:
    ConfigStore.instance().store(name="saefw_steer_schema", node=SteerConfig)


def _as_list(name: str, v) -> list:
    if isinstance(v, (list, tuple, ListConfig)):
        return list(v)
    if v is None:
        raise SaefwError(f"{name} is required")
    return [v]


def _numbers(name: str, v, n: int) -> list[float]:
    vals = _as_list(name, v)
    if len(vals) == 1 and n > 1:
        vals = vals * n
    for x in vals:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise SaefwError(f"{name}={x!r} is not a number")
    return [float(x) for x in vals]


def build_edit(cfg, sae):
    """The activation edit the config asks for, and a one-line description of it."""
    from saefw.features.steering import (
        MODES,
        add_directions,
        check_features,
        clamp_features,
    )

    feats = check_features(_as_list("feature", cfg.feature), sae.d_sae)
    if cfg.mode not in MODES:
        raise SaefwError(f"mode={cfg.mode!r} is not a steering mode; choices: {', '.join(MODES)}")
    if cfg.mode == "add":
        if cfg.scale is None:
            raise SaefwError("mode=add needs scale=<s> (one per feature, e.g. scale=[4,-2])")
        scales = _numbers("scale", cfg.scale, len(feats))
        what = ", ".join(f"{s:+g} × d_{i}" for i, s in zip(feats, scales))
        return add_directions(sae, feats, scales), f"add {what}"
    if cfg.value is None:
        raise SaefwError("mode=clamp needs value=<v>: the activation to set (one per feature)")
    values = _numbers("value", cfg.value, len(feats))
    what = ", ".join(f"f_{i} := {v:g}" for i, v in zip(feats, values))
    return clamp_features(sae, feats, values), f"clamp {what} (SAE error term kept)"


def steer(cfg, output_dir: Path | None = None) -> dict:
    """The command: generate unsteered and steered continuations of ``prompt`` and print them side by side."""
    from saefw.app.device import resolve_device
    from saefw.io.saved import load_sae, sae_metadata
    from saefw.lm.model import LanguageModel

    run_dir = Path(cfg.run).expanduser()
    if not run_dir.is_dir():
        raise SaefwError(f"run={cfg.run!r} is not a directory")
    if cfg.max_new_tokens < 1:
        raise SaefwError(f"max_new_tokens={cfg.max_new_tokens} must be at least 1")
    meta = sae_metadata(run_dir)
    missing = [k for k in ("model", "layer", "site") if meta.get(k) is None]
    if missing:
        raise SaefwError(f"{run_dir} does not say which {', '.join(missing)} its SAE reads")
    device = resolve_device(cfg.device)
    sae = load_sae(run_dir, device=device)
    points = dictionary_points(run_dir, meta, sae, "saefw.steer")
    edit, what = build_edit(cfg, sae)
    # the edit is in the decoder's space: the site the SAE writes (a transcoder's output, not its input)
    lm = LanguageModel(meta["model"], points.layer, points.write_site, device=device)
    ids = lm.tokenizer(str(cfg.prompt), add_special_tokens=False).input_ids
    if not ids:
        raise SaefwError("prompt is empty")
    tokens = torch.tensor([[lm.bos_id, *ids]])
    out = {}
    # a transcoder's clamp encodes its input site's activation, captured in the same forward
    reads_input = points.is_pair and cfg.mode == "clamp"
    with reading_input(lm, points.read, edit) if reads_input else nullcontext(edit) as steered:
        for name, replace in (("unsteered", None), ("steered", steered)):
            # the same seed for both, so with sampling only the edit differs
            new = lm.generate(tokens, cfg.max_new_tokens, replace=replace, temperature=cfg.temperature,
                              top_p=cfg.top_p, seed=cfg.seed, stop_at_eos=cfg.stop_at_eos)[0].tolist()
            eos = lm.tokenizer.eos_token_id
            if eos in new:
                new = new[: new.index(eos)]
            out[name] = lm.tokenizer.decode(new)
    decoding = "greedy" if cfg.temperature == 0 else f"sampled (temperature {cfg.temperature}, top_p {cfg.top_p}, " \
                                                     f"seed {cfg.seed})"
    where = (f"{points.write_hook} (the transcoder's output; it reads {meta.get('hook_name') or points.read_hook})"
             if points.is_pair else meta.get("hook_name") or lm.hook_name)
    header = [f"prompt:   {cfg.prompt}", f"steering: {what} at {where}, every position after BOS",
              f"decoding: {decoding}, up to {cfg.max_new_tokens} new tokens"]
    print("\n".join(["", *header, "", side_by_side(out["unsteered"], out["steered"])]), flush=True)
    return {"prompt": cfg.prompt, "description": what, "hook_name": lm.hook_name, **out}


def side_by_side(left: str, right: str, width: int | None = None) -> str:
    """Two texts in two wrapped columns headed "unsteered" and "steered"."""
    width = width or max(60, min(shutil.get_terminal_size((120, 20)).columns, 160))
    col = (width - 3) // 2

    def wrap(text: str) -> list[str]:
        lines = []
        for para in text.split("\n"):
            lines.extend(textwrap.wrap(para, col, replace_whitespace=False, drop_whitespace=True) or [""])
        return lines

    a, b = wrap(left), wrap(right)
    rows = [f"{'unsteered':<{col}} | steered", f"{'-' * col}-+-{'-' * col}"]
    rows += [f"{x:<{col}} | {y}" for x, y in zip(a + [""] * (len(b) - len(a)), b + [""] * (len(a) - len(b)))]
    return "\n".join(rows)


def quote_prompt(argv: list[str]) -> list[str]:
    """Quote an unquoted ``prompt=...`` so Hydra reads it as one string even with commas, brackets or quotes."""
    out = []
    for a in argv:
        if a.startswith("prompt=") and not a[len("prompt="):][:1] in ("'", '"'):
            text = a[len("prompt="):].replace("\\", "\\\\").replace("'", "\\'")
            a = f"prompt='{text}'"
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> None:
    import sys

    from saefw.app.cli import command

    register_schema()
    command("steer", steer, quote_prompt(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
