"""Corpora: embedded, .txt, .jsonl(.gz), .parquet, folders, saved Hugging Face datasets; the hash split."""
import gzip
import json

import pytest

from saefw.errors import SaefwError
from saefw.lm.corpus import Corpus, is_heldout, split_documents

DOCS = [f"Document number {i} talks about rivers, borders and {i % 7} mountains." for i in range(50)]


def test_txt_jsonl_gz_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS[:10]) + "\n\n\n" + "line one\nline two\n")
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as fh:
        for d in DOCS[10:20]:
            fh.write(json.dumps({"text": d, "id": 1}) + "\n")
    (tmp_path / "ignored.csv").write_text("x")
    assert list(Corpus(str(tmp_path / "a.txt")).documents()) == DOCS[:10] + ["line one\nline two"]
    assert list(Corpus(str(tmp_path / "b.jsonl.gz")).documents()) == DOCS[10:20]
    assert list(Corpus(str(tmp_path)).documents()) == DOCS[:10] + ["line one\nline two"] + DOCS[10:20]
    a, b = Corpus(str(tmp_path)).fingerprint(), Corpus(str(tmp_path / "a.txt")).fingerprint()
    assert a != b
    (tmp_path / "a.txt").write_text("changed")
    assert Corpus(str(tmp_path)).fingerprint() != a  # the store key follows the text


def test_local_parquet_and_saved_datasets_folder(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": DOCS, "n": list(range(50))}), tmp_path / "c.parquet", row_group_size=7)
    assert list(Corpus(str(tmp_path / "c.parquet"), text_field="body").documents()) == DOCS
    with pytest.raises(SaefwError, match="no column 'text'; columns: body, n"):
        list(Corpus(str(tmp_path / "c.parquet")).documents())

    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(tmp_path / "ds"))
    corpus = Corpus(str(tmp_path / "ds"))
    assert corpus.is_hf and list(corpus.documents()) == DOCS
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS[:5]}),
                          "validation": datasets.Dataset.from_dict({"text": DOCS[5:8]})}).save_to_disk(
        str(tmp_path / "dd"))
    assert list(Corpus(str(tmp_path / "dd"), split="validation").documents()) == DOCS[5:8]
    with pytest.raises(SaefwError, match="no split 'test'; splits: train, validation"):
        list(Corpus(str(tmp_path / "dd"), split="test").documents())


def test_hub_dataset_offline_and_uncached_is_one_clear_error(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SaefwError, match="could not be loaded \\(offline"):
        list(Corpus("hf:nobody/no-such-dataset-xyz").documents())


def test_bad_names():
    with pytest.raises(SaefwError, match="neither an embedded corpus"):
        Corpus("/no/such/file.txt")


def test_heldout_split_is_a_fixed_hash_of_the_text():
    held = list(split_documents(DOCS * 20, 0.1, heldout=True))
    train = list(split_documents(DOCS * 20, 0.1, heldout=False))
    assert len(held) + len(train) == 1000 and not set(held) & set(train)
    assert all(is_heldout(d, 0.1) for d in held) and is_heldout(DOCS[3], 0.1) == is_heldout(DOCS[3], 0.1)
    factbook = list(Corpus("factbook").documents())
    frac = sum(is_heldout(d, 0.05) for d in factbook) / len(factbook)
    assert 0.03 < frac < 0.07
