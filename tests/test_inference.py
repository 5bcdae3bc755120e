"""padlab.experiments.inference and benchmarks/h200_inference.py on the CPU: every precision prepares
and runs (fp8-matmul skipped with the probe's reason), fp8 quantisation against a hand-made reference,
the caller's model untouched, the accuracy rows against a plain recomputation, one test per bad input."""
from __future__ import annotations

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from padlab import PadlabError
from padlab.experiments import amp_matrix, inference, results
from padlab.experiments.inference import INFERENCE_PRECISIONS, Float8Linear
from padlab.models import EncoderConfig, EncoderForSequenceClassification

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "h200_inference.py"
E4M3 = torch.float8_e4m3fn


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny forwards on a shared 2-core machine: two threads' spin-waits made them 30x slower at random.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def topic():
    return amp_matrix.make_task("wordnet-topic", n_train=8, n_eval=24, batch_size=8, seed=0)


@pytest.fixture(scope="module")
def length():
    return amp_matrix.make_task("wordnet-length", n_train=8, n_eval=24, batch_size=8, seed=0)


def _model(task, seed=0):
    torch.manual_seed(seed)
    return EncoderForSequenceClassification(EncoderConfig.tiny(num_labels=task.num_labels), task=task.kind)


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- table and probe

def test_the_table_maps_onto_the_policy_table():
    from padlab.precision import POLICIES

    assert list(INFERENCE_PRECISIONS) == ["fp32", "tf32", "fp16-autocast", "bf16-autocast", "fp16-pure",
                                          "bf16-pure", "fp8-weights", "fp8-matmul"]
    assert all(p.policy in POLICIES for p in INFERENCE_PRECISIONS.values())
    assert inference.HALF_PRECISIONS == ("fp16-autocast", "bf16-autocast", "fp16-pure", "bf16-pure",
                                         "fp8-weights", "fp8-matmul")


def test_fp8_probe_says_why_there_is_no_fp8_matmul_on_a_cpu():
    s = inference.fp8_support("cpu")
    assert isinstance(s, inference.Fp8Support) and isinstance(s, tuple)
    assert s.dtypes and s.capability is None and s.min_capability == (8, 9)
    assert s.matmul is False
    assert "8.9" in s.reason and "cpu" in s.reason
    check = inference.check_precision("fp8-matmul", "cpu")
    assert check == inference.PrecisionCheck("fp8-matmul", False, s.reason)
    assert inference.check_precision("fp8-weights", "cpu").runnable


@pytest.mark.parametrize("name", list(INFERENCE_PRECISIONS))
def test_each_precision_prepares_and_runs(name, topic):
    check = inference.check_precision(name, "cpu")
    if not check.runnable:
        assert name == "fp8-matmul" and check.reason == inference.fp8_support("cpu").reason
        pytest.skip(check.reason)
    model = _model(topic)
    prepared = inference.prepare_inference(model, name, "cpu")
    assert not prepared.model.training and prepared.precision.name == name
    lin = [m for m in prepared.model.modules() if isinstance(m, torch.nn.Linear)]
    f8 = [m for m in prepared.model.modules() if isinstance(m, Float8Linear)]
    if name.startswith("fp8"):
        assert not lin and len(f8) == prepared.fp8_layers == 2 * 4 + 2   # 4 per layer + pooler + classifier
        assert all(m.weight_fp8.dtype == E4M3 for m in f8)
    else:
        assert not f8 and prepared.fp8_layers == 0
    want = {"fp16-pure": torch.float16, "bf16-pure": torch.bfloat16}.get(name, torch.float32)
    assert prepared.model.encoder.tok_emb.weight.dtype == want
    speed = inference.time_forward(prepared, topic.eval[:2], warmup=1, repeats=1)
    assert speed["batch_size"] == 8 and speed["ms_median"] > 0 and speed["real_tokens_per_s"] > 0
    assert speed["weight_bytes"] == prepared.weight_bytes
    rows = inference.evaluate_precisions(model, topic, ["fp32", name], "cpu")
    assert "error" not in rows[1] and math.isfinite(rows[1]["value"])


def test_pure_half_halves_the_weight_bytes_and_fp8_shrinks_the_linears(topic):
    model = _model(topic)
    size = {n: inference.prepare_inference(model, n, "cpu").weight_bytes
            for n in ("fp32", "fp16-pure", "fp8-weights")}
    assert size["fp16-pure"] * 2 == size["fp32"]
    lin = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    # each Linear: 4-byte weights -> 1-byte weights + a 4-byte scale per row; 4-byte bias -> 2 bytes
    saved = sum(m.weight.numel() * 3 - m.out_features * 4 + m.out_features * 2 for m in lin)
    assert size["fp32"] - size["fp8-weights"] == saved


