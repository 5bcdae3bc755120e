"""FlexAttention document masks (padlab.attention) and the encoder's packed-flex forward, on the CPU.

FlexAttention has no backward on the CPU; the gradient proof runs on a GPU
(benchmarks/h200_flex.py --part probe, its output in data/benchmarks/h200_flex_probe.json).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from padlab._validate import PadlabError
from padlab.attention import (
    FlexFallbackWarning, FlexSupport, dense_document_mask, document_block_mask, document_block_mask_reference,
    document_mask_mod, flex_attend, flex_compile_options, flex_kernel_options, flex_support, packed_block_mask,
)
from padlab.models import Encoder, EncoderConfig
from padlab.packing import PackedCollator

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def _row(*runs: tuple[int, int]) -> list[int]:
    """A row of seq ids from (id, count) runs."""
    return [i for i, n in runs for _ in range(n)]


# Three rows of 32 tokens, tiles of 16: by hand,
#   row 0: seq 0 fills tile 0; seq 1 (8 tokens) then 8 pads fill tile 1
#          (q0,k0) full; (q0,k1), (q1,k0) empty; (q1,k1) partial: 8*8 real pairs + 8 pads on themselves
#   row 1: one sequence of 32: every tile pair full
#   row 2: seq 0 (10 tokens), seq 1 (22): tile 0 holds both, tile 1 only seq 1
#          (q0,k0), (q0,k1), (q1,k0) partial; (q1,k1) full
SEQ_IDS = torch.tensor([_row((0, 16), (1, 8), (-1, 8)), _row((0, 32)), _row((0, 10), (1, 22))])
PARTIAL = [[0, 1], [0, 0], [2, 1]]
FULL = [[1, 0], [2, 2], [0, 1]]
ANY = [[[1, 0], [0, 1]], [[1, 1], [1, 1]], [[1, 1], [1, 1]]]


def test_block_mask_by_hand():
    bm = document_block_mask(SEQ_IDS, 16)
    assert bm.kv_num_blocks[:, 0].tolist() == PARTIAL
    assert bm.full_kv_num_blocks[:, 0].tolist() == FULL
    assert bm.to_dense()[:, 0].tolist() == ANY
    # the partial tile of row 0 at (1, 1) and row 2's partial tiles, by index
    assert bm.kv_indices[0, 0, 1, :1].tolist() == [1]
    assert bm.kv_indices[2, 0, 0, :2].tolist() == [0, 1]
    assert bm.full_kv_indices[1, 0, 0, :2].tolist() == [0, 1]
    assert bm.BLOCK_SIZE == (16, 16)


def test_reference_by_hand():
    bm = document_block_mask_reference(SEQ_IDS, 16)
    assert bm.kv_num_blocks[:, 0].tolist() == PARTIAL
    assert bm.full_kv_num_blocks[:, 0].tolist() == FULL


def test_dense_rule_by_hand():
    # seq 0 = tokens 0-1, seq 1 = token 2, then two pads (each sees itself only)
    sid = torch.tensor([[0, 0, 1, -1, -1]])
    expected = torch.tensor([[1, 1, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [0, 0, 1, 0, 0],
                             [0, 0, 0, 1, 0],
                             [0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(dense_document_mask(sid)[0], expected)
    q, kv = torch.tensor([0, 3, 3]), torch.tensor([2, 3, 4])
    zero = torch.zeros(3, dtype=torch.long)
    assert document_mask_mod(sid)(zero, zero, q, kv).tolist() == [False, True, False]


def test_dense_rule_is_the_collators_block_mask():
    packs = [[[5, 6, 7], [8] * 20], [[9] * 32], [[4] * 5, [3] * 7, [2] * 3]]
    b = PackedCollator(32)(packs)
    assert torch.equal(dense_document_mask(b["seq_ids"]), b["block_mask"])


def test_causal_block_mask_by_hand():
    # Causal: tiles above the diagonal are empty; below it as without the rule (every key precedes every
    # query there); each diagonal tile partial (its upper triangle masked, each token sees itself).
    #   row 0: (q1,k0) empty (different sequences)  row 1: (q1,k0) full  row 2: (q1,k0) partial
    for bm in (document_block_mask(SEQ_IDS, 16, causal=True), document_block_mask_reference(SEQ_IDS, 16, causal=True)):
        assert bm.kv_num_blocks[:, 0].tolist() == [[1, 1], [1, 1], [1, 2]]
        assert bm.full_kv_num_blocks[:, 0].tolist() == [[0, 0], [0, 1], [0, 0]]
        assert bm.to_dense()[:, 0].tolist() == [[[1, 0], [0, 1]], [[1, 0], [1, 1]], [[1, 0], [1, 1]]]
        assert bm.kv_indices[2, 0, 1, :2].tolist() == [0, 1]


def test_causal_block_mask_is_the_collators_causal_mask():
    """Pair for pair, the causal block mask is ``PackedCollator(causal=True)``'s dense mask (a reference
    built by the collator, not by padlab.attention); the negative control, the mask without the causal
    rule, lets later keys through."""
    packs = [[[5, 6, 7], [8] * 20], [[9] * 32], [[4] * 5, [3] * 7, [2] * 3]]
    b = PackedCollator(32, causal=True)(packs)
    causal = document_block_mask(b["seq_ids"], 16, causal=True)
    assert torch.equal(_dense_from_block_mask(causal, b["seq_ids"], causal=True), b["block_mask"])
    plain = document_block_mask(b["seq_ids"], 16)
    assert not torch.equal(_dense_from_block_mask(plain, b["seq_ids"]), b["block_mask"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=6), min_size=1, max_size=4),
       st.sampled_from([16, 32]), st.booleans(), st.booleans())
def test_fast_builder_equals_reference(rows, block, scatter, causal):
    cap = 64
    sid = torch.full((len(rows), cap), -1, dtype=torch.long)
    for r, lens in enumerate(rows):
        col = 0
        for j, n in enumerate(lens):
            n = min(n, cap - col)
            sid[r, col:col + n] = j
            col += n
    if scatter:  # any layout works, not only contiguous sequences
        sid = sid[:, torch.randperm(cap, generator=torch.Generator().manual_seed(len(rows)))]
    fast, ref = document_block_mask(sid, block, causal=causal), document_block_mask_reference(sid, block, causal=causal)
    assert torch.equal(fast.kv_num_blocks, ref.kv_num_blocks)
    assert torch.equal(fast.full_kv_num_blocks, ref.full_kv_num_blocks)
    assert torch.equal(fast.to_dense(), ref.to_dense())
    for f, r, n in ((fast.kv_indices, ref.kv_indices, fast.kv_num_blocks),
                    (fast.full_kv_indices, ref.full_kv_indices, fast.full_kv_num_blocks)):
        for idx in np.ndindex(*n.shape):
            k = int(n[idx])
            assert f[idx][:k].tolist() == r[idx][:k].tolist()
    # the block mask allows exactly the dense rule, pair for pair
    assert torch.equal(dense_document_mask(sid, causal=causal), _dense_from_block_mask(fast, sid, causal=causal))


def _dense_from_block_mask(bm, sid, causal=False) -> torch.Tensor:
    """Pairs the block mask lets through: tiles it lists, with the mask function inside partial tiles."""
    b, n = sid.shape
    tiles = bm.to_dense()[:, 0].repeat_interleave(bm.BLOCK_SIZE[0], 1).repeat_interleave(bm.BLOCK_SIZE[1], 2)
    return tiles.bool() & dense_document_mask(sid, causal=causal)


# ------------------------------------------------------------------------------- the forward

CFG = EncoderConfig(vocab_size=50, hidden=32, layers=2, heads=4, ffn=64, max_position=32)
SEQS = [[5, 6, 7], [8, 9, 10, 11] * 5, [12] * 32, [4] * 5, [3, 13] * 3, [2, 14, 15]]
PACKS = [[SEQS[0], SEQS[1]], [SEQS[2]], [SEQS[3], SEQS[4], SEQS[5]]]


def _alone_error(hidden, model) -> float:
    err = 0.0
    for r, pk in enumerate(PACKS):
        col = 0
        for s in pk:
            alone = model(torch.tensor([s]))[0]
            err = max(err, float((hidden[r, col:col + len(s)] - alone).abs().max()))
            col += len(s)
    return err


@pytest.mark.parametrize("block", [16, 32])
def test_flex_forward_equals_each_sequence_alone(block):
    torch.manual_seed(0)
    model = Encoder(CFG).eval()
    b = PackedCollator(32, return_block_mask=False)(PACKS)
    with torch.no_grad():
        h = model(b["input_ids"], b["attention_mask"], b["position_ids"], document_block_mask(b["seq_ids"], block))
        assert _alone_error(h, model) < 1e-5
        assert torch.equal(h[0, 23:], torch.zeros_like(h[0, 23:]))  # padding comes back as zeros
        # negative control: one document per row (padding still masked) lets sequences see each other
        row_mask = document_block_mask(torch.where(b["seq_ids"] >= 0, 0, -1), block)
        h_bad = model(b["input_ids"], b["attention_mask"], b["position_ids"], row_mask)
        assert _alone_error(h_bad, model) > 1e-2


def test_flex_forward_equals_dense_block_mask():
    torch.manual_seed(1)
    model = Encoder(CFG).eval()
    b = PackedCollator(32)(PACKS)
    with torch.no_grad():
        hf = model(b["input_ids"], b["attention_mask"], b["position_ids"], document_block_mask(b["seq_ids"], 16))
        hd = model(b["input_ids"], b["attention_mask"], b["position_ids"], b["block_mask"])
    assert torch.allclose(hf, hd, atol=1e-5)


# ------------------------------------------------------------------------------- CPU fallback, options

def test_cpu_support_is_forward_only():
    sup = flex_support("cpu")
    assert isinstance(sup, FlexSupport)
    assert sup.forward and not sup.backward and "backward" in sup.reason


def test_training_on_cpu_falls_back_to_the_dense_mask():
    sid = SEQ_IDS.clone()
    with pytest.warns(FlexFallbackWarning, match="dense block mask"):
        m = packed_block_mask(sid, 16)
    assert torch.equal(m, dense_document_mask(sid))
    # and the fallback trains: gradients flow through the dense path
    torch.manual_seed(0)
    model = Encoder(CFG)
    b = PackedCollator(32, return_block_mask=False)(PACKS)
    with pytest.warns(FlexFallbackWarning):
        mask = packed_block_mask(b["seq_ids"], 16)
    model(b["input_ids"], b["attention_mask"], b["position_ids"], mask).sum().backward()
    assert model.layers[0].qkv.weight.grad.abs().sum() > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlexFallbackWarning)
        assert packed_block_mask(sid, 16, training=False).BLOCK_SIZE == (16, 16)


def test_kernel_and_compile_options():
    assert flex_kernel_options(128) is None and flex_compile_options(128) is None
    assert flex_kernel_options(64) == {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_M1": 32, "BLOCK_N1": 64,
                                       "BLOCK_M2": 64, "BLOCK_N2": 32}
    assert flex_kernel_options(16)["BLOCK_M1"] == 16
    assert flex_compile_options(64) == {"max_autotune": True, "max_autotune_gemm_backends": "ATEN"}


# ------------------------------------------------------------------------------- bad input

def test_bad_seq_ids():
    with pytest.raises(PadlabError, match="seq_ids"):
        document_block_mask(torch.zeros(2, 32), 16)
    with pytest.raises(PadlabError, match="seq_ids"):
        document_block_mask(torch.zeros(32, dtype=torch.long), 16)
    with pytest.raises(PadlabError, match="seq_ids"):
        document_mask_mod([[0, 0]])


def test_bad_causal():
    with pytest.raises(PadlabError, match="^causal must"):
        document_block_mask(SEQ_IDS, 16, causal="yes")


def test_bad_block_size():
    with pytest.raises(PadlabError, match="block_size"):
        document_block_mask(SEQ_IDS, 48)
    with pytest.raises(PadlabError, match="block_size.*divide"):
        document_block_mask(torch.zeros(1, 48, dtype=torch.long), 32)
    with pytest.raises(PadlabError, match="block_size"):
        flex_kernel_options(100)


def test_bad_mask_and_dropout():
    q = torch.zeros(1, 1, 16, 8)
    with pytest.raises(PadlabError, match="block_mask"):
        flex_attend(q, q, q, torch.ones(1, 16, 16, dtype=torch.bool))
    model = Encoder(CFG.replace(dropout=0.1)).train()
    b = PackedCollator(32, return_block_mask=False)(PACKS)
    with pytest.raises(PadlabError, match="dropout"):
        model(b["input_ids"], b["attention_mask"], b["position_ids"], document_block_mask(b["seq_ids"], 16))
    with pytest.raises(PadlabError, match="block_mask"):
        Encoder(CFG)(b["input_ids"], block_mask=document_block_mask(torch.zeros(3, 16, dtype=torch.long), 16))
