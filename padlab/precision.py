"""THE precision policy table: one name, one set of numerics, everywhere in padlab.

Seven policies, each a :class:`Policy` in :data:`POLICIES`::

    name           forward maths                         weights   loss scaling   TF32 matmuls
    fp32           float32                               fp32      no             no
    tf32           float32, matmuls in TF32              fp32      no             yes (Ampere+ GPUs)
    fp16-amp       autocast float16                      fp32      GradScaler     no
    bf16-amp       autocast bfloat16                     fp32      no             no
    bf16-amp+tf32  autocast bfloat16, leftover fp32       fp32      no             yes (Ampere+ GPUs)
                   matmuls in TF32
    fp16-pure      float16 everywhere                    fp16      no             no
    bf16-pure      bfloat16 everywhere                   bf16      no             no

``*-amp`` keeps float32 *master* weights and optimizer state, and lets :func:`torch.autocast`
choose per op: matrix multiplies run in half precision, reductions such as ``layer_norm``,
``softmax`` inside losses, ``mse_loss`` and ``cross_entropy`` run in float32. ``*-pure`` casts
the weights (and so the optimizer state) to the half format: nothing is kept in float32.
``bf16-amp+tf32`` is what benchmark harnesses usually run on a GPU (and what padlab's old bench
silently ran for every non-fp32 row): autocast, plus TF32 for the float32 matmuls autocast leaves.

**TF32 is part of the name.** Every step and forward pass sets TF32 to what the policy says
(:func:`tf32_context`): ``fp32`` is exact float32 even where TF32 was turned on globally, and
``tf32`` / ``bf16-amp+tf32`` keep it for the backward pass and the optimizer too. Only CUDA flags
change (CPU matmuls are untouched).

**GradScaler.** ``fp16-amp`` gets a ``torch.amp.GradScaler`` on every device type torch makes
one for (CUDA, CPU, mps): one meaning of the name everywhere. (padlab's old bench enabled it only
on CUDA, so its CPU fp16 rows had no loss scaling.)

:func:`check_policy` says whether a policy can run on a device, and whether it is pointless
there (fp16 on a CPU runs, but far slower than fp32). :func:`prepare` makes a copy of a model
for a policy (the caller's model is never changed), with its optimizer and GradScaler. The
training step that uses all this is :func:`padlab.train.train_step`.
"""
from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from ._validate import check_choice, fail
from .env import resolve_device

__all__ = [
    "POLICIES", "Policy", "PolicyCheck", "PolicyWarning", "Prepared", "AdamEpsCheck", "adam_eps_check",
    "get_policy", "check_policy", "prepare", "tf32_mode", "tf32_context", "fp32_precision_state", "autocast_context", "default_optimizer",
]

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
    def param_bytes(self) -> int:
        """Bytes per element of the weights, gradients and optimizer state (``param_dtype``)."""
        return self.param_dtype.itemsize

    @property
    def half_copy_bytes(self) -> int:
        """Bytes per weight element of the half copies autocast casts and keeps for backward (0 without autocast)."""
        return self.autocast_dtype.itemsize if self.autocast_dtype is not None else 0

    @property
    def half(self) -> torch.dtype | None:
        """The half-precision format the policy computes in, if any."""
        return self.autocast_dtype or (self.param_dtype if self.param_dtype != torch.float32 else None)


#: THE policy table, in table order: name -> :class:`Policy`.
POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy("fp32", None, torch.float32, False, False, "float32 everywhere: the reference"),
    Policy("tf32", None, torch.float32, False, True,
           "float32 weights; matrix multiplies round their inputs to TF32 (10 mantissa bits) on Ampere+ GPUs"),
    Policy("fp16-amp", torch.float16, torch.float32, True, False,
           "autocast float16 with float32 master weights and a GradScaler"),
    Policy("bf16-amp", torch.bfloat16, torch.float32, False, False,
           "autocast bfloat16 with float32 master weights; no loss scaling (bf16 has fp32's range)"),
    Policy("bf16-amp+tf32", torch.bfloat16, torch.float32, False, True,
           "autocast bfloat16 with float32 master weights; the float32 matmuls autocast leaves use TF32 "
           "on Ampere+ GPUs"),
    Policy("fp16-pure", None, torch.float16, False, False,
           "weights, gradients and optimizer state all float16; no master copy, no loss scaling"),
    Policy("bf16-pure", None, torch.bfloat16, False, False,
           "weights, gradients and optimizer state all bfloat16; no master copy"),
)}


