"""The shipped data: hashes match the manifest, the loader returns real token counts."""
from __future__ import annotations

import hashlib
import json
import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest

from padlab import data

DATA = Path(__file__).resolve().parent.parent / "data"


def test_shipped_files_match_manifest():
    manifest = json.loads((DATA / "MANIFEST.json").read_text())
    assert set(manifest["files"]) == {"wordnet.tsv.gz", "fortunes.tsv.gz", "wordnet_lemmas.tsv.gz", "tokenizer.json"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name


def test_data_is_small_enough():
    total = sum(p.stat().st_size for p in DATA.glob("*") if p.is_file())
    assert total < 20 * 2**20


@pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").exists() or shutil.which("dpkg-query") is None,
                    reason="wordnet-base / fortunes Debian packages not installed")
def test_build_script_reproduces_shipped_files(tmp_path):
    mod = runpy.run_path(str(DATA / "build_data.py"))
    mod["main"](tmp_path)
    rebuilt = json.loads((tmp_path / "MANIFEST.json").read_text())["files"]
    shipped = json.loads((DATA / "MANIFEST.json").read_text())["files"]
    assert rebuilt == shipped


@pytest.mark.parametrize("name,n,n_labels", [("wordnet", 117_659, 45), ("fortunes", 14_176, 39)])
def test_corpus_shape(name, n, n_labels):
    c = data.load_corpus(name)
    assert len(c) == n == len(c.labels) == len(c.lengths)
    assert len(c.label_names) == n_labels
    assert c.offsets[0] == 0 and c.offsets[-1] == len(c.token_ids)
    assert c.lengths.min() >= 3  # [CLS] + at least one token + [SEP]
    assert (c.token_ids[c.offsets[:-1]] == data.CLS_ID).all()
    assert (c.token_ids[c.offsets[1:] - 1] == data.SEP_ID).all()
    assert c.token_ids.max() < data.vocab_size()


def test_length_profiles_differ():
    short, tail = data.load_corpus("wordnet"), data.load_corpus("fortunes")
    assert np.median(short.lengths) < np.median(tail.lengths)
    # the heavy tail: p99 is many times the median, and some texts exceed 512 tokens
    assert np.percentile(tail.lengths, 99) > 5 * np.median(tail.lengths)
    assert (tail.lengths > 512).sum() >= 1


def test_lengths_are_real_token_counts():
    c = data.load_corpus("wordnet")
    for i in (0, 1, 500, len(c) - 1):
        ids = data.load_tokenizer().encode(c.texts[i]).ids
        assert c.ids(i).tolist() == ids
        assert c.lengths[i] == len(ids)
    assert c[0]["input_ids"] == c.ids(0).tolist() and c[0]["labels"] == int(c.labels[0])


def test_cached_same_object_and_read_only():
    a, b = data.load_corpus("fortunes"), data.load_corpus("fortunes")
    assert a is b
    with pytest.raises(ValueError):
        a.lengths[0] = 1


def test_select_gathers_right_tokens():
    c = data.load_corpus("fortunes")
    idx = np.array([5, 0, 77])
    s = c.select(idx)
    for j, i in enumerate(idx):
        assert s.ids(j).tolist() == c.ids(int(i)).tolist()
        assert s.texts[j] == c.texts[i] and s.labels[j] == c.labels[i]


def test_subset_seeded():
    c = data.load_corpus("wordnet")
    assert c.subset(10, seed=1).texts == c.subset(10, seed=1).texts
    assert c.subset(10, seed=1).texts != c.subset(10, seed=2).texts


@pytest.mark.parametrize("call,match", [
    (lambda: data.load_corpus("wikipedia"), r"corpus must be one of 'wordnet', 'fortunes'; got 'wikipedia'"),
    (lambda: data.load_corpus("fortunes").subset(0), r"n must be an integer >= 1; got 0"),
    (lambda: data.load_corpus("fortunes").subset(10**6), r"n must be at most the corpus size 14176"),
    (lambda: data.load_corpus("fortunes").ids(10**6), r"i must be in"),
    (lambda: data.encode("a string"), r"texts must be a list of strings"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
