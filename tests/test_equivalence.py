"""padlab.experiments.equivalence: chapter 04's proofs on the shipped corpora, with their negative controls."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from padlab._validate import PadlabError
from padlab.data import load_corpus
from padlab.experiments.equivalence import (ACCUMULATION_RULES, PACKED_VARIANTS, GradientSum,
                                            accumulation_vs_one_batch, packed_vs_alone)
from padlab.models import EncoderConfig, EncoderForMaskedLM, EncoderForSequenceClassification, mask_tokens
from padlab.packing import PackedCollator, PackedDataset, pack
from padlab.padding import PaddingCollator


@pytest.fixture(scope="module")
def wordnet():
    return load_corpus("wordnet")


@pytest.fixture(scope="module")
def packed_glosses(wordnet):
    picked = np.flatnonzero((wordnet.lengths >= 8) & (wordnet.lengths <= 16))[:4].tolist()
    return PackedCollator(48)([[wordnet[i] for i in picked]])


def _classifier(wordnet):
    torch.manual_seed(0)
    return EncoderForSequenceClassification(EncoderConfig.tiny(num_labels=len(wordnet.label_names)))


def test_packed_texts_equal_the_texts_alone_and_the_controls_leak(wordnet, packed_glosses):
    model = _classifier(wordnet)
    before = [p.detach().clone() for p in model.parameters()]
    out = packed_vs_alone(model, packed_glosses)
    assert out.seq_lengths == tuple(packed_glosses["seq_lengths"].tolist()) and len(out.seq_lengths) == 4
    assert set(out.outputs) == set(PACKED_VARIANTS)
    assert out.equal("packed")                                    # outputs and gradients < 1e-5
    # negative controls: without the block mask every text reads the others
    assert all(v > 1e-2 for part in (out.outputs, out.gradients) for v in part["no block mask"])
    # positions counted across the row: every text but the first (which starts at 0 either way) differs
    moved = out.outputs["positions not restarted"]
    assert moved[0] < 1e-5 and all(v > 1e-2 for v in moved[1:]) and not out.equal("positions not restarted")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))   # the caller's model untouched
    assert all(p.grad is None for p in model.parameters()) and model.training


def test_packed_vs_alone_runs_only_the_variants_asked(wordnet, packed_glosses):
    out = packed_vs_alone(_classifier(wordnet), packed_glosses, variants=["no block mask"])
    assert list(out.gradients) == ["no block mask"] and not out.equal("no block mask")
    with pytest.raises(PadlabError, match="variant"):
        out.equal("packed")


@pytest.mark.parametrize("change, name", [
    (lambda b: {k: v for k, v in b.items() if k != "seq_starts"}, "batch"),
    (lambda b: [b], "batch"),
])
def test_packed_vs_alone_refuses_bad_batches(wordnet, packed_glosses, change, name):
    with pytest.raises(PadlabError, match=name):
        packed_vs_alone(_classifier(wordnet), change(packed_glosses))


def test_packed_vs_alone_refuses_a_model_without_an_encoder(packed_glosses):
    with pytest.raises(PadlabError, match="model"):
        packed_vs_alone(torch.nn.Linear(2, 2), packed_glosses)
    with pytest.raises(PadlabError, match="variants"):
        packed_vs_alone(_classifier(load_corpus("wordnet")), packed_glosses, variants=["unmasked"])


# --- gradient accumulation over packs -----------------------------------------------------------

@pytest.fixture(scope="module")
def fortunes_step():
    """Ten fortunes texts, 15% of tokens masked once; one padded batch and three packs of 128."""
    fortunes = load_corpus("fortunes")
    few = fortunes.select(np.flatnonzero(fortunes.lengths <= 64)[:10])
    ids, _, labels = mask_tokens(torch.from_numpy(few.token_ids.astype(np.int64)), prob=0.15,
                                 generator=torch.Generator().manual_seed(0))
    cuts = few.offsets.tolist()
    examples = [{"input_ids": ids[a:b].tolist(), "labels": labels[a:b].tolist()} for a, b in zip(cuts[:-1], cuts[1:])]
    packs = pack(few.lengths, 128).validate()
    by_pack = PackedDataset(examples, packs)
    collate = PackedCollator(128)
    return PaddingCollator()(examples), [collate([by_pack[p]]) for p in range(len(by_pack))], int((labels != -100).sum())


@pytest.mark.parametrize("reduction", ["token", "sequence"])
def test_accumulation_over_packs_equals_one_batch_only_with_the_global_count(fortunes_step, reduction):
    one, micro, masked = fortunes_step
    torch.manual_seed(0)
    model = EncoderForMaskedLM(EncoderConfig.tiny())
    before = [p.detach().clone() for p in model.parameters()]
    out = accumulation_vs_one_batch(model, one, micro, reduction=reduction)
    assert set(out.errors) == set(ACCUMULATION_RULES) and len(out.micro_counts) == len(micro) == 3
    assert out.step_count == (masked if reduction == "token" else 10) == sum(out.micro_counts)
    assert out.errors["global count"] < 1e-5
    assert out.errors["each batch's mean"] > 1e-1          # negative control: the naive mean of means
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_accumulation_in_one_micro_batch_needs_no_normalisation(fortunes_step):
    # negative control of the control: with a single micro-batch both rules are the same division
    one, _, _ = fortunes_step
    torch.manual_seed(0)
    out = accumulation_vs_one_batch(EncoderForMaskedLM(EncoderConfig.tiny()), one, [one])
    assert all(e < 1e-6 for e in out.errors.values())


def test_accumulation_refuses_micro_batches_of_other_texts(fortunes_step):
    one, micro, _ = fortunes_step
    model = EncoderForMaskedLM(EncoderConfig.tiny())
    with pytest.raises(PadlabError, match="micro_batches"):
        accumulation_vs_one_batch(model, one, micro[:2])
    with pytest.raises(PadlabError, match="micro_batches"):
        accumulation_vs_one_batch(model, one, [])
    with pytest.raises(PadlabError, match="reduction"):
        accumulation_vs_one_batch(model, one, micro, reduction="mean")


def test_gradient_sum_adds_gradients_and_never_moves_a_weight():
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    opt = GradientSum([w])
    for g in ([1.0, 0.5], [2.0, -0.5]):
        w.grad = torch.tensor(g)
        opt.step()
    assert torch.equal(opt.flat(), torch.tensor([3.0, 0.0])) and torch.equal(w.detach(), torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("policy", ["bf16-amp", "fp16-amp"])
def test_accumulation_under_a_half_policy_keeps_the_verdict(fortunes_step, policy):
    # under autocast the two paths round differently, so no 1e-5 equality; the global count still
    # lands far closer to the one-batch gradient than the mean of means (fp16-amp: through its GradScaler)
    one, micro, _ = fortunes_step
    torch.manual_seed(0)
    out = accumulation_vs_one_batch(EncoderForMaskedLM(EncoderConfig.tiny()), one, micro, policy=policy)
    assert out.errors["global count"] < 0.05 < out.errors["each batch's mean"]
    with pytest.raises(PadlabError, match="policy"):
        accumulation_vs_one_batch(EncoderForMaskedLM(EncoderConfig.tiny()), one, micro, policy="amp")
