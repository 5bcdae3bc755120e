"""Precision policies: dtypes, GradScaler skipping, device checks, TF32 flags, underflow statistics."""
from __future__ import annotations

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from padlab import amp
from padlab.models import EncoderConfig, EncoderForSequenceClassification, HeadOutput

VOCAB = 64


def _model(task: str = "classification", num_labels: int = 3, seed: int = 0) -> EncoderForSequenceClassification:
    torch.manual_seed(seed)
    cfg = EncoderConfig.tiny(vocab_size=VOCAB, hidden=16, heads=2, ffn=32, layers=1, num_labels=num_labels)
    return EncoderForSequenceClassification(cfg, task=task)


def _batch(seed: int = 0, rows: int = 4, width: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (rows, width), generator=g)
    mask = torch.ones(rows, width, dtype=torch.long)
    mask[0, 4:] = 0
    ids[0, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (rows,), generator=g)}


def _quiet_prepare(model, policy, device="cpu", factory=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", amp.PolicyWarning)
        return amp.prepare(model, factory, policy, device)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- policies

def test_policy_table():
    assert amp.POLICIES == ("fp32", "tf32", "fp16-amp", "bf16-amp", "fp16-pure", "bf16-pure")
    want = {  # name: (autocast dtype, weight dtype, GradScaler, TF32)
        "fp32": (None, torch.float32, False, False),
        "tf32": (None, torch.float32, False, True),
        "fp16-amp": (torch.float16, torch.float32, True, False),
        "bf16-amp": (torch.bfloat16, torch.float32, False, False),
        "fp16-pure": (None, torch.float16, False, False),
        "bf16-pure": (None, torch.bfloat16, False, False),
    }
    for name, (ac, pd, gs, tf) in want.items():
        p = amp.get_policy(name)
        assert (p.name, p.autocast_dtype, p.param_dtype, p.grad_scaler, p.tf32) == (name, ac, pd, gs, tf)
    assert amp.get_policy(amp.get_policy("bf16-amp")) is amp.get_policy("bf16-amp")


# Forward-output dtype of the logits under each policy on this CPU; the loss is always float32
# because the model computes it from logits.float().
@pytest.mark.parametrize("policy,logits_dtype", [
    ("fp32", torch.float32), ("tf32", torch.float32), ("fp16-amp", torch.float16),
    ("bf16-amp", torch.bfloat16), ("fp16-pure", torch.float16), ("bf16-pure", torch.bfloat16),
])
def test_forward_output_dtype(policy, logits_dtype):
    prep = _quiet_prepare(_model(), policy)
    b = _batch()
    with amp.autocast_context(policy, "cpu"):
        out = prep.model(b["input_ids"], b["attention_mask"], labels=b["labels"])
    assert out.logits.dtype == logits_dtype
    assert out.loss.dtype == torch.float32
    assert next(prep.model.parameters()).dtype == amp.get_policy(policy).param_dtype


def test_fp16_on_cpu_warns_pointless_but_runs():
    model = _model()
    with pytest.warns(amp.PolicyWarning, match=r"policy 'fp16-amp' on device 'cpu': runs but pointless"):
        prep = amp.prepare(model, None, "fp16-amp", "cpu")
    rec = amp.train_step(prep.model, _batch(), prep.optimizer, "fp16-amp", prep.scaler)
    assert math.isfinite(rec.loss) and rec.scale == 2.0 ** 16 and not rec.skipped
    with pytest.warns(amp.PolicyWarning, match=r"'tf32' on device 'cpu': TF32 .* changes nothing"):
        amp.prepare(model, None, "tf32", "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fp32 and bf16 are not pointless on a CPU: no warning at all
        amp.prepare(model, None, "fp32", "cpu")
        amp.prepare(model, None, "bf16-amp", "cpu")


def test_prepare_copies_and_leaves_the_model_alone():
    model = _model()
    before = _state(model)
    prep = _quiet_prepare(model, "bf16-pure")
    assert prep.model is not model and prep.scaler is None
    run = amp.train(model, [_batch(0), _batch(1)], "bf16-pure", 3, "cpu", progress=False)
    assert len(run) == 3 and run.model is not model
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert amp.prepare(model, None, "fp32", "cpu").scaler is None
    assert isinstance(_quiet_prepare(model, "fp16-amp").scaler, torch.amp.GradScaler)


# ----------------------------------------------------------------------------- device checks

def _fake_cuda(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


def test_bf16_cannot_run_on_a_t4(monkeypatch):
    _fake_cuda(monkeypatch, (7, 5))
    for name in ("bf16-amp", "bf16-pure"):
        c = amp.check_policy(name, "cuda")
        assert not c.runnable and "8.0" in c.reason and "7.5" in c.reason
    assert amp.check_policy("fp16-amp", "cuda") == amp.PolicyCheck(True, False, amp.check_policy("fp16-amp", "cuda").reason)
    assert amp.check_policy("tf32", "cuda").pointless          # no TF32 before Ampere
    assert amp.check_policy("fp32", "cuda:0").runnable
    # prepare refuses before touching the (fake) GPU, naming the policy and the device.
    with pytest.raises(ValueError, match=r"policy must be runnable on device 'cuda' \(bf16 needs .*7\.5.*; got 'bf16-amp'"):
        amp.prepare(_model(), None, "bf16-amp", "cuda")


def test_everything_runs_on_hopper(monkeypatch):
    _fake_cuda(monkeypatch, (9, 0))
    for name in amp.POLICIES:
        c = amp.check_policy(name, "cuda")
        assert c.runnable and not c.pointless, name


def test_cuda_missing_and_cpu_verdicts(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    c = amp.check_policy("fp32", torch.device("cuda"))
    assert not c.runnable and "no CUDA GPU" in c.reason
    cpu = {n: amp.check_policy(n, "cpu") for n in amp.POLICIES}
    assert all(c.runnable for c in cpu.values())
    assert {n for n, c in cpu.items() if c.pointless} == {"tf32", "fp16-amp", "fp16-pure"}
    assert not amp.check_policy("bf16-amp", "mps").runnable


# ----------------------------------------------------------------------------- GradScaler

def _poison(model: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """Make one gradient hold +inf: a hook on a weight adds inf to its gradient."""
    p = model.classifier.weight
    return p.register_hook(lambda g: g + torch.where(torch.arange(g.numel()).reshape(g.shape) == 0,
                                                      torch.tensor(math.inf), torch.tensor(0.0)))


def test_gradscaler_skips_an_inf_step_and_leaves_no_nan():
    prep = _quiet_prepare(_model(), "fp16-amp")
    before = _state(prep.model)
    handle = _poison(prep.model)
    rec = amp.train_step(prep.model, _batch(), prep.optimizer, "fp16-amp", prep.scaler)
    handle.remove()
    assert rec.skipped and not rec.finite and rec.scale == 2.0 ** 16
    assert prep.scaler.get_scale() == 2.0 ** 15                      # backed off by half
    after = _state(prep.model)
    assert all(torch.equal(before[k], after[k]) for k in before)     # the step was not taken
    assert all(torch.isfinite(v).all() for v in after.values())
    assert len(prep.optimizer.state) == 0                            # Adam never saw the bad gradient
    rec2 = amp.train_step(prep.model, _batch(), prep.optimizer, "fp16-amp", prep.scaler, step=1)
    assert not rec2.skipped and rec2.finite and rec2.scale == 2.0 ** 15
    assert not torch.equal(before["classifier.weight"], prep.model.classifier.weight)


def test_negative_control_without_gradscaler_inf_reaches_the_weights():
    prep = _quiet_prepare(_model(), "fp32")
    handle = _poison(prep.model)
    rec = amp.train_step(prep.model, _batch(), prep.optimizer, "fp32")
    handle.remove()
    assert not rec.skipped and not rec.finite and rec.scale is None
    assert not torch.isfinite(prep.model.classifier.weight).all()


def test_scaled_gradients_underflow_less():
    prep = _quiet_prepare(_model(), "fp16-amp")
    rec = amp.train_step(prep.model, _batch(), prep.optimizer, "fp16-amp", prep.scaler)
    assert 0.0 <= rec.underflow_fraction <= rec.underflow_fraction_unscaled <= 1.0
    plain = _quiet_prepare(_model(), "fp32")
    rec32 = amp.train_step(plain.model, _batch(), plain.optimizer, "fp32")
    assert rec32.underflow_fraction == rec32.underflow_fraction_unscaled
    assert rec32.grad_norm == pytest.approx(rec.grad_norm, rel=1e-2)


# ----------------------------------------------------------------------------- TF32 flags

def _flags():
    return (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32)


@pytest.fixture
def restore_precision():
    with amp.tf32_mode(False):   # tf32_mode's own restore puts back whatever the test changes
        yield


def _start(how):
    if how == "legacy-off":
        torch.backends.cuda.matmul.allow_tf32 = False
    elif how == "legacy-on":
        torch.backends.cuda.matmul.allow_tf32 = True
    else:  # "highest" / "high": the global setter, which also sets the CPU (mkldnn) backend
        torch.set_float32_matmul_precision(how)


@pytest.mark.parametrize("start", ["legacy-off", "legacy-on", "highest", "high"])
def test_tf32_mode_sets_then_restores_flags(start, restore_precision):
    _start(start)
    outside, outside_all = _flags(), amp._precision_state()
    with amp.tf32_mode(True):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert _flags() == outside and amp._precision_state() == outside_all
    with pytest.raises(RuntimeError, match="boom"):
        with amp.tf32_mode(True):
            raise RuntimeError("boom")
    assert _flags() == outside and amp._precision_state() == outside_all
    with amp.tf32_mode(False):
        assert not torch.backends.cuda.matmul.allow_tf32
    assert _flags() == outside and amp._precision_state() == outside_all


def test_negative_control_the_global_setter_does_not_restore(restore_precision):
    # Undoing a change with set_float32_matmul_precision (the obvious way) leaves the backends
    # disagreeing, after which torch cannot even report the precision: what tf32_mode avoids.
    torch.set_float32_matmul_precision("high")
    torch.backends.cuda.matmul.allow_tf32 = False
    with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
        torch.get_float32_matmul_precision()


# ----------------------------------------------------------------------------- underflow statistic

def test_flush_threshold_from_fp16_layout():
    # fp16: 5 exponent bits, bias 15, 10 mantissa bits -> smallest subnormal 2**(1-15-10) = 2**-24.
    assert amp.FP16_FLUSH_THRESHOLD == 2.0 ** -25


def test_underflow_fraction_by_hand():
    g = torch.tensor([1e-9, 1e-3, 0.0, 1e-6])
    # Non-zero: 1e-9, 1e-3, 1e-6. Scale 1: only 1e-9 <= 2**-25 (about 2.98e-8) flushes -> 1/3.
    assert amp.grad_underflow_fraction([g], 1.0) == pytest.approx(1 / 3)
    # Scale 2**16: 1e-9 * 65536 = 6.6e-5, far above 2**-25 -> nothing flushes.
    assert amp.grad_underflow_fraction([g], 2.0 ** 16) == 0.0
    # 1e-13 * 2**16 = 6.6e-9 still flushes; 1e-6 at scale 2**-5 is 3.1e-8 > 2**-25 and survives.
    g2 = torch.tensor([1e-13, 1e-6, 0.0, 0.0])
    assert amp.grad_underflow_fraction([g2], 2.0 ** 16) == 0.5
    assert amp.grad_underflow_fraction([g2], 2.0 ** -5) == 0.5
    # The tie: exactly 2**-25 rounds to even (zero); the next float32 up rounds to 2**-24.
    tie = torch.tensor([2.0 ** -25, float(np.nextafter(np.float32(2.0 ** -25), np.float32(1.0)))])
    assert amp.grad_underflow_fraction(tie) == 0.5
    # inf/NaN and zeros are not counted; a model's .grad tensors and None entries work.
    assert amp.grad_underflow_fraction([torch.tensor([math.inf, math.nan, 0.0, 1e-30]), None]) == 1.0
    assert amp.grad_underflow_fraction([torch.zeros(3)]) == 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=-1e3, max_value=1e3, width=32)
                | st.floats(min_value=-2.0 ** -20, max_value=2.0 ** -20, width=32),
                min_size=1, max_size=40),
       st.integers(min_value=-8, max_value=20))
def test_underflow_fraction_matches_a_float16_cast(values, exp):
    x = np.array(values, dtype=np.float32)
    scale = 2.0 ** exp
    with np.errstate(over="ignore"):
        stored = (x.astype(np.float64) * scale).astype(np.float16)   # the reference: cast and look
    live = x != 0
    want = (live & (stored == 0)).sum() / live.sum() if live.any() else 0.0
    assert amp.grad_underflow_fraction([torch.from_numpy(x)], scale) == pytest.approx(want)
    # and agrees with padlab.floats on the same values
    from padlab import floats
    if live.any():
        rf = floats.range_fractions(x.astype(np.float64) * scale, "fp16")
        assert rf["underflow"] * x.size / live.sum() == pytest.approx(want)


# ----------------------------------------------------------------------------- training loop

def test_train_records_and_measure_every():
    batches = [_batch(0), _batch(1)]
    snapshot = [{k: v.clone() for k, v in b.items()} for b in batches]
    run = amp.train(_model(), batches, "fp32", 5, "cpu", progress=False, measure_every=2)
    assert [r.step for r in run] == [0, 1, 2, 3, 4]
    assert [r.measured for r in run] == [True, False, True, False, True]
    assert all(math.isfinite(r.loss) for r in run if r.measured) and math.isnan(run[1].loss)
    assert run.column("loss").shape == (5,) and np.isnan(run.column("scale")).all()
    for b, s in zip(batches, snapshot):   # the caller's batches are untouched
        assert b.keys() == s.keys() and all(torch.equal(b[k], s[k]) for k in b)


def test_same_seed_same_run():
    a = amp.train(_model(seed=1), [_batch(0)], "bf16-amp", 3, "cpu", progress=False)
    b = amp.train(_model(seed=1), [_batch(0)], "bf16-amp", 3, "cpu", progress=False)
    assert [r.loss for r in a] == [r.loss for r in b]


def test_fp16_pure_adam_diverges_and_is_recorded():
    # Adam's eps=1e-8 is below fp16's smallest subnormal: it becomes 0 and m / sqrt(v) divides by 0.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", amp.PolicyWarning)
        run = amp.train(_model(), [_batch(0)], "fp16-pure", 3, "cpu", progress=False)
    assert math.isfinite(run[0].loss)
    assert not all(torch.isfinite(p).all() for p in run.model.parameters())
    assert torch.tensor(1e-8, dtype=torch.float16).item() == 0.0


class _Const(nn.Module):
    """Predicts a fixed vector, whatever the input: a model whose scores can be worked out by hand."""

    def __init__(self, values):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(values, dtype=torch.float32))

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return HeadOutput(None, self.w[: input_ids.shape[0]].reshape(-1, 1) + 0 * input_ids[:, :1])


def test_evaluate_regression_by_hand():
    m = _Const([1.0, 2.0, 3.0, 4.0])
    b = {"input_ids": torch.ones(4, 2, dtype=torch.long), "labels": torch.tensor([1.0, 2.5, 2.0, 4.25])}
    # z-scored labels: units = y * 10 + 100; errors 0, 5, 10, 2.5 units
    r = amp.evaluate(m, [b], "fp32", task="regression", target_mean=100.0, target_std=10.0)
    assert r["mae"] == pytest.approx((0 + 5 + 10 + 2.5) / 4)
    assert r["rmse"] == pytest.approx(math.sqrt((0 + 25 + 100 + 6.25) / 4))
    assert r["max_error"] == 10.0 and r["exact_fraction"] == 0.25 and r["nonfinite"] == 0
    # bf16 autocast does not touch a model that does no matmul: the same numbers.
    assert amp.evaluate(m, [b], "bf16-amp", task="regression")["mae"] == pytest.approx((0 + .5 + 1 + .25) / 4)


def test_evaluate_classification_by_hand():
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]))

        def forward(self, input_ids, attention_mask=None, position_ids=None):
            return HeadOutput(None, self.w)

    b = {"input_ids": torch.ones(3, 2, dtype=torch.long), "labels": torch.tensor([0, 1, 1])}
    r = amp.evaluate(Fixed(), [b], "fp32")
    assert r["accuracy"] == pytest.approx(2 / 3) and r["n"] == 3
    want = -(math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(math.e / (1 + math.e))
             + math.log(1 / (math.exp(3) + 1))) / 3
    assert r["loss"] == pytest.approx(want)


