"""padlab.hf: transformers' padding-free format and the packing equivalence oracle.

Models are tiny configurations built here (no weights downloaded), seeded. The collator is compared
key by key with transformers' own ``DataCollatorWithFlattening``; the masks with tensors written by
hand. The oracle runs on a Llama, a Qwen2 (another rotary causal family), GPT-2 (absolute positions)
and a BERT masked LM, under eager and sdpa, plus flex_attention on the Llama in a subprocess (slow:
compiled on the CPU; FlexAttention has no CPU backward, so gradients are not compared there).
Each oracle test has its negative control (boundaries dropped must fail). Known limits are recorded
as expected values: BERT does not honour packed position_ids; eager/sdpa ignore cu_seq_lens_*;
the default call with the cache on attends across sequences in every causal family.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

from padlab._validate import PadlabError  # noqa: E402
from padlab.data import load_corpus  # noqa: E402
from padlab.hf import PaddingFreeCollator, additive_document_mask, check_packing, document_block_mask  # noqa: E402

V = 8192  # the shipped tokenizer's vocabulary: sequences are real token ids
NEG = torch.finfo(torch.float32).min


def flattening(examples):
    return transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_position_ids=True)(examples)


def assert_same_batch(ours, theirs):
    assert list(ours) == list(theirs)
    for k in theirs:
        if isinstance(theirs[k], torch.Tensor):
            assert isinstance(ours[k], torch.Tensor) and ours[k].dtype == theirs[k].dtype, k
            torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=0, msg=k)
        else:
            assert type(ours[k]) is type(theirs[k]) and ours[k] == theirs[k], k


@pytest.fixture(scope="module")
def glosses():
    c = load_corpus("wordnet").subset(12, seed=4)
    return [c.ids(i).tolist() for i in range(len(c))]


# ----------------------------------------------------------------------------- the format

def test_collator_equals_transformers_flattening(glosses):
    examples = [{"input_ids": g} for g in glosses[:5]]
    assert_same_batch(PaddingFreeCollator()(examples), flattening(examples))
    labelled = [{"input_ids": g, "labels": [7] * len(g)} for g in glosses[:4]]
    assert_same_batch(PaddingFreeCollator()(labelled), flattening(labelled))


def test_collator_by_hand():
    out = PaddingFreeCollator()([[5, 6, 7], {"input_ids": [8, 9]}][:1] + [[8, 9]])
    assert out["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert out["labels"].tolist() == [[-100, 6, 7, -100, 9]]
    assert out["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert out["cu_seq_lens_q"].tolist() == [0, 3, 5] and out["cu_seq_lens_q"].dtype == torch.int32
    assert out["max_length_q"] == out["max_length_k"] == 3 and type(out["max_length_k"]) is int


def test_packed_mode_concatenates_the_packs_sequences(glosses):
    packs = [[{"input_ids": glosses[0]}, {"input_ids": glosses[1]}], [{"input_ids": glosses[2]}]]
    ours = PaddingFreeCollator(packed=True, capacity=64)(packs)
    assert_same_batch(ours, flattening([e for p in packs for e in p]))
    with pytest.raises(PadlabError, match=r"packs\[0\] must fit in capacity=8"):
        PaddingFreeCollator(packed=True, capacity=8)(packs)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 500), min_size=1, max_size=9), min_size=1, max_size=6))
def test_collator_equals_flattening_property(seqs):
    examples = [{"input_ids": s} for s in seqs]
    assert_same_batch(PaddingFreeCollator()(examples), flattening(examples))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.lists(st.integers(0, 500), min_size=1, max_size=6), min_size=1, max_size=3),
                min_size=1, max_size=4))
def test_packed_mode_equals_flattening_of_the_packs_examples_property(packs):
    batch = [[{"input_ids": s} for s in pack] for pack in packs]
    assert_same_batch(PaddingFreeCollator(packed=True)(batch), flattening([e for p in batch for e in p]))


def test_truncation_keeps_the_first_tokens():
    out = PaddingFreeCollator(max_length=2, truncation=True)([[1, 2, 3], [4, 5]])
    assert out["input_ids"].tolist() == [[1, 2, 4, 5]] and out["position_ids"].tolist() == [[0, 1, 0, 1]]
    with pytest.raises(PadlabError, match=r"examples\[0\] must have at most max_length=2 tokens"):
        PaddingFreeCollator(max_length=2)([[1, 2, 3]])


def test_additive_mask_by_hand():
    m = additive_document_mask([2, 1])
    expect = torch.tensor([[0, NEG, NEG], [0, 0, NEG], [NEG, NEG, 0]])
    assert m.shape == (1, 1, 3, 3) and m.dtype == torch.float32
    torch.testing.assert_close(m[0, 0], expect, rtol=0, atol=0)
    bi = additive_document_mask([2, 1], causal=False)[0, 0]
    torch.testing.assert_close(bi, torch.tensor([[0, 0, NEG], [0, 0, NEG], [NEG, NEG, 0]]), rtol=0, atol=0)
    out = PaddingFreeCollator(attention="mask")([[1, 2], [3]])
    torch.testing.assert_close(out["attention_mask"], m, rtol=0, atol=0)


def test_block_mask_matches_the_dense_mask():
    bm = document_block_mask([3, 2, 4])
    dense = bm.to_dense()  # block granularity: check via mask_mod on every pair instead
    assert dense.shape[-1] >= 1
    q, k = torch.meshgrid(torch.arange(9), torch.arange(9), indexing="ij")
    allowed = bm.mask_mod(torch.tensor(0), torch.tensor(0), q, k)
    torch.testing.assert_close(torch.where(allowed, 0.0, NEG), additive_document_mask([3, 2, 4])[0, 0], rtol=0, atol=0)


@pytest.mark.parametrize("kw, name", [({"attention": "bool"}, "attention"), ({"ignore_index": 1.5}, "ignore_index"),
                                      ({"capacity": 4}, "capacity"), ({"truncation": True}, "max_length"),
                                      ({"mask_dtype": torch.int64}, "mask_dtype"), ({"packed": "yes"}, "packed")])
def test_bad_collator_options(kw, name):
    with pytest.raises(PadlabError, match=rf"^{name} must"):
        PaddingFreeCollator(**kw)


@pytest.mark.parametrize("batch, name", [(None, "examples"), ([], "examples"), ([[]], r"examples\[0\]"),
                                         ([{"ids": [1]}], r"examples\[0\]"), ([[1.5, 2]], r"examples\[0\]"),
                                         ([{"input_ids": [1, 2], "labels": [1]}], r"examples\[0\]\['labels'\]")])
def test_bad_batches(batch, name):
    with pytest.raises(PadlabError, match=rf"^{name} must"):
        PaddingFreeCollator()(batch)


# ----------------------------------------------------------------------------- the oracle

def tiny(family: str, impl: str = "sdpa"):
    torch.manual_seed(0)
    t = transformers
    common = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  max_position_embeddings=128)
    if family == "llama":
        return t.LlamaForCausalLM(t.LlamaConfig(num_key_value_heads=2, attn_implementation=impl, **common))
    if family == "qwen2":
        return t.Qwen2ForCausalLM(t.Qwen2Config(num_key_value_heads=2, attn_implementation=impl, **common))
    if family == "gpt2":
        return t.GPT2LMHeadModel(t.GPT2Config(vocab_size=V, n_embd=32, n_layer=1, n_head=4, n_positions=128,
                                              bos_token_id=2, eos_token_id=3, attn_implementation=impl))
    if family == "bert":
        return t.BertForMaskedLM(t.BertConfig(attn_implementation=impl, **common))
    raise AssertionError(family)


# family -> (rotary: the restart is not needed under a document mask, causal: the cache trap applies,
#            packed position_ids honoured)
FAMILIES = {"llama": (True, True, True), "qwen2": (True, True, True), "gpt2": (False, True, True),
            "bert": (False, False, False)}


@pytest.mark.slow  # 8 models x 2 oracle runs: a minute or two on a busy 2-core CPU
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_oracle(family, impl, glosses):
    rotary, causal, pos_ok = FAMILIES[family]
    model = tiny(family, impl)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    r = check_packing(model, glosses[:3], attn_implementation=impl)
    assert r.ok and r.attn_implementation == impl and r.grad_checked, r
    assert r.logits_diff < 1e-4 and r.loss_diff < 1e-4 and r.grad_diff < 1e-4
    # Known limits, recorded as this model's expected behaviour (not passed silently):
    assert r.position_ids_honoured is pos_ok and r.method == ("position_ids" if pos_ok else "mask")
    assert r.mask_honoured
    assert not r.cu_seq_lens_honoured and r.cu_seq_lens_logits_diff > 1e-3  # eager/sdpa ignore cu_seq_lens_*
    assert any("ignores cu_seq_lens" in s for s in r.limits)
    assert r.restart_needed is (not rotary)
    if causal:
        assert r.default_call_cross_attends and r.default_call_logits_diff > 1e-2  # the use_cache trap
    else:
        assert any("does not honour packed position_ids" in s for s in r.limits)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # the caller's model is untouched
    # Negative control: the same check with the boundaries dropped must fail.
    neg = check_packing(model, glosses[:3], attn_implementation=impl, negative_control=True)
    assert not neg.ok and neg.method == "none" and neg.logits_diff > 1e-2


def test_boolean_4d_mask_is_misread_under_eager_the_additive_one_is_not(glosses):
    """Why the collator's mask is additive float: eager adds the mask to the scores, so a boolean mask
    (True = attend) becomes +1/+0 and blocks nothing; sdpa reads booleans correctly."""
    seqs = glosses[:3]
    lens = [len(s) for s in seqs]
    flat = torch.tensor([sum(seqs, [])])
    pos = torch.tensor([[p for n in lens for p in range(n)]])
    additive = additive_document_mask(lens)
    for impl, bool_ok in (("eager", False), ("sdpa", True)):
        model = tiny("llama", impl).eval()
        with torch.no_grad():
            alone = torch.cat([model(input_ids=torch.tensor([s]), use_cache=False).logits[0] for s in seqs])
            good = model(input_ids=flat, position_ids=pos, attention_mask=additive, use_cache=False).logits[0]
            boolean = model(input_ids=flat, position_ids=pos, attention_mask=additive == 0, use_cache=False).logits[0]
        assert float((good - alone).abs().max()) < 1e-4, impl
        assert (float((boolean - alone).abs().max()) < 1e-4) is bool_ok, impl


def test_oracle_runs_a_compiled_model_through_its_wrapper(glosses):
    """torch.compile's wrapper hides the model's keywords (its forward takes **kwargs): the oracle reads them
    through it and runs the compiled path, the one training takes; its negative control still fails."""
    model = tiny("llama")
    compiled = torch.compile(model, backend="eager")     # the wrapper inductor uses, without code generation
    r = check_packing(compiled, glosses[:3])
    assert r.ok and r.model == "LlamaForCausalLM" and r.method == "position_ids" and r.grad_checked
    assert r.default_call_cross_attends             # the cache trap is seen through the wrapper too
    neg = check_packing(compiled, glosses[:3], negative_control=True)
    assert not neg.ok and neg.logits_diff > 1e-2
    r2 = check_packing(compiled, glosses[:3], attn_implementation="eager")
    assert r2.ok and r2.attn_implementation == "eager"
    assert model.config._attn_implementation == "sdpa"   # the caller's model (inside the wrapper) untouched


def test_oracle_on_a_family_it_was_not_written_for(glosses):
    """Any causal LM taking position_ids: Mistral (sliding-window masks) through the same code path."""
    torch.manual_seed(0)
    cfg = transformers.MistralConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                     attn_implementation="sdpa")
    r = check_packing(transformers.MistralForCausalLM(cfg), glosses[:3])
    assert r.ok and r.method == "position_ids" and r.default_call_cross_attends


def test_oracle_bad_arguments(glosses):
    model = tiny("llama")
    with pytest.raises(PadlabError, match="^sequences must hold at least 2 sequences"):
        check_packing(model, glosses[:1])
    with pytest.raises(PadlabError, match=r"^sequences\[1\] must hold at least 2 tokens"):
        check_packing(model, [glosses[0], [5]])
    with pytest.raises(PadlabError, match=r"^sequences\[0\] must hold ids in \[0, 8192\)"):
        check_packing(model, [[1, 9000], [1, 2]])
    with pytest.raises(PadlabError, match="^model must be a transformers model"):
        check_packing(torch.nn.Linear(2, 2), glosses[:2])
    with pytest.raises(PadlabError, match="^attn_implementation must be one this model"):
        check_packing(tiny("gpt2"), glosses[:2], attn_implementation="flex_attention")
    with pytest.raises(PadlabError, match="^negative_control must"):
        check_packing(model, glosses[:2], negative_control="yes")


FLEX = textwrap.dedent("""
    import json, sys, torch, transformers
    from padlab.hf import check_packing
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=8192, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    seqs = json.loads(sys.argv[1])
    r = check_packing(transformers.LlamaForCausalLM(cfg), seqs, attn_implementation="flex_attention")
    print(json.dumps({k: v for k, v in r.as_dict().items() if k != "limits"}))
