"""Precision policies: the one table, device checks, TF32 flags, prepare."""
from __future__ import annotations

import math
import warnings

import pytest
import torch

from padlab import precision, train

from tiny_models import VOCAB, quiet_prepare as _quiet_prepare, state_of as _state, tiny_batch as _batch, tiny_classifier as _model  # noqa: F401


@pytest.fixture(autouse=True)
def cpu_without_native_fp16(monkeypatch):
    """The CPU verdicts below are for a CPU without AVX512-FP16/AMX-FP16 (the probe is the chip's,
    so pin it: the same tests must pass on a Sapphire Rapids)."""
    monkeypatch.setattr(precision, "_cpu_has_native_fp16", lambda: False)


def test_fp16_verdict_follows_the_chip(monkeypatch):
    monkeypatch.setattr(precision, "_cpu_has_native_fp16", lambda: True)
    for name in ("fp16-amp", "fp16-pure"):
        c = precision.check_policy(name, "cpu")
        assert (c.runnable, c.pointless) == (True, False) and "native fp16" in c.reason
    monkeypatch.setattr(precision, "_cpu_has_native_fp16", lambda: False)
    c = precision.check_policy("fp16-amp", "cpu")
    assert (c.runnable, c.pointless) == (True, True) and "slower than fp32" in c.reason


# ----------------------------------------------------------------------------- policies

def test_policy_table():
    assert list(precision.POLICIES) == ["fp32", "tf32", "fp16-amp", "bf16-amp", "bf16-amp+tf32", "fp16-pure",
                                        "bf16-pure"]
    assert all(name == p.name for name, p in precision.POLICIES.items())
    want = {  # name: (autocast dtype, weight dtype, GradScaler, TF32)
        "fp32": (None, torch.float32, False, False),
        "tf32": (None, torch.float32, False, True),
        "fp16-amp": (torch.float16, torch.float32, True, False),
        "bf16-amp": (torch.bfloat16, torch.float32, False, False),
        "bf16-amp+tf32": (torch.bfloat16, torch.float32, False, True),
        "fp16-pure": (None, torch.float16, False, False),
        "bf16-pure": (None, torch.bfloat16, False, False),
    }
    for name, (ac, pd, gs, tf) in want.items():
        p = precision.get_policy(name)
        assert (p.name, p.autocast_dtype, p.param_dtype, p.grad_scaler, p.tf32) == (name, ac, pd, gs, tf)
    assert precision.get_policy(precision.get_policy("bf16-amp")) is precision.get_policy("bf16-amp")


# Forward-output dtype of the logits under each policy on this CPU; the loss is always float32
# because the model computes it from logits.float().
@pytest.mark.parametrize("policy,logits_dtype", [
    ("fp32", torch.float32), ("tf32", torch.float32), ("fp16-amp", torch.float16),
    ("bf16-amp", torch.bfloat16), ("fp16-pure", torch.float16), ("bf16-pure", torch.bfloat16),
])
def test_forward_output_dtype(policy, logits_dtype):
    prep = _quiet_prepare(_model(), policy)
    b = _batch()
    with precision.autocast_context(policy, "cpu"):
        out = prep.model(b["input_ids"], b["attention_mask"], labels=b["labels"])
    assert out.logits.dtype == logits_dtype
    assert out.loss.dtype == torch.float32
    assert next(prep.model.parameters()).dtype == precision.get_policy(policy).param_dtype


def test_fp16_on_cpu_warns_pointless_but_runs():
    model = _model()
    with pytest.warns(precision.PolicyWarning, match=r"policy 'fp16-amp' on device 'cpu': runs but pointless"):
        prep = precision.prepare(model, None, "fp16-amp", "cpu")
    rec = train.train_step(prep.model, _batch(), prep.optimizer, "fp16-amp", prep.scaler)
    assert math.isfinite(rec.loss) and rec.scale == 2.0 ** 16 and not rec.skipped
    with pytest.warns(precision.PolicyWarning, match=r"'tf32' on device 'cpu': TF32 .* changes nothing"):
        precision.prepare(model, None, "tf32", "cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fp32 and bf16 are not pointless on a CPU: no warning at all
        precision.prepare(model, None, "fp32", "cpu")
        precision.prepare(model, None, "bf16-amp", "cpu")


def test_prepare_copies_and_leaves_the_model_alone():
    model = _model()
    before = _state(model)
    prep = _quiet_prepare(model, "bf16-pure")
    assert prep.model is not model and prep.scaler is None
    run = train.train(model, [_batch(0), _batch(1)], "bf16-pure", 3, "cpu", progress=False)
    assert len(run) == 3 and run.model is not model
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) and before[k].dtype == after[k].dtype for k in before)
    assert precision.prepare(model, None, "fp32", "cpu").scaler is None
    assert isinstance(_quiet_prepare(model, "fp16-amp").scaler, torch.amp.GradScaler)


# ----------------------------------------------------------------------------- device checks

def _fake_cuda(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)