# ----------------------------------------------------------------------------- looking inside

def test_autocast_dtypes_under_bf16_and_fp32():
    model = _model()
    ops = amp.autocast_dtypes(model, _batch(), "bf16-amp", "cpu")
    by_op = {}
    for o in ops:
        by_op.setdefault(o.op, set()).add(o.output_dtype)
    assert by_op["linear"] == {"bfloat16"}              # matmuls in bf16
    assert by_op["layer_norm"] == {"float32"}           # reductions kept in fp32
    assert by_op["cross_entropy"] == {"float32"}
    assert by_op["scaled_dot_product_attention"] == {"bfloat16"}
    qkv = next(o for o in ops if o.module == "encoder.layers.0.qkv")
    assert (qkv.op, qkv.input_dtype, qkv.output_dtype) == ("linear", "float32", "bfloat16")
    assert {o.output_dtype for o in amp.autocast_dtypes(model, _batch(), "fp32", "cpu")} == {"float32"}
    assert next(model.parameters()).dtype == torch.float32


def test_autocast_table_one_entry_per_module_and_op():
    cfg = EncoderConfig.tiny(vocab_size=VOCAB, hidden=16, heads=2, ffn=32, layers=2, num_labels=3)
    torch.manual_seed(0)
    model = EncoderForSequenceClassification(cfg)
    table = amp.autocast_table(model, _batch(), ["fp32", "bf16-amp"], "cpu")
    assert not any(".layers.1" in k for k in table)              # layer 1 repeats layer 0
    assert table["linear (encoder.layers.0.qkv)"] == {"fp32": "float32 -> float32", "bf16-amp": "float32 -> bfloat16"}
    # the residual stream: float32 + bfloat16 promotes to float32
    assert table["add (encoder.layers.0)"]["bf16-amp"] == "float32+bfloat16 -> float32"
    assert list(table)[0] == "embedding (encoder.tok_emb)" and list(table)[-1] == "cross_entropy (model)"
    full = amp.autocast_table(model, _batch(), ["fp32"], "cpu", first_layer_only=False)
    assert "linear (encoder.layers.1.qkv)" in full


