"""The activation store: harvested activations on disk, shared by every run and sweep job with the same key.

A store is a folder under ``<cache>/stores/`` named after its key — everything that determines the activations:
model (and a digest of its weights), layer, site, corpus (and a digest of its text), context size, BOS handling,
split (train / held-out) and storage dtype. It holds

* ``manifest.json`` — the key, ``d``, dtype, the finished shards (file names, contexts, tokens, checksums) and
  whether the corpus split is exhausted;
* ``shard-00000.npy`` … — activations [n_tokens, d] of whole contexts (BOS positions dropped), and
  ``shard-00000.tokens.npy`` — their token ids [n_contexts, context_size] (BOS included).

Shards are written to a temporary name and renamed when complete, then the manifest is rewritten atomically, so
a reader never sees a half-written shard and an interrupted harvest resumes after the last finished one. A shard
whose bytes do not match its checksum is never used: reading it raises :class:`CorruptShardError` naming the
file (the harvester then deletes it and harvests it again). Writers (and readers that may need to write) take
the store's file lock, so concurrent jobs of a multirun never harvest the same store twice.

The store never holds its budget: it grows. A run that needs more tokens than are stored harvests the missing
shards (continuing the corpus where the last shard ended) and reads the rest.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from saefw.app.atomic import atomic_path, write_json
from saefw.errors import SaefwError

MANIFEST = "manifest.json"
VERSION = 1
DTYPES = {"float32": (np.float32, torch.float32), "float16": (np.float16, torch.float16),
          "bfloat16": (np.uint16, torch.bfloat16)}  # numpy has no bf16: its bits are stored as uint16


class CorruptShardError(SaefwError):
    """A shard whose bytes do not match the checksum in the manifest (or that cannot be read at all)."""


@dataclass(frozen=True)
class StoreKey:
    """Everything that determines a store's activations. ``digest`` names its folder."""

    model: str
    model_digest: str
    layer: int
    site: str
    corpus: str
    corpus_digest: str
    context_size: int
    split: str  # "train" | "heldout"
    heldout_fraction: float
    dtype: str = "float32"
    prepend_bos: bool = True  # every context starts with BOS; BOS positions are never stored

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def folder_name(self) -> str:
        slug = "".join(c if c.isalnum() or c in "-." else "-" for c in Path(self.model).name)[-40:]
        return f"{slug}_L{self.layer}_{self.site}_{self.split}_{self.dtype}_{self.digest}"


@dataclass
class Shard:
    file: str
    tokens_file: str
    n_contexts: int
    n_tokens: int
    checksum: str


@dataclass
class Manifest:
    key: dict
    d: int
    version: int = VERSION
    shards: list[Shard] = field(default_factory=list)
    exhausted: bool = False  # the corpus split has no more contexts: the store is complete

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.shards)

    @property
    def n_contexts(self) -> int:
        return sum(s.n_contexts for s in self.shards)


def _checksum(data: bytes | bytearray | memoryview) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _array_in(raw: bytearray) -> np.ndarray:
    """The array of an ``.npy`` file's bytes, sharing them (``np.load`` of the bytes would copy the shard again)."""
    head = io.BytesIO(bytes(memoryview(raw)[:1 << 16]))  # the header is at most 64 KB (numpy's format)
    version = np.lib.format.read_magic(head)
    shape, fortran, dtype = (np.lib.format.read_array_header_1_0(head) if version == (1, 0)
                             else np.lib.format.read_array_header_2_0(head))
    arr = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape)), offset=head.tell())
    return arr.reshape(shape, order="F" if fortran else "C")


def default_root() -> Path:
    """``$SAEFW_STORE``, else ``stores/`` in the cache dir (``$SAEFW_CACHE`` or ``~/.cache/saefw``)."""
    from saefw.lm.embedded import cache_dir

    return Path(os.environ["SAEFW_STORE"]) if os.environ.get("SAEFW_STORE") else cache_dir() / "stores"


