"""padlab.generate: batched greedy generation, left padding, the KV cache, the caller's order.

By hand: a stub causal LM whose next token is its last input + 1 gives every expected token by
arithmetic. The proof: on tiny random-init transformers models (Llama: rotary; GPT-2: absolute
positions) built from configs, left-padded batched output equals one-by-one output; the negative
control, right padding, writes different tokens.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from padlab import data
from padlab.generate import GenerationResult, greedy_generate

V = 50


class NextIsPlusOne(torch.nn.Module):
    """Logits pick (last input id + 1) % V; the cache is a counter of tokens seen (checks it is fed)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=True, cache=None):
        self.calls.append((tuple(input_ids.shape), None if cache is None else int(cache)))
        logits = torch.nn.functional.one_hot((input_ids + 1) % V, V).float() + self.w
        seen = input_ids.shape[1] + (0 if cache is None else int(cache))
        return {"logits": logits, "cache": torch.tensor(seen) if use_cache else None}


def test_by_hand_order_eos_and_cache():
    m = NextIsPlusOne()
    prompts = [[3, 4], [10, 11, 12, 13], [7]]
    out = greedy_generate(m, prompts, max_new_tokens=3, batch_size=2)
    assert isinstance(out, GenerationResult)
    assert out.tokens == [[5, 6, 7], [14, 15, 16], [8, 9, 10]]        # the caller's order
    assert out.new_tokens == 9
    # Sorted longest first: [1, 0] then [2]; prefill pads: (4 - 2) in a 2 x 4 batch, none in 1 x 1.
    assert [b.tolist() for b in out.batches] == [[1, 0], [2]]
    assert out.prompt_pad_fraction == pytest.approx(2 / 9)
    # The KV cache: a prefill of the whole batch, then one token per row per step, the cache fed back.
    assert m.calls[:3] == [((2, 4), None), ((2, 1), 4), ((2, 1), 5)]
    eos = greedy_generate(NextIsPlusOne(), prompts, max_new_tokens=5, batch_size=3, eos_id=6)
    assert eos.tokens == [[5, 6], [14, 15, 16, 17, 18], [8, 9, 10, 11, 12]]
    unsorted = greedy_generate(NextIsPlusOne(), prompts, max_new_tokens=3, batch_size=2, sort=False)
    assert [b.tolist() for b in unsorted.batches] == [[0, 1], [2]] and unsorted.tokens == out.tokens


def test_right_padding_reads_a_pad_by_hand():
    # Right padding: the last column of [3, 4, 0, 0] is a pad (0), so the stub continues from 0.
    out = greedy_generate(NextIsPlusOne(), [[3, 4], [10, 11, 12, 13]], max_new_tokens=2, padding_side="right")
    assert out.tokens == [[1, 2], [14, 15]]


def test_prompts_not_modified():
    prompts = [[3, 4], np.array([5, 6, 7])]
    greedy_generate(NextIsPlusOne(), prompts, max_new_tokens=2)
    assert prompts[0] == [3, 4] and prompts[1].tolist() == [5, 6, 7]


@pytest.mark.parametrize("call,match", [
    (lambda m: greedy_generate("gpt", [[1]], max_new_tokens=1), r"model must be a torch.nn.Module"),
    (lambda m: greedy_generate(m, [], max_new_tokens=1), r"prompts must"),
    (lambda m: greedy_generate(m, [[1], []], max_new_tokens=1), r"prompts\[1\] must"),
    (lambda m: greedy_generate(m, [[1, -2]], max_new_tokens=1), r"prompts\[0\] must"),
    (lambda m: greedy_generate(m, [[1]], max_new_tokens=0), r"max_new_tokens must be an integer >= 1"),
    (lambda m: greedy_generate(m, [[1]], max_new_tokens=1, batch_size=0), r"batch_size must be an integer >= 1"),
    (lambda m: greedy_generate(m, [[1]], max_new_tokens=1, padding_side="middle"), r"padding_side must be one of"),
    (lambda m: greedy_generate(m, [[1]], max_new_tokens=1, eos_id=-1), r"eos_id must be an integer >= 0"),
    (lambda m: greedy_generate(m, [[1]], max_new_tokens=1, sort="yes"), r"sort must be"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(NextIsPlusOne())


# ----------------------------------------------------------------------------- real models

transformers = pytest.importorskip("transformers")


def tiny(family: str):
    torch.manual_seed(0)
    if family == "llama":
        cfg = transformers.LlamaConfig(vocab_size=data.vocab_size(), hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=128)
        return transformers.LlamaForCausalLM(cfg).eval()
    cfg = transformers.GPT2Config(vocab_size=data.vocab_size(), n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                  bos_token_id=data.CLS_ID, eos_token_id=data.SEP_ID)
    return transformers.GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def prompts():
    pairs = data.load_instructions()
    idx = np.random.default_rng(3).choice(len(pairs), 8, replace=False)
    out = [pairs.ids(int(i))[:int(pairs.prompt_lengths[i])].tolist() for i in idx]
    assert len({len(p) for p in out}) > 2   # lengths differ: the batches need pads
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_left_padded_batches_equal_one_by_one(family, prompts):
    m = tiny(family)
    alone = [greedy_generate(m, [p], max_new_tokens=5).tokens[0] for p in prompts]
    batched = greedy_generate(m, prompts, max_new_tokens=5, batch_size=5)
    assert batched.prompt_pad_fraction > 0
    assert batched.tokens == alone
    assert greedy_generate(m, prompts, max_new_tokens=5, batch_size=5, sort=False).tokens == alone
    assert greedy_generate(m, prompts, max_new_tokens=5, batch_size=5, use_cache=False).tokens == alone
    # Negative control: the same batches padded on the right continue from pads.
    right = greedy_generate(m, prompts, max_new_tokens=5, batch_size=5, padding_side="right")
    wrong = sum(r != a for r, a in zip(right.tokens, alone))
    assert wrong >= len(prompts) // 2
