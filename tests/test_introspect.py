"""Looking inside: autocast dtypes per op, gradient values, the underflow statistic."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from padlab import introspect
from padlab.models import EncoderConfig, EncoderForSequenceClassification

from tiny_models import VOCAB, quiet_prepare as _quiet_prepare, state_of as _state, tiny_batch as _batch, tiny_classifier as _model  # noqa: F401

# ----------------------------------------------------------------------------- underflow statistic

def test_underflow_fraction_by_hand():
    g = torch.tensor([1e-9, 1e-3, 0.0, 1e-6])
    # Non-zero: 1e-9, 1e-3, 1e-6. Scale 1: only 1e-9 <= 2**-25 (about 2.98e-8) flushes -> 1/3.
    assert introspect.grad_underflow_fraction([g], 1.0) == pytest.approx(1 / 3)
    # Scale 2**16: 1e-9 * 65536 = 6.6e-5, far above 2**-25 -> nothing flushes.
    assert introspect.grad_underflow_fraction([g], 2.0 ** 16) == 0.0
    # 1e-13 * 2**16 = 6.6e-9 still flushes; 1e-6 at scale 2**-5 is 3.1e-8 > 2**-25 and survives.
    g2 = torch.tensor([1e-13, 1e-6, 0.0, 0.0])
    assert introspect.grad_underflow_fraction([g2], 2.0 ** 16) == 0.5
    assert introspect.grad_underflow_fraction([g2], 2.0 ** -5) == 0.5
    # The tie: exactly 2**-25 rounds to even (zero); the next float32 up rounds to 2**-24.
    tie = torch.tensor([2.0 ** -25, float(np.nextafter(np.float32(2.0 ** -25), np.float32(1.0)))])
    assert introspect.grad_underflow_fraction(tie) == 0.5
    # inf/NaN and zeros are not counted; a model's .grad tensors and None entries work.
    assert introspect.grad_underflow_fraction([torch.tensor([math.inf, math.nan, 0.0, 1e-30]), None]) == 1.0
    assert introspect.grad_underflow_fraction([torch.zeros(3)]) == 0.0


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
    assert introspect.grad_underflow_fraction([torch.from_numpy(x)], scale) == pytest.approx(want)
    # and agrees with padlab.floats on the same values
    from padlab import floats
    if live.any():
        rf = floats.range_fractions(x.astype(np.float64) * scale, "fp16")
        assert rf["underflow"] * x.size / live.sum() == pytest.approx(want)


# ----------------------------------------------------------------------------- looking inside

def test_autocast_dtypes_under_bf16_and_fp32():
    model = _model()
    ops = introspect.autocast_dtypes(model, _batch(), "bf16-amp", "cpu")
    by_op = {}
    for o in ops:
        by_op.setdefault(o.op, set()).add(o.output_dtype)
    assert by_op["linear"] == {"bfloat16"}              # matmuls in bf16
    assert by_op["layer_norm"] == {"float32"}           # reductions kept in fp32
    assert by_op["cross_entropy"] == {"float32"}
    assert by_op["scaled_dot_product_attention"] == {"bfloat16"}
    qkv = next(o for o in ops if o.module == "encoder.layers.0.qkv")
    assert (qkv.op, qkv.input_dtype, qkv.output_dtype) == ("linear", "float32", "bfloat16")
    assert {o.output_dtype for o in introspect.autocast_dtypes(model, _batch(), "fp32", "cpu")} == {"float32"}
    assert next(model.parameters()).dtype == torch.float32


def test_autocast_table_one_entry_per_module_and_op():
    cfg = EncoderConfig.tiny(vocab_size=VOCAB, hidden=16, heads=2, ffn=32, layers=2, num_labels=3)
    torch.manual_seed(0)
    model = EncoderForSequenceClassification(cfg)
    table = introspect.autocast_table(model, _batch(), ["fp32", "bf16-amp"], "cpu")
    assert not any(".layers.1" in k for k in table)              # layer 1 repeats layer 0
    assert table["linear (encoder.layers.0.qkv)"] == {"fp32": "float32 -> float32", "bf16-amp": "float32 -> bfloat16"}
    # the residual stream: float32 + bfloat16 promotes to float32
    assert table["add (encoder.layers.0)"]["bf16-amp"] == "float32+bfloat16 -> float32"
    assert list(table)[0] == "embedding (encoder.tok_emb)" and list(table)[-1] == "cross_entropy (model)"
    full = introspect.autocast_table(model, _batch(), ["fp32"], "cpu", first_layer_only=False)
    assert "linear (encoder.layers.1.qkv)" in full


def test_gradient_values_leave_grads_alone():
    model = _model()
    g = introspect.gradient_values(model, _batch())
    assert g.shape == (sum(p.numel() for p in model.parameters()),) and g.dtype == np.float64
    assert all(p.grad is None for p in model.parameters())
    acts = introspect.gradient_values(model, _batch(), "bf16-amp", which="activations")
    assert acts.size > 0 and np.isfinite(acts).all()



@pytest.mark.parametrize("call,match", [
    (lambda: introspect.grad_underflow_fraction([torch.ones(2)], 0), r"scale must be > 0.0; got 0"),
    (lambda: introspect.grad_underflow_fraction([torch.ones(2, dtype=torch.long)]), r"grads must hold floating-point"),
    (lambda: introspect.gradient_values(_model(), _batch(), which="weights"), r"which must be one of .*; got 'weights'"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
    with pytest.raises(ValueError, match=match):
        call()