def test_gradient_values_leave_grads_alone():
    model = _model()
    g = amp.gradient_values(model, _batch())
    assert g.shape == (sum(p.numel() for p in model.parameters()),) and g.dtype == np.float64
    assert all(p.grad is None for p in model.parameters())
    acts = amp.gradient_values(model, _batch(), "bf16-amp", which="activations")
    assert acts.size > 0 and np.isfinite(acts).all()


# ----------------------------------------------------------------------------- tasks

def test_make_task_targets_are_the_corpus_counts():
    from padlab.data import load_corpus

    corpus = load_corpus("wordnet")
    t = amp.make_task("wordnet-length", n_train=40, n_eval=12, batch_size=16, seed=3)
    idx = np.random.default_rng(3).choice(len(corpus), size=52, replace=False)
    want = corpus.lengths[idx].astype(np.float64)
    assert t.target_mean == pytest.approx(want[:40].mean()) and t.target_std == pytest.approx(want[:40].std())
    got = np.concatenate([b["labels"].double().numpy() for b in t.train + t.eval]) * t.target_std + t.target_mean
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert [b["input_ids"].shape[0] for b in t.train] == [16, 16, 8]
    lens = np.concatenate([b["attention_mask"].sum(1).numpy() for b in t.train + t.eval])
    np.testing.assert_array_equal(lens, want)           # the target is the attended length
    raw = amp.make_task("wordnet-chars-raw", n_train=40, n_eval=12, batch_size=16, seed=3)
    chars = np.array([len(corpus.texts[i]) for i in idx], dtype=np.float64)
    np.testing.assert_array_equal(np.concatenate([b["labels"].numpy() for b in raw.train + raw.eval]), chars)
    assert raw.init_bias == pytest.approx(chars[:40].mean()) and raw.target_std == 1.0
    again = amp.make_task("wordnet-length", n_train=40, n_eval=12, batch_size=16, seed=3)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(t.train, again.train))
    other = amp.make_task("wordnet-length", n_train=40, n_eval=12, batch_size=16, seed=4)
    assert not torch.equal(t.train[0]["input_ids"][:, :4], other.train[0]["input_ids"][:, :4])