def get_policy(name: "str | Policy") -> Policy:
    """The :class:`Policy` called ``name`` (a key of :data:`POLICIES`); a Policy is returned as is."""
    if isinstance(name, Policy):
        return name
    return POLICIES[check_choice("policy", name, tuple(POLICIES))]




class PolicyWarning(UserWarning):
    """A policy runs on this device but is pointless there (slower, or no effect)."""


@dataclass(frozen=True)
class PolicyCheck:
    """Whether a policy can run on a device, whether it is pointless there, and why."""

    runnable: bool
    pointless: bool
    reason: str


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _torch_probe(names: tuple[str, ...]) -> bool:
    # Private torch helpers; absent on some builds, so failing to ask means "no".
    for probe in names:
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001 - any failure of a private probe means "unknown"
            pass
    return False


def _cpu_has_native_bf16() -> bool:
    return _torch_probe(("_is_amx_tile_supported", "_is_avx512_bf16_supported")) or \
        bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def _cpu_has_native_fp16() -> bool:
    return _torch_probe(("_is_amx_fp16_supported",)) or bool({"avx512_fp16", "amx_fp16"} & _cpu_flags())


def check_policy(name: "str | Policy", device: "str | torch.device") -> PolicyCheck:
    """Can ``name`` run on ``device``, and is it worth it there?

    * a CUDA GPU below compute capability 8.0 (a T4 is 7.5) has no bf16 tensor cores: the bf16
      policies cannot run; TF32 is also an Ampere (8.0) feature, so ``tf32`` is pointless there;
    * a CPU runs fp16 (autocast or pure); without AVX512-FP16 or AMX-FP16 it has no fast fp16
      matrix maths and runs it, pointlessly, slower than fp32 (with them, fp16 may be faster: the
      verdict follows the chip's flags, and a notebook measures it); TF32 is a GPU mode and changes
      nothing on a CPU;
    * an Apple GPU (mps) runs fp16; padlab does not run bf16 there.
    """
    policy = get_policy(name)
    dev = resolve_device(device)
    half = policy.half
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return PolicyCheck(False, False, "no CUDA GPU is available on this machine")
        major, minor = torch.cuda.get_device_capability(dev)
        cap = f"{major}.{minor}"
        if half == torch.bfloat16 and (major, minor) < (8, 0):
            return PolicyCheck(False, False, f"bf16 needs a GPU of compute capability 8.0 (Ampere) or newer; "
                                             f"this one is {cap} (a T4 is 7.5): use fp16-amp instead")
        if policy.tf32 and half is None and (major, minor) < (8, 0):
            return PolicyCheck(True, True, f"TF32 tensor cores arrive with compute capability 8.0; "
                                           f"on {cap} the flag changes nothing: this runs as fp32")
        if half == torch.float16 and (major, minor) < (7, 0):
            return PolicyCheck(True, True, f"GPUs before compute capability 7.0 have no fp16 tensor cores; "
                                           f"on {cap} fp16 saves memory but little time")
        return PolicyCheck(True, False, f"{policy.description}; supported on compute capability {cap}")
    if dev.type == "mps":
        if half == torch.bfloat16:
            return PolicyCheck(False, False, "padlab does not run bf16 on Apple GPUs (mps): use fp16-amp")
        if policy.tf32 and half is None:
            return PolicyCheck(True, True, "TF32 is an NVIDIA matrix-unit mode; on mps this runs as fp32")
        return PolicyCheck(True, False, policy.description)
    # CPU (TF32 is a no-op here: bf16-amp+tf32 runs as bf16-amp)
    if policy.tf32 and half is None:
        return PolicyCheck(True, True, "TF32 is an NVIDIA GPU matrix-unit mode; on a CPU it changes "
                                       "nothing: this runs as fp32")
    if half == torch.float16:
        if _cpu_has_native_fp16():
            return PolicyCheck(True, False, f"{policy.description}; this CPU has native fp16 instructions "
                                            "(AVX512-FP16 or AMX-FP16)")
        return PolicyCheck(True, True, "runs but pointless: without AVX512-FP16 or AMX-FP16 (as here) a CPU has "
                                       "no fast fp16 matrix maths, so fp16 is slower than fp32; use fp32 or "
                                       "bf16-amp on this CPU")
    if half == torch.bfloat16:
        speed = ("this CPU has native bf16 instructions" if _cpu_has_native_bf16() else
                 "without AVX512-BF16 or AMX (as here) bf16 is slower than fp32; its results agree with "
                 "fp32's within tolerance, not bit for bit (each CPU kernel family rounds its sums differently)")
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


