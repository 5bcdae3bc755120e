"""Precision policies behind one switch, autocast + loss-scaling training steps, underflow statistics.

Six policies, each a :class:`Policy`::

    name        forward maths                 weights   loss scaling   TF32 matmuls
    fp32        float32                       fp32      no             no
    tf32        float32, matmuls in TF32      fp32      no             yes (Ampere+ GPUs)
    fp16-amp    autocast float16              fp32      GradScaler     no
    bf16-amp    autocast bfloat16             fp32      no             no
    fp16-pure   float16 everywhere            fp16      no             no
    bf16-pure   bfloat16 everywhere           bf16      no             no

``*-amp`` keeps float32 *master* weights and optimizer state, and lets :func:`torch.autocast`
choose per op: matrix multiplies run in half precision, reductions such as ``layer_norm``,
``softmax`` inside losses, ``mse_loss`` and ``cross_entropy`` run in float32. ``*-pure`` casts
the weights (and so the optimizer state) to the half format: nothing is kept in float32.

:func:`check_policy` says whether a policy can run on a device, and whether it is pointless
there (fp16 on a CPU runs, but far slower than fp32). :func:`prepare` makes a copy of a model
for a policy (the caller's model is never changed), with its optimizer and GradScaler.
:func:`train_step` runs one step and returns a :class:`StepRecord`; :func:`train` loops.

**The underflow statistic.** fp16's smallest subnormal is ``2**-24``; round-to-nearest-even
stores any magnitude ``<= 2**-25`` (half of it, the tie going to the even pattern 0) as zero.
:func:`grad_underflow_fraction` is the fraction of the *non-zero, finite* gradient values ``g``
for which ``|g * scale| <= 2**-25``: the share of the gradient that a float16 copy, made at that
loss scale, would flush to zero. :func:`train_step` measures it on the parameter gradients
before unscaling (for ``fp16-amp`` the gradients then hold ``g * S``, the values fp16 would
carry at the current scale ``S``), and also at scale 1 (what fp16 without loss scaling would lose).
Parameter gradients stand in for the activation gradients that autocast keeps in fp16 during
the backward pass; :func:`gradient_values` returns both kinds for plots.
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from . import floats
from ._validate import check_choice, check_float, check_int, fail

__all__ = [
    "POLICIES", "Policy", "PolicyCheck", "PolicyWarning", "Prepared", "StepRecord", "TrainRun", "OpDtype",
    "get_policy", "check_policy", "prepare", "tf32_mode", "autocast_context", "default_loss", "default_optimizer",
    "TASKS", "TaskSpec", "Task", "make_task", "run_experiment", "LR_SCHEDULES", "load_matrix", "summarize_matrix", "speed_table",
    "train_step", "train", "evaluate", "grad_underflow_fraction", "gradient_values", "autocast_dtypes", "autocast_table",
    "FP16_FLUSH_THRESHOLD",
]

POLICIES = ("fp32", "tf32", "fp16-amp", "bf16-amp", "fp16-pure", "bf16-pure")

# Magnitudes at or below half of fp16's smallest subnormal (2**-24) round to zero.
FP16_FLUSH_THRESHOLD: float = floats.get_format("fp16").smallest_subnormal / 2


@dataclass(frozen=True)
class Policy:
    """One precision policy: what autocast does, what the weights are stored in, loss scaling, TF32."""

    name: str
    autocast_dtype: torch.dtype | None   # None: no autocast
    param_dtype: torch.dtype             # weights, gradients and optimizer state
    grad_scaler: bool                    # loss scaling with torch.amp.GradScaler
    tf32: bool                           # float32 matmuls may use TF32 tensor cores
    description: str

    @property
    def half(self) -> torch.dtype | None:
        """The half-precision format the policy computes in, if any."""
        return self.autocast_dtype or (self.param_dtype if self.param_dtype != torch.float32 else None)


_POLICY_TABLE: dict[str, Policy] = {p.name: p for p in (
    Policy("fp32", None, torch.float32, False, False, "float32 everywhere: the reference"),
    Policy("tf32", None, torch.float32, False, True,
           "float32 weights; matrix multiplies round their inputs to TF32 (10 mantissa bits) on Ampere+ GPUs"),
    Policy("fp16-amp", torch.float16, torch.float32, True, False,
           "autocast float16 with float32 master weights and a GradScaler"),
    Policy("bf16-amp", torch.bfloat16, torch.float32, False, False,
           "autocast bfloat16 with float32 master weights; no loss scaling (bf16 has fp32's range)"),
    Policy("fp16-pure", None, torch.float16, False, False,
           "weights, gradients and optimizer state all float16; no master copy, no loss scaling"),
    Policy("bf16-pure", None, torch.bfloat16, False, False,
           "weights, gradients and optimizer state all bfloat16; no master copy"),
)}


def get_policy(name: "str | Policy") -> Policy:
    """The :class:`Policy` called ``name`` (one of :data:`POLICIES`)."""
    if isinstance(name, Policy):
        return name
    return _POLICY_TABLE[check_choice("policy", name, POLICIES)]


class PolicyWarning(UserWarning):
    """A policy runs on this device but is pointless there (slower, or no effect)."""


@dataclass(frozen=True)
class PolicyCheck:
    """Whether a policy can run on a device, whether it is pointless there, and why."""

    runnable: bool
    pointless: bool
    reason: str


def _device(device: Any) -> torch.device:
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise fail("device", device, "be a device such as 'cpu', 'cuda', 'cuda:0' or 'mps'") from None
    else:
        raise fail("device", device, "be a device such as 'cpu', 'cuda', 'cuda:0' or 'mps'")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise fail("device", device, "be a 'cpu', 'cuda' or 'mps' device")
    return dev


def _cpu_has_native_bf16() -> bool:
    # Private torch helpers; absent on some builds, so failing to ask means "no".
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001 - any failure of a private probe means "unknown"
            pass
    return False


def check_policy(name: "str | Policy", device: "str | torch.device") -> PolicyCheck:
    """Can ``name`` run on ``device``, and is it worth it there?

    * a CUDA GPU below compute capability 8.0 (a T4 is 7.5) has no bf16 tensor cores: the bf16
      policies cannot run; TF32 is also an Ampere (8.0) feature, so ``tf32`` is pointless there;
    * a CPU runs fp16 (autocast or pure) but has no fast fp16 matrix maths: it runs, pointlessly,
      several times slower than fp32; TF32 is a GPU mode and changes nothing on a CPU;
    * an Apple GPU (mps) runs fp16; padlab does not run bf16 there.
    """
    policy = get_policy(name)
    dev = _device(device)
    half = policy.half
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return PolicyCheck(False, False, "no CUDA GPU is available on this machine")
        major, minor = torch.cuda.get_device_capability(dev)
        cap = f"{major}.{minor}"
        if half == torch.bfloat16 and (major, minor) < (8, 0):
            return PolicyCheck(False, False, f"bf16 needs a GPU of compute capability 8.0 (Ampere) or newer; "
                                             f"this one is {cap} (a T4 is 7.5): use fp16-amp instead")
        if policy.tf32 and (major, minor) < (8, 0):
            return PolicyCheck(True, True, f"TF32 tensor cores arrive with compute capability 8.0; "
                                           f"on {cap} the flag changes nothing: this runs as fp32")
        if half == torch.float16 and (major, minor) < (7, 0):
            return PolicyCheck(True, True, f"GPUs before compute capability 7.0 have no fp16 tensor cores; "
                                           f"on {cap} fp16 saves memory but little time")
        return PolicyCheck(True, False, f"{policy.description}; supported on compute capability {cap}")
    if dev.type == "mps":
        if half == torch.bfloat16:
            return PolicyCheck(False, False, "padlab does not run bf16 on Apple GPUs (mps): use fp16-amp")
        if policy.tf32:
            return PolicyCheck(True, True, "TF32 is an NVIDIA matrix-unit mode; on mps this runs as fp32")
        return PolicyCheck(True, False, policy.description)
    # CPU
    if policy.tf32:
        return PolicyCheck(True, True, "TF32 is an NVIDIA GPU matrix-unit mode; on a CPU it changes "
                                       "nothing: this runs as fp32")
    if half == torch.float16:
        return PolicyCheck(True, True, "runs but pointless: CPUs have no fast fp16 matrix maths, so fp16 "
                                       "is several times slower than fp32 here; use fp32 or bf16-amp on a CPU")
    if half == torch.bfloat16:
        speed = ("this CPU has native bf16 instructions" if _cpu_has_native_bf16() else
                 "without AVX512-BF16 or AMX (as here) bf16 is slower than fp32, but its numbers are the same")
        return PolicyCheck(True, False, f"{policy.description}; {speed}")
    return PolicyCheck(True, False, policy.description)


# ----------------------------------------------------------------------------- contexts

# The per-backend precision settings of torch >= 2.9 ("none", "ieee", "tf32", "bf16"). Reading
# them never fails, and writing the saved values back restores every older view too.
_PRECISION_KNOBS = ("", "cuda.matmul", "cudnn", "cudnn.conv", "cudnn.rnn", "mkldnn", "mkldnn.matmul",
                    "mkldnn.conv", "mkldnn.rnn")


def _knob(path: str) -> Any:
    obj = torch.backends
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part, None)
    return obj


def _precision_state() -> dict[str, str] | None:
    state = {}
    for path in _PRECISION_KNOBS:
        obj = _knob(path)
        value = getattr(obj, "fp32_precision", None) if obj is not None else None
        if isinstance(value, str):
            state[path] = value
    return state or None


@contextlib.contextmanager
def tf32_mode(enabled: bool = True) -> Iterator[None]:
    """Let CUDA float32 matmuls and convolutions use TF32 inside the block; restore every flag after.

    Inside, ``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` are
    ``enabled`` (so ``torch.get_float32_matmul_precision()`` reads ``"high"``). Only the CUDA
    flags change, so CPU matmuls stay exact float32. The previous state is restored even if the
    block raises: the legacy flags, then (torch >= 2.9) every per-backend ``fp32_precision``.
    Restoring with ``set_float32_matmul_precision`` instead would leave the backends disagreeing,
    and torch then refuses to report the precision at all.
    """
    if not isinstance(enabled, bool):
        raise fail("enabled", enabled, "be True or False")
    cuda_mm, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = _precision_state()
    try:
        legacy = (None if saved is not None else torch.get_float32_matmul_precision(),
                  cuda_mm.allow_tf32, cudnn.allow_tf32)
    except RuntimeError:
        legacy = None  # the caller set the new API in a way the legacy flags cannot describe
    try:
        if legacy is not None:
            cuda_mm.allow_tf32 = enabled
            cudnn.allow_tf32 = enabled
        else:
            cuda_mm.fp32_precision = cudnn.conv.fp32_precision = "tf32" if enabled else "ieee"
        yield
    finally:
        # torch >= 2.9 keeps the legacy flags and the per-backend strings side by side and refuses
        # to report either when they disagree: restore the legacy flags first, then the strings.
        if legacy is not None:
            if legacy[0] is not None:
                torch.set_float32_matmul_precision(legacy[0])
            cuda_mm.allow_tf32 = legacy[1]
            cudnn.allow_tf32 = legacy[2]
        for path, value in (saved or {}).items():
            _knob(path).fp32_precision = value


def autocast_context(policy: "str | Policy", device: "str | torch.device") -> contextlib.AbstractContextManager:
    """The forward-pass context of ``policy`` on ``device``: autocast and/or TF32, or nothing."""
    policy = get_policy(policy)
    dev = _device(device)
    stack = contextlib.ExitStack()
    if policy.tf32 and dev.type == "cuda":
        stack.enter_context(tf32_mode(True))
    if policy.autocast_dtype is not None:
        stack.enter_context(torch.autocast(dev.type, dtype=policy.autocast_dtype))
    return stack


# ----------------------------------------------------------------------------- prepare

@dataclass
class Prepared:
    """What :func:`prepare` returns: the model copy, its optimizer and GradScaler, the policy, the device."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: "torch.amp.GradScaler | None"
    policy: Policy
    device: torch.device
    check: PolicyCheck


def default_optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW, lr 1e-3, weight decay 0.01, eps 1e-8 (torch's defaults apart from lr)."""
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)


def prepare(model: nn.Module, optimizer_factory: "Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None",
            policy: "str | Policy", device: "str | torch.device") -> Prepared:
    """A copy of ``model`` on ``device`` in the policy's weight dtype, its optimizer and GradScaler.

    Raises ``ValueError`` (naming the policy and the device) when the policy cannot run there,
    and warns with a :class:`PolicyWarning` when it runs but is pointless. ``optimizer_factory``
    maps parameters to an optimizer (default :func:`default_optimizer`). ``model`` itself is
    never changed: training a policy's copy leaves the caller's weights for the next policy.
    """
    if not isinstance(model, nn.Module):
        raise fail("model", model, "be a torch.nn.Module")
    if optimizer_factory is not None and not callable(optimizer_factory):
        raise fail("optimizer_factory", optimizer_factory, "be a callable mapping parameters to an optimizer")
    policy = get_policy(policy)
    dev = _device(device)
    check = check_policy(policy, dev)
    if not check.runnable:
        raise fail("policy", policy.name, f"be runnable on device {str(dev)!r} ({check.reason})")
    if check.pointless:
        warnings.warn(f"policy {policy.name!r} on device {str(dev)!r}: {check.reason}", PolicyWarning, stacklevel=2)
    copy_ = copy.deepcopy(model).to(device=dev, dtype=policy.param_dtype)
    optimizer = (optimizer_factory or default_optimizer)(copy_.parameters())
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise fail("optimizer_factory", optimizer_factory, "return a torch.optim.Optimizer")
    scaler = torch.amp.GradScaler(dev.type) if policy.grad_scaler else None
    return Prepared(copy_, optimizer, scaler, policy, dev, check)


# ----------------------------------------------------------------------------- statistics

def _grad_list(grads: "Iterable[Tensor | None] | nn.Module") -> list[Tensor]:
    if isinstance(grads, nn.Module):
        return [p.grad for p in grads.parameters() if p.grad is not None]
    if isinstance(grads, Tensor):
        return [grads]
    out = []
    for g in grads:
        if g is None:
            continue
        if not isinstance(g, Tensor) or not g.is_floating_point():
            raise fail("grads", g, "hold floating-point tensors (or None)")
        out.append(g)
    return out


def _flat(grads: list[Tensor]) -> Tensor:
    return torch.cat([g.detach().reshape(-1).float() for g in grads])


def _underflow_count(flat: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """(values that flush to zero at ``scale``, non-zero finite values), as 0-d tensors (no sync)."""
    live = (flat != 0) & torch.isfinite(flat)
    flushed = live & ((flat.abs() * scale) <= FP16_FLUSH_THRESHOLD)
    return flushed.sum(), live.sum()


def grad_underflow_fraction(grads: "Iterable[Tensor | None] | Tensor | nn.Module", scale: float = 1.0) -> float:
    """Fraction of non-zero finite gradient values ``g`` with ``|g * scale| <= 2**-25``.

    Those are the values a float16 copy of ``g * scale`` would round to zero (fp16's smallest
    subnormal is ``2**-24``; half of it ties to the even pattern, zero). ``grads`` is a model
    (its ``.grad`` tensors), a tensor, or an iterable of tensors (``None`` entries are skipped).
    Returns 0.0 when there is no non-zero finite value.
    """
    scale = check_float("scale", scale, min_value=0.0, min_inclusive=False)
    if math.isinf(scale):
        raise fail("scale", scale, "be finite")
    gs = _grad_list(grads)
    if not gs:
        return 0.0
    flushed, live = _underflow_count(_flat(gs), scale)
    live_n = int(live)
    return int(flushed) / live_n if live_n else 0.0


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    if p is None:
        raise fail("model", type(model).__name__, "have parameters")
    return p.device


def _to_device(batch: Any, device: torch.device) -> dict[str, Any]:
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise fail("batch", batch, "be a mapping with 'input_ids' (as PaddingCollator makes)")
    # A new dict: the caller's batch is left as it was.
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def default_loss(model: nn.Module, batch: Mapping[str, Any]) -> Tensor:
    """The model's own loss for ``batch`` (``input_ids``, ``attention_mask``, ``position_ids``, ``labels``)."""
    if "labels" not in batch:
        raise fail("batch", sorted(batch), "hold 'labels' for the default loss")
    kw = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
    out = model(batch["input_ids"], labels=batch["labels"], **kw)
    loss = out["loss"] if isinstance(out, Mapping) else getattr(out, "loss", out)
    return loss


def _logits(model: nn.Module, batch: Mapping[str, Any]) -> Tensor:
    kw = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
    out = model(batch["input_ids"], **kw)
    return out["logits"] if isinstance(out, Mapping) else getattr(out, "logits", out)


# ----------------------------------------------------------------------------- training

@dataclass(frozen=True)
class StepRecord:
    """What one training step did.

    ``loss`` is the unscaled loss (NaN when not measured). ``scale`` is the loss scale used for
    this step (``None`` without a GradScaler). ``skipped``: the GradScaler found inf/NaN in the
    gradients and did not step (the scale then halves). ``underflow_fraction``: see
    :func:`grad_underflow_fraction`, measured on the gradients as the policy holds them before
    unscaling (``g * scale`` for fp16-amp); ``underflow_fraction_unscaled`` is the same at scale 1.
    ``grad_norm`` is the L2 norm of the unscaled gradients (before clipping; inf/NaN if they
    hold one). ``finite``: every gradient value was finite. ``measured``: statistics were taken
    (see ``measure`` in :func:`train_step`); otherwise the float fields are NaN.
    """

    step: int
    loss: float
    scale: float | None
    skipped: bool
    underflow_fraction: float
    underflow_fraction_unscaled: float
    grad_norm: float
    finite: bool
    measured: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_scaler(policy: Policy, scaler: Any) -> None:
    if policy.grad_scaler and not isinstance(scaler, torch.amp.GradScaler):
        raise fail("scaler", scaler, f"be a torch.amp.GradScaler for policy {policy.name!r} (prepare() makes one)")
    if not policy.grad_scaler and scaler is not None:
        raise fail("scaler", type(scaler).__name__, f"be None for policy {policy.name!r}, which uses no loss scaling")


def train_step(model: nn.Module, batch: Mapping[str, Any], optimizer: torch.optim.Optimizer,
               policy: "str | Policy", scaler: "torch.amp.GradScaler | None" = None,
               loss_fn: Callable[[nn.Module, Mapping[str, Any]], Tensor] = default_loss, *,
               max_grad_norm: float | None = None, measure: bool = True, step: int = 0) -> StepRecord:
    """One optimizer step of ``model`` on ``batch`` under ``policy``.

    ``model`` must already hold the policy's weight dtype (use :func:`prepare`); ``scaler`` is
    required for ``fp16-amp`` and must be ``None`` otherwise. The step: zero the gradients,
    forward and loss under the policy's autocast / TF32 context, backward (of the scaled loss
    for fp16-amp), statistics, unscale, optional clipping to ``max_grad_norm``, optimizer step
    (skipped by the GradScaler when a gradient is inf/NaN), scale update.
    ``measure=False`` skips every statistic and host sync (for timing); the record is then
    mostly NaN. ``step`` is only copied into the record.
    """
    policy = get_policy(policy)
    if not isinstance(model, nn.Module):
        raise fail("model", model, "be a torch.nn.Module")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise fail("optimizer", optimizer, "be a torch.optim.Optimizer")
    _check_scaler(policy, scaler)
    if max_grad_norm is not None:
        max_grad_norm = check_float("max_grad_norm", max_grad_norm, min_value=0.0, min_inclusive=False)
    if not callable(loss_fn):
        raise fail("loss_fn", loss_fn, "be a callable (model, batch) -> loss")
    dev = _model_device(model)
    pdtype = next(model.parameters()).dtype
    if pdtype != policy.param_dtype:
        raise fail("model", str(pdtype), f"hold {policy.param_dtype} weights for policy {policy.name!r} "
                                          "(prepare() casts a copy)")
    batch = _to_device(batch, dev)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with autocast_context(policy, dev):
        loss = loss_fn(model, batch)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise fail("loss_fn", loss_fn, "return a one-element loss tensor")
    scale = scaler.get_scale() if (scaler is not None and measure) else None
    (scaler.scale(loss) if scaler is not None else loss).backward()

    stats = None
    if measure:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        flat = _flat([p.grad for p in params]) if params else torch.zeros(1, device=dev)
        s = float(scale) if scale is not None else 1.0
        f_at, live = _underflow_count(flat, 1.0)
        f_one, _ = _underflow_count(flat, 1.0 / s)
        norm = torch.linalg.vector_norm(flat) / s
        finite = torch.isfinite(flat).all()
        # One host sync for every number of the record.
        vals = torch.stack([loss.detach().float().reshape(()), f_at.float(), f_one.float(), live.float(),
                            norm.float(), finite.float()]).tolist()
        stats = vals
    if scaler is not None:
        if max_grad_norm is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
    if stats is None:
        nan = math.nan
        return StepRecord(step, nan, None, False, nan, nan, nan, False, measured=False)
    loss_v, f_at, f_one, live, norm, finite = stats
    skipped = scaler is not None and scaler.get_scale() < scale
    return StepRecord(step, loss_v, scale, bool(skipped), f_at / live if live else 0.0,
                      f_one / live if live else 0.0, norm, bool(finite))


class TrainRun(list):
    """A list of :class:`StepRecord`, one per step, plus the trained copy: ``.model``,
    ``.optimizer``, ``.scaler``, ``.policy``, ``.device``."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: "torch.amp.GradScaler | None"
    policy: Policy
    device: torch.device

    def column(self, field: str) -> np.ndarray:
        """One field of every record as a numpy array (``None`` becomes NaN)."""
        if field not in StepRecord.__dataclass_fields__:
            raise fail("field", field, "be a StepRecord field: " + ", ".join(StepRecord.__dataclass_fields__))
        return np.array([math.nan if getattr(r, field) is None else getattr(r, field) for r in self], dtype=float)


def _cycle(loader: Iterable[Any]) -> Iterator[Any]:
    epoch = 0
    while True:
        sampler = getattr(loader, "batch_sampler", None) or getattr(loader, "sampler", None)
        for obj in (loader, sampler):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise fail("loader", loader, "yield at least one batch")
        epoch += 1


LR_SCHEDULES = ("constant", "linear")


def _schedule(optimizer: torch.optim.Optimizer, name: str, steps: int) -> "torch.optim.lr_scheduler.LRScheduler | None":
    if name == "constant":
        return None
    warmup = max(1, steps // 20)

    def factor(i: int) -> float:
        # Linear warm-up over the first 5% of steps, then linear decay to zero at the last step.
        if i < warmup:
            return (i + 1) / warmup
        return max(0.0, (steps - i) / max(1, steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train(model: nn.Module, loader: Iterable[Mapping[str, Any]], policy: "str | Policy", steps: int,
          device: "str | torch.device", *,
          optimizer_factory: "Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None" = None,
          loss_fn: Callable[[nn.Module, Mapping[str, Any]], Tensor] = default_loss,
          max_grad_norm: float | None = None, measure_every: int = 1, progress: bool = True,
          lr_schedule: str = "constant", stop_after_nonfinite: int | None = None,
          prepared: Prepared | None = None) -> TrainRun:
    """Train a copy of ``model`` for ``steps`` steps under ``policy``; one :class:`StepRecord` per step.

    The copy comes from :func:`prepare` (``model`` itself is not changed) unless ``prepared``
    is given, which is then trained in place (``policy`` and ``device`` must match it).
    ``loader`` is iterated again (a new epoch, ``set_epoch`` called where it exists) when it
    runs out. Statistics are measured every ``measure_every`` steps (others have
    ``measured=False``). ``lr_schedule``: ``"constant"`` or ``"linear"`` (5% warm-up, then
    linear decay to zero). ``stop_after_nonfinite=k`` ends a run without a GradScaler after
    ``k`` measured steps in a row with a non-finite loss (it has diverged and can only stay
    NaN); the run is then shorter than ``steps``. ``progress`` shows a tqdm bar (keep it out of
    compared notebook output).
    """
    steps = check_int("steps", steps, min_value=1)
    measure_every = check_int("measure_every", measure_every, min_value=1)
    stop_after_nonfinite = check_int("stop_after_nonfinite", stop_after_nonfinite, min_value=1, allow_none=True)
    check_choice("lr_schedule", lr_schedule, LR_SCHEDULES)
    if not isinstance(progress, bool):
        raise fail("progress", progress, "be True or False")
    policy = get_policy(policy)
    if prepared is None:
        prepared = prepare(model, optimizer_factory, policy, device)
    elif not isinstance(prepared, Prepared) or prepared.policy != policy or prepared.device != _device(device):
        raise fail("prepared", prepared, f"be a Prepared for policy {policy.name!r} on {str(_device(device))!r}")
    from tqdm.auto import tqdm

    run = TrainRun()
    run.model, run.optimizer, run.scaler = prepared.model, prepared.optimizer, prepared.scaler
    run.policy, run.device = policy, prepared.device
    scheduler = _schedule(prepared.optimizer, lr_schedule, steps)
    batches = _cycle(loader)
    bad_in_a_row = 0
    with tqdm(total=steps, desc=policy.name, disable=not progress, leave=False) as bar:
        for i in range(steps):
            rec = train_step(prepared.model, next(batches), prepared.optimizer, policy, prepared.scaler, loss_fn,
                             max_grad_norm=max_grad_norm, measure=(i % measure_every == 0 or i == steps - 1),
                             step=i)
            run.append(rec)
            if scheduler is not None:
                with warnings.catch_warnings():
                    # A step the GradScaler skipped did not call optimizer.step(); the schedule
                    # still advances (as in torch's AMP recipe), which is what this warning is about.
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
                    scheduler.step()
            bar.update(1)
            if rec.measured and progress:
                bar.set_postfix(loss=f"{rec.loss:.3g}", refresh=False)
            if rec.measured and stop_after_nonfinite and prepared.scaler is None:
                bad_in_a_row = bad_in_a_row + 1 if not math.isfinite(rec.loss) else 0
                if bad_in_a_row >= stop_after_nonfinite:
                    break
    return run


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Mapping[str, Any]], policy: "str | Policy", *,
             task: str = "classification", target_mean: float = 0.0, target_std: float = 1.0) -> dict[str, float]:
    """Score ``model`` on ``batches`` under ``policy``'s forward context (no gradients).

    ``classification``: ``accuracy`` and ``loss`` (mean cross-entropy). ``regression``: the
    prediction and the label are both mapped back to target units by ``y * target_std +
    target_mean`` (in float64), then ``mae``, ``rmse`` and ``max_error``; ``nonfinite`` counts
    NaN/inf predictions (those count as errors of inf). The model's train/eval mode is restored.
    """
    policy = get_policy(policy)
    check_choice("task", task, ("classification", "regression"))
    target_mean = check_float("target_mean", target_mean)
    target_std = check_float("target_std", target_std, min_value=0.0, min_inclusive=False)
    dev = _model_device(model)
    was_training = model.training
    model.eval()
    preds, labels = [], []
    try:
        for b in batches:
            b = _to_device(b, dev)
            with autocast_context(policy, dev):
                logits = _logits(model, b)
            preds.append(logits.float())
            labels.append(b["labels"])
    finally:
        model.train(was_training)
    if not preds:
        raise fail("batches", batches, "yield at least one batch")
    p = torch.cat(preds)
    y = torch.cat(labels)
    if task == "classification":
        acc = (p.argmax(-1) == y).double().mean().item()
        loss = torch.nn.functional.cross_entropy(p, y).item()
        return {"accuracy": acc, "loss": loss, "n": int(y.numel())}
    pv = p.reshape(y.shape).double() * target_std + target_mean
    yv = y.double() * target_std + target_mean
    err = (pv - yv).abs()
    bad = ~torch.isfinite(err)
    err = torch.where(bad, torch.full_like(err, math.inf), err)
    return {"mae": err.mean().item(), "rmse": err.pow(2).mean().sqrt().item(), "max_error": err.max().item(),
            "exact_fraction": (err < 0.5).double().mean().item(), "nonfinite": int(bad.sum()),
            "n": int(y.numel())}


# ----------------------------------------------------------------------------- looking inside

def gradient_values(model: nn.Module, batch: Mapping[str, Any], policy: "str | Policy" = "fp32", *,
                    which: str = "parameters",
                    loss_fn: Callable[[nn.Module, Mapping[str, Any]], Tensor] = default_loss) -> np.ndarray:
    """Every gradient value of one forward/backward pass of ``batch``, as a float64 numpy array.

    ``which="parameters"``: the weight gradients; ``"activations"``: the gradients flowing
    back into the outputs of every ``nn.Linear`` (what autocast keeps in half precision
    during the backward pass). Runs on a copy made for ``policy`` (unscaled, no optimizer
    step): ``model`` and its ``.grad`` are untouched.
    """
    check_choice("which", which, ("parameters", "activations"))
    policy = get_policy(policy)
    dev = _model_device(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PolicyWarning)
        prep = prepare(model, lambda ps: torch.optim.SGD(ps, lr=0.0), policy, dev)
    m = prep.model
    b = _to_device(batch, dev)
    acts: list[Tensor] = []
    handles = []
    if which == "activations":
        def keep(_mod: nn.Module, _inp: Any, out: Tensor) -> None:
            if isinstance(out, Tensor) and out.requires_grad:
                out.register_hook(lambda g: acts.append(g.detach().reshape(-1).double().cpu()))
        handles = [mod.register_forward_hook(keep) for mod in m.modules() if isinstance(mod, nn.Linear)]
    try:
        m.train()
        with autocast_context(policy, dev):
            loss = loss_fn(m, b)
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    if which == "parameters":
        gs = [p.grad for p in m.parameters() if p.grad is not None]
        return _flat(gs).double().cpu().numpy() if gs else np.zeros(0)
    return torch.cat(acts).numpy() if acts else np.zeros(0)


class OpDtype(NamedTuple):
    """One op seen in a forward pass: the module it ran in, the op, and its input and output dtypes."""

    module: str
    op: str
    input_dtype: str
    output_dtype: str


# Functional ops worth reporting: what autocast casts (or leaves alone) in a Transformer.
_TRACKED_OPS = {
    "embedding", "linear", "layer_norm", "scaled_dot_product_attention", "softmax", "gelu", "tanh",
    "cross_entropy", "mse_loss", "add", "matmul", "bmm", "log_softmax",
}


def _dtype_name(x: Any) -> str:
    if isinstance(x, Tensor):
        return str(x.dtype).replace("torch.", "")
    if isinstance(x, (list, tuple)):
        for y in x:
            if isinstance(y, Tensor):
                return _dtype_name(y)
    return "-"


def _float_input_dtypes(args: tuple, kwargs: dict) -> str:
    """Distinct dtypes of the floating tensors among the inputs, in order: ``"float16+float32"``."""
    seen: list[str] = []
    for a in (*args, *kwargs.values()):
        for t in (a if isinstance(a, (list, tuple)) else (a,)):
            if isinstance(t, Tensor) and t.is_floating_point():
                name = _dtype_name(t)
                if name not in seen:
                    seen.append(name)
    return "+".join(seen)


class _OpRecorder(torch.overrides.TorchFunctionMode):
    def __init__(self, stack: list[str], out: list[OpDtype]) -> None:
        super().__init__()
        self.stack, self.out = stack, out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        inputs = _float_input_dtypes(args, kwargs) if name in _TRACKED_OPS else ""
        # Integer-only calls (index arithmetic, embedding ids alone) say nothing about precision.
        if inputs or (name == "embedding" and isinstance(result, Tensor)):
            self.out.append(OpDtype(self.stack[-1] if self.stack else "model", name, inputs or "-",
                                    _dtype_name(result)))
        return result


def autocast_dtypes(model: nn.Module, batch: Mapping[str, Any], policy: "str | Policy",
                    device: "str | torch.device", *,
                    loss_fn: Callable[[nn.Module, Mapping[str, Any]], Tensor] = default_loss) -> list[OpDtype]:
    """Which ops ran in which dtype during one forward pass (and loss) of ``batch`` under ``policy``.

    Forward hooks on every submodule name the module an op runs in (``encoder.layers.0.qkv``);
    a torch-function mode records each tracked functional op (``linear``, ``layer_norm``,
    ``scaled_dot_product_attention``, ``gelu``, ``tanh``, ``add`` (the residual stream),
    ``cross_entropy``, ...) with the dtypes of its floating inputs (``"float16+float32"``: the
    distinct dtypes in argument order, the weights included) and of its output; ops
    of the top-level module's own ``forward`` (the pooler's ``tanh``, the loss) are under ``"model"``.
    Autocast acts below that level, so the output dtype is the dtype the op actually ran in.
    Runs on a copy made by :func:`prepare`; ``model`` is untouched.
    """
    policy = get_policy(policy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PolicyWarning)
        prep = prepare(model, lambda ps: torch.optim.SGD(ps, lr=0.0), policy, device)
    m = prep.model
    b = _to_device(batch, prep.device)
    stack: list[str] = []
    out: list[OpDtype] = []
    handles = []
    for name, mod in m.named_modules():
        if name:
            # Hooks must return None, or torch replaces the module's input / output with what they return.
            handles.append(mod.register_forward_pre_hook(lambda _m, _i, n=name: stack.append(n) and None))
            handles.append(mod.register_forward_hook(lambda _m, _i, _o: stack.pop() and None))
    m.eval()
    try:
        with torch.no_grad(), autocast_context(policy, prep.device), _OpRecorder(stack, out):
            loss_fn(m, b)
    finally:
        for h in handles:
            h.remove()
    return out


def autocast_table(model: nn.Module, batch: Mapping[str, Any], policies: Iterable[str],
                   device: "str | torch.device", *, first_layer_only: bool = True) -> dict[str, dict[str, str]]:
    """:func:`autocast_dtypes` for several policies, as ``{"op (module)": {policy: "in -> out"}}``.

    One entry per (module, op) in the order of the forward pass (the first call of each: a
    residual ``add`` appears once per layer). ``first_layer_only`` keeps layer 0 of a stack
    of identical layers (modules under ``.layers.<n>`` with ``n > 0`` are left out).
    """
    import re

    table: dict[str, dict[str, str]] = {}
    for pol in policies:
        seen = set()
        for o in autocast_dtypes(model, batch, pol, device):
            m = re.search(r"\.layers\.(\d+)", o.module)
            if first_layer_only and m and m.group(1) != "0":
                continue
            key = f"{o.op} ({o.module})"
            if key in seen:
                continue
            seen.add(key)
            table.setdefault(key, {})[get_policy(pol).name] = f"{o.input_dtype} -> {o.output_dtype}"
    return table


# ----------------------------------------------------------------------------- the seed's claims: tasks

@dataclass(frozen=True)
class TaskSpec:
    """A training task built from a shipped corpus (see :data:`TASKS`)."""

    name: str
    kind: str            # "classification" or "regression"
    corpus: str
    target: str          # "label", "tokens" or "chars"
    standardize: bool    # regression targets z-scored with the training set's mean and std
    unit: str
    description: str
    offset: float = 0.0  # added to the raw target (a value far from zero, as a year or a price is)


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("wordnet-topic", "classification", "wordnet", "label", False, "accuracy",
             "classify each WordNet gloss into its lexicographer file (45 classes: noun.animal, verb.motion, ...)"),
    TaskSpec("wordnet-length", "regression", "wordnet", "tokens", True, "tokens",
             "regress each gloss's exact token count (7 to 172), z-scored as usual: the model counts the "
             "tokens it attends to, an exact integer it can learn to within half a token"),
    TaskSpec("wordnet-length-raw", "regression", "wordnet", "tokens", False, "tokens",
             "the same exact token counts as raw numbers (the head's bias starts at their mean, about 21): "
             "the output itself must carry values near 21 to within half a token"),
    TaskSpec("wordnet-length-offset", "regression", "wordnet", "tokens", False, "tokens",
             "the same counts plus 1024, a target far from zero as a year or a price is: fp16 spaces its "
             "numbers 1 apart there, bf16 8 apart, fp32 1/8192 apart", offset=1024.0),
    TaskSpec("wordnet-chars", "regression", "wordnet", "chars", True, "characters",
             "regress each gloss's character count (13 to 505), z-scored"),
    TaskSpec("wordnet-chars-raw", "regression", "wordnet", "chars", False, "characters",
             "the character counts as raw numbers (head bias starts at the mean): above 256 bf16 cannot "
             "even store every integer"),
)}


@dataclass
class Task:
    """A built task: pre-collated train and eval batches (CPU tensors) and the target's scale."""

    spec: TaskSpec
    train: list[dict[str, Tensor]]
    eval: list[dict[str, Tensor]]
    num_labels: int
    target_mean: float       # labels are (y - target_mean) / target_std; 0 and 1 when not standardized
    target_std: float
    init_bias: float | None  # regression head bias to start from (the raw target's training mean)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind


def make_task(name: str, *, n_train: int = 4096, n_eval: int = 1024, batch_size: int = 32, seed: int = 0,
              pad_to_multiple_of: int | None = 8) -> Task:
    """Build task ``name`` (one of :data:`TASKS`) from a seeded random sample of its corpus.

    The sample (``n_train + n_eval`` texts, in random order) is split into train and eval sets,
    each cut into dynamically padded batches of ``batch_size`` with
    :class:`padlab.padding.PaddingCollator`. Regression targets are exact counts of each text
    (tokens, with ``[CLS]``/``[SEP]``, or characters); standardized tasks z-score them with the
    training set's mean and std (undo with ``y * target_std + target_mean``); the others keep
    the raw count (plus the task's ``offset``) and start the head's bias at its training mean.
    """
    from .data import load_corpus
    from .padding import PaddingCollator

    spec = TASKS[check_choice("task", name, list(TASKS))]
    n_train = check_int("n_train", n_train, min_value=1)
    n_eval = check_int("n_eval", n_eval, min_value=1)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    corpus = load_corpus(spec.corpus)
    if n_train + n_eval > len(corpus):
        raise fail("n_train", n_train, f"plus n_eval={n_eval} be at most the corpus size {len(corpus)}")
    idx = np.random.default_rng(seed).choice(len(corpus), size=n_train + n_eval, replace=False)
    if spec.target == "label":
        y = corpus.labels[idx]
        num_labels, mean, std, bias = len(corpus.label_names), 0.0, 1.0, None
    else:
        raw = (corpus.lengths[idx] if spec.target == "tokens"
               else np.fromiter((len(corpus.texts[i]) for i in idx), dtype=np.int64, count=len(idx)))
        raw = raw.astype(np.float64) + spec.offset
        m, s = float(raw[:n_train].mean()), float(raw[:n_train].std())
        if spec.standardize:
            mean, std, bias = m, s, None
        else:
            mean, std, bias = 0.0, 1.0, m
        y = (raw - mean) / std
        num_labels = 1
    collate = PaddingCollator(pad_to_multiple_of=pad_to_multiple_of)

    def batches(lo: int, hi: int) -> list[dict[str, Tensor]]:
        out = []
        for s in range(lo, hi, batch_size):
            rows = idx[s:min(hi, s + batch_size)]
            labels = y[s:min(hi, s + batch_size)]
            out.append(collate([{"input_ids": corpus.ids(int(r)), "labels": lab.item()}
                                for r, lab in zip(rows, labels)]))
        return out

    return Task(spec, batches(0, n_train), batches(n_train, n_train + n_eval), num_labels, mean, std, bias)


def _on(batches: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [_to_device(b, device) for b in batches]


def run_experiment(task: Task, policy: "str | Policy", *, steps: int, device: "str | torch.device",
                   seed: int = 0, config: Any = None,
                   optimizer_factory: "Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None" = None,
                   lr_schedule: str = "linear", progress: bool = False, measure_every: int = 1) -> dict[str, Any]:
    """Train a freshly initialised encoder (seeded) on ``task`` under ``policy`` and score it.

    ``config`` is an :class:`padlab.models.EncoderConfig` (default ``EncoderConfig.small()``);
    its ``num_labels`` is set from the task. The same ``seed`` gives the same initial weights
    and batches under every policy. The learning rate warms up and decays linearly to zero
    (``lr_schedule``), so the final weights do not depend on where a noisy constant-rate run
    happened to stop; a run without a GradScaler that has diverged (10 non-finite losses in a
    row) stops early. Returns one JSON-ready row: the eval metrics, final loss,
    per-step ``loss``, ``scale`` and ``underflow`` curves, skipped and non-finite steps, wall
    time and (on CUDA) the peak memory allocated.
    """
    import time

    from .models import EncoderConfig, EncoderForSequenceClassification

    if not isinstance(task, Task):
        raise fail("task", task, "be a Task from make_task()")
    policy = get_policy(policy)
    dev = _device(device)
    seed = check_int("seed", seed, min_value=0)
    config = (config or EncoderConfig.small()).replace(num_labels=task.num_labels)
    torch.manual_seed(seed)
    model = EncoderForSequenceClassification(config, task=task.kind)
    if task.init_bias is not None:
        with torch.no_grad():
            model.classifier.bias.fill_(task.init_bias)
    train_b, eval_b = _on(task.train, dev), _on(task.eval, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    run = train(model, train_b, policy, steps, dev, optimizer_factory=optimizer_factory,
                progress=progress, measure_every=measure_every, lr_schedule=lr_schedule, stop_after_nonfinite=10)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    peak = int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None
    metrics = evaluate(run.model, eval_b, policy, task=task.kind, target_mean=task.target_mean,
                       target_std=task.target_std)
    measured = [r for r in run if r.measured]
    nonfinite = [r.step for r in measured if not r.finite]
    return {
        "task": task.name, "kind": task.kind, "unit": task.spec.unit, "policy": policy.name, "seed": seed,
        "steps": steps, "steps_run": len(run), "lr_schedule": lr_schedule,
        "batch_size": int(task.train[0]["input_ids"].shape[0]),
        "hidden": config.hidden, "layers": config.layers,
        **{k: (float(v) if isinstance(v, float) else v) for k, v in metrics.items()},
        "final_loss": measured[-1].loss,
        # NaN once the run has diverged: a mean over the finite losses only would hide that.
        "final_loss_mean10": float(np.mean([r.loss for r in measured[-10:]])),
        "loss": [r.loss for r in run],
        "scale": [r.scale for r in run] if policy.grad_scaler else None,
        "skipped_steps": [r.step for r in run if r.skipped],
        "nonfinite_steps": len(nonfinite),
        "first_nonfinite_step": nonfinite[0] if nonfinite else None,
        "underflow": [r.underflow_fraction for r in run],
        "underflow_unscaled": [r.underflow_fraction_unscaled for r in run],
        "underflow_mean": float(np.nanmean([r.underflow_fraction for r in measured])),
        "underflow_unscaled_mean": float(np.nanmean([r.underflow_fraction_unscaled for r in measured])),
        "grad_norm": [r.grad_norm for r in run],
        "train_seconds": seconds,
        "peak_memory_bytes": peak,
    }


# ----------------------------------------------------------------------------- reading the benchmark JSON

def _unjson(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _unjson(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_unjson(x) for x in v]
    if v in ("nan", "inf", "-inf"):
        return float(v)
    return v


def load_matrix(path: Any) -> dict[str, Any]:
    """Read a ``benchmarks/amp_matrix.py`` JSON file; the strings "nan"/"inf"/"-inf" become floats."""
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise fail("path", str(path), "name an existing amp_matrix JSON file")
    data = json.loads(p.read_text())
    if not isinstance(data, dict) or "rows" not in data:
        raise fail("path", str(path), "hold an object with 'rows'")
    return _unjson(data)


def summarize_matrix(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (task, policy) of the train rows: the metric over seeds and what the runs did.

    ``metric`` is ``accuracy`` (classification) or ``mae`` (regression, in the task's unit);
    ``values`` lists it per seed, NaN for a run that diverged (NaN final loss or non-finite
    predictions: a NaN model's "accuracy" is an artefact of argmax); ``mean``/``std`` are over
    the other seeds and ``diverged`` counts the diverged ones. ``exact`` is the mean
    ``exact_fraction`` (regression); ``skipped`` the mean number of skipped steps per run;
    ``underflow`` / ``underflow_unscaled`` the mean per-step underflow fractions.
    """
    rows = [r for r in result.get("rows", []) if r.get("kind_of_row") == "train"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["policy"]), []).append(r)
    out = []
    for (task, policy), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        metric = "accuracy" if rs[0]["kind"] == "classification" else "mae"
        vals = [float(r[metric]) for r in rs]
        bad = [not math.isfinite(v) or not math.isfinite(float(r["final_loss"])) for v, r in zip(vals, rs)]
        ok = [v for v, b in zip(vals, bad) if not b]
        vals = [math.nan if b else v for v, b in zip(vals, bad)]
        row = {
            "task": task, "policy": policy, "kind": rs[0]["kind"], "unit": rs[0].get("unit", ""),
            "metric": metric, "values": vals, "seeds": len(rs),
            "mean": float(np.mean(ok)) if ok else math.nan,
            "std": float(np.std(ok)) if len(ok) > 1 else 0.0 if ok else math.nan,
            "diverged": int(sum(bad)),
            "skipped": float(np.mean([len(r["skipped_steps"]) for r in rs])),
            "underflow": float(np.nanmean([float(r["underflow_mean"]) for r in rs])),
            "underflow_unscaled": float(np.nanmean([float(r["underflow_unscaled_mean"]) for r in rs])),
        }
        if metric == "mae":
            ex = [float(r["exact_fraction"]) for r, b in zip(rs, bad) if not b]
            row["exact"] = float(np.mean(ex)) if ex else math.nan
        out.append(row)
    return out


def speed_table(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, policy) of the speed rows, with step time and peak memory relative to fp32."""
    rows = [r for r in result.get("rows", []) if r.get("kind_of_row") == "speed"]
    base = {r["model"]: r for r in rows if r["policy"] == "fp32"}
    out = []
    for r in rows:
        b = base.get(r["model"])
        mem = r.get("peak_memory_bytes")
        out.append({
            "model": r["model"], "policy": r["policy"], "batch_size": r["batch_size"], "length": r["length"],
            "step_ms": float(r["step_ms_median"]),
            "time_vs_fp32": float(r["step_ms_median"]) / float(b["step_ms_median"]) if b else math.nan,
            "peak_mib": mem / 2**20 if mem else math.nan,
            "memory_vs_fp32": mem / b["peak_memory_bytes"] if (mem and b and b.get("peak_memory_bytes")) else math.nan,
        })
    return out