# ----------------------------------------------------------------------------- fp8 by hand

def test_fp8_weights_dequantise_exactly_as_quantised_by_hand():
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 4)
    with torch.no_grad():
        lin.weight[2] = 0.0                       # an all-zero row keeps scale 1
        lin.weight[0, 0] = 3.0                    # a row with one large value
    w = lin.weight.detach()
    amax = w.abs().amax(dim=1, keepdim=True)
    scale = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
    w8 = (w / scale).clamp(-448.0, 448.0).to(E4M3)
    deq = (w8.float() * scale).to(torch.bfloat16)

    f = Float8Linear(lin, "weights")
    assert torch.equal(f.weight_scale, scale) and f.weight_scale[2].item() == 1.0
    assert torch.equal(f.weight_fp8.view(torch.uint8), w8.view(torch.uint8))
    assert torch.equal(inference.dequantize_fp8(f.weight_fp8, f.weight_scale), deq)
    assert f.weight_fp8[0].float().abs().max().item() == 448.0   # each row's largest maps onto fp8's largest
    x = torch.randn(3, 5, 32)
    assert torch.equal(f(x), F.linear(x.to(torch.bfloat16), deq, lin.bias.detach().to(torch.bfloat16)))
    # negative control: fp8 really rounds (3 mantissa bits), so the weights are not given back as they were
    assert not torch.equal(deq.float(), w)
    assert (deq.float() - w).abs().max() <= amax.max() * 2.0**-4 + 1e-6


def test_fp8_per_tensor_scale_for_matmul_mode():
    torch.manual_seed(1)
    lin = torch.nn.Linear(32, 16)
    w8, scale = inference.quantize_fp8(lin.weight, per_channel=False)
    s = lin.weight.detach().abs().max() / 448.0
    assert scale.ndim == 0 and torch.equal(scale, s)
    assert torch.equal(w8.view(torch.uint8), (lin.weight.detach() / s).clamp(-448, 448).to(E4M3).view(torch.uint8))


def test_fp8_matmul_layer_against_a_plain_reference():
    # fp8-matmul is refused on a CPU by the probe; torch builds whose CPU runs _scaled_mm still let the layer be checked.
    torch.manual_seed(2)
    lin = torch.nn.Linear(32, 16)
    f = Float8Linear(lin, "matmul")
    x = torch.randn(2, 3, 32)
    try:
        y = f(x)
    except (RuntimeError, NotImplementedError) as exc:
        pytest.skip(f"torch._scaled_mm does not run on this CPU: {exc}")
    sx = x.abs().max() / 448.0
    x8 = (x / sx).clamp(-448, 448).to(E4M3).float()
    ref = (x8.reshape(-1, 32) @ f.weight_fp8.float().t()) * sx * f.weight_scale + lin.bias.detach().to(torch.bfloat16).float()
    assert y.dtype == torch.bfloat16 and y.shape == (2, 3, 16)
    torch.testing.assert_close(y.float().reshape(-1, 16), ref, rtol=2**-7, atol=1e-2)


def test_fp8_matmul_keeps_layers_whose_sizes_are_not_multiples_of_16(topic, monkeypatch):
    # The swap itself is device-free: pretend the probe said yes, and look at the layers only.
    monkeypatch.setattr(inference, "check_precision", lambda p, d: inference.PrecisionCheck(str(p), True, ""))
    prepared = inference.prepare_inference(_model(topic), "fp8-matmul", "cpu")
    modes = {name: m.mode for name, m in prepared.model.named_modules() if isinstance(m, Float8Linear)}
    assert modes["classifier"] == "weights"            # 45 classes: not a multiple of 16
    assert modes["pooler"] == "matmul" and modes["encoder.layers.0.ff1"] == "matmul"
    assert (prepared.fp8_layers, prepared.fp8_fallback_layers) == (9, 1)


# ----------------------------------------------------------------------------- the caller's model

def test_the_callers_model_is_never_changed(topic):
    model = _model(topic)
    model.train()
    before = _state(model)
    for name in INFERENCE_PRECISIONS:
        if inference.check_precision(name, "cpu").runnable:
            inference.prepare_inference(model, name, "cpu")
    inference.evaluate_precisions(model, topic, list(INFERENCE_PRECISIONS), "cpu")
    after = model.state_dict()
    assert model.training
    assert all(isinstance(m, torch.nn.Linear) for m in (model.pooler, model.classifier))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(v.dtype == torch.float32 for v in after.values())


# ----------------------------------------------------------------------------- accuracy rows

