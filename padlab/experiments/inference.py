"""Inference under a named precision: the seed's claim "FP16 suits inference", measured.

A model trained in float32 is copied (the caller's model is never changed) and prepared for one
of the inference precisions of :data:`INFERENCE_PRECISIONS`; :func:`evaluate_precisions` scores
each against float32 on chapter 06's tasks (:func:`padlab.experiments.amp_matrix.make_task`), and
:func:`time_forward` measures its throughput and latency on real padded batches. The table::

    name            weights stored                    matmuls in          forward context (precision.POLICIES)
    fp32            float32                           float32             fp32
    tf32            float32                           TF32 (CUDA)         tf32
    fp16-autocast   float32                           float16             fp16-amp (its forward; no scaler)
    bf16-autocast   float32                           bfloat16            bf16-amp
    fp16-pure       float16 (the whole model)         float16             fp16-pure
    bf16-pure       bfloat16 (the whole model)        bfloat16            bf16-pure
    fp8-weights     Linear weights e4m3, a scale per  bfloat16 (weights   bf16-amp
                    output channel; the rest float32  dequantised)
    fp8-matmul      Linear weights e4m3, per-tensor   e4m3 x e4m3 through bf16-amp
                    scale; activations e4m3 per call  torch._scaled_mm,
                                                      bf16 out

Each name maps onto one training policy of :data:`padlab.precision.POLICIES` (``policy``): its
forward context (:func:`padlab.precision.autocast_context`: TF32 flag and autocast) and its weight
dtype. This is not a second policy table: inference needs no loss scaling and no optimizer, and
the two fp8 rows add only how ``nn.Linear`` layers store and multiply their weights. Where a
Linear's sizes are not multiples of 16 (``torch._scaled_mm``'s rule; a 45-class head), the
``fp8-matmul`` copy keeps that layer in ``fp8-weights`` form and says how many it kept.

:func:`fp8_support` is the capability probe (a typed result): fp8 weights need torch's float8
dtypes; fp8 matmuls need a CUDA GPU of compute capability >= 8.9 and ``torch._scaled_mm`` (it runs
a 16 x 16 product to be sure). A precision the device cannot run is skipped, with its reason
(:func:`check_precision`).
"""
from __future__ import annotations

import copy
import functools
import math
import statistics
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._validate import check_choice, check_int, fail
from ..env import resolve_device
from ..precision import PolicyWarning, autocast_context, check_policy, get_policy
from ..train import predict, score, to_device
from .amp_matrix import Task, make_task
from .bench import StepTimer, sync

__all__ = ["InferencePrecision", "INFERENCE_PRECISIONS", "HALF_PRECISIONS", "FP8_MAX", "Fp8Support",
           "fp8_support", "PrecisionCheck", "check_precision", "quantize_fp8", "dequantize_fp8", "Float8Linear",
           "InferenceModel", "prepare_inference", "compare_to_reference", "evaluate_precisions",
           "speed_batches", "time_forward"]


@dataclass(frozen=True)
class InferencePrecision:
    """One inference precision: the training policy whose forward it uses, and how fp8 stores Linear weights."""

    name: str
    policy: str        # a key of padlab.precision.POLICIES: forward context and weight dtype
    fp8: str | None    # None, "weights" (weight-only e4m3) or "matmul" (e4m3 x e4m3 via torch._scaled_mm)
    description: str

    @property
    def half(self) -> bool:
        """True when the maths runs below float32 (fp16, bf16 or fp8): the rows the verdict judges."""
        return self.fp8 is not None or get_policy(self.policy).half is not None


#: THE inference table (see the module docstring): name -> :class:`InferencePrecision`.
INFERENCE_PRECISIONS: dict[str, InferencePrecision] = {p.name: p for p in (
    InferencePrecision("fp32", "fp32", None, "float32 everywhere: the reference"),
    InferencePrecision("tf32", "tf32", None, "float32 weights; CUDA matmuls round their inputs to TF32"),
    InferencePrecision("fp16-autocast", "fp16-amp", None, "float32 weights, torch.autocast float16"),
    InferencePrecision("bf16-autocast", "bf16-amp", None, "float32 weights, torch.autocast bfloat16"),
    InferencePrecision("fp16-pure", "fp16-pure", None, "a float16 copy of the whole model"),
    InferencePrecision("bf16-pure", "bf16-pure", None, "a bfloat16 copy of the whole model"),
    InferencePrecision("fp8-weights", "bf16-amp", "weights",
                       "Linear weights stored e4m3 with a per-output-channel scale, dequantised to bfloat16 "
                       "for the matmul; the rest float32 under bf16 autocast"),
    InferencePrecision("fp8-matmul", "bf16-amp", "matmul",
                       "Linear weights and activations e4m3 with per-tensor scales, multiplied by "
                       "torch._scaled_mm into bfloat16; the rest float32 under bf16 autocast"),
)}
#: The names whose maths runs below float32.
HALF_PRECISIONS: tuple[str, ...] = tuple(n for n, p in INFERENCE_PRECISIONS.items() if p.half)
#: The largest finite float8_e4m3fn value.
FP8_MAX: float = 448.0
_FP8_MIN_CAPABILITY = (8, 9)