def test_run_experiment_row():
    task = amp.make_task("wordnet-topic", n_train=32, n_eval=16, batch_size=16, seed=0)
    cfg = EncoderConfig.tiny(hidden=16, heads=2, ffn=32, layers=1)
    row = amp.run_experiment(task, "bf16-amp", steps=2, device="cpu", config=cfg)
    assert row["policy"] == "bf16-amp" and row["task"] == "wordnet-topic" and 0 <= row["accuracy"] <= 1
    assert len(row["loss"]) == 2 and row["scale"] is None and row["skipped_steps"] == []


def test_linear_schedule_and_early_stop():
    run = amp.train(_model(), [_batch(0)], "fp32", 20, "cpu", progress=False, lr_schedule="linear")
    # warm-up: 1 step (20 // 20), then linear decay to zero after the last step
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", amp.PolicyWarning)
        bad = amp.train(_model(), [_batch(0)], "fp16-pure", 50, "cpu", progress=False, stop_after_nonfinite=2)
    assert len(bad) < 50 and all(math.isnan(r.loss) for r in bad[-2:])
    # a GradScaler run is never stopped: its non-finite steps are skipped, not fatal
    assert len(amp.train(_model(), [_batch(0)], "fp32", 5, "cpu", progress=False, stop_after_nonfinite=1)) == 5


