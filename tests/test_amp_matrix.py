"""The mixed-precision experiment: tasks from the shipped corpora, one run per (task, policy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from padlab.experiments import amp_matrix
from padlab.models import EncoderConfig


# ----------------------------------------------------------------------------- tasks

def test_make_task_targets_are_the_corpus_counts():
    from padlab.data import load_corpus

    corpus = load_corpus("wordnet")
    t = amp_matrix.make_task("wordnet-length", n_train=40, n_eval=12, batch_size=16, seed=3)
    idx = np.random.default_rng(3).choice(len(corpus), size=52, replace=False)
    want = corpus.lengths[idx].astype(np.float64)
    assert t.target_mean == pytest.approx(want[:40].mean()) and t.target_std == pytest.approx(want[:40].std())
    got = np.concatenate([b["labels"].double().numpy() for b in t.train + t.eval]) * t.target_std + t.target_mean
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert [b["input_ids"].shape[0] for b in t.train] == [16, 16, 8]
    lens = np.concatenate([b["attention_mask"].sum(1).numpy() for b in t.train + t.eval])
    np.testing.assert_array_equal(lens, want)           # the target is the attended length
    raw = amp_matrix.make_task("wordnet-chars-raw", n_train=40, n_eval=12, batch_size=16, seed=3)
    chars = np.array([len(corpus.texts[i]) for i in idx], dtype=np.float64)
    np.testing.assert_array_equal(np.concatenate([b["labels"].numpy() for b in raw.train + raw.eval]), chars)
    assert raw.init_bias == pytest.approx(chars[:40].mean()) and raw.target_std == 1.0
    again = amp_matrix.make_task("wordnet-length", n_train=40, n_eval=12, batch_size=16, seed=3)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(t.train, again.train))
    other = amp_matrix.make_task("wordnet-length", n_train=40, n_eval=12, batch_size=16, seed=4)
    assert not torch.equal(t.train[0]["input_ids"][:, :4], other.train[0]["input_ids"][:, :4])


def test_run_experiment_row():
    task = amp_matrix.make_task("wordnet-topic", n_train=32, n_eval=16, batch_size=16, seed=0)
    cfg = EncoderConfig.tiny(hidden=16, heads=2, ffn=32, layers=1)
    row = amp_matrix.run_experiment(task, "bf16-amp", steps=2, device="cpu", config=cfg)
    assert row["policy"] == "bf16-amp" and row["task"] == "wordnet-topic" and 0 <= row["accuracy"] <= 1
    assert len(row["loss"]) == 2 and row["scale"] is None and row["skipped_steps"] == []



@pytest.mark.parametrize("call,match", [
    (lambda: amp_matrix.make_task("imdb"), r"task must be one of 'wordnet-topic', .*; got 'imdb'"),
    (lambda: amp_matrix.make_task("wordnet-topic", n_train=200_000), r"n_train must plus n_eval=1024 be at most"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
    with pytest.raises(ValueError, match=match):
        call()
