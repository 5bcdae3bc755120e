"""Memory, FLOP and kernel measurements in padlab.cost: expected numbers derived by hand."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend

from padlab.cost import (ParameterMemory, flop_count, median_time, op_names, parameter_memory,
                         saved_activation_bytes, sdpa_backend_used, sdpa_ops)


# --- parameter_memory ---------------------------------------------------------------------------

@pytest.mark.parametrize("precision, optimizer, expected", [
    # Linear(3, 4): 3*4 weights + 4 biases = 16 parameters.
    ("fp32", "adam", dict(weights=64, gradients=64, optimizer=128, half_copies=0, total=256)),
    ("fp32", "adamw", dict(weights=64, gradients=64, optimizer=128, half_copies=0, total=256)),
    ("fp32", "sgd", dict(weights=64, gradients=64, optimizer=0, half_copies=0, total=128)),
    ("fp32", "momentum", dict(weights=64, gradients=64, optimizer=64, half_copies=0, total=192)),
    ("tf32", "adam", dict(weights=64, gradients=64, optimizer=128, half_copies=0, total=256)),
    ("bf16-pure", "adam", dict(weights=32, gradients=32, optimizer=64, half_copies=0, total=128)),
    ("fp16-pure", "adam", dict(weights=32, gradients=32, optimizer=64, half_copies=0, total=128)),
    ("bf16-amp", "adam", dict(weights=64, gradients=64, optimizer=128, half_copies=32, total=288)),
    ("fp16-amp", "adam", dict(weights=64, gradients=64, optimizer=128, half_copies=32, total=288)),
    ("bf16-amp+tf32", "adam", dict(weights=64, gradients=64, optimizer=128, half_copies=32, total=288)),
])
def test_parameter_memory_linear(precision, optimizer, expected):
    out = parameter_memory(nn.Linear(3, 4), precision, optimizer)
    assert out == dict(parameters=16, trainable=16, **expected)


def test_parameter_memory_is_a_typed_result_that_reads_like_a_dict():
    out = parameter_memory(nn.Linear(3, 4), "bf16-amp")
    assert isinstance(out, ParameterMemory) and (out.total, out.half_copies) == (288, 32)
    assert out["total"] == 288 and out.get("nothing", 0) == 0 and list(out)[:2] == ["parameters", "trainable"]
    assert type(out.as_dict()) is dict and out.as_dict() == dict(out)
    with pytest.raises(KeyError):
        out["gpu"]


def test_parameter_memory_frozen_params_have_no_gradients_or_state():
    lin = nn.Linear(3, 4)
    lin.bias.requires_grad_(False)
    out = parameter_memory(lin)
    # 12 trainable weights: 48 bytes of gradients, 2 x 48 of Adam state; the 4 frozen biases weigh 16.
    assert out == dict(parameters=16, trainable=12, weights=64, gradients=48, optimizer=96, half_copies=0,
                       total=208)
    assert lin.bias.requires_grad is False and lin.weight.requires_grad is True  # not mutated


def test_parameter_memory_counts_a_shared_parameter_once():
    emb, head = nn.Embedding(5, 2), nn.Linear(2, 5, bias=False)
    head.weight = emb.weight            # tied, as BERT ties its decoder to the embedding
    assert parameter_memory(nn.Sequential(emb, head))["parameters"] == 10


def test_parameter_memory_matches_a_reference_count_of_a_deeper_model():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    n = 8 * 16 + 16 + 16 * 2 + 2
    assert parameter_memory(model, "fp32", "adam")["total"] == 16 * n


@pytest.mark.parametrize("kwargs, match", [
    (dict(model="not a model"), "model must be a torch.nn.Module"),
    (dict(model=nn.Linear(1, 1), precision="fp8"), "precision must be one of"),
    # The old vocabulary is gone: one set of precision names across padlab.
    (dict(model=nn.Linear(1, 1), precision="amp"), r"precision must be one of 'fp32', 'tf32', .*; got 'amp'"),
    (dict(model=nn.Linear(1, 1), precision="bf16"), r"precision must be one of .*; got 'bf16'"),
    (dict(model=nn.Linear(1, 1), optimizer="lion"), "optimizer must be one of"),
])
def test_parameter_memory_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        parameter_memory(**kwargs)


# --- saved_activation_bytes ---------------------------------------------------------------------

def _leaves(n=5):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, generator=g, requires_grad=True), torch.randn(n, generator=g, requires_grad=True))


def test_saved_bytes_of_a_product_is_both_factors():
    x, y = _leaves()
    # d(x*y)/dx needs y and d/dy needs x: two 5-float tensors = 2 * 5 * 4 bytes.
    assert saved_activation_bytes(lambda: x * y) == 40


def test_saved_bytes_exclude_leaves_out_given_tensors():
    x, y = _leaves()
    assert saved_activation_bytes(lambda: x * y, exclude=[x]) == 20


def test_saved_bytes_counts_one_storage_once():
    x, _ = _leaves()
    assert saved_activation_bytes(lambda: x * x) == 20


def test_saved_bytes_of_a_chain():
    x, y = _leaves()
    # mul saves x and y (40); sin saves its input, the 5-float product (20).
    assert saved_activation_bytes(lambda: (x * y).sin()) == 60


def test_saved_bytes_count_a_views_whole_storage():
    big = torch.randn(10, requires_grad=True)
    _, y = _leaves()
    # big[:5] keeps all 10 floats of big alive (40 bytes), y adds 20.
    assert saved_activation_bytes(lambda: big[:5] * y) == 60


def test_saved_bytes_zero_without_grad_and_inputs_untouched():
    x, y = _leaves()
    before = (x.detach().clone(), y.detach().clone())
    with torch.no_grad():
        assert saved_activation_bytes(lambda: x * y) == 0
    assert saved_activation_bytes(lambda: x.detach() * 2) == 0
    assert torch.equal(x.detach(), before[0]) and torch.equal(y.detach(), before[1])
    assert x.grad is None and y.grad is None


def test_saved_bytes_of_linear_excluding_parameters():
    lin = nn.Linear(3, 4)
    x = torch.randn(2, 3, requires_grad=True)
    # addmm saves its input (2x3 floats = 24 bytes) and the weight; the weight is excluded.
    assert saved_activation_bytes(lambda: lin(x), exclude=lin.parameters()) == 24
    assert saved_activation_bytes(lambda: lin(x)) == 24 + 48


def _qkv(b=1, h=2, length=32, d=8, requires_grad=True):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, h, length, d, generator=g, requires_grad=requires_grad) for _ in range(3)]


def test_math_attention_keeps_the_score_matrix_and_flash_does_not():
    b, h, length, d = 1, 2, 64, 8
    q, k, v = _qkv(b, h, length, d)
    scores = b * h * length * length * 4       # one fp32 L x L matrix per head
    with torch.nn.attention.sdpa_kernel([SDPBackend.MATH]):
        math = saved_activation_bytes(lambda: F.scaled_dot_product_attention(q, k, v))
    with torch.nn.attention.sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        flash = saved_activation_bytes(lambda: F.scaled_dot_product_attention(q, k, v))
    assert math >= scores
    assert flash < scores
    # Flash keeps q, k, v, the output (4 tensors of b*h*L*d floats) and one logsumexp float per row.
    assert flash == 4 * b * h * length * d * 4 + b * h * length * 4


def test_saved_bytes_bad_input():
    with pytest.raises(ValueError, match="fn must be a callable"):
        saved_activation_bytes(42)


# --- kernels, flops, time -----------------------------------------------------------------------

def test_sdpa_backend_used_names_the_kernel_forced():
    q, k, v = _qkv(requires_grad=False)
    assert sdpa_backend_used(q, k, v, backends=[SDPBackend.MATH]) == "math"
    assert sdpa_backend_used(q, k, v, backends=[SDPBackend.FLASH_ATTENTION]) == "flash"
    mask = torch.ones(1, 1, 1, 32, dtype=torch.bool)
    mask[..., 20:] = False
    assert sdpa_backend_used(q, k, v, mask, backends=[SDPBackend.MATH]) == "math"


def test_op_names_show_softmax_only_on_the_math_path():
    q, k, v = _qkv(requires_grad=False)
    with torch.nn.attention.sdpa_kernel([SDPBackend.MATH]):
        math = op_names(lambda: F.scaled_dot_product_attention(q, k, v))
    with torch.nn.attention.sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        flash = op_names(lambda: F.scaled_dot_product_attention(q, k, v))
    assert "aten::_softmax" in math and "aten::bmm" in math
    assert "aten::_softmax" not in flash and "aten::_scaled_dot_product_flash_attention_for_cpu" in flash
    assert sdpa_ops(q, k, v, backends=[SDPBackend.MATH]) == math
    assert sdpa_ops(q, k, v, backends=[SDPBackend.FLASH_ATTENTION]) == flash


def test_flop_count_of_matmul_and_attention():
    a, b = torch.randn(2, 3), torch.randn(3, 4)
    assert flop_count(lambda: a @ b) == 2 * 2 * 3 * 4       # one multiply and one add per term
    bsz, h, length, d = 1, 2, 16, 8
    q, k, v = _qkv(bsz, h, length, d, requires_grad=False)
    with torch.nn.attention.sdpa_kernel([SDPBackend.MATH]):
        n = flop_count(lambda: F.scaled_dot_product_attention(q, k, v))
    # Two batched matmuls (Q K^T and P V), each 2 * L * L * d per head.
    assert n == 2 * (2 * bsz * h * length * length * d)


def test_flop_count_by_op_splits_linear_from_batched_matmul():
    lin = nn.Linear(3, 4)
    x, a, b = torch.randn(2, 3), torch.randn(5, 2, 3), torch.randn(5, 3, 4)
    ops = flop_count(lambda: (lin(x), torch.bmm(a, b)), by_op=True)
    # Linear: 2 * 2 * 3 * 4 = 48 (addmm); bmm: 5 batches of 2 * 2 * 3 * 4 = 240, listed first.
    assert ops == {"bmm": 240, "addmm": 48} and list(ops) == ["bmm", "addmm"]


def test_median_time_calls_warmup_plus_repeats_times():
    calls = []
    t = median_time(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and isinstance(t, float) and t >= 0.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(fn=None), "fn must be a callable"),
    (dict(fn=lambda: None, repeats=0), "repeats must be an integer >= 1"),
    (dict(fn=lambda: None, warmup=-1), "warmup must be an integer >= 0"),
])
def test_median_time_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        median_time(**kwargs)


def test_op_names_and_flop_count_bad_input():
    with pytest.raises(ValueError, match="fn must be a callable"):
        op_names("x")
    with pytest.raises(ValueError, match="fn must be a callable"):
        flop_count("x")


# --- which parameters autocast casts (E1), measured tensor bytes (E2) -----------------------------

from padlab._validate import PadlabError
from padlab.cost import CAST_MODULES, cast_parameters, measured_parameter_memory
from padlab.models import EncoderConfig, EncoderForMaskedLM, EncoderForSequenceClassification

_LINEARS = ("qkv", "out", "ff1", "ff2")


def _layer_linear_names(layers=2):
    return [f"encoder.layers.{i}.{lin}.{w}" for i in range(layers) for lin in _LINEARS for w in ("weight", "bias")]


def _linear_elements(cfg):
    # by hand from the config: qkv h x 3h, out h x h, ff1 h x ffn, ff2 ffn x h, each with its bias
    h, f = cfg.hidden, cfg.ffn
    return cfg.layers * ((h * 3 * h + 3 * h) + (h * h + h) + (h * f + f) + (f * h + h))


def test_cast_parameters_on_the_tiny_masked_lm_finds_the_linears_and_the_tied_decoder():
    torch.manual_seed(0)
    model = EncoderForMaskedLM(EncoderConfig.tiny())
    # the decoder is the token embedding through F.linear, so the embedding table IS cast (under its
    # first name); the position embedding (a lookup) and every LayerNorm are not
    expected = sorted(_layer_linear_names() + ["head.dense.weight", "head.dense.bias", "head.bias",
                                               "encoder.tok_emb.weight"])
    assert cast_parameters(model) == expected
    assert cast_parameters(model, precision="fp16-amp") == expected
    untied = cast_parameters(EncoderForMaskedLM(EncoderConfig.tiny(), tie_weights=False))
    assert "encoder.tok_emb.weight" not in untied and "head.decoder.weight" in untied


def test_cast_parameters_on_the_tiny_classifier_casts_no_embedding():
    torch.manual_seed(0)
    model = EncoderForSequenceClassification(EncoderConfig.tiny())
    names = cast_parameters(model)
    assert names == sorted(_layer_linear_names() + ["pooler.weight", "pooler.bias", "classifier.weight",
                                                    "classifier.bias"])
    assert not any("emb" in n or "norm" in n for n in names)


def test_cast_parameters_negative_control_sees_nothing_without_a_cast():
    model = EncoderForSequenceClassification(EncoderConfig.tiny())
    ids = torch.zeros(1, 2, dtype=torch.long)
    assert cast_parameters(model, lambda: None) == []                        # the model does not run
    assert cast_parameters(model, lambda: model.encoder.tok_emb(ids)) == []  # a lookup casts nothing


def test_parameter_memory_half_copies_count_only_what_autocast_casts():
    cfg = EncoderConfig.tiny()
    torch.manual_seed(0)
    mlm, cls = EncoderForMaskedLM(cfg), EncoderForSequenceClassification(cfg)
    h, v, labels = cfg.hidden, cfg.vocab_size, cfg.num_labels
    mlm_cast = _linear_elements(cfg) + (h * h + h) + v + v * h          # + dense, decoder bias, tied decoder
    cls_cast = _linear_elements(cfg) + (h * h + h) + (h * labels + labels)  # + pooler, classifier
    assert parameter_memory(mlm, "bf16-amp").half_copies == 2 * mlm_cast
    assert parameter_memory(cls, "fp16-amp").half_copies == 2 * cls_cast
    # negative control: the old rule (2 bytes for every trainable parameter) charges the embeddings
    # and LayerNorms, which autocast leaves in float32
    n_cls = sum(p.numel() for p in cls.parameters())
    assert 2 * n_cls > 6 * parameter_memory(cls, "bf16-amp").half_copies


def test_parameter_memory_without_an_example_input_uses_the_module_rule():
    model = nn.Sequential(nn.Embedding(5, 4), nn.LayerNorm(4), nn.Linear(4, 3))
    # only the Linear: 4*3 + 3 = 15 elements, 2 bytes each
    assert parameter_memory(model, "bf16-amp").half_copies == 30
    assert "Linear" in CAST_MODULES and "Embedding" not in CAST_MODULES
    ids = torch.tensor([[1, 2]])
    assert cast_parameters(model, lambda: model(ids)) == ["2.bias", "2.weight"]   # the rule, measured
    # fn= measures instead of the rule: a weight used through F.linear is found
    emb = nn.Embedding(5, 4)
    tied = nn.Sequential(emb)
    assert parameter_memory(tied, "bf16-amp").half_copies == 0
    assert parameter_memory(tied, "bf16-amp", fn=lambda: F.linear(emb(ids), emb.weight)).half_copies == 40


@pytest.mark.parametrize("precision", ["fp32", "bf16-amp", "fp16-amp", "bf16-pure"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd", "momentum"])
def test_measured_parameter_memory_equals_the_arithmetic_on_tiny_models(precision, optimizer):
    torch.manual_seed(0)
    for model in (EncoderForMaskedLM(EncoderConfig.tiny()), EncoderForSequenceClassification(EncoderConfig.tiny())):
        assert measured_parameter_memory(model, precision, optimizer) == parameter_memory(model, precision, optimizer)


def test_measured_parameter_memory_by_hand_on_a_linear():
    lin = nn.Linear(3, 4)
    before = [p.detach().clone() for p in lin.parameters()]
    loss = lambda m: m(torch.ones(2, 3, dtype=m.weight.dtype)).float().sum()
    # 16 parameters: 64 bytes each of weights and gradients, Adam's two moments 128, bf16 casts 32
    assert measured_parameter_memory(lin, "bf16-amp", loss_fn=loss) == dict(
        parameters=16, trainable=16, weights=64, gradients=64, optimizer=128, half_copies=32, total=288)
    assert measured_parameter_memory(lin, "bf16-pure", "momentum", loss_fn=loss) == dict(
        parameters=16, trainable=16, weights=32, gradients=32, optimizer=32, half_copies=0, total=96)
    assert all(torch.equal(a, b) for a, b in zip(before, lin.parameters())) and lin.weight.grad is None


def test_cast_and_measured_memory_refuse_bad_input():
    lin = nn.Linear(3, 4)
    with pytest.raises(PadlabError, match="precision"):
        cast_parameters(lin, lambda: lin(torch.ones(1, 3)), precision="fp32")
    with pytest.raises(PadlabError, match="fn"):
        cast_parameters(lin)                       # no config.vocab_size, no fn
    with pytest.raises(PadlabError, match="fn"):
        cast_parameters(lin, fn=3)
    with pytest.raises(PadlabError, match="fn"):
        parameter_memory(lin, "bf16-amp", fn="run")
    with pytest.raises(PadlabError, match="loss_fn"):
        measured_parameter_memory(lin)
    with pytest.raises(PadlabError, match="model"):
        measured_parameter_memory("model")


def test_parameter_memory_example_forward_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = EncoderForSequenceClassification(EncoderConfig.tiny(dropout=0.1))
    model.encoder.train()
    model.classifier.eval()
    before = {n: m.training for n, m in model.named_modules()}
    weights = [p.detach().clone() for p in model.parameters()]
    parameter_memory(model, "bf16-amp")
    cast_parameters(model)
    assert {n: m.training for n, m in model.named_modules()} == before
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))
    assert all(p.grad is None for p in model.parameters())