def _get(name: Any) -> InferencePrecision:
    if isinstance(name, InferencePrecision):
        return name
    return INFERENCE_PRECISIONS[check_choice("precision", name, tuple(INFERENCE_PRECISIONS))]


# ----------------------------------------------------------------------------- probes

class Fp8Support(NamedTuple):
    """What fp8 inference can do on a device (:func:`fp8_support`).

    ``dtypes``: torch has ``float8_e4m3fn`` (enough for ``fp8-weights``, on any device);
    ``scaled_mm``: ``torch._scaled_mm`` exists; ``capability``: the CUDA compute capability
    (``None`` off CUDA); ``matmul``: ``fp8-matmul`` runs here (a 16 x 16 ``_scaled_mm`` ran);
    ``reason``: why ``matmul`` is False ("" when it is True).
    """

    device: str
    dtypes: bool
    scaled_mm: bool
    capability: tuple[int, int] | None
    min_capability: tuple[int, int]
    matmul: bool
    reason: str


def fp8_support(device: "str | torch.device" = "cpu") -> Fp8Support:
    """Probe fp8 on ``device``: the dtypes, ``torch._scaled_mm``, the GPU's capability and one tiny product
    (run once per device and process; every later call returns the same answer)."""
    return _fp8_probe(str(resolve_device(device)))