def _plain_logits(model, batches, dtype):
    m = copy.deepcopy(model).to(dtype).eval()
    with torch.no_grad():
        return torch.cat([m(b["input_ids"], attention_mask=b["attention_mask"],
                            position_ids=b["position_ids"]).logits.float() for b in batches])


def test_classification_rows_equal_a_plain_recomputation(topic):
    model = _model(topic)
    rows = {r["precision"]: r for r in inference.evaluate_precisions(model, topic, ["fp32", "bf16-pure"], "cpu")}
    labels = torch.cat([b["labels"] for b in topic.eval])
    ref = _plain_logits(model, topic.eval, torch.float32)
    half = _plain_logits(model, topic.eval, torch.bfloat16)
    acc32 = (ref.argmax(-1) == labels).double().mean().item()
    acc16 = (half.argmax(-1) == labels).double().mean().item()
    assert rows["fp32"]["accuracy"] == acc32 and rows["fp32"]["agreement"] == 1.0
    assert rows["bf16-pure"]["accuracy"] == acc16
    assert rows["bf16-pure"]["change_vs_fp32"] == acc16 - acc32
    assert rows["bf16-pure"]["agreement"] == (half.argmax(-1) == ref.argmax(-1)).double().mean().item()
    assert rows["bf16-pure"]["max_abs_logit_diff"] == (half.double() - ref.double()).abs().max().item()
    assert rows["bf16-pure"]["max_abs_logit_diff"] > 0     # negative control: bf16 does change the logits


def test_regression_rows_are_in_the_targets_units(length):
    model = _model(length)
    rows = {r["precision"]: r for r in inference.evaluate_precisions(model, length, ["fp32", "fp16-pure"], "cpu")}
    y = torch.cat([b["labels"] for b in length.eval]).double() * length.target_std + length.target_mean
    ref = _plain_logits(model, length.eval, torch.float32).double().reshape(-1) * length.target_std + length.target_mean
    half = _plain_logits(model, length.eval, torch.float16).double().reshape(-1) * length.target_std + length.target_mean
    assert length.target_std != 1.0       # the standardisation really is undone
    assert rows["fp32"]["mae"] == pytest.approx((ref - y).abs().mean().item(), rel=1e-12)
    assert rows["fp16-pure"]["mae"] == pytest.approx((half - y).abs().mean().item(), rel=1e-12)
    assert rows["fp16-pure"]["max_abs_diff"] == pytest.approx((half - ref).abs().max().item(), rel=1e-12)
    assert rows["fp16-pure"]["change_vs_fp32"] == pytest.approx(rows["fp16-pure"]["mae"] - rows["fp32"]["mae"])


def test_a_skipped_and_a_failing_precision_keep_the_other_rows(topic, monkeypatch):
    real = inference.prepare_inference

    def broken(model, precision, device):
        if getattr(precision, "name", precision) == "bf16-pure":
            raise RuntimeError("CUDA out of memory (pretend)")
        return real(model, precision, device)

    monkeypatch.setattr(inference, "prepare_inference", broken)
    rows = {r["precision"]: r for r in inference.evaluate_precisions(
        _model(topic), topic, ["fp32", "bf16-pure", "fp8-matmul", "fp16-pure"], "cpu")}
    assert rows["bf16-pure"]["error"].startswith("RuntimeError: CUDA out of memory")
    assert rows["fp8-matmul"]["skipped"] and "8.9" in rows["fp8-matmul"]["reason"]
    assert "error" not in rows["fp16-pure"] and math.isfinite(rows["fp16-pure"]["value"])


# ----------------------------------------------------------------------------- verdict