def test_bf16_cannot_run_on_a_t4(monkeypatch):
    _fake_cuda(monkeypatch, (7, 5))
    for name in ("bf16-amp", "bf16-pure"):
        c = precision.check_policy(name, "cuda")
        assert not c.runnable and "8.0" in c.reason and "7.5" in c.reason
    assert precision.check_policy("fp16-amp", "cuda") == precision.PolicyCheck(True, False, precision.check_policy("fp16-amp", "cuda").reason)
    assert precision.check_policy("tf32", "cuda").pointless          # no TF32 before Ampere
    assert precision.check_policy("fp32", "cuda:0").runnable
    # prepare refuses before touching the (fake) GPU, naming the policy and the device.
    with pytest.raises(ValueError, match=r"policy must be runnable on device 'cuda' \(bf16 needs .*7\.5.*; got 'bf16-amp'"):
        precision.prepare(_model(), None, "bf16-amp", "cuda")


def test_everything_runs_on_hopper(monkeypatch):
    _fake_cuda(monkeypatch, (9, 0))
    for name in precision.POLICIES:
        c = precision.check_policy(name, "cuda")
        assert c.runnable and not c.pointless, name


def test_cuda_missing_and_cpu_verdicts(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    c = precision.check_policy("fp32", torch.device("cuda"))
    assert not c.runnable and "no CUDA GPU" in c.reason
    cpu = {n: precision.check_policy(n, "cpu") for n in precision.POLICIES}
    assert all(c.runnable for c in cpu.values())
    assert {n for n, c in cpu.items() if c.pointless} == {"tf32", "fp16-amp", "fp16-pure"}
    assert not precision.check_policy("bf16-amp", "mps").runnable



# ----------------------------------------------------------------------------- TF32 flags

def _flags():
    return (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32)


@pytest.fixture
def restore_precision():
    with precision.tf32_mode(False):   # tf32_mode's own restore puts back whatever the test changes
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
    outside, outside_all = _flags(), precision.fp32_precision_state()
    with precision.tf32_mode(True):
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    assert _flags() == outside and precision.fp32_precision_state() == outside_all
    with pytest.raises(RuntimeError, match="boom"):
        with precision.tf32_mode(True):
            raise RuntimeError("boom")
    assert _flags() == outside and precision.fp32_precision_state() == outside_all
    with precision.tf32_mode(False):
        assert not torch.backends.cuda.matmul.allow_tf32
    assert _flags() == outside and precision.fp32_precision_state() == outside_all


def test_negative_control_the_global_setter_does_not_restore(restore_precision):
    # Undoing a change with set_float32_matmul_precision (the obvious way) leaves the backends
    # disagreeing, after which torch cannot even report the precision: what tf32_mode avoids.
    torch.set_float32_matmul_precision("high")
    torch.backends.cuda.matmul.allow_tf32 = False
    with pytest.raises(RuntimeError, match="mix of the legacy and new APIs"):
        torch.get_float32_matmul_precision()



def test_bf16_amp_tf32_is_bf16_amp_plus_tf32():
    a, b = precision.get_policy("bf16-amp"), precision.get_policy("bf16-amp+tf32")
    assert (b.autocast_dtype, b.param_dtype, b.grad_scaler, b.tf32) == (torch.bfloat16, torch.float32, False, True)
    assert (a.autocast_dtype, a.param_dtype, a.grad_scaler, a.tf32) == (torch.bfloat16, torch.float32, False, False)
    # TF32 is a CUDA mode: on a CPU bf16-amp+tf32 runs as bf16-amp, which is not pointless there.
    assert not precision.check_policy("bf16-amp+tf32", "cpu").pointless
    cpu_knob = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    cpu_before = getattr(cpu_knob, "fp32_precision", None)
    with precision.tf32_mode(False), precision.autocast_context("bf16-amp+tf32", "cpu"):
        assert torch.backends.cuda.matmul.allow_tf32          # the policy's CUDA flag...
        assert getattr(cpu_knob, "fp32_precision", None) == cpu_before   # ...and the CPU's matmuls untouched


def test_check_policy_result_is_typed():
    c = precision.check_policy("fp32", "cpu")
    assert isinstance(c, precision.PolicyCheck) and (c.runnable, c.pointless) == (True, False)


@pytest.mark.parametrize("call,match", [
    (lambda: precision.get_policy("fp8"), r"policy must be one of 'fp32', 'tf32', .*; got 'fp8'"),
    (lambda: precision.check_policy("half", "cpu"), r"policy must be one of .*; got 'half'"),
    (lambda: precision.check_policy("fp32", "tpu"), r"device must be .*; got 'tpu'"),
    (lambda: precision.check_policy("fp32", 3), r"device must be .*; got 3"),
    (lambda: precision.prepare("model", None, "fp32", "cpu"), r"model must be a torch.nn.Module; got 'model'"),
    (lambda: precision.prepare(_model(), 5, "fp32", "cpu"), r"optimizer_factory must be a callable .*; got 5"),
    (lambda: precision.tf32_mode("yes").__enter__(), r"enabled must be True or False; got 'yes'"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
    with pytest.raises(ValueError, match=match):
        call()


def test_bytes_per_element_for_memory_accounting():
    by = {n: (p.param_bytes, p.half_copy_bytes) for n, p in precision.POLICIES.items()}
    assert by == {"fp32": (4, 0), "tf32": (4, 0), "fp16-amp": (4, 2), "bf16-amp": (4, 2), "bf16-amp+tf32": (4, 2),
                  "fp16-pure": (2, 0), "bf16-pure": (2, 0)}