@functools.lru_cache(maxsize=None)
def _fp8_probe(device: str) -> Fp8Support:
    dev = torch.device(device)
    dtypes = hasattr(torch, "float8_e4m3fn")
    has_mm = hasattr(torch, "_scaled_mm")
    cap = tuple(torch.cuda.get_device_capability(dev)) if dev.type == "cuda" else None
    reason = ""
    if not dtypes:
        reason = f"torch {torch.__version__} has no float8_e4m3fn dtype"
    elif not has_mm:
        reason = f"torch {torch.__version__} has no torch._scaled_mm"
    elif cap is None:
        reason = (f"fp8 matmuls (torch._scaled_mm) need a CUDA GPU of compute capability >= "
                  f"{_FP8_MIN_CAPABILITY[0]}.{_FP8_MIN_CAPABILITY[1]}; device is {dev.type}")
    elif cap < _FP8_MIN_CAPABILITY:
        reason = (f"fp8 matmuls need compute capability >= {_FP8_MIN_CAPABILITY[0]}.{_FP8_MIN_CAPABILITY[1]} "
                  f"(Ada, Hopper); this GPU has {cap[0]}.{cap[1]}")
    else:
        try:
            a = torch.ones(16, 16, device=dev).to(torch.float8_e4m3fn)
            one = torch.ones((), device=dev)
            out = torch._scaled_mm(a, a.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
            if float(out[0, 0]) != 16.0:
                reason = f"torch._scaled_mm ran but gave {float(out[0, 0])} for 16 (expected 16.0)"
        except Exception as exc:  # noqa: BLE001 -- any failure of the probe means "not here", with its words
            reason = f"torch._scaled_mm failed: {type(exc).__name__}: {str(exc)[:200]}"
    return Fp8Support(str(dev), dtypes, has_mm, cap, _FP8_MIN_CAPABILITY, dtypes and has_mm and not reason, reason)


class PrecisionCheck(NamedTuple):
    """Whether an inference precision runs on a device, and why not (``reason``; "" when it does)."""

    precision: str
    runnable: bool
    reason: str


def check_precision(precision: "str | InferencePrecision", device: "str | torch.device") -> PrecisionCheck:
    """Can ``precision`` run on ``device``? fp8 by :func:`fp8_support`, the rest by :func:`padlab.precision.check_policy`."""
    p = _get(precision)
    dev = resolve_device(device)
    policy_check = check_policy(p.policy, dev)
    if not policy_check.runnable:
        return PrecisionCheck(p.name, False, policy_check.reason)
    if p.fp8 is not None:
        s = fp8_support(dev)
        if not s.dtypes:
            return PrecisionCheck(p.name, False, s.reason)
        if p.fp8 == "matmul" and not s.matmul:
            return PrecisionCheck(p.name, False, s.reason)
    return PrecisionCheck(p.name, True, "")


# ----------------------------------------------------------------------------- fp8 layers

def quantize_fp8(weight: Tensor, *, per_channel: bool = True) -> tuple[Tensor, Tensor]:
    """``(w8, scale)``: ``weight`` as float8_e4m3fn with ``weight ~= w8.float() * scale``.

    The scale maps each output channel's (row's) largest magnitude to :data:`FP8_MAX`
    (``per_channel``; a ``(rows, 1)`` float32 tensor) or the whole tensor's (a 0-d tensor). An
    all-zero row keeps scale 1. Values are clamped to +-448 before the cast, so a rounding of
    ``amax / scale`` just above 448 cannot become NaN (e4m3fn has no infinity).
    """
    if not isinstance(weight, Tensor) or weight.ndim != 2 or not weight.is_floating_point():
        raise fail("weight", getattr(weight, "shape", weight), "be a 2-D floating-point tensor (out, in)")
    w = weight.detach().float()
    amax = w.abs().amax(dim=1, keepdim=True) if per_channel else w.abs().amax()
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    w8 = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return w8, scale


def dequantize_fp8(w8: Tensor, scale: Tensor, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """``(w8 as float32 * scale)`` rounded once to ``dtype``: what :func:`quantize_fp8` stored."""
    return (w8.float() * scale).to(dtype)


class Float8Linear(nn.Module):
    """An ``nn.Linear`` whose weight is stored as float8_e4m3fn with a float32 scale.

    ``mode="weights"``: a scale per output channel; each forward dequantises the weight to
    bfloat16 and multiplies in bfloat16. ``mode="matmul"``: one scale for the weight; each
    forward scales its input by its own largest magnitude (per tensor, per call), casts it to
    e4m3 and multiplies with ``torch._scaled_mm`` (float32 accumulation, bfloat16 out). The
    bias is kept in bfloat16. Output: bfloat16.
    """

    def __init__(self, linear: nn.Linear, mode: str = "weights") -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise fail("linear", linear, "be a torch.nn.Linear")
        self.mode = check_choice("mode", mode, ("weights", "matmul"))
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w8, scale = quantize_fp8(linear.weight, per_channel=mode == "weights")
        self.register_buffer("weight_fp8", w8)
        self.register_buffer("weight_scale", scale)
        bias = linear.bias.detach().to(torch.bfloat16) if linear.bias is not None else None
        self.register_buffer("bias", bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, mode={self.mode!r}"

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "weights":
            return F.linear(x.to(torch.bfloat16), dequantize_fp8(self.weight_fp8, self.weight_scale), self.bias)
        flat = x.reshape(-1, self.in_features)
        amax = flat.detach().abs().amax().float()
        sx = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        x8 = (flat.float() / sx).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        # The second operand must be column-major: the (out, in) row-major weight transposed is.
        out = torch._scaled_mm(x8, self.weight_fp8.t(), scale_a=sx, scale_b=self.weight_scale, bias=self.bias,
                               out_dtype=torch.bfloat16)
        return out.reshape(*x.shape[:-1], self.out_features)


def _swap_linears(module: nn.Module, mode: str) -> tuple[int, int]:
    # Replace every nn.Linear below ``module`` in place (on a copy); returns (in mode, kept as weights).
    done = kept = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear):
            fits = child.in_features % 16 == 0 and child.out_features % 16 == 0
            use = mode if (mode == "weights" or fits) else "weights"
            setattr(module, name, Float8Linear(child, use))
            done += use == mode
            kept += use != mode
        else:
            d, k = _swap_linears(child, mode)
            done, kept = done + d, kept + k
    return done, kept


# ----------------------------------------------------------------------------- prepare

@dataclass
class InferenceModel:
    """What :func:`prepare_inference` returns: the prepared copy, its precision and device.

    ``fp8_layers``: Linear layers in the precision's fp8 form; ``fp8_fallback_layers``: layers
    of an ``fp8-matmul`` copy kept in ``fp8-weights`` form (sizes not multiples of 16);
    ``weight_bytes``: bytes of every parameter and buffer of the copy.
    """

    model: nn.Module
    precision: InferencePrecision
    device: torch.device
    fp8_layers: int
    fp8_fallback_layers: int
    weight_bytes: int

    @property
    def policy(self) -> str:
        """The :data:`padlab.precision.POLICIES` name whose forward context the copy runs under."""
        return self.precision.policy

    def context(self) -> Any:
        """The forward context: :func:`padlab.precision.autocast_context` of the precision's policy."""
        return autocast_context(self.precision.policy, self.device)


def prepare_inference(model: nn.Module, precision: "str | InferencePrecision",
                      device: "str | torch.device") -> InferenceModel:
    """A copy of ``model`` on ``device``, in eval mode, ready to run under ``precision``.

    Pure precisions cast the whole copy; fp8 ones swap each ``nn.Linear`` for a
    :class:`Float8Linear`. Raises :class:`padlab.PadlabError` naming ``precision`` when the
    device cannot run it (:func:`check_precision`). ``model`` itself is never changed.
    """
    if not isinstance(model, nn.Module):
        raise fail("model", model, "be a torch.nn.Module")
    p = _get(precision)
    dev = resolve_device(device)
    check = check_precision(p, dev)
    if not check.runnable:
        raise fail("precision", p.name, f"be runnable on device {str(dev)!r} ({check.reason})")
    dtype = get_policy(p.policy).param_dtype
    m = copy.deepcopy(model).to(device=dev, dtype=dtype).eval()
    done = kept = 0
    if p.fp8 is not None:
        with torch.no_grad():
            done, kept = _swap_linears(m, p.fp8)
        m = m.to(dev)
    size = sum(t.numel() * t.element_size() for t in (*m.parameters(), *m.buffers()))
    return InferenceModel(m, p, dev, done, kept, int(size))


# ----------------------------------------------------------------------------- accuracy

def _predict(prepared: InferenceModel, batches: Sequence[Mapping[str, Any]]) -> tuple[Tensor, Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PolicyWarning)
        logits, labels = predict(prepared.model, batches, prepared.policy)
    return logits.cpu(), labels.cpu()


def compare_to_reference(logits: Tensor, reference: Tensor, labels: Tensor, task: Task) -> dict[str, Any]:
    """Metrics of ``logits`` (:func:`padlab.train.score`) and how they differ from the float32 ``reference``.

    Classification: ``accuracy`` and ``agreement`` (fraction of predicted classes equal to the
    reference's), ``max_abs_logit_diff``. Regression: ``mae`` in the target's units (the
    standardisation undone) and ``max_abs_diff``, the largest prediction difference in those
    units. NaN/inf predictions count in ``nonfinite`` and make the differences inf.
    """
    if not isinstance(task, Task):
        raise fail("task", task, "be a Task from make_task()")
    if logits.shape != reference.shape:
        raise fail("logits", tuple(logits.shape), f"have the reference's shape {tuple(reference.shape)}")
    m = score(logits, labels, task=task.kind, target_mean=task.target_mean, target_std=task.target_std)
    a, r = logits.double(), reference.double()
    if task.kind == "classification":
        diff = (a - r).abs()
        m["agreement"] = (a.argmax(-1) == r.argmax(-1)).double().mean().item()
        m["max_abs_logit_diff"] = diff.max().item() if torch.isfinite(diff).all() else math.inf
        m["nonfinite"] = int((~torch.isfinite(a)).any(-1).sum())
    else:
        diff = ((a - r) * task.target_std).abs()
        m["max_abs_diff"] = diff.max().item() if torch.isfinite(diff).all() else math.inf
    return m


def evaluate_precisions(model: nn.Module, task: Task, precisions: Iterable[str],
                        device: "str | torch.device") -> list[dict[str, Any]]:
    """One row per precision: ``model`` (trained in float32) evaluated on ``task.eval`` under it.

    Each row holds :func:`compare_to_reference` against the ``fp32`` predictions, ``metric``
    (``accuracy`` or ``mae``), its ``value`` and ``change_vs_fp32`` (value minus fp32's), the
    precision's ``half`` flag and ``weight_bytes``. A precision the device cannot run gives a
    row with ``skipped`` and its ``reason``; one that fails gives a row with ``error``.
    """
    if not isinstance(task, Task):
        raise fail("task", task, "be a Task from make_task()")
    names = [_get(n).name for n in precisions]
    dev = resolve_device(device)
    metric = "accuracy" if task.kind == "classification" else "mae"
    ref_logits, labels = _predict(prepare_inference(model, "fp32", dev), task.eval)
    ref = compare_to_reference(ref_logits, ref_logits, labels, task)[metric]
    rows = []
    for name in names:
        p = INFERENCE_PRECISIONS[name]
        row: dict[str, Any] = {"task": task.name, "kind": task.kind, "unit": task.spec.unit, "precision": name,
                               "policy": p.policy, "half": p.half, "metric": metric}
        check = check_precision(p, dev)
        if not check.runnable:
            rows.append({**row, "skipped": True, "reason": check.reason})
            continue
        try:
            prepared = prepare_inference(model, p, dev)
            logits, _ = _predict(prepared, task.eval)
            m = compare_to_reference(logits, ref_logits, labels, task)
            row.update(m, value=m[metric], fp32_value=ref, change_vs_fp32=m[metric] - ref,
                       weight_bytes=prepared.weight_bytes, fp8_layers=prepared.fp8_layers,
                       fp8_fallback_layers=prepared.fp8_fallback_layers)
        except Exception as exc:  # noqa: BLE001 -- one failing precision must not lose the others' rows
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- speed

def speed_batches(batch_size: int, *, n_batches: int = 8, task: str = "wordnet-topic", seed: int = 0,
                  pad_to_multiple_of: int | None = 8) -> list[dict[str, Tensor]]:
    """``n_batches`` dynamically padded batches of ``batch_size`` real texts of ``task``'s corpus
    (:func:`padlab.experiments.amp_matrix.make_task`'s eval batches: :class:`padlab.padding.PaddingCollator`)."""
    batch_size = check_int("batch_size", batch_size, min_value=1)
    n_batches = check_int("n_batches", n_batches, min_value=1)
    t = make_task(task, n_train=1, n_eval=batch_size * n_batches, batch_size=batch_size, seed=seed,
                  pad_to_multiple_of=pad_to_multiple_of)
    return t.eval


def time_forward(prepared: InferenceModel, batches: Sequence[Mapping[str, Any]], *, warmup: int = 1,
                 repeats: int = 5) -> dict[str, Any]:
    """Latency and throughput of ``prepared``'s forward pass over ``batches``.

    ``warmup`` passes over every batch first (every shape, kernels chosen and cached), then
    ``repeats`` timed passes; each batch is timed alone (CUDA events with a sync after each
    batch on a GPU, the host clock elsewhere), so a batch's time is its latency, launch overhead
    included. Returns the median, first and third quartile ms per batch, ``sequences_per_s``
    and ``real_tokens_per_s`` (and ``padded_tokens_per_s``) over all timed batches, the copy's
    ``weight_bytes`` and, on CUDA, ``peak_memory_bytes`` (weights plus the largest activations).
    """
    if not isinstance(prepared, InferenceModel):
        raise fail("prepared", prepared, "be an InferenceModel from prepare_inference()")
    warmup = check_int("warmup", warmup, min_value=0)
    repeats = check_int("repeats", repeats, min_value=1)
    if not batches:
        raise fail("batches", batches, "hold at least one batch")
    dev = prepared.device
    keys = ("input_ids", "attention_mask", "position_ids")
    on_dev = [to_device({k: b[k] for k in keys if k in b}, dev) for b in batches]
    seqs = [int(b["input_ids"].shape[0]) for b in on_dev]
    real = [int(b["attention_mask"].sum()) if "attention_mask" in b else int(b["input_ids"].numel()) for b in on_dev]
    slots = [int(b["input_ids"].numel()) for b in on_dev]
    model = prepared.model

    def run(b: Mapping[str, Tensor]) -> None:
        model(b["input_ids"], **{k: b[k] for k in keys[1:] if k in b})

    times: list[float] = []
    if dev.type == "cuda":
        sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    with warnings.catch_warnings(), torch.inference_mode(), prepared.context():
        warnings.simplefilter("ignore", PolicyWarning)
        for _ in range(warmup):
            for b in on_dev:
                run(b)
        sync(dev)
        for _ in range(repeats):
            for b in on_dev:
                with StepTimer(dev) as t:
                    run(b)
                times.append(t.ms)
    peak = int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None
    total_s = sum(times) / 1e3
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [times[0]] * 3
    return {"batch_size": max(seqs), "batches": len(on_dev), "repeats": repeats, "warmup": warmup,
            "ms_median": statistics.median(times), "ms_q1": q[0], "ms_q3": q[2],
            "sequences_per_s": sum(seqs) * repeats / total_s, "real_tokens_per_s": sum(real) * repeats / total_s,
            "padded_tokens_per_s": sum(slots) * repeats / total_s,
            "mean_padded_length": sum(slots) / sum(seqs), "mean_real_length": sum(real) / sum(seqs),
            "peak_memory_bytes": peak, "weight_bytes": prepared.weight_bytes}
