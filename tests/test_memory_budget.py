"""Activation checkpointing (padlab.models), the training-memory estimator (padlab.cost) and the
memory-budget benchmark's --quick run (benchmarks/h200_memory.py)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from padlab._validate import PadlabError
from padlab.cost import (ActivationProfile, activation_profile, max_tokens_per_step, saved_activation_bytes,
                         training_memory)
from padlab.data import load_corpus
from padlab.experiments.bench import MODELS, model_config
from padlab.models import EncoderConfig, EncoderForMaskedLM

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "h200_memory.py"
VOCAB = 300


def _ids(rows: int = 2, width: int = 16, corpus: str = "wordnet") -> torch.Tensor:
    # real text (the shipped corpus), folded into the tiny test vocabulary
    stream = load_corpus(corpus).token_ids[: rows * width].astype(np.int64) % VOCAB
    return torch.from_numpy(stream).reshape(rows, width)


def _mlm(checkpointing: bool, layers: int = 2, seed: int = 0) -> EncoderForMaskedLM:
    torch.manual_seed(seed)
    return EncoderForMaskedLM(EncoderConfig.tiny(VOCAB, layers=layers, hidden=32, heads=4, ffn=64,
                                                 gradient_checkpointing=checkpointing)).train()


def _loss(model, ids):
    pos = torch.arange(0, ids.numel(), 3)
    return model(ids, torch.ones_like(ids), masked_positions=pos, mlm_labels=ids.reshape(-1)[pos]).loss


# --------------------------------------------------------------------------- checkpointing

def test_checkpointing_gives_the_same_loss_and_gradients():
    ids = _ids()
    plain, ckpt = _mlm(False), _mlm(True)
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), ckpt.parameters()))
    lp, lc = _loss(plain, ids), _loss(ckpt, ids)
    lp.backward()
    lc.backward()
    torch.testing.assert_close(lc, lp, rtol=0, atol=1e-6)
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_checkpointing_keeps_only_each_layers_input():
    ids = _ids()

    def saved_by(model):
        return saved_activation_bytes(lambda: _loss(model, ids), exclude=model.parameters())
    saved = {(ck, n): saved_by(_mlm(ck, n)) for ck in (False, True) for n in (1, 2)}
    # hand derivation: a checkpointed fp32 layer keeps its input, tokens x hidden x 4 bytes
    assert saved[True, 2] - saved[True, 1] == ids.numel() * 32 * 4
    # a plain layer keeps far more (its linear inputs, GELU input, attention's q/k/v/out)
    assert saved[False, 2] - saved[False, 1] > 10 * ids.numel() * 32 * 4
    assert saved[True, 2] < saved[False, 2]


def test_no_saving_when_checkpointing_is_off_or_not_training():
    # negative controls: the saving comes from the flag, and only where a backward follows
    ids = _ids()
    off = _mlm(False)
    on = _mlm(True)
    bytes_off = saved_activation_bytes(lambda: _loss(off, ids), exclude=off.parameters())
    bytes_on = saved_activation_bytes(lambda: _loss(on, ids), exclude=on.parameters())
    assert bytes_on < bytes_off
    on.eval()
    off.eval()
    assert saved_activation_bytes(lambda: _loss(on, ids), exclude=on.parameters()) == \
        saved_activation_bytes(lambda: _loss(off, ids), exclude=off.parameters())
    on.train()
    with torch.no_grad():
        assert saved_activation_bytes(lambda: _loss(on, ids), exclude=on.parameters()) == 0


def test_checkpointing_flag_is_checked_and_varlen_off_cuda_refused():
    with pytest.raises(PadlabError, match="gradient_checkpointing"):
        EncoderConfig.tiny(VOCAB, gradient_checkpointing="yes")
    model = _mlm(True).encoder
    ids = _ids(1, 12).reshape(-1)
    with pytest.raises(PadlabError, match="gradient_checkpointing"):
        model(ids, cu_seqlens=torch.tensor([0, 5, 12]))


def test_bert_large_sizes():
    c = EncoderConfig.bert_large(VOCAB)
    assert (c.layers, c.hidden, c.heads, c.ffn, c.max_position) == (24, 1024, 16, 4096, 512)
    assert "bert-large" in MODELS
    m = model_config("bert-large", gradient_checkpointing=True)
    assert (m.layers, m.hidden, m.gradient_checkpointing) == (24, 1024, True)


# --------------------------------------------------------------------------- the estimator, by hand

def _profile() -> ActivationProfile:
    zero = {"weights": 0, "gradients": 0, "optimizer": 0, "half_copies": 0}
    return ActivationProfile(layer_per_token=10.0, layer_fixed=0.0, checkpoint_per_token=2.0, embed_per_token=1.0,
                             head_per_masked=100.0,
                             params_fixed={"weights": 1000, "gradients": 1000, "optimizer": 2000, "half_copies": 0},
                             params_per_layer=dict(zero, weights=100, gradients=100, optimizer=200, half_copies=50),
                             proxy="hand-made")


def test_training_memory_by_hand():
    cfg = EncoderConfig.tiny(VOCAB, layers=3)
    est = training_memory(cfg, "bf16-amp", tokens=50, masked_tokens=5, profile=_profile())
    # params: fixed + 3 layers; activations 3 x 10 x 50 + 1 x 50 + 100 x 5; transient 10 x 50 + 100 x 5
    assert (est.weights, est.gradients, est.optimizer, est.half_copies) == (1300, 1300, 2600, 150)
    assert (est.activations, est.recompute, est.transient) == (2050, 0, 1000)
    assert est.total == 1300 + 2600 + 150 + max(2050 + 1000, 1300)
    ck = training_memory(cfg, "bf16-amp", tokens=50, masked_tokens=5, checkpointing=True, profile=_profile())
    # checkpointed: 3 x 2 x 50 + 50 + 500 kept, one layer (500) rebuilt
    assert (ck.activations, ck.recompute, ck.transient) == (850, 500, 1000)
    assert ck.total == 1300 + 2600 + 150 + 850 + 500 + 1000
    # default: the config's own flag, and 15% masked
    assert training_memory(cfg.replace(gradient_checkpointing=True), "bf16-amp", tokens=100,
                           profile=_profile()).masked_tokens == 15
    # no tokens: the gradients make the peak
    assert training_memory(cfg, "bf16-amp", tokens=0, profile=_profile()).total == 1300 + 2600 + 150 + 1300


def test_max_tokens_per_step_by_hand():
    cfg = EncoderConfig.tiny(VOCAB, layers=3)
    pr = _profile()
    # masked_fraction 0: total = 4050 + (3 x 10 + 1 + 10) x T = 4050 + 41 T once above the gradients
    assert max_tokens_per_step(4050 + 41 * 100, cfg, "bf16-amp", masked_fraction=0.0, profile=pr) == 100
    assert max_tokens_per_step(4050 + 41 * 101 - 1, cfg, "bf16-amp", masked_fraction=0.0, profile=pr) == 100
    assert max_tokens_per_step(4050 + 41 * 101, cfg, "bf16-amp", masked_fraction=0.0, profile=pr) == 101
    assert max_tokens_per_step(4050 + 41 * 100, cfg, "bf16-amp", masked_fraction=0.0, multiple_of=8,
                               profile=pr) == 96
    assert max_tokens_per_step(100, cfg, "bf16-amp", profile=pr) == 0


def test_estimate_matches_autograd_on_a_tiny_model():
    # the proxy has 1-2 layers and rows of 64; the model checked has 3 layers, rows of 32 and other text
    ids = _ids(8, 32, corpus="fortunes")
    pos = torch.arange(0, ids.numel(), 13)
    for precision, ck in (("fp32", False), ("fp32", True), ("bf16-amp", False)):
        cfg = EncoderConfig.tiny(layers=3, gradient_checkpointing=ck)
        torch.manual_seed(0)
        model = EncoderForMaskedLM(cfg).train()
        dtype = torch.bfloat16 if precision == "bf16-amp" else None

        def run():
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                return model(ids, torch.ones_like(ids), masked_positions=pos, mlm_labels=ids.reshape(-1)[pos]).loss
        measured = saved_activation_bytes(run, exclude=model.parameters())
        est = training_memory(cfg, precision, tokens=ids.numel(), masked_tokens=len(pos))
        # autograd also keeps autocast's half weight copies, which the estimator counts in half_copies
        estimated = est.activations + est.half_copies
        assert abs(estimated / measured - 1) < 0.02, (precision, ck, estimated, measured)


def test_profile_is_linear_in_tokens_and_cached():
    cfg = EncoderConfig.tiny()
    a = activation_profile(cfg, "fp32")
    assert activation_profile(cfg.replace(layers=7), "fp32") is a   # depth and the flag are not part of it
    assert a.checkpoint_per_token == cfg.hidden * 4                  # a layer's fp32 input
    assert a.layer_fixed == 0                                        # no half copies in fp32


@pytest.mark.parametrize("call, name", [
    (lambda: training_memory("bert", tokens=1), "config"),
    (lambda: training_memory(EncoderConfig.tiny(), "fp8", tokens=1), "precision"),
    (lambda: training_memory(EncoderConfig.tiny(), tokens=-1), "tokens"),
    (lambda: training_memory(EncoderConfig.tiny(), tokens=10, masked_tokens=11), "masked_tokens"),
    (lambda: training_memory(EncoderConfig.tiny(), tokens=10, checkpointing="yes"), "checkpointing"),
    (lambda: training_memory(EncoderConfig.tiny(), tokens=10, optimizer="lion"), "optimizer"),
    (lambda: training_memory(EncoderConfig.tiny(), tokens=10, profile={}), "profile"),
    (lambda: max_tokens_per_step(0, EncoderConfig.tiny()), "budget_bytes"),
    (lambda: max_tokens_per_step(10**9, EncoderConfig.tiny(), multiple_of=0), "multiple_of"),
    (lambda: max_tokens_per_step(10**9, EncoderConfig.tiny(), masked_fraction=1.5), "masked_fraction"),
    (lambda: activation_profile(None), "config"),
])
def test_bad_inputs_name_the_argument(call, name):
    with pytest.raises(PadlabError, match=name):
        call()


# --------------------------------------------------------------------------- the benchmark script

def test_quick_run_writes_every_row(tmp_path):
    spec = importlib.util.spec_from_file_location("h200_memory", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "memory.json"
    mod.main(["--quick", "--models", "bert-base", "--out", str(out)])
    result = json.loads(out.read_text())
    assert {"device", "torch", "date", "command", "config", "alloc_conf"} <= set(result)
    assert result["complete"] and result["device_total_bytes"] is None
    rows = result["rows"]
    assert [(r["recipe"], r["checkpointing"]) for r in rows] == [
        (rec, ck) for rec in mod.RECIPES for ck in (False, True)]
    for r in rows:
        assert "error" not in r, r.get("error")
        assert r["stand_in"] == "tiny" and r["fit_allocated"] is None        # measured on a GPU only
        assert all(p["peak_allocated"] is None and p["estimate"]["total"] > 0 for p in r["points"])
        assert set(r["budgets"]) == set(mod.BUDGETS)
        assert r["budgets"]["16 GB"]["precision"] == ("fp32" if r["precision"] == "fp32" else "fp16-amp")
        est = [r["budgets"][b]["estimated_max_tokens"] for b in mod.BUDGETS]
        assert est == sorted(est) and est[0] > 0
        if r["recipe"].startswith("fixed"):
            assert all(t % result["config"]["max_length"] == 0 for t in est)
    # chapter 00's estimate: the bert-base rows without checkpointing
    assert all(("chapter00_estimate" in r["points"][0]) == (not r["checkpointing"]) for r in rows)
    assert "max tokens per step" in mod.format_table(result)


def test_fit_and_reconciliation_on_known_peaks(tmp_path, monkeypatch):
    # the GPU fields, from peaks that follow a known line: the fit, the predicted maxima and the
    # ratios are checked by hand (the CPU cannot measure an allocator)
    spec = importlib.util.spec_from_file_location("h200_memory_fit", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    a, b = 3 * 2**30, 2**20   # 3 GiB + 1 MiB a slot
    real_measure = mod.Trainer.measure

    def measure(self, step):
        out = real_measure(self, step)
        peak = a + b * step["slots"]
        return {**out, "peak_allocated": peak, "peak_reserved": peak}
    monkeypatch.setattr(mod.Trainer, "measure", measure)
    out = tmp_path / "m.json"
    mod.main(["--quick", "--models", "bert-base", "--recipes", "fixed-512 fp32", "--out", str(out)])
    row = json.loads(out.read_text())["rows"][0]
    fit = row["fit_reserved"]
    assert fit["a_bytes"] == pytest.approx(a) and fit["b_bytes_per_token"] == pytest.approx(b)
    unit = 32   # --quick's max_length: fixed rows
    for name, budget in mod.BUDGETS.items():
        expected = int((budget - a) / b) // unit * unit
        got = row["budgets"][name]
        assert got["measured_fit_max_tokens"] == expected
        assert got["estimate_over_measured"] == pytest.approx(got["estimated_max_tokens"] / expected)
    p = row["points"][0]
    assert p["estimate_over_measured"] == pytest.approx(p["estimate"]["total"] / (a + b * p["slots"]))
    assert row["reconciliation"]["measured_bytes_per_token"] == pytest.approx(b)