def _train_row(task, kind, policy, seed, value, loss=1.0, skipped=(), exact=None):
    metric = "accuracy" if kind == "classification" else "mae"
    row = {"kind_of_row": "train", "task": task, "kind": kind, "unit": "u", "policy": policy, "seed": seed,
           metric: value, "final_loss": loss, "skipped_steps": list(skipped), "underflow_mean": 0.25,
           "underflow_unscaled_mean": 0.5}
    if exact is not None:
        row["exact_fraction"] = exact
    return row


def test_summarize_matrix_by_hand():
    result = {"rows": [
        _train_row("c", "classification", "fp32", 0, 0.5), _train_row("c", "classification", "fp32", 1, 0.7),
        _train_row("r", "regression", "fp16-pure", 0, math.inf, loss=math.nan, exact=0.0),
        _train_row("r", "regression", "fp16-pure", 1, 2.0, skipped=(3, 4), exact=0.5),
        {"kind_of_row": "speed", "model": "m", "policy": "fp32", "step_ms_median": 2.0, "peak_memory_bytes": 4,
         "batch_size": 1, "length": 1},
    ]}
    c, r = amp.summarize_matrix(result)
    assert (c["task"], c["metric"], c["seeds"], c["diverged"]) == ("c", "accuracy", 2, 0)
    assert c["mean"] == pytest.approx(0.6) and c["std"] == pytest.approx(0.1) and c["values"] == [0.5, 0.7]
    assert (r["metric"], r["diverged"], r["mean"], r["std"], r["exact"], r["skipped"]) == ("mae", 1, 2.0, 0.0, 0.5, 1.0)
    assert math.isnan(r["values"][0]) and r["values"][1] == 2.0
    assert r["underflow"] == 0.25 and r["underflow_unscaled"] == 0.5


