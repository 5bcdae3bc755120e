"""The shipped instruction set: real prompt/response pairs, completion-only labels, real lengths."""
from __future__ import annotations

import numpy as np
import pytest

from padlab import data


@pytest.fixture(scope="module")
def pairs():
    return data.load_instructions("wordnet-define")


def test_one_pair_per_synset_row_for_row_with_the_corpus(pairs):
    corpus = data.load_corpus("wordnet")
    assert len(pairs) == len(corpus) == 117_659
    assert pairs.responses == corpus.texts
    # "[CLS] gloss [SEP]" and "gloss [SEP]" differ by the [CLS] alone.
    assert np.array_equal(pairs.response_lengths, corpus.lengths - 1)


def test_first_synsets_by_hand(pairs):
    # data.noun starts with the synsets 'entity', 'physical entity', 'abstraction, abstract entity'.
    assert pairs.prompts[:3] == ["define: entity (noun)", "define: physical entity (noun)",
                                 "define: abstraction (noun)"]
    assert pairs.responses[0].startswith("that which is perceived or known or inferred")
    assert {p.rsplit("(", 1)[1] for p in pairs.prompts} == {"noun)", "verb)", "adjective)", "adverb)"}


def test_layout_and_completion_only_labels(pairs):
    tok = data.load_tokenizer()
    for i in (0, 1, 4_321, len(pairs) - 1):
        ids = pairs.ids(i)
        p = int(pairs.prompt_lengths[i])
        assert ids.tolist() == tok.encode(pairs.prompts[i], pairs.responses[i]).ids
        assert ids.tolist()[:p] == tok.encode(pairs.prompts[i]).ids          # [CLS] prompt [SEP]
        assert ids[0] == data.CLS_ID and ids[p - 1] == data.SEP_ID
        assert ids[-1] == data.END_OF_RESPONSE_ID == data.SEP_ID
        ex = pairs[i]
        assert ex["input_ids"] == ids.tolist()
        assert ex["labels"][:p] == [data.IGNORE_INDEX] * p
        assert ex["labels"][p:] == ids.tolist()[p:]
    assert (pairs.prompt_lengths >= 5).all() and (pairs.response_lengths >= 2).all()


def test_read_only_and_cached(pairs):
    assert data.load_instructions() is pairs
    with pytest.raises(ValueError):
        pairs.prompt_lengths[0] = 1


@pytest.mark.parametrize("call,match", [
    (lambda: data.load_instructions("alpaca"), r"name must be one of 'wordnet-define'; got 'alpaca'"),
    (lambda: data.load_instructions().ids(10**7), r"i must be in"),
    (lambda: data.load_instructions().ids(1.5), r"i must be an integer"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
