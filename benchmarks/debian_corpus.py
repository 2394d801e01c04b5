"""Build a plain-text corpus from this machine's Debian documentation, offline and deterministically.

Sources (text only; binaries, images, PostScript/PDF, JSON, logs and source code are skipped):

* ``/usr/share/doc``: README*, NEWS*, copyright, AUTHORS, THANKS, TODO, HISTORY, CHANGES, FAQ, BUGS, CREDITS and
  ``.txt`` / ``.md`` / ``.rst`` files (``.gz`` decompressed), HTML with its tags stripped (``<script>`` and
  ``<style>`` dropped), and changelogs **capped** at their first ``--changelog-chars`` characters (the newest
  entries). Changelogs are 144 MB of the 260 MB of text here and very repetitive ("New upstream release",
  maintainer lines): uncapped they would make the corpus a changelog corpus, so each keeps its head only
  (``--changelog-chars 0`` drops them, a large value keeps them whole);
* ``/usr/share/man/man[1-8]`` (the English pages): roff rendered to text by a small built-in converter (macros
  dropped, section titles and font-changed words kept, escapes resolved): no ``man``/``groff`` needed, and the
  result does not depend on their versions. ``.so`` alias pages are skipped.

Licence texts repeat across hundreds of copyright files, so a paragraph (blank-line-separated block) of at least
``--dedup-chars`` characters that appeared earlier in the corpus is dropped (documents are processed in their
output order, so the result is deterministic). A document left with fewer than ``--min-chars`` characters is
dropped; one longer than ``--max-chars`` (200 k: tables such as a font's glyph list, a 2 MB Boost copyright file
listing every source folder, Node's whole API in one HTML page) keeps its head. Man pages keep at most
``--man-per-prefix`` (200) pages per command prefix: the Google Cloud CLI alone installs 16,631 generated,
near-identical ``gcloud_*`` pages here, which would otherwise be 60 % of the documents.

One document per source file, written as JSON lines (``{"text", "source"}``) into ``debian-doc-NNNNN.jsonl``
shards (not ``.txt``: saefw reads a ``.txt`` file as one document per paragraph, which would split every file and
hold out paragraphs instead of files). The order is fixed: documents sorted by a hash of their source path, so
any prefix of the corpus (the first N tokens a run trains on) mixes all the sources instead of being the packages
whose names start with "a". The same installed packages give byte-identical output. ``OUT.manifest.json``, next
to the folder rather than in it (saefw's corpus fingerprint, the activation store's key, covers every file in the
folder; the manifest gains the token count later), records the counts and settings.

    python benchmarks/debian_corpus.py [OUT] [--no-man] [--changelog-chars 4000] [--no-count]

OUT defaults to ``$SAEFW_CACHE/corpora/debian-doc`` (``~/.cache/saefw/corpora/debian-doc``); use it as
``python -m saefw source.corpus=OUT``. The token count uses the default model's tokenizer (``smollm2-135m``,
through saefw's own model resolution) and counts what saefw trains on: each document's tokens plus one separator.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import html.parser
import json
import os
import re
import shutil
import sys
from pathlib import Path

DOC_ROOT = Path("/usr/share/doc")
MAN_ROOT = Path("/usr/share/man")
MAN_SECTIONS = tuple(f"man{i}" for i in range(1, 9))
TEXT_EXTS = {".txt", ".md", ".rst", ".markdown", ".text"}
HTML_EXTS = {".html", ".htm", ".xhtml"}
NAMES = ("readme", "news", "copyright", "authors", "thanks", "todo", "history", "changes", "faq", "bugs",
         "credits", "changelog")
SHARD_CHARS = 32 << 20  # ~32 MB of text per .jsonl shard


def default_out() -> Path:
    return Path(os.environ.get("SAEFW_CACHE", Path.home() / ".cache" / "saefw")) / "corpora" / "debian-doc"


# --- which files ---
def _base(path: Path) -> str:
    name = path.name
    return name[:-3] if name.endswith(".gz") else name


def doc_kind(path: Path) -> str | None:
    """``text``, ``html``, ``changelog`` or None (skipped) for a file under /usr/share/doc."""
    base = _base(path)
    low = base.lower()
    ext = os.path.splitext(low)[1]
    if low.startswith("changelog"):
        return "changelog"
    if ext in HTML_EXTS:
        return "html"
    if ext in TEXT_EXTS:
        return "text"
    stem = low.split(".")[0]
    if stem in NAMES or stem.startswith("readme"):
        return "text"
    return None


def man_prefix(path: Path) -> str:
    return re.split(r"[_.-]", path.name, maxsplit=1)[0]


def candidate_files(with_man: bool, man_per_prefix: int = 200) -> list[tuple[Path, str]]:
    """Every (path, kind) to read, symlinks excluded (they duplicate another file), in the corpus's order
    (:func:`order_key`); at most ``man_per_prefix`` man pages per command prefix (the name up to its first
    ``_``, ``-`` or ``.``)."""
    out = []
    for root, dirs, files in os.walk(DOC_ROOT):
        dirs.sort()
        for f in sorted(files):
            p = Path(root) / f
            if p.is_symlink() or not p.is_file():
                continue
            kind = doc_kind(p)
            if kind:
                out.append((p, kind))
    if with_man:
        for sec in MAN_SECTIONS:
            for root, dirs, files in os.walk(MAN_ROOT / sec):
                dirs.sort()
                for f in sorted(files):
                    p = Path(root) / f
                    if not p.is_symlink() and p.is_file():
                        out.append((p, "man"))
    out.sort(key=lambda pk: (order_key(pk[0]), str(pk[0])))
    per: dict[str, int] = {}
    kept = []
    for p, kind in out:
        if kind == "man":
            per[man_prefix(p)] = per.get(man_prefix(p), 0) + 1
            if per[man_prefix(p)] > man_per_prefix:
                continue
        kept.append((p, kind))
    return kept


def read_bytes(path: Path) -> bytes | None:
    try:
        data = gzip.open(path).read() if path.name.endswith(".gz") else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    return None if b"\0" in data[:65536] else data


def decode(data: bytes) -> str | None:
    text = data.decode("utf-8", errors="replace")
    if text.count("\ufffd") > max(10, len(text) // 1000):  # not UTF-8 (Latin-1 docs): decode as such
        text = data.decode("latin-1")
    printable = sum(c.isprintable() or c in "\n\t" for c in text[:20000])
    return text if printable >= 0.97 * min(len(text), 20000) else None


# --- converters ---
class _HTMLText(html.parser.HTMLParser):
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table", "ul", "ol", "dl",
             "dt", "dd", "section", "article", "blockquote", "hr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skip += 1
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.skip = max(0, self.skip - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data)


def html_to_text(src: str) -> str:
    p = _HTMLText()
    try:
        p.feed(src)
        p.close()
    except Exception:  # noqa: BLE001 - malformed HTML: keep what was parsed
        pass
    text = "".join(p.parts)
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    return re.sub(r"\n\s*\n\s*", "\n\n", text)


_ROFF_CHARS = {"em": "—", "en": "–", "hy": "-", "bu": "•", "lq": "“", "rq": "”", "oq": "‘", "cq": "’", "aq": "'",
               "dq": '"', "co": "©", "rg": "®", "tm": "™", "mu": "×", "<=": "≤", ">=": "≥", "->": "→", "<-": "←",
               "ba": "|", "ti": "~", "ha": "^", "rs": "\\", "sl": "/", "pl": "+", "mi": "−", "eq": "=", "de": "°",
               "bv": "|", "fm": "′", "sq": "□", "ga": "`", "aa": "´", "at": "@", "sh": "#", "Do": "$", "ct": "¢"}
_ROFF_ESC = re.compile(r"\\(?:f(?:\[[^\]]*\]|\(..|.)|s[+-]?(?:\[[^\]]*\]|\(..|\d+)|\*(?:\[[^\]]*\]|\(..|.)"
                       r"|n(?:\[[^\]]*\]|\(..|.)|\((..)|\[([^\]]*)\]|[&|^%:c0dut]|[-e ~]|.)")
_TEXT_MACROS = {"SH", "SS", "B", "I", "BI", "BR", "IB", "IR", "RB", "RI", "SM", "SB", "IP", "TP", "HP", "UR", "MT",
                "OP", "Nm", "Nd", "Sh", "Ss", "Fl", "Ar", "Op", "Pa", "Xr", "Dq", "Sq", "Em", "Li", "Cm", "Ic", "It",
                "Fn", "Fa", "Ft", "Va", "Ev", "Er", "Pq", "Ql"}
_BREAK_MACROS = {"PP", "P", "LP", "sp", "br", "TP", "IP", "HP", "SH", "SS", "Sh", "Ss", "Pp", "Bl", "El", "It", "nf",
                 "fi", "RS", "RE", "EX", "EE", "Bd", "Ed"}


def _roff_escape(m: re.Match) -> str:
    s = m.group(0)
    if m.group(1):
        return _ROFF_CHARS.get(m.group(1), "")
    if m.group(2) is not None and s.startswith("\\["):
        name = m.group(2)
        if name.startswith("u") and re.fullmatch(r"u[0-9A-Fa-f]{4,6}", name):
            return chr(int(name[1:], 16))
        return _ROFF_CHARS.get(name, "")
    return {"\\-": "-", "\\e": "\\", "\\ ": " ", "\\~": " "}.get(s, "")


_ALTERNATING = {"BI", "BR", "IB", "IR", "RB", "RI"}  # fonts alternate between arguments, no space between them


def roff_to_text(src: str) -> str | None:
    """Man-page roff (man or mdoc macros) as plain text, filled paragraphs joined into lines (roff fills them too;
    ``.nf``/``.EX`` blocks keep their line breaks); None for a ``.so`` alias page."""
    lines = src.splitlines()
    if lines and lines[0].startswith(".so "):
        return None
    paras: list[str] = []
    cur: list[str] = []
    fill = True

    def flush() -> None:
        if cur:
            paras.append((" " if fill else "\n").join(cur))
            cur.clear()

    for line in lines:
        if line.startswith(('.\\"', "'\\\"", '\\"')) or line.strip() in (".", "'"):
            continue
        if not line.startswith((".", "'")):
            cur.append(line)
            continue
        parts = line[1:].strip().split(None, 1)
        if not parts:
            continue
        macro, rest = parts[0], parts[1] if len(parts) > 1 else ""
        if macro in _BREAK_MACROS:
            flush()
        if macro in ("nf", "EX") or (macro == "Bd" and ("-unfilled" in rest or "-literal" in rest)):
            fill = False
        elif macro in ("fi", "EE", "Ed"):
            fill = True
        if macro in _TEXT_MACROS and rest:
            args = re.findall(r'"([^"]*)"|(\S+)', rest)
            words = [a or b for a, b in args]
            if macro in ("IP", "HP"):
                words = words[:1]
            cur.append(("" if macro in _ALTERNATING else " ").join(words))
            if macro in ("SH", "SS", "Sh", "Ss"):
                flush()
    flush()
    text = _ROFF_ESC.sub(_roff_escape, "\n\n".join(p for p in paras if p.strip()))
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n\s*\n\s*", "\n\n", text)


def head(text: str, n: int) -> str:
    """The first ``n`` characters of ``text``, cut at a line end."""
    if len(text) <= n:
        return text
    cut = text[:n]
    return cut[: cut.rfind("\n")] if "\n" in cut else cut


def convert(path: Path, kind: str, changelog_chars: int, max_chars: int) -> str | None:
    data = read_bytes(path)
    if data is None:
        return None
    text = decode(data)
    if text is None:
        return None
    if kind == "html":
        text = html_to_text(text)
    elif kind == "man":
        text = roff_to_text(text)
    elif kind == "changelog":
        if changelog_chars <= 0:
            return None
        text = head(text, changelog_chars)
    return None if text is None else head(text.replace("\r\n", "\n").replace("\r", "\n"), max_chars).strip()


# --- the corpus ---
def order_key(path: Path) -> str:
    return hashlib.blake2b(str(path).encode(), digest_size=8).hexdigest()


def dedup(text: str, seen: set[bytes], min_chars: int) -> str:
    keep = []
    for para in re.split(r"\n\s*\n", text):
        p = para.strip()
        if not p:
            continue
        if len(p) >= min_chars:
            h = hashlib.blake2b(re.sub(r"\s+", " ", p).encode(), digest_size=12).digest()
            if h in seen:
                continue
            seen.add(h)
        keep.append(p)
    return "\n\n".join(keep)


def build(out: Path, with_man: bool = True, changelog_chars: int = 4000, dedup_chars: int = 200,
          min_chars: int = 200, max_chars: int = 200_000, man_per_prefix: int = 200) -> dict:
    files = candidate_files(with_man, man_per_prefix)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    seen: set[bytes] = set()
    stats = {"documents": 0, "characters": 0, "by_kind": {}, "skipped": 0}
    shard, shard_chars, fh = 0, 0, None
    for n, (path, kind) in enumerate(files):
        if n % 2000 == 0:
            print(f"  {n}/{len(files)} files read, {stats['documents']} documents, "
                  f"{stats['characters'] / 1e6:.1f} M characters", flush=True)
        text = convert(path, kind, changelog_chars, max_chars)
        text = dedup(text, seen, dedup_chars) if text else ""
        if len(text) < min_chars:
            stats["skipped"] += 1
            continue
        if fh is None or shard_chars >= SHARD_CHARS:
            if fh:
                fh.close()
            fh = open(tmp / f"debian-doc-{shard:05d}.jsonl", "w", encoding="utf-8")
            shard, shard_chars = shard + 1, 0
        fh.write(json.dumps({"text": text, "source": str(path)}, ensure_ascii=False) + "\n")
        shard_chars += len(text)
        stats["documents"] += 1
        stats["characters"] += len(text)
        k = stats["by_kind"].setdefault(kind, {"documents": 0, "characters": 0})
        k["documents"] += 1
        k["characters"] += len(text)
    if fh:
        fh.close()
    stats.update(candidate_files=len(files), shards=shard, with_man=with_man, changelog_chars=changelog_chars,
                 dedup_chars=dedup_chars, min_chars=min_chars, max_chars=max_chars, man_per_prefix=man_per_prefix)
    manifest_path(out).unlink(missing_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    manifest_path(out).write_text(json.dumps(stats, indent=1, sort_keys=True))
    return stats


def manifest_path(out: Path) -> Path:
    return out.with_name(out.name + ".manifest.json")


def count_tokens(folder: Path, model: str = "smollm2-135m") -> int:
    """Tokens saefw trains on from ``folder`` with ``model``'s tokenizer: every document's tokens + 1 separator."""
    from transformers import AutoTokenizer

    from saefw.lm.corpus import Corpus
    from saefw.lm.embedded import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model(model), local_files_only=True)
    total, batch = 0, []
    for doc in Corpus(str(folder)).documents():
        batch.append(doc)
        if len(batch) == 256:
            total += sum(len(ids) + 1 for ids in tok(batch, add_special_tokens=False).input_ids)
            batch = []
    if batch:
        total += sum(len(ids) + 1 for ids in tok(batch, add_special_tokens=False).input_ids)
    return total


def ensure(out: Path, min_tokens: int = 0, **kw) -> dict:
    """The corpus at ``out`` (built if missing) and its manifest, with ``tokens`` counted once and recorded."""
    manifest = manifest_path(out)
    if not out.exists():
        print(f"building the Debian documentation corpus in {out} ...", flush=True)
        build(out, **kw)
    elif not manifest.is_file():  # a folder of the user's own: used as it is, counted, never rewritten
        from saefw.lm.corpus import Corpus

        docs = list(Corpus(str(out)).documents())
        manifest.write_text(json.dumps({"documents": len(docs), "characters": sum(map(len, docs)),
                                        "built_by": "not debian_corpus.py"}, indent=1, sort_keys=True))
    stats = json.loads(manifest.read_text())
    if "tokens" not in stats:
        print("counting tokens with the smollm2-135m tokenizer ...", flush=True)
        stats["tokens"] = count_tokens(out)
        stats["tokenizer"] = "smollm2-135m"
        manifest.write_text(json.dumps(stats, indent=1, sort_keys=True))
    if min_tokens and stats["tokens"] < min_tokens:
        print(f"warning: the corpus holds {stats['tokens']:,} tokens, fewer than the {min_tokens:,} asked for: "
              "this machine's documentation is too small (a run would reuse text)", flush=True)
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", nargs="?", default=str(default_out()))
    ap.add_argument("--no-man", action="store_true", help="leave out /usr/share/man")
    ap.add_argument("--changelog-chars", type=int, default=4000, help="keep each changelog's first N chars (0: none)")
    ap.add_argument("--dedup-chars", type=int, default=200, help="drop repeated paragraphs at least this long")
    ap.add_argument("--min-chars", type=int, default=200, help="drop documents shorter than this")
    ap.add_argument("--max-chars", type=int, default=200_000, help="keep each document's first N chars")
    ap.add_argument("--man-per-prefix", type=int, default=200, help="man pages kept per command prefix")
    ap.add_argument("--no-count", action="store_true", help="skip the token count")
    ap.add_argument("--target-tokens", type=int, default=10_000_000)
    args = ap.parse_args()
    out = Path(args.out).expanduser()
    stats = build(out, with_man=not args.no_man, changelog_chars=args.changelog_chars,
                  dedup_chars=args.dedup_chars, min_chars=args.min_chars, max_chars=args.max_chars,
                  man_per_prefix=args.man_per_prefix)
    if not args.no_count:
        stats = ensure(out)
    print(f"{out}: {stats['documents']:,} documents, {stats['characters']:,} characters in {stats['shards']} shards"
          + (f", {stats['tokens']:,} tokens (smollm2-135m)" if "tokens" in stats else ""))
    for kind, k in sorted(stats["by_kind"].items()):
        print(f"  {kind:10s} {k['documents']:7,} documents {k['characters']:13,} characters")
    if "tokens" in stats:
        ok = stats["tokens"] >= args.target_tokens
        print(f"{'enough' if ok else 'NOT enough'} for a {args.target_tokens:,}-token run"
              + ("" if ok else " on this machine: install more documented packages or pass a larger corpus"))
        if not ok:
            sys.exit(1)


if __name__ == "__main__":
    main()
