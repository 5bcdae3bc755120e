"""Tests for padlab.models: the mask proof, the no-cross-contamination proof, FLOPs, MLM, losses.

Every reference here is built by hand in the test (padding loops, block masks from sequence
ids, a naive softmax attention), never taken from padlab's own output.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from padlab.models import (
    IGNORE_INDEX, Encoder, EncoderConfig, EncoderForMaskedLM, EncoderForSequenceClassification, HeadOutput,
    mask_tokens, model_flops, nested_supported, parameter_counts, sdpa_mask, sequence_loss,
)

ATOL = 1e-5
VOCAB = 50
PAD, CLS, SEP, MASK = 0, 2, 3, 4


def tiny(**kw) -> EncoderConfig:
    return EncoderConfig.tiny(vocab_size=VOCAB, **kw)


def make_seq(n: int, gen: torch.Generator) -> torch.Tensor:
    """[CLS] w... [SEP] of total length n (n >= 2), words drawn from 5..VOCAB-1."""
    words = torch.randint(5, VOCAB, (max(n - 2, 0),), generator=gen)
    return torch.cat([torch.tensor([CLS]), words, torch.tensor([SEP])])[:n] if n >= 2 else torch.tensor([CLS])


def seqs_of(lengths, seed=0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [make_seq(n, g) for n in lengths]


def pad_by_hand(seqs, width, side):
    """Reference padding: ids, 0/1 mask and position ids starting at 0 on the first real token."""
    ids = torch.full((len(seqs), width), PAD, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    pos = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s)
        sl = slice(0, n) if side == "right" else slice(width - n, width)
        ids[i, sl] = s
        mask[i, sl] = 1
        pos[i, sl] = torch.arange(n)
    return ids, mask, pos


def real_rows(out, seqs, width, side):
    return [out[i, :len(s)] if side == "right" else out[i, width - len(s):] for i, s in enumerate(seqs)]


def pack_by_hand(seqs, width):
    """One packed row: ids, 0/1 mask, restarting positions, seq id per token (-1 = pad), block mask."""
    ids = torch.full((1, width), PAD, dtype=torch.long)
    pos = torch.zeros(1, width, dtype=torch.long)
    sid = torch.full((width,), -1, dtype=torch.long)
    starts, at = [], 0
    for k, s in enumerate(seqs):
        ids[0, at:at + len(s)] = s
        pos[0, at:at + len(s)] = torch.arange(len(s))
        sid[at:at + len(s)] = k
        starts.append(at)
        at += len(s)
    block = torch.zeros(1, width, width, dtype=torch.bool)
    for q in range(width):
        for k in range(width):
            block[0, q, k] = sid[q] >= 0 and sid[q] == sid[k]
        if sid[q] < 0:
            block[0, q, q] = True     # padding attends to itself, as a packed collator does
    mask = (sid >= 0).long()[None]
    return ids, mask, pos, sid, block, starts


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models gain nothing from a second thread, and a busy second core makes OpenMP's
    # spin-waits cost several times the work itself; restore the setting for other files.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return Encoder(tiny()).eval()


def alone(enc, s):
    with torch.no_grad():
        return enc(s[None])[0]


# --------------------------------------------------------------------------- config

def test_config_presets():
    t = EncoderConfig.tiny(vocab_size=10)
    assert (t.hidden, t.layers, t.heads, t.ffn) == (64, 2, 4, 256)
    b = EncoderConfig.bert_base(30522)
    assert (b.hidden, b.layers, b.heads, b.ffn, b.max_position, b.vocab_size) == (768, 12, 12, 3072, 512, 30522)
    s = EncoderConfig.small(vocab_size=10, layers=3)
    assert (s.hidden, s.layers) == (128, 3)
    from padlab.data import vocab_size
    assert EncoderConfig.tiny().vocab_size == vocab_size()


@pytest.mark.parametrize("kw, match", [
    (dict(vocab_size=0), "vocab_size must be an integer >= 1; got 0"),
    (dict(vocab_size=10, hidden=65, heads=4), "hidden must be a multiple of heads=4; got 65"),
    (dict(vocab_size=10, dropout=1.0), "dropout must be < 1; got 1.0"),
    (dict(vocab_size=10, dropout=-0.1), "dropout must be >= 0.0"),
    (dict(vocab_size=10, layers=2.5), "layers must be an integer"),
    (dict(vocab_size=10, norm_eps=0.0), "norm_eps must be > 0.0"),
])
def test_config_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        EncoderConfig(**kw)


# --------------------------------------------------------------------------- the mask proof

LENGTHS = (5, 9, 13)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("width", ["own", "longest", 512])
def test_mask_proof(encoder, side, width):
    seqs = seqs_of(LENGTHS)
    refs = [alone(encoder, s) for s in seqs]
    if width == "own":
        # Each sequence padded to its own length: a batch of one with an all-ones mask.
        for s, ref in zip(seqs, refs):
            ids, mask, pos = pad_by_hand([s], len(s), side)
            with torch.no_grad():
                out = encoder(ids, mask, pos)
            torch.testing.assert_close(out[0], ref, atol=ATOL, rtol=0)
        return
    w = max(LENGTHS) if width == "longest" else width
    ids, mask, pos = pad_by_hand(seqs, w, side)
    with torch.no_grad():
        out = encoder(ids, mask, pos)
    for got, ref in zip(real_rows(out, seqs, w, side), refs):
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    assert torch.all(out[mask == 0] == 0)      # padding comes back as zeros


def test_mask_proof_negative_control_no_mask(encoder):
    seqs = seqs_of(LENGTHS)
    ids, mask, pos = pad_by_hand(seqs, max(LENGTHS), "right")
    with torch.no_grad():
        out = encoder(ids, None, pos)          # mask dropped: queries see the padding
    got = real_rows(out, seqs, max(LENGTHS), "right")[0]
    assert (got - alone(encoder, seqs[0])).abs().max() > 1e-3


def test_left_padding_needs_position_ids(encoder):
    # Negative control for the position ids: arange(L) under left padding shifts every position.
    seqs = seqs_of(LENGTHS)
    ids, mask, _ = pad_by_hand(seqs, max(LENGTHS), "left")
    with torch.no_grad():
        out = encoder(ids, mask)
    got = real_rows(out, seqs, max(LENGTHS), "left")[0]
    assert (got - alone(encoder, seqs[0])).abs().max() > 1e-3


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 24), min_size=1, max_size=4), extra=st.integers(0, 9),
       side=st.sampled_from(["left", "right"]), seed=st.integers(0, 2**16))
def test_mask_proof_property(encoder, lengths, extra, side, seed):
    seqs = seqs_of(lengths, seed)
    w = max(lengths) + extra
    ids, mask, pos = pad_by_hand(seqs, w, side)
    with torch.no_grad():
        out = encoder(ids, mask, pos)
    for got, s in zip(real_rows(out, seqs, w, side), seqs):
        torch.testing.assert_close(got, alone(encoder, s), atol=ATOL, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_classification_pools_first_real_token(side):
    torch.manual_seed(1)
    model = EncoderForSequenceClassification(tiny(num_labels=3)).eval()
    seqs = seqs_of(LENGTHS)
    ids, mask, pos = pad_by_hand(seqs, 16, side)
    with torch.no_grad():
        logits = model(ids, mask, pos).logits
        refs = torch.cat([model(s[None]).logits for s in seqs])
    assert logits.shape == (3, 3)
    torch.testing.assert_close(logits, refs, atol=ATOL, rtol=0)


def test_no_nan_anywhere_gradients_included():
    torch.manual_seed(2)
    model = EncoderForSequenceClassification(tiny(dropout=0.1)).train()
    seqs = seqs_of((3, 7, 1))
    ids, mask, pos = pad_by_hand(seqs, 10, "left")
    # An all-padding row: its query row would be fully masked without the guard.
    ids = torch.cat([ids, torch.zeros(1, 10, dtype=torch.long)])
    mask = torch.cat([mask, torch.zeros(1, 10, dtype=torch.long)])
    pos = torch.cat([pos, torch.zeros(1, 10, dtype=torch.long)])
    hidden = model.encoder(ids, mask, pos)
    out = model(ids, mask, pos, labels=torch.tensor([0, 1, 0, 1]))
    (hidden.sum() + out.loss).backward()
    assert torch.isfinite(hidden).all() and torch.isfinite(out.logits).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # Packed input whose tail is padding, pad rows taken out of the block mask entirely.
    pids, pmask, ppos, sid, block, _ = pack_by_hand(seqs_of((4, 6)), 14)
    block[0, sid < 0] = False
    model.zero_grad()
    h = model.encoder(pids, pmask, ppos, block)
    h.sum().backward()
    assert torch.isfinite(h).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def naive_attention(q, k, v, allowed):
    """Textbook masked softmax attention (no safe softmax): a fully masked row is 0/0."""
    scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
    return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v


def test_sdpa_mask_has_no_empty_row_and_negative_control():
    am = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    q = k = v = torch.randn(2, 1, 4, 8)
    # Negative control: the plain key-padding mask leaves row 1 empty, and softmax gives NaN.
    naive = am.bool()[:, None, None, :].expand(2, 1, 4, 4)
    assert torch.isnan(naive_attention(q, k, v, naive)).any()
    m = sdpa_mask(am)
    assert m.shape == (2, 1, 1, 4)
    assert torch.equal(m[0, 0, 0], torch.tensor([True, True, False, False]))
    assert not torch.isnan(naive_attention(q, k, v, m.expand(2, 1, 4, 4))).any()
    block = torch.zeros(2, 4, 4, dtype=torch.bool)
    mb = sdpa_mask(am, block)
    assert mb.shape == (2, 1, 4, 4) and mb.any(-1).all()
    assert sdpa_mask() is None


# --------------------------------------------------------------------------- cross-contamination

PACK = (4, 7, 5)


def test_packed_outputs_equal_alone(encoder):
    seqs = seqs_of(PACK, seed=3)
    ids, mask, pos, sid, block, starts = pack_by_hand(seqs, 20)
    with torch.no_grad():
        out = encoder(ids, mask, pos, block)[0]
    for k, s in enumerate(seqs):
        torch.testing.assert_close(out[sid == k], alone(encoder, s), atol=ATOL, rtol=0)


def test_packed_negative_control_without_block_mask(encoder):
    seqs = seqs_of(PACK, seed=3)
    ids, mask, pos, sid, _, _ = pack_by_hand(seqs, 20)
    with torch.no_grad():
        out = encoder(ids, mask, pos)[0]       # key padding only: sequences see each other
    for k, s in enumerate(seqs):
        assert (out[sid == k] - alone(encoder, s)).abs().max() > 1e-3


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _grad_error(got, ref):
    """Largest difference of any parameter's gradient, relative to that gradient's largest entry.

    Gradients summed over many tokens reach ~100 here, so fp32 rounding is judged per tensor
    scale (an element-wise atol would flag sums that differ in their 7th digit).
    """
    assert got.keys() == ref.keys()
    return max(((got[n] - ref[n]).abs().max() / ref[n].abs().max().clamp(min=1e-12)).item() for n in ref)


FP32_REL = 1e-5


@pytest.mark.parametrize("use_block", [True, False])
def test_packed_gradients_equal_alone(use_block):
    torch.manual_seed(4)
    enc = Encoder(tiny())
    seqs = seqs_of(PACK, seed=5)
    g = torch.Generator().manual_seed(6)
    proj = [torch.randn(len(s), 64, generator=g) for s in seqs]
    # Reference: each sequence alone, loss summed over sequences.
    enc.zero_grad()
    sum((enc(s[None])[0] * w).sum() for s, w in zip(seqs, proj)).backward()
    ref = _grads(enc)
    ids, mask, pos, sid, block, _ = pack_by_hand(seqs, 20)
    enc.zero_grad()
    out = enc(ids, mask, pos, block if use_block else None)[0]
    sum((out[sid == k] * w).sum() for k, w in enumerate(proj)).backward()
    err = _grad_error(_grads(enc), ref)
    if use_block:
        assert err < FP32_REL
    else:   # negative control
        assert err > 1e-2


def test_packed_classification_seq_starts():
    torch.manual_seed(7)
    model = EncoderForSequenceClassification(tiny(num_labels=3)).eval()
    seqs = seqs_of(PACK, seed=8)
    ids, mask, pos, _, block, starts = pack_by_hand(seqs, 20)
    with torch.no_grad():
        ref = torch.cat([model(s[None]).logits for s in seqs])
        flat = model(ids, mask, pos, block, seq_starts=torch.tensor(starts)).logits
        pair = model(ids, mask, pos, block, seq_starts=(torch.zeros(3, dtype=torch.long), torch.tensor(starts))).logits
        boolean = torch.zeros(1, 20, dtype=torch.bool)
        boolean[0, starts] = True
        via_bool = model(ids, mask, pos, block, seq_starts=boolean).logits
    for got in (flat, pair, via_bool):
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def _collated(seqs, capacity=16):
    packing = pytest.importorskip("padlab.packing")
    collator = packing.PackedCollator(capacity)
    # Two packs: the first two sequences share row 0, the third fills row 1.
    return collator([[{"input_ids": seqs[0].tolist()}, {"input_ids": seqs[1].tolist()}],
                     [{"input_ids": seqs[2].tolist()}]])


def test_packed_collator_outputs_equal_alone_and_negative_control(encoder):
    seqs = seqs_of((4, 9, 6), seed=10)
    batch = _collated(seqs)
    with torch.no_grad():
        out = encoder(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["block_mask"])
        leaky = encoder(batch["input_ids"], batch["attention_mask"], batch["position_ids"])
    flat, flat_leaky = out.flatten(0, 1), leaky.flatten(0, 1)
    starts, lens = batch["seq_starts"].tolist(), batch["seq_lengths"].tolist()
    for s, a, n in zip(seqs, starts, lens):
        torch.testing.assert_close(flat[a:a + n], alone(encoder, s), atol=ATOL, rtol=0)
    # Negative control: without the block mask the two sequences of row 0 see each other.
    assert (flat_leaky[starts[0]:starts[0] + lens[0]] - alone(encoder, seqs[0])).abs().max() > 1e-3


def test_packed_collator_classification_and_varlen():
    torch.manual_seed(9)
    model = EncoderForSequenceClassification(tiny(num_labels=3)).eval()
    seqs = seqs_of((4, 9, 6), seed=10)
    batch = _collated(seqs)
    with torch.no_grad():
        ref = torch.cat([model(s[None]).logits for s in seqs])
        packed = model(batch["input_ids"], batch["attention_mask"], batch["position_ids"], batch["block_mask"],
                       seq_starts=batch["seq_starts"]).logits
    torch.testing.assert_close(packed, ref, atol=ATOL, rtol=0)
    if nested_supported()[0]:
        flat_ids = batch["input_ids"][batch["attention_mask"].bool()]
        with torch.no_grad():
            varlen = model(flat_ids, cu_seqlens=batch["cu_seqlens"], max_seqlen=batch["max_seqlen"]).logits
        torch.testing.assert_close(varlen, ref, atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- nested / varlen

needs_nested = pytest.mark.skipif(not nested_supported()[0], reason=nested_supported()[1])


@needs_nested
def test_nested_equals_padded(encoder):
    seqs = seqs_of((6, 11, 3), seed=11)
    nt = torch.nested.nested_tensor(seqs, layout=torch.jagged)
    with torch.no_grad():
        out = encoder(nt)
        cu = torch.tensor([0, 6, 17, 20])
        flat = encoder(torch.cat(seqs), cu_seqlens=cu)
    assert out.is_nested
    for got, s in zip(out.unbind(), seqs):
        torch.testing.assert_close(got, alone(encoder, s), atol=ATOL, rtol=0)
    torch.testing.assert_close(flat, torch.cat([alone(encoder, s) for s in seqs]), atol=ATOL, rtol=0)


@needs_nested
def test_nested_gradients_and_heads_equal_padded():
    torch.manual_seed(12)
    model = EncoderForSequenceClassification(tiny(num_labels=2))
    seqs = seqs_of((6, 11, 3), seed=13)
    labels = torch.tensor([0, 1, 1])
    ids, mask, pos = pad_by_hand(seqs, 11, "right")
    model.zero_grad()
    ref = model(ids, mask, pos, labels=labels)
    ref.loss.backward()
    ref_g = _grads(model)
    model.zero_grad()
    got = model(torch.nested.nested_tensor(seqs, layout=torch.jagged), labels=labels)
    got.loss.backward()
    torch.testing.assert_close(got.logits, ref.logits, atol=ATOL, rtol=0)
    assert _grad_error(_grads(model), ref_g) < FP32_REL


@needs_nested
def test_nested_mlm_equals_padded():
    torch.manual_seed(24)
    model = EncoderForMaskedLM(tiny()).eval()
    seqs = seqs_of((5, 8), seed=25)
    flat_pos = torch.tensor([1, 3, 5 + 2, 5 + 6])              # positions in the concatenation
    labels = torch.cat(seqs)[flat_pos]
    ids, mask, pos = pad_by_hand(seqs, 8, "right")
    padded_pos = torch.tensor([1, 3, 8 + 2, 8 + 6])            # the same tokens in the (2, 8) grid
    full = torch.full((13,), IGNORE_INDEX)
    full[flat_pos] = labels
    with torch.no_grad():
        ref = model(ids, mask, pos, masked_positions=padded_pos, mlm_labels=labels)
        nested = model(torch.nested.nested_tensor(seqs, layout=torch.jagged), mlm_labels=full)
        varlen = model(torch.cat(seqs), cu_seqlens=torch.tensor([0, 5, 13]), masked_positions=flat_pos,
                       mlm_labels=labels)
    for got in (nested, varlen):
        assert got.logits.shape == (4, VOCAB)
        torch.testing.assert_close(got.logits, ref.logits, atol=ATOL, rtol=0)
        torch.testing.assert_close(got.loss, ref.loss, atol=ATOL, rtol=0)


@pytest.mark.parametrize("version, cuda, gpu, ok", [
    ("2.14.1+cu130", "13.0", False, False),    # the known crash: CUDA build, no GPU
    ("2.14.1+cu130", "13.0", True, True),
    ("2.13.0+cpu", None, False, True),
    ("2.13.0+cu128", "12.8", False, True),
])
def test_nested_supported_detects_known_crash(monkeypatch, version, cuda, gpu, ok):
    monkeypatch.setattr(torch, "__version__", version)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    got = nested_supported()
    supported, why = got                              # a NamedTuple: typed fields, never prose to parse
    assert (got.supported, got.reason) == (supported, why) and type(got).__name__ == "NestedSupport"
    assert supported is ok and version in why
    if not ok:
        assert "without a GPU" in why
        enc = Encoder(tiny())
        with pytest.raises(RuntimeError, match="nested path is unavailable.*without a GPU"):
            enc(torch.tensor([2, 7, 3]), cu_seqlens=torch.tensor([0, 3]))


# --------------------------------------------------------------------------- MLM and masking

def test_mlm_head_only_on_masked_positions_and_packed_equals_alone():
    torch.manual_seed(14)
    model = EncoderForMaskedLM(tiny()).eval()
    seqs = seqs_of(PACK, seed=15)
    ids, mask, pos, sid, block, starts = pack_by_hand(seqs, 20)
    chosen = [1, 2] + [starts[1] + 3] + [starts[2] + 1, starts[2] + 2]
    with torch.no_grad():
        out = model(ids, mask, pos, block, masked_positions=torch.tensor(chosen))
        full = model.head(model.encoder(ids, mask, pos, block)[0], model.encoder.tok_emb.weight)
    assert out.logits.shape == (5, VOCAB) and out.loss is None
    torch.testing.assert_close(out.logits, full[chosen], atol=ATOL, rtol=0)
    with torch.no_grad():
        alone0 = model(seqs[0][None], masked_positions=torch.tensor([1, 2])).logits
    torch.testing.assert_close(out.logits[:2], alone0, atol=ATOL, rtol=0)


def test_mlm_loss_is_mean_over_masked_tokens_and_labels_forms_agree():
    torch.manual_seed(15)
    model = EncoderForMaskedLM(tiny()).eval()
    seqs = seqs_of((6, 9), seed=16)
    ids, mask, pos = pad_by_hand(seqs, 9, "right")
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[0, 2], labels[1, 4], labels[1, 7] = ids[0, 2], ids[1, 4], ids[1, 7]
    with torch.no_grad():
        a = model(ids, mask, mlm_labels=labels)
        b = model(ids, mask, masked_positions=labels != IGNORE_INDEX, mlm_labels=labels)
        c = model(ids, mask, masked_positions=torch.tensor([2, 13, 16]),
                  mlm_labels=torch.tensor([ids[0, 2], ids[1, 4], ids[1, 7]]))
    by_hand = F.cross_entropy(c.logits, torch.tensor([ids[0, 2], ids[1, 4], ids[1, 7]]))
    for o in (a, b, c):
        assert isinstance(o, HeadOutput)
        torch.testing.assert_close(o.loss, by_hand)


def test_mlm_tied_and_untied():
    torch.manual_seed(16)
    tied, untied = EncoderForMaskedLM(tiny()), EncoderForMaskedLM(tiny(), tie_weights=False)
    n_tied = sum(p.numel() for p in tied.parameters())
    n_untied = sum(p.numel() for p in untied.parameters())
    assert n_untied - n_tied == VOCAB * 64
    assert tied.head_parameters() == untied.head_parameters()


def test_mask_tokens_rules_and_no_mutation():
    g = torch.Generator().manual_seed(0)
    seqs = seqs_of([int(x) for x in torch.randint(2, 60, (200,), generator=g)], seed=1)
    ids, mask, _ = pad_by_hand(seqs, 64, "right")
    before_ids, before_mask = ids.clone(), mask.clone()
    masked, chosen, labels = mask_tokens(ids, mask, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ids, before_ids) and torch.equal(mask, before_mask)
    eligible = (mask == 1) & (ids != CLS) & (ids != SEP) & (ids != PAD)
    assert not (chosen & ~eligible).any()
    rate = chosen.sum().item() / eligible.sum().item()
    assert 0.13 < rate < 0.17
    assert torch.equal(masked[chosen], torch.full((int(chosen.sum()),), MASK))
    assert torch.equal(masked[~chosen], ids[~chosen])
    assert torch.equal(labels[chosen], ids[chosen]) and (labels[~chosen] == IGNORE_INDEX).all()
    again = mask_tokens(ids, mask, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(again, (masked, chosen, labels)))
    other = mask_tokens(ids, mask, generator=torch.Generator().manual_seed(4))[1]
    assert not torch.equal(other, chosen)


def test_mask_tokens_bert_rule():
    ids = torch.randint(5, 1000, (200_000,), generator=torch.Generator().manual_seed(0))
    masked, chosen, labels = mask_tokens(ids, prob=0.5, mask_prob=0.8, random_prob=0.1, vocab_size=1000,
                                         generator=torch.Generator().manual_seed(1))
    n = chosen.sum().item()
    to_mask = (masked[chosen] == MASK).sum().item() / n
    kept = (masked[chosen] == ids[chosen]).sum().item() / n
    assert abs(to_mask - 0.8) < 0.01
    assert abs(kept - (0.1 + 0.1 / 995)) < 0.01    # a random draw may hit the same word
    assert masked.min() >= 4 and masked.max() < 1000


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=6), seed=st.integers(0, 2**16),
       prob=st.floats(0.0, 1.0))
def test_mask_tokens_property(lengths, seed, prob):
    seqs = seqs_of(lengths, seed)
    ids, mask, _ = pad_by_hand(seqs, max(lengths), "left")
    masked, chosen, labels = mask_tokens(ids, mask, prob=prob, generator=torch.Generator().manual_seed(seed))
    special = (ids == CLS) | (ids == SEP) | (mask == 0)
    assert not (chosen & special).any()
    assert torch.equal(masked != ids, chosen & (ids != MASK))
    assert torch.equal(labels != IGNORE_INDEX, chosen)
    if prob == 1.0:
        assert torch.equal(chosen, ~special)


@pytest.mark.parametrize("kw, match", [
    (dict(prob=1.5), "prob must be <= 1.0; got 1.5"),
    (dict(mask_prob=0.8, random_prob=0.1), "vocab_size must be given when random_prob > 0; got None"),
    (dict(mask_prob=0.8, random_prob=0.3, vocab_size=100), "random_prob must be <= 1 - mask_prob"),
    (dict(attention_mask=torch.ones(2, 3)), "attention_mask must have the shape of input_ids"),
    (dict(generator=0), "generator must be a torch.Generator or None; got 0"),
])
def test_mask_tokens_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        mask_tokens(torch.ones(2, 4, dtype=torch.long), **kw)


def test_mask_tokens_bad_ids():
    with pytest.raises(ValueError, match="input_ids must be an integer tensor; got torch.float32"):
        mask_tokens(torch.ones(2, 4))


# --------------------------------------------------------------------------- loss normalisation

def test_sequence_loss_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.0]])
    labels = torch.tensor([0, 1, IGNORE_INDEX, 1])
    seq = torch.tensor([0, 0, 1, 1])
    ce = [torch.log1p(torch.exp(torch.tensor(-2.0))), torch.log1p(torch.exp(torch.tensor(-1.0))),
          None, torch.log1p(torch.exp(torch.tensor(0.5)))]
    torch.testing.assert_close(sequence_loss(logits, labels), (ce[0] + ce[1] + ce[3]) / 3)
    torch.testing.assert_close(sequence_loss(logits, labels, reduction="sum"), ce[0] + ce[1] + ce[3])
    torch.testing.assert_close(sequence_loss(logits, labels, normalizer=10), (ce[0] + ce[1] + ce[3]) / 10)
    torch.testing.assert_close(sequence_loss(logits, labels, reduction="sequence", seq_ids=seq),
                               ((ce[0] + ce[1]) / 2 + ce[3]) / 2)


@pytest.mark.parametrize("kw, match", [
    (dict(reduction="mean"), "reduction must be one of 'token', 'sequence', 'sum'; got 'mean'"),
    (dict(reduction="sequence"), "seq_ids must be an integer tensor of shape"),
    (dict(normalizer=0), "normalizer must be > 0.0; got 0"),
    (dict(labels=torch.zeros(3, dtype=torch.long)), "labels must have shape"),
])
def test_sequence_loss_bad_input(kw, match):
    args = dict(logits=torch.zeros(4, 2), labels=torch.zeros(4, dtype=torch.long)) | kw
    with pytest.raises(ValueError, match=match):
        sequence_loss(**args)


def _mlm_setup():
    torch.manual_seed(17)
    model = EncoderForMaskedLM(tiny())
    seqs = seqs_of((12, 5, 9, 3, 7), seed=18)
    chosen = [[1, 4, 7, 10], [2], [1, 5, 6], [1], [3, 4]]   # masked positions inside each sequence
    return model, seqs, chosen


def _padded_mlm(model, seqs, chosen, normalizer=None, reduction="token"):
    w = max(len(s) for s in seqs)
    ids, mask, pos = pad_by_hand(seqs, w, "right")
    flat = torch.tensor([i * w + c for i, cs in enumerate(chosen) for c in cs], dtype=torch.long)
    labels = ids.reshape(-1)[flat]
    logits = model(ids.clone().index_put_((flat // w, flat % w), torch.tensor(MASK)), mask, pos,
                   masked_positions=flat).logits
    sid = torch.tensor([i for i, cs in enumerate(chosen) for _ in cs])
    return sequence_loss(logits, labels, reduction=reduction, seq_ids=sid, normalizer=normalizer)


def _packed_mlm(model, seqs, chosen, width, reduction="token"):
    ids, mask, pos, sid, block, starts = pack_by_hand(seqs, width)
    flat = torch.tensor([starts[i] + c for i, cs in enumerate(chosen) for c in cs], dtype=torch.long)
    labels = ids.reshape(-1)[flat]
    masked = ids.clone()
    masked[0, flat] = MASK
    logits = model(masked, mask, pos, block, masked_positions=flat).logits
    seq = torch.tensor([i for i, cs in enumerate(chosen) for _ in cs])
    return sequence_loss(logits, labels, reduction=reduction, seq_ids=seq)


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_packed_batch_gives_the_unpacked_gradients(reduction):
    model, seqs, chosen = _mlm_setup()
    model.zero_grad()
    _padded_mlm(model, seqs, chosen, reduction=reduction).backward()
    ref = _grads(model)
    model.zero_grad()
    _packed_mlm(model, seqs, chosen, 40, reduction=reduction).backward()
    assert _grad_error(_grads(model), ref) < FP32_REL


def test_gradient_accumulation_needs_the_global_token_count():
    model, seqs, chosen = _mlm_setup()
    model.zero_grad()
    _padded_mlm(model, seqs, chosen).backward()
    ref = _grads(model)
    parts = [(seqs[:1], chosen[:1]), (seqs[1:], chosen[1:])]     # 4 and 7 masked tokens
    total = sum(len(c) for c in chosen)
    model.zero_grad()
    for s, c in parts:
        _padded_mlm(model, s, c, normalizer=total).backward()
    assert _grad_error(_grads(model), ref) < FP32_REL
    # Negative control: the mean of each micro-batch's own mean weighs tokens unequally.
    model.zero_grad()
    for s, c in parts:
        (_padded_mlm(model, s, c) / len(parts)).backward()
    assert _grad_error(_grads(model), ref) > 1e-2


# --------------------------------------------------------------------------- parameters and FLOPs

def test_parameter_counts_match_modules():
    for cfg in (tiny(), tiny(num_labels=5, ffn=96, max_position=40)):
        mlm, cls = EncoderForMaskedLM(cfg), EncoderForSequenceClassification(cfg)
        for mo in (False, True):
            counts = parameter_counts(cfg, matmul_only=mo)
            assert mlm.body_parameters(mo) == cls.body_parameters(mo) == counts["body"]
            assert mlm.head_parameters(mo) == counts["mlm_head"]
            assert cls.head_parameters(mo) == counts["classification_head"]
        every = sum(p.numel() for p in EncoderForMaskedLM(cfg, tie_weights=False).parameters())
        c = parameter_counts(cfg)
        assert every == c["embeddings"] + c["body"] + c["mlm_head"]


def test_parameter_counts_bert_base_by_hand():
    c = parameter_counts(EncoderConfig.bert_base(30522), matmul_only=True)
    assert c["body"] == 12 * (4 * 768 * 768 + 2 * 768 * 3072) == 84_934_656
    full = parameter_counts(EncoderConfig.bert_base(30522))
    # Per layer: 4 matrices + 2 FFN matrices, their biases (3H + H + F + H) and two LayerNorms (4H).
    assert full["body"] == 84_934_656 + 12 * (3 * 768 + 768 + 3072 + 768 + 4 * 768) + 2 * 768
    assert full["embeddings"] == 30522 * 768 + 512 * 768


def test_model_flops_by_hand():
    cfg = EncoderConfig(vocab_size=10, hidden=4, layers=1, heads=2, ffn=8, max_position=16)
    body = 4 * 16 + 2 * 32                       # matmul weights: 4 H^2 + 2 H F
    head = 16 + 40                               # dense H^2 + decoder V H
    want = 6 * body * 7 + 6 * head * 2 + 12 * 1 * 4 * (3 ** 2 + 4 ** 2)
    assert model_flops(cfg, 7, 2, [3, 4], matmul_only=True) == want
    assert model_flops(cfg, 7, 2, torch.tensor([3, 4])) > want


@pytest.mark.parametrize("args, match", [
    ((5, 1, [2, 2]), "seq_lengths must sum to real_tokens=5"),
    ((4, 5, [2, 2]), "masked_tokens must be <= real_tokens=4; got 5"),
    ((-1, 0, []), "real_tokens must be an integer >= 0; got -1"),
    ((4, 0, [[2, 2]]), "seq_lengths must be a 1-D sequence of non-negative integers"),
    ((4, 0, [5, -1]), "seq_lengths must be a 1-D sequence of non-negative integers"),
])
def test_model_flops_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        model_flops(tiny(), *args)


def test_model_flops_matches_flop_counter():
    """One unpadded sequence, forward + backward: the formula is what FlopCounterMode counts.

    The counter sees matmuls (mm/addmm/bmm) only. SDPA is forced onto the math backend, whose
    two bmm per head the counter sees (4 L^2 H forward, 8 L^2 H backward); CPU's fused kernel
    is not registered with the counter and would count 0. With ``matmul_only`` the match is
    exact; the default counts (biases and LayerNorms) are higher by 6 x those parameters x
    tokens, about 1.6% at this tiny size and ~0.1% at BERT-base. (On a GPU the fused attention
    kernels' backward recomputes Q K^T and the counter reports 14 instead of 12 L^2 H per layer;
    the formula counts model work, without the recomputation.)
    """
    torch.manual_seed(19)
    cfg = tiny(layers=2)
    model = EncoderForMaskedLM(cfg)
    length, chosen = 37, torch.tensor([3, 8, 9, 20, 30, 33])
    ids = seqs_of([length], seed=20)[0][None]
    labels = ids[0, chosen]
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(ids, masked_positions=chosen, mlm_labels=labels).loss.backward()
    counted = counter.get_total_flops()
    bmm = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "bmm" in str(k))
    assert bmm == 12 * cfg.layers * cfg.hidden * length ** 2
    assert counted == model_flops(cfg, length, len(chosen), [length], matmul_only=True)
    full = model_flops(cfg, length, len(chosen), [length])
    assert 1.0 < full / counted < 1.03


# --------------------------------------------------------------------------- inputs

def test_forward_does_not_mutate_inputs(encoder):
    seqs = seqs_of((4, 6), seed=21)
    ids, mask, pos = pad_by_hand(seqs, 8, "left")
    block = torch.ones(2, 8, 8, dtype=torch.bool)
    copies = [t.clone() for t in (ids, mask, pos, block)]
    with torch.no_grad():
        encoder(ids, mask, pos, block)
    assert all(torch.equal(a, b) for a, b in zip((ids, mask, pos, block), copies))


@pytest.mark.parametrize("call, match", [
    (lambda e: e(torch.ones(2, 3)), r"input_ids must be a 2-D integer tensor \(batch, length\); got \(2, 3\)"),
    (lambda e: e(torch.ones(3, dtype=torch.long)), "input_ids must be a 2-D integer tensor"),
    (lambda e: e(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 4)),
     r"attention_mask must have the shape of input_ids \(2, 3\); got \(2, 4\)"),
    (lambda e: e(torch.ones(2, 3, dtype=torch.long), block_mask=torch.ones(2, 3, 4, dtype=torch.bool)),
     r"block_mask must have shape \(2, 3, 3\); got \(2, 3, 4\)"),
    (lambda e: e(torch.ones(2, 3, dtype=torch.long), position_ids=torch.zeros(2, 4, dtype=torch.long)),
     "position_ids must have shape"),
    (lambda e: e(torch.ones(1, 513, dtype=torch.long)), "input_ids must have length <= max_position=512"),
    (lambda e: e(torch.ones(4, dtype=torch.long), cu_seqlens=torch.tensor([0.0, 4.0])),
     "cu_seqlens must be a 1-D integer tensor of N\\+1 offsets"),
    (lambda e: e(torch.ones(2, 3, dtype=torch.long), cu_seqlens=torch.tensor([0, 6])),
     r"input_ids must be a 1-D integer tensor \(total_tokens,\) with cu_seqlens"),
])
def test_encoder_bad_input(encoder, call, match):
    with pytest.raises(ValueError, match=match):
        call(encoder)


@needs_nested
def test_nested_with_mask_is_refused(encoder):
    nt = torch.nested.nested_tensor(seqs_of((3, 4)), layout=torch.jagged)
    with pytest.raises(ValueError, match="attention_mask must be None with nested input_ids"):
        encoder(nt, torch.ones(2, 4))


def test_head_bad_input():
    with pytest.raises(ValueError, match="task must be one of 'classification', 'regression'; got 'ranking'"):
        EncoderForSequenceClassification(tiny(), task="ranking")
    with pytest.raises(ValueError, match="tie_weights must be a bool; got 1"):
        EncoderForMaskedLM(tiny(), tie_weights=1)
    with pytest.raises(ValueError, match="config must be an EncoderConfig"):
        Encoder({"vocab_size": 10})
    model = EncoderForSequenceClassification(tiny())
    with pytest.raises(ValueError, match=r"labels must have one entry per sequence \(2\); got \(3,\)"):
        model(torch.ones(2, 4, dtype=torch.long), labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="seq_starts must be a 1-D integer index"):
        model(torch.ones(2, 4, dtype=torch.long), seq_starts=torch.zeros(2, 2, dtype=torch.long))
    mlm = EncoderForMaskedLM(tiny())
    with pytest.raises(ValueError, match="mlm_labels must have the input's shape or one entry per masked"):
        mlm(torch.ones(2, 4, dtype=torch.long), masked_positions=torch.tensor([1, 2]),
            mlm_labels=torch.zeros(3, dtype=torch.long))


def test_regression_labels_must_match_num_labels():
    model = EncoderForSequenceClassification(tiny(num_labels=2), task="regression")
    with pytest.raises(ValueError, match="labels must hold num_labels=2 targets per sequence for regression"):
        model(torch.ones(2, 4, dtype=torch.long), labels=torch.zeros(2))


def test_bf16_autocast_runs_finite():
    torch.manual_seed(26)
    model = EncoderForMaskedLM(tiny())
    seqs = seqs_of((3, 9), seed=27)
    ids, mask, pos = pad_by_hand(seqs, 9, "left")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, mask, pos, masked_positions=torch.tensor([7, 10, 12]), mlm_labels=ids.reshape(-1)[[7, 10, 12]])
    out.loss.backward()
    assert torch.isfinite(out.loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_regression_head_trains_one_step():
    torch.manual_seed(22)
    model = EncoderForSequenceClassification(tiny(num_labels=1), task="regression")
    seqs = seqs_of((5, 8, 3), seed=23)
    ids, mask, pos = pad_by_hand(seqs, 8, "right")
    target = torch.tensor([0.5, -1.0, 2.0])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    out = model(ids, mask, pos, labels=target)
    assert out.logits.shape == (3, 1)
    torch.testing.assert_close(out.loss, ((out.logits[:, 0] - target) ** 2).mean())
    out.loss.backward()
    opt.step()
    with torch.no_grad():
        assert model(ids, mask, pos, labels=target).loss < out.loss


def test_nested_supported_survives_a_driver_that_raises(monkeypatch):
    """A CUDA build whose driver check raises (no GPU, a broken driver) reads as no GPU, never an error."""
    def boom():
        raise RuntimeError("Found no NVIDIA driver on your system")

    monkeypatch.setattr(torch, "__version__", "2.14.1+cu130")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", boom)
    got = nested_supported()
    assert got.supported is False and "without a GPU" in got.reason