def test_speed_table_and_load_matrix(tmp_path):
    rows = [{"kind_of_row": "speed", "model": "m", "policy": p, "step_ms_median": ms, "peak_memory_bytes": mem,
             "batch_size": 2, "length": 8} for p, ms, mem in (("fp32", 4.0, 2**21), ("bf16-amp", 2.0, 2**20))]
    path = tmp_path / "m.json"
    import json
    path.write_text(json.dumps({"rows": rows + [{"kind_of_row": "train", "x": "nan", "y": ["inf", "-inf"]}]}))
    loaded = amp.load_matrix(path)
    assert math.isnan(loaded["rows"][2]["x"]) and loaded["rows"][2]["y"] == [math.inf, -math.inf]
    fp32, bf16 = amp.speed_table(loaded)
    assert (fp32["time_vs_fp32"], fp32["peak_mib"], fp32["memory_vs_fp32"]) == (1.0, 2.0, 1.0)
    assert (bf16["step_ms"], bf16["time_vs_fp32"], bf16["peak_mib"], bf16["memory_vs_fp32"]) == (2.0, 0.5, 1.0, 0.5)
    with pytest.raises(ValueError, match=r"path must name an existing amp_matrix JSON file; got '.*nope.json'"):
        amp.load_matrix(tmp_path / "nope.json")


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call,match", [
    (lambda: amp.get_policy("fp8"), r"policy must be one of 'fp32', 'tf32', .*; got 'fp8'"),
    (lambda: amp.check_policy("half", "cpu"), r"policy must be one of .*; got 'half'"),
    (lambda: amp.check_policy("fp32", "tpu"), r"device must be .*; got 'tpu'"),
    (lambda: amp.check_policy("fp32", 3), r"device must be .*; got 3"),
    (lambda: amp.prepare("model", None, "fp32", "cpu"), r"model must be a torch.nn.Module; got 'model'"),
    (lambda: amp.prepare(_model(), 5, "fp32", "cpu"), r"optimizer_factory must be a callable .*; got 5"),
    (lambda: amp.train(_model(), [_batch()], "fp32", 0, "cpu"), r"steps must be an integer >= 1; got 0"),
    (lambda: amp.train(_model(), [], "fp32", 1, "cpu", progress=False), r"loader must yield at least one batch"),
    (lambda: amp.grad_underflow_fraction([torch.ones(2)], 0), r"scale must be > 0.0; got 0"),
    (lambda: amp.grad_underflow_fraction([torch.ones(2, dtype=torch.long)]), r"grads must hold floating-point"),
    (lambda: amp.tf32_mode("yes").__enter__(), r"enabled must be True or False; got 'yes'"),
    (lambda: amp.make_task("imdb"), r"task must be one of 'wordnet-topic', .*; got 'imdb'"),
    (lambda: amp.make_task("wordnet-topic", n_train=200_000), r"n_train must plus n_eval=1024 be at most"),
    (lambda: amp.evaluate(_model(), [_batch()], "fp32", task="ranking"), r"task must be one of .*; got 'ranking'"),
    (lambda: amp.gradient_values(_model(), _batch(), which="weights"), r"which must be one of .*; got 'weights'"),
    (lambda: amp.train(_model(), [_batch()], "fp32", 2, "cpu", lr_schedule="cosine"),
     r"lr_schedule must be one of 'constant', 'linear'; got 'cosine'"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_step_arguments():
    prep = _quiet_prepare(_model(), "fp16-amp")
    with pytest.raises(ValueError, match=r"scaler must be a torch.amp.GradScaler for policy 'fp16-amp'"):
        amp.train_step(prep.model, _batch(), prep.optimizer, "fp16-amp", None)
    plain = _quiet_prepare(_model(), "fp32")
    with pytest.raises(ValueError, match=r"scaler must be None for policy 'fp32'"):
        amp.train_step(plain.model, _batch(), plain.optimizer, "fp32", prep.scaler)
    with pytest.raises(ValueError, match=r"model must hold torch.bfloat16 weights for policy 'bf16-pure'.*; got 'torch.float32'"):
        amp.train_step(plain.model, _batch(), plain.optimizer, "bf16-pure")
    with pytest.raises(ValueError, match=r"batch must be a mapping with 'input_ids'"):
        amp.train_step(plain.model, [1, 2], plain.optimizer, "fp32")
    with pytest.raises(ValueError, match=r"policy must be one of .*; got 'fp64'"):
        amp.train_step(plain.model, _batch(), plain.optimizer, "fp64")
    with pytest.raises(ValueError, match=r"max_grad_norm must be > 0.0; got -1"):
        amp.train_step(plain.model, _batch(), plain.optimizer, "fp32", max_grad_norm=-1)
