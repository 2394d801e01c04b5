"""Text corpora, read as streams of documents, so a corpus larger than RAM works.

``Corpus(name)`` accepts:

* an embedded corpus: ``factbook`` (CIA World Factbook prose, public domain; the default);
* a local file — ``.txt`` (one document per blank-line-separated paragraph), ``.jsonl`` / ``.jsonl.gz`` (a
  ``text_field`` per line), ``.parquet`` (a ``text_field`` column, read in row batches) — or a folder of them;
* a Hugging Face ``datasets`` dataset: ``hf:<name>`` (from the local cache when offline, streamed when online)
  or a folder written by ``Dataset.save_to_disk``.

The held-out split is decided per document by a hash of its text (:func:`is_heldout`): it needs no pass over
the whole corpus, and it is the same for every run, seed and reading order.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from saefw.errors import SaefwError

EMBEDDED = {"factbook": Path(__file__).parent / "data" / "factbook.jsonl.gz"}
FILE_KINDS = (".txt", ".jsonl", ".jsonl.gz", ".parquet")
HF_PREFIX = "hf:"


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    return next((k for k in sorted(FILE_KINDS, key=len, reverse=True) if name.endswith(k)), None)


def _is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file())


@dataclass(frozen=True)
class Corpus:
    """A named text corpus (see the module docstring for what ``name`` may be)."""

    name: str = "factbook"
    text_field: str = "text"
    split: str = "train"  # Hugging Face datasets only
    config: str | None = None  # Hugging Face dataset config name, e.g. wikitext-2-raw-v1

    def __post_init__(self):
        self._check()

    # --- what the name points at ---
    @property
    def is_hf(self) -> bool:
        return self.name.startswith(HF_PREFIX) or _is_saved_dataset(Path(self.name).expanduser())

    def files(self) -> list[Path]:
        """The local files of a file/folder corpus, in a fixed (sorted) order."""
        if self.name in EMBEDDED:
            return [EMBEDDED[self.name]]
        path = Path(self.name).expanduser()
        if path.is_file():
            return [path]
        return sorted(p for p in path.rglob("*") if p.is_file() and _kind(p))

    def _check(self) -> None:
        if self.is_hf:
            return
        path = Path(self.name).expanduser()
        if self.name in EMBEDDED:
            return
        if not path.exists():
            raise SaefwError(f"corpus={self.name!r} is neither an embedded corpus ({', '.join(EMBEDDED)}), a file or "
                             f"folder, nor a Hugging Face dataset ({HF_PREFIX}<name>)")
        if path.is_file() and not _kind(path):
            raise SaefwError(f"corpus={self.name!r}: unsupported file type; supported: {', '.join(FILE_KINDS)}")
        if path.is_dir() and not self.files():
            raise SaefwError(f"corpus={self.name!r} is a folder with no {', '.join(FILE_KINDS)} files")
        if all(p.stat().st_size == 0 for p in self.files()):
            raise SaefwError(f"corpus={self.name!r} is empty: it holds no text")

    # --- reading ---
    def documents(self) -> Iterator[str]:
        """Every non-empty document, in a fixed order."""
        return (row[0] for row in self.rows())

    def rows(self, fields: tuple[str, ...] = ()) -> Iterator[tuple]:
        """(text, *fields) of every non-empty document, in a fixed order: e.g. ``rows(("label",))`` gives
        (text, label) pairs for a labelled dataset (the sparse-probing tasks)."""
        if self.is_hf:
            yield from self._hf_rows(fields)
            return
        for path in self.files():
            yield from _file_rows(path, (self.text_field, *fields))

    def _hf_rows(self, fields: tuple[str, ...]) -> Iterator[tuple]:
        try:
            import datasets
        except ImportError:
            raise SaefwError("reading a Hugging Face dataset needs the `datasets` package: "
                             "pip install 'saefw[data]'") from None
        path = Path(self.name).expanduser()
        if not self.name.startswith(HF_PREFIX):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = _pick_split(ds, self)
        else:
            offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
            try:
                ds = datasets.load_dataset(self.name[len(HF_PREFIX):], self.config, split=self.split,
                                           streaming=not offline)
            except Exception as exc:  # offline and not cached, unknown name, bad split ...
                raise SaefwError(f"corpus={self.name!r} could not be loaded"
                                 f"{' (offline: only datasets already in the local cache work)' if offline else ''}: "
                                 f"{str(exc).splitlines()[0][:300]}") from None
        for name in (self.text_field, *fields):
            if name not in (ds.column_names or [name]):
                raise SaefwError(f"corpus={self.name!r} has no field {name!r}; fields: "
                                 f"{', '.join(ds.column_names)}" + (" (set source.corpus_text_field)"
                                                                    if name == self.text_field else ""))
        for row in ds:
            text = row[self.text_field]
            if text and text.strip():
                yield (text.strip(), *(row[f] for f in fields))

    def fingerprint(self) -> str:
        """A digest of the corpus contents (files: their bytes; datasets: their own fingerprint or name),
        so an activation store harvested from it is never reused for different text."""
        h = hashlib.sha256(f"{self.text_field}|{self.split}|{self.config}".encode())
        if self.name.startswith(HF_PREFIX):
            h.update(self.name.encode())
            return h.hexdigest()[:16]
        paths = [Path(self.name).expanduser()] if self.is_hf else self.files()
        for path in paths:
            for f in sorted(p for p in ([path] if path.is_file() else path.rglob("*")) if p.is_file()):
                h.update(f.name.encode())
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
        return h.hexdigest()[:16]


def _pick_split(ds, corpus: Corpus):
    if corpus.split not in ds:
        raise SaefwError(f"corpus={corpus.name!r} has no split {corpus.split!r}; splits: {', '.join(ds)}")
    return ds[corpus.split]


def _file_rows(path: Path, fields: tuple[str, ...]) -> Iterator[tuple]:
    """(text, *other fields) per document of one file; ``fields[0]`` is the text field."""
    kind = _kind(path)
    if kind == ".parquet":
        yield from _parquet_rows(path, fields)
        return
    opener = gzip.open if kind == ".jsonl.gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        if kind == ".txt":
            if len(fields) > 1:
                raise SaefwError(f"{path} is plain text: it has no field {fields[1]!r} (use .jsonl or .parquet)")
            yield from ((doc,) for doc in _paragraphs(fh))
            return
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                row = tuple(record[f] for f in fields)
            except (json.JSONDecodeError, KeyError, TypeError):
                raise SaefwError(f"{path} line {n} is not a JSON object with the field(s) "
                                 f"{', '.join(map(repr, fields))}") from None
            if row[0] and row[0].strip():
                yield (row[0].strip(), *row[1:])


def _parquet_rows(path: Path, fields: tuple[str, ...]) -> Iterator[tuple]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SaefwError("reading .parquet corpora needs pyarrow: pip install 'saefw[data]'") from None
    pf = pq.ParquetFile(path)
    for name in fields:
        if name not in pf.schema_arrow.names:
            raise SaefwError(f"{path} has no column {name!r}; columns: {', '.join(pf.schema_arrow.names)}"
                             + (" (set source.corpus_text_field)" if name == fields[0] else ""))
    for batch in pf.iter_batches(columns=list(fields), batch_size=1024):
        for row in zip(*(batch.column(i).to_pylist() for i in range(len(fields)))):
            if row[0] and row[0].strip():
                yield (row[0].strip(), *row[1:])


def _paragraphs(fh) -> Iterator[str]:
    para: list[str] = []
    for line in fh:  # paragraph by paragraph, never the whole file at once
        if line.strip():
            para.append(line.rstrip("\n"))
        elif para:
            yield "\n".join(para).strip()
            para = []
    if para:
        yield "\n".join(para).strip()


def is_heldout(doc: str, fraction: float) -> bool:
    """True for the documents of the held-out split: a fixed hash of the text, below ``fraction``."""
    digest = hashlib.blake2b(doc.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2 ** 64


SPLITS = ("heldout", "train", "all")


def documents_of_split(corpus: Corpus, split: str, fraction: float) -> Iterator[str]:
    """The documents of ``split`` (one of :data:`SPLITS`): the held-out ``fraction`` of the corpus, the rest, or
    all of it (the same split training used: :func:`split_documents`)."""
    docs = corpus.documents()
    return docs if split == "all" else split_documents(docs, fraction, heldout=split == "heldout")


def split_documents(docs, fraction: float, heldout: bool) -> Iterator[str]:
    """The held-out (``heldout=True``) or training documents of ``docs``."""
    return (d for d in docs if is_heldout(d, fraction) == heldout)