def fp32_precision_state() -> dict[str, str] | None:
    """Every per-backend ``fp32_precision`` setting of torch >= 2.9 (``None`` on older torch): what
    :func:`tf32_mode` saves and restores."""
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
    saved = fp32_precision_state()
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


def tf32_context(policy: "str | Policy") -> contextlib.AbstractContextManager:
    """TF32 exactly as ``policy`` says, whatever the global flags: :func:`tf32_mode` with ``policy.tf32``.

    So ``fp32`` is exact float32 even where a caller turned TF32 on globally, and ``tf32`` /
    ``bf16-amp+tf32`` use it in the backward pass and the optimizer too (wrap the whole step,
    as :func:`padlab.train.train_step` does). Only CUDA flags change: on a CPU this is a no-op.
    Where the flags already say what the policy wants, nothing is written (a step's usual case:
    no save-and-restore on the timed path).
    """
    want = get_policy(policy).tf32
    try:
        if torch.backends.cuda.matmul.allow_tf32 == want and torch.backends.cudnn.allow_tf32 == want:
            return contextlib.nullcontext()
    except RuntimeError:  # the legacy and new flag APIs disagree: tf32_mode sorts that out
        pass
    return tf32_mode(want)


def autocast_context(policy: "str | Policy", device: "str | torch.device") -> contextlib.AbstractContextManager:
    """The forward-pass context of ``policy`` on ``device``: its TF32 setting (:func:`tf32_context`)
    and its autocast, if any."""
    policy = get_policy(policy)
    dev = resolve_device(device)
    stack = contextlib.ExitStack()
    stack.enter_context(tf32_context(policy))
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
    dev = resolve_device(device)
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



class AdamEpsCheck(NamedTuple):
    """What Adam's ``eps`` becomes in a storage dtype, and one real ``torch.optim.Adam`` step there.

    ``eps_stored``: ``eps`` rounded to ``dtype`` (0.0 when it flushes to zero). The step starts a
    one-element parameter at ``start`` with gradient ``grad``: ``grad_squared`` is ``grad**2`` as
    ``dtype`` holds it (Adam's second moment); ``update`` the change of the parameter (an fp32 Adam
    moves it by about ``lr``, whatever the gradient's size); ``finite``: the parameter is still finite.
    """

    dtype: str
    eps: float
    eps_stored: float
    eps_is_zero: bool
    grad: float
    grad_squared: float
    update: float
    finite: bool


def adam_eps_check(dtype: "str | torch.dtype" = "fp16", *, eps: float = 1e-8, grad: float = 1e-4,
                   lr: float = 1e-3, start: float = 1.0) -> AdamEpsCheck:
    """Measure why pure half precision breaks Adam: ``eps`` and ``grad**2`` in ``dtype``, and one step.

    In float16 the default ``eps=1e-8`` is below the smallest subnormal (about 6e-8) and rounds to
    0, and a gradient of 1e-4 has a square (1e-8) that rounds to 0 too: Adam's update
    ``m / (sqrt(v) + eps)`` divides by zero and the weight becomes inf (NaN for a zero gradient).
    float32 moves the weight by about ``lr``. bfloat16 keeps ``eps`` and ``grad**2`` (its range
    reaches 1e-38) but loses the update itself: ``1.0 - 1e-3`` rounds back to 1.0 (its spacing
    just below 1 is 2**-8), so ``update`` is 0 there: pure bf16 stalls where pure fp16 blows up. ``dtype`` is
    ``"fp16"``, ``"bf16"``, ``"fp32"`` or a torch dtype; runs ``torch.optim.Adam`` on the CPU.
    """
    from ._validate import check_float

    names = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if isinstance(dtype, torch.dtype):
        check_choice("dtype", dtype, list(names.values()))
    else:
        dtype = names[check_choice("dtype", dtype, names)]
    eps = check_float("eps", eps, min_value=0.0)
    grad = check_float("grad", grad)
    lr = check_float("lr", lr, min_value=0.0, min_inclusive=False)
    start = check_float("start", start)
    p = torch.nn.Parameter(torch.tensor([start], dtype=dtype))
    opt = torch.optim.Adam([p], lr=lr, eps=eps, foreach=False)
    p.grad = torch.tensor([grad], dtype=dtype)
    opt.step()
    stored = float(torch.tensor(eps, dtype=dtype))
    name = next(k for k, v in names.items() if v == dtype)
    return AdamEpsCheck(name, eps, stored, stored == 0.0, float(p.grad[0]),
                        float((p.grad * p.grad)[0]), float(p.detach()[0].float() - start),
                        bool(torch.isfinite(p.detach()).all()))