def test_verdict_is_computed_from_the_rows():
    acc = [
        {"task": "t", "precision": "fp32", "half": False, "metric": "accuracy", "value": 0.80, "fp32_value": 0.80,
         "change_vs_fp32": 0.0, "agreement": 1.0},
        {"task": "t", "precision": "fp16-pure", "half": True, "metric": "accuracy", "value": 0.795,
         "fp32_value": 0.80, "change_vs_fp32": -0.005, "agreement": 0.99},
        {"task": "t", "precision": "bf16-pure", "half": True, "metric": "accuracy", "value": 0.78,
         "fp32_value": 0.80, "change_vs_fp32": -0.02, "agreement": 0.95},
        {"task": "r", "precision": "fp32", "half": False, "metric": "mae", "value": 2.0, "fp32_value": 2.0,
         "change_vs_fp32": 0.0, "max_abs_diff": 0.0},
        {"task": "r", "precision": "fp16-pure", "half": True, "metric": "mae", "value": 2.1, "fp32_value": 2.0,
         "change_vs_fp32": 0.1, "max_abs_diff": 0.5},
        {"task": "r", "precision": "fp8-matmul", "skipped": True, "reason": "no"},
    ]
    speed = [{"model": "m", "batch_size": 8, "precision": p, "half": h, "real_tokens_per_s": v, "ms_median": 10.0}
             for p, h, v in (("fp32", False, 100.0), ("tf32", False, 300.0), ("fp16-pure", True, 250.0),
                             ("bf16-pure", True, 200.0))] + [
        {"model": "m", "batch_size": 8, "precision": "fp8-weights", "half": True, "error": "OOM"}]
    v = results.inference_verdict({"accuracy_rows": acc, "speed_rows": speed})
    t, r = v["tasks"]["t"], v["tasks"]["r"]
    assert t["largest_half_change"] == pytest.approx(0.02) and t["largest_half_change_precision"] == "bf16-pure"
    assert t["lowest_agreement"] == 0.95
    assert t["within_tolerance"] == {"fp16-pure": True, "bf16-pure": False}
    assert r["within_tolerance"] == {"fp16-pure": True} and r["largest_max_abs_diff"] == 0.5
    s = v["speed"]["m"]["8"]
    assert s["speedup"] == {"fp32": 1.0, "tf32": 3.0, "fp16-pure": 2.5, "bf16-pure": 2.0}
    assert s["best_half"] == "fp16-pure" and s["best_half_speedup"] == 2.5   # tf32 is not a half precision


# ----------------------------------------------------------------------------- bad input

def test_bad_inputs_name_the_argument(topic):
    model = _model(topic)
    prepared = inference.prepare_inference(model, "fp32", "cpu")
    cases = [
        (lambda: inference.prepare_inference(model, "fp4", "cpu"), "precision"),
        (lambda: inference.check_precision("int8", "cpu"), "precision"),
        (lambda: inference.prepare_inference(model, "fp8-matmul", "cpu"), "precision"),
        (lambda: inference.prepare_inference("not a model", "fp32", "cpu"), "model"),
        (lambda: inference.evaluate_precisions(model, "wordnet-topic", ["fp32"], "cpu"), "task"),
        (lambda: inference.evaluate_precisions(model, topic, ["fp32", "half"], "cpu"), "precision"),
        (lambda: inference.speed_batches(0), "batch_size"),
        (lambda: inference.speed_batches(-3), "batch_size"),
        (lambda: inference.speed_batches(4, n_batches=0), "n_batches"),
        (lambda: inference.speed_batches(4, task="nope"), "task"),
        (lambda: inference.time_forward(model, topic.eval), "prepared"),
        (lambda: inference.time_forward(prepared, topic.eval, repeats=0), "repeats"),
        (lambda: inference.time_forward(prepared, topic.eval, warmup=-1), "warmup"),
        (lambda: inference.time_forward(prepared, []), "batches"),
        (lambda: inference.quantize_fp8(torch.ones(4)), "weight"),
        (lambda: Float8Linear(torch.nn.Linear(16, 16), "int4"), "mode"),
        (lambda: Float8Linear(torch.nn.Conv1d(1, 1, 1)), "linear"),
        (lambda: inference.compare_to_reference(torch.ones(2, 3), torch.ones(2, 4), torch.zeros(2), topic), "logits"),
        (lambda: results.inference_verdict({"rows": []}), "result"),
        (lambda: results.load_inference("/no/such/file.json"), "path"),
    ]
    for call, name in cases:
        with pytest.raises(PadlabError, match=rf"^{name}"):
            call()


# ----------------------------------------------------------------------------- the script

def test_script_quick_run_writes_every_section(tmp_path):
    spec = importlib.util.spec_from_file_location("h200_inference", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "inference.json"
    assert mod.main(["--quick", "--steps", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert {"device", "torch", "date", "command", "config", "fp8", "skipped", "train_rows", "accuracy_rows",
            "speed_rows", "verdict"} <= set(data)
    assert data["command"] == "python benchmarks/h200_inference.py --quick --steps 2 --out inference.json"
    assert data["last_section"] == "done" and data["device"]["device"] == "cpu"
    assert data["skipped"] == [{"precision": "fp8-matmul", "reason": inference.fp8_support("cpu").reason}]
    assert set(data["verdict"]["tasks"]) == {"wordnet-topic", "wordnet-length", "wordnet-length-offset"}
    assert {(r["batch_size"], r["precision"]) for r in data["speed_rows"]} == {
        (b, p) for b in (1, 8) for p in INFERENCE_PRECISIONS if p != "fp8-matmul"}
    assert not [r for r in data["accuracy_rows"] + data["speed_rows"] if "error" in r]
    again = results.load_inference(out)
    assert results.inference_verdict(again) == again["verdict"]