""")


@pytest.mark.slow
def test_oracle_flex_attention_in_a_subprocess(glosses):
    """flex_attention is compiled on the CPU (slow) and some mask misuse aborts the process: run it apart."""
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        pytest.skip("this torch has no flex_attention")
    p = subprocess.run([sys.executable, "-c", FLEX, json.dumps(glosses[:3])], capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["ok"] and r["attn_implementation"] == "flex_attention" and r["method"] == "position_ids"
    assert r["mask_honoured"] and not r["restart_needed"] and r["default_call_cross_attends"]
    assert not r["grad_checked"]  # FlexAttention has no backward on the CPU in this torch


def test_additive_mask_of_a_packed_collator_block_mask_by_hand():
    from padlab.hf import additive_mask
    from padlab.packing import PackedCollator

    b = PackedCollator(4, causal=True)([[[5, 6], [7]], [[8, 9, 10]]])
    m = additive_mask(b["block_mask"])
    assert m.shape == (2, 1, 4, 4) and m.dtype == torch.float32
    # Row 0: a causal 2-block, a 1-block, a pad query seeing itself; row 1: a causal 3-block and a pad.
    assert (m[:, 0] == 0).int().tolist() == [
        [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
        [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 1]]]
    assert set(m.unique().tolist()) == {0.0, NEG}
    assert additive_mask(b["block_mask"], dtype=torch.bfloat16).min() == torch.finfo(torch.bfloat16).min
    # The same as hf's one-row builder for a single pack.
    one = PackedCollator(3, causal=True)([[[5, 6], [7]]])["block_mask"]
    assert torch.equal(additive_mask(one), additive_document_mask([2, 1]))
    with pytest.raises(PadlabError, match=r"allowed must be a boolean P x T x T tensor"):
        additive_mask(torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(PadlabError, match=r"dtype must be a floating torch.dtype"):
        additive_mask(one, dtype=torch.int32)
