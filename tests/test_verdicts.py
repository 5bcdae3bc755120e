"""Verdict helpers for issue 12's corrections: time growth with its spread (cost.time_scaling) and
Adam's eps in half precision (precision.adam_eps_check). Expected numbers derived by hand."""
from __future__ import annotations

import math

import pytest
import torch

from padlab import cost
from padlab._validate import PadlabError
from padlab.precision import AdamEpsCheck, adam_eps_check


# --- time_scaling: the arithmetic on scripted times (no timed test) ---------------------------------

def test_time_scaling_reports_median_ratio_spread_and_exponent(monkeypatch):
    # 3 rounds x sizes (64, 128, 256); median_time is replaced by a script, in the order it is called
    script = iter([1.0, 4.0, 16.0,      # round 0: x4, x4
                   1.0, 2.0, 10.0,      # round 1 (load): x2, x5
                   2.0, 10.0, 40.0])    # round 2: x5, x4
    monkeypatch.setattr(cost, "median_time", lambda fn, repeats, warmup: next(script))
    calls = []
    out = cost.time_scaling(lambda n: (calls.append(n), (lambda: None))[1], [64, 128, 256], rounds=3, repeats=7)
    assert calls == [64, 128, 256]                    # each callable built once, outside the timing
    assert out.sizes == (64, 128, 256) and out.rounds == 3 and out.repeats == 7
    assert out.times == (1.0, 4.0, 16.0)              # median per size over rounds
    assert out.ratios == (4.0, 4.0)                   # median of (4, 2, 5) and of (4, 5, 4)
    assert out.low == (2.0, 4.0) and out.high == (5.0, 5.0)
    assert out.exponents == pytest.approx((2.0, 2.0))  # x4 per doubling: quadratic


def test_time_scaling_negative_control_linear_cost_gives_exponent_one(monkeypatch):
    script = iter([1.0, 2.0, 4.0] * 2)
    monkeypatch.setattr(cost, "median_time", lambda fn, repeats, warmup: next(script))
    out = cost.time_scaling(lambda n: (lambda: None), (10, 20, 40), rounds=2)
    assert out.ratios == (2.0, 2.0) and out.exponents == pytest.approx((1.0, 1.0))


def test_time_scaling_runs_for_real_without_asserting_speed():
    out = cost.time_scaling(lambda n: (lambda: sum(range(n))), [10, 20], repeats=1, warmup=0, rounds=2)
    assert len(out.ratios) == 1 and out.low[0] <= out.ratios[0] <= out.high[0] and all(t > 0 for t in out.times)


@pytest.mark.parametrize("kwargs, name", [
    (dict(make_fn=3, sizes=[1, 2]), "make_fn"),
    (dict(make_fn=lambda n: 3, sizes=[1, 2]), "make_fn"),
    (dict(make_fn=lambda n: (lambda: None), sizes=[4]), "sizes"),
    (dict(make_fn=lambda n: (lambda: None), sizes=[4, 2]), "sizes"),
    (dict(make_fn=lambda n: (lambda: None), sizes=[0, 2]), "sizes"),
    (dict(make_fn=lambda n: (lambda: None), sizes="ab"), "sizes"),
    (dict(make_fn=lambda n: (lambda: None), sizes=[1, 2], rounds=0), "rounds"),
])
def test_time_scaling_refuses_bad_input(kwargs, name):
    with pytest.raises(PadlabError, match=name):
        cost.time_scaling(**kwargs)


# --- adam_eps_check (E8) -----------------------------------------------------------------------------

def test_fp16_eps_and_grad_squared_flush_to_zero_and_the_step_blows_up():
    out = adam_eps_check("fp16")
    assert isinstance(out, AdamEpsCheck)
    # 1e-8 is below half of fp16's smallest subnormal 2**-24 = 5.96e-8: it rounds to 0; so does 1e-4**2
    assert torch.tensor(1e-8, dtype=torch.float16).item() == 0.0 and out.eps_is_zero and out.eps_stored == 0.0
    assert out.grad_squared == 0.0 and out.update == -math.inf and not out.finite
    assert math.isnan(adam_eps_check("fp16", grad=0.0).update)            # 0 / 0