class ActivationStore:
    """One store folder (see the module docstring). Cheap to construct; nothing is read until asked."""

    def __init__(self, root: Path, key: StoreKey):
        self.key = key
        self.path = Path(root) / key.folder_name
        self.lock = FileLock(str(self.path) + ".lock")

    # --- manifest ---
    def manifest(self) -> Manifest | None:
        try:
            raw = json.loads((self.path / MANIFEST).read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as exc:
            raise SaefwError(f"{self.path / MANIFEST} is corrupt ({exc}); delete the store with "
                             f"`python -m saefw.store delete {self.path.name}`") from None
        if raw.get("version") != VERSION or raw.get("key") != asdict(self.key):
            raise SaefwError(f"{self.path / MANIFEST} does not belong to this key (or an older format); delete the "
                             f"store with `python -m saefw.store delete {self.path.name}`")
        return Manifest(key=raw["key"], d=raw["d"], version=raw["version"], exhausted=raw["exhausted"],
                        shards=[Shard(**s) for s in raw["shards"]])

    def _write_manifest(self, m: Manifest) -> None:
        write_json(self.path / MANIFEST, asdict(m), indent=1)

    # --- writing (caller holds self.lock) ---
    def write(self, index: int, acts: torch.Tensor, tokens: torch.Tensor) -> Shard:
        """Write shard ``index`` (the next one, or a replacement for a corrupt one): ``acts`` [n_tokens, d] of
        the contexts ``tokens`` [n_contexts, T]."""
        np_dtype, torch_dtype = DTYPES[self.key.dtype]
        self.path.mkdir(parents=True, exist_ok=True)
        m = self.manifest() or Manifest(key=asdict(self.key), d=int(acts.shape[-1]))
        if acts.shape[-1] != m.d:
            raise SaefwError(f"store {self.path.name}: activation width {acts.shape[-1]} != stored d={m.d}")
        if index > len(m.shards):
            raise ValueError(f"shard {index} written before shard {len(m.shards)}")
        name, tok_name = f"shard-{index:05d}.npy", f"shard-{index:05d}.tokens.npy"
        arr = acts.detach().to("cpu", torch_dtype).contiguous()
        arr = (arr.view(torch.uint16) if self.key.dtype == "bfloat16" else arr).numpy()
        assert arr.dtype == np_dtype
        with atomic_path(self.path / tok_name) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, tokens.to(torch.int32).numpy())
        with atomic_path(self.path / name) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, arr)
            shard = Shard(name, tok_name, int(tokens.shape[0]), int(arr.shape[0]), _checksum(tmp.read_bytes()))
        if index == len(m.shards):
            m.shards.append(shard)
        else:
            m.shards[index] = shard
        self._write_manifest(m)
        return shard

    def mark_exhausted(self) -> None:
        m = self.manifest()
        if m is not None:
            m.exhausted = True
            self._write_manifest(m)

    # --- reading ---
    def read(self, index: int, m: Manifest | None = None) -> torch.Tensor:
        """Shard ``index`` as a float32 tensor [n_tokens, d], after checking its checksum."""
        m = m or self.manifest()
        shard = m.shards[index]
        path = self.path / shard.file
        try:
            raw = bytearray(path.stat().st_size)
            with open(path, "rb") as fh:
                fh.readinto(raw)
        except OSError as exc:
            raise CorruptShardError(f"activation store shard {path} cannot be read: {exc}") from None
        if _checksum(raw) != shard.checksum:
            raise CorruptShardError(f"activation store shard {path} is corrupt (checksum mismatch: truncated or "
                                    f"modified); it is never used")
        t = torch.from_numpy(_array_in(raw))
        if self.key.dtype == "bfloat16":
            t = t.view(torch.bfloat16)
        return t.float()

    def read_tokens(self, index: int, m: Manifest | None = None) -> torch.Tensor:
        m = m or self.manifest()
        return torch.from_numpy(np.load(self.path / m.shards[index].tokens_file)).long()

    def corrupt_shards(self) -> list[int]:
        """Indices of the shards whose bytes do not match their checksum (reads the whole store once)."""
        m = self.manifest()
        bad = []
        for i in range(len(m.shards) if m else 0):
            try:
                self.read(i, m)
            except CorruptShardError:
                bad.append(i)
        return bad

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.glob("*") if f.is_file()) if self.path.is_dir() else 0


def iter_stores(root: Path | None = None) -> Iterator[tuple[Path, dict | None]]:
    """(folder, manifest dict or None) of every store under ``root``."""
    root = Path(root or default_root())
    for folder in sorted(p for p in root.glob("*") if p.is_dir()):
        try:
            yield folder, json.loads((folder / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError):
            yield folder, None


def delete_store(folder: Path) -> None:
    folder = Path(folder)
    with FileLock(str(folder) + ".lock"):
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.unlink(str(folder) + ".lock")
    except OSError:
        pass