def test_negative_controls_fp32_moves_by_lr_and_a_larger_eps_saves_fp16():
    fp32 = adam_eps_check("fp32")
    # first Adam step: m_hat = g, v_hat = g**2, update = -lr * g / (|g| + eps) = -1e-3 / (1 + 1e-4)
    assert not fp32.eps_is_zero and fp32.finite
    assert fp32.update == pytest.approx(-1e-3 / (1 + 1e-8 / 1e-4), rel=1e-4)
    saved = adam_eps_check(torch.float16, eps=1e-4)
    # eps = 1e-4 is representable; the denominator is 0 + eps ~= g, so the update is ~ -lr, rounded to
    # fp16's spacing 2**-11 near 1: 1 - 1e-3 -> 1 - 2 * 2**-11 = 1 - 0.0009765625
    assert saved.finite and saved.update == -2 * 2 ** -11


def test_bf16_keeps_eps_but_loses_the_update_to_rounding():
    bf = adam_eps_check("bf16")
    assert not bf.eps_is_zero and bf.grad_squared > 0 and bf.finite
    # bf16's spacing just below 1 is 2**-8 = 0.0039: 1 - 1e-3 is nearer 1 than 1 - 2**-8
    assert bf.update == 0.0
    # a step of 1e-2 survives, rounded: 0.99 * 256 = 253.44 -> 253 / 256, an update of -3 * 2**-8
    assert adam_eps_check("bf16", lr=1e-2).update == -3 * 2 ** -8


@pytest.mark.parametrize("kwargs, name", [
    (dict(dtype="fp8"), "dtype"), (dict(dtype=torch.int8), "dtype"), (dict(eps=-1.0), "eps"),
    (dict(grad="big"), "grad"), (dict(lr=0.0), "lr"), (dict(start=float("nan")), "start"),
])
def test_adam_eps_check_refuses_bad_input(kwargs, name):
    with pytest.raises(PadlabError, match=name):
        adam_eps_check(**kwargs)


# --- compare_times: a hardware verdict computed from the measurement --------------------------------

def test_compare_times_by_hand():
    out = {v.name: v for v in cost.compare_times({"fp32": 1139.0, "bf16-amp": 450.0, "fp16-amp": 1200.0,
                                                  "fp16-pure": 3417.0})}
    assert out["fp32"].ratio == 1.0 and out["fp32"].verdict == "about the same"
    assert out["bf16-amp"].verdict == "faster" and out["bf16-amp"].ratio == pytest.approx(450 / 1139)
    assert out["bf16-amp"].text == "bf16-amp: 0.40x fp32's time, 2.5x faster"
    assert out["fp16-amp"].verdict == "about the same"            # 1.054: within the 10% tolerance
    assert out["fp16-pure"].verdict == "slower" and out["fp16-pure"].text.endswith("3.0x slower")
    # negative control: a tighter tolerance turns the 5% difference into a verdict
    tight = {v.name: v for v in cost.compare_times({"fp32": 1139.0, "fp16-amp": 1200.0}, tolerance=0.01)}
    assert tight["fp16-amp"].verdict == "slower"


@pytest.mark.parametrize("kwargs, name", [
    (dict(seconds={}), "seconds"), (dict(seconds={"a": 1.0}, reference="fp32"), "reference"),
    (dict(seconds={"fp32": 0.0}), "seconds"), (dict(seconds={"fp32": float("nan")}), "seconds"),
    (dict(seconds={"fp32": 1.0}, tolerance=0.0), "tolerance"),
])
def test_compare_times_refuses_bad_input(kwargs, name):
    with pytest.raises(PadlabError, match=name):
        cost.compare_times(**kwargs)
