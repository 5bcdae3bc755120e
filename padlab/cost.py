"""What a training step costs: parameter memory, saved activations, FLOPs, kernels and wall time.

Measurements of a model or a callable, not of batches (for what a set of batches wastes, see
:mod:`padlab.waste`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._records import FieldMapping
from ._validate import check_choice, check_int, fail
from .precision import POLICIES

__all__ = ["BYTES_PER_ELEMENT", "PARAMETER_STORAGE", "OPTIMIZER_STATES", "SDPA_KERNELS", "ParameterMemory",
           "parameter_memory",
           "saved_activation_bytes", "op_names", "sdpa_ops", "sdpa_backend_used", "flop_count", "median_time"]

#: Bytes per element of each storage precision.
BYTES_PER_ELEMENT = {"fp64": 8, "fp32": 4, "bf16": 2, "fp16": 2}
#: How each precision policy (:data:`padlab.precision.POLICIES`) stores its parameters:
#: ``(bytes per element of weights, gradients and optimizer state, bytes per element of the
#: half copies autocast makes for the forward pass)``. TF32 changes how matmuls round, not what
#: is stored; ``-amp`` keeps fp32 weights plus half copies; ``-pure`` stores everything in half.
PARAMETER_STORAGE: dict[str, tuple[int, int]] = {
    name: (policy.param_bytes, policy.half_copy_bytes) for name, policy in POLICIES.items()}
#: Optimizer state tensors per trainable parameter (each as large as the parameter).
OPTIMIZER_STATES = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}
#: aten kernels that ``torch.nn.functional.scaled_dot_product_attention`` dispatches to.
SDPA_KERNELS = {
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash",
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_efficient_attention": "efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_fused_attention_overrideable": "overrideable",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_attention_math_for_mps": "math",
}


@dataclass(frozen=True, eq=False)
class ParameterMemory(FieldMapping):
    """What parameters cost in training: counts, then bytes per part (``total`` sums the parts).

    Also a read-only mapping of its fields (``m["total"]``, ``dict(m)``), so plots can stack the parts.
    """

    parameters: int
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    half_copies: int
    total: int


def parameter_memory(model, precision: str = "fp32", optimizer: str = "adam") -> ParameterMemory:
    """Bytes that a model's parameters cost in training, before any activation.

    Counts the model's own parameter tensors (shared ones once, as ``model.parameters()`` does):
    ``weights`` for all of them; ``gradients`` and ``optimizer`` state only for those with
    ``requires_grad``. Per trainable parameter this gives 16 bytes for fp32 + Adam (4 + 4 + 2 x 4),
    8 for ``bf16-pure``/``fp16-pure`` + Adam (2 + 2 + 2 x 2) and, for the ``-amp`` policies, the fp32 16
    plus 2 bytes of ``half_copies`` (the casts autocast keeps for backward); ``precision`` is a policy
    name of :data:`PARAMETER_STORAGE`. Returns a :class:`ParameterMemory` (ints).
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise fail("model", model, "be a torch.nn.Module")
    check_choice("precision", precision, PARAMETER_STORAGE)
    check_choice("optimizer", optimizer, OPTIMIZER_STATES)
    full, half = PARAMETER_STORAGE[precision]
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    out = {
        "parameters": n,
        "trainable": trainable,
        "weights": n * full,
        "gradients": trainable * full,
        "optimizer": trainable * full * OPTIMIZER_STATES[optimizer],
        "half_copies": trainable * half,
    }
    out["total"] = sum(v for k, v in out.items() if k not in ("parameters", "trainable"))
    return ParameterMemory(**out)


def saved_activation_bytes(fn, *, exclude=()) -> int:
    """Bytes that autograd keeps for the backward pass while ``fn()`` runs (its activation memory).

    Every tensor saved for backward is seen through ``torch.autograd.graph.saved_tensors_hooks``;
    each distinct storage is counted once at its full size (a view keeps its whole storage alive).
    Storages of tensors in ``exclude`` (e.g. ``model.parameters()``, which are weights, not
    activations) are left out. Deterministic: it counts bytes, it does not sample an allocator.
    """
    import torch

    if not callable(fn):
        raise fail("fn", fn, "be a callable taking no arguments")
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}
    keep = []  # hold every saved tensor until fn returns, so no storage address is reused meanwhile

    def pack(t):
        keep.append(t)
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen.setdefault(s.data_ptr(), s.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    del result
    keep.clear()
    return int(sum(seen.values()))


class _QuietStderr:
    """Silence file descriptor 2 (the profiler's C++ layer prints start/stop lines there)."""

    def __enter__(self):
        import os
        import sys

        sys.stderr.flush()
        self._saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        return self

    def __exit__(self, *exc):
        import os

        os.dup2(self._saved, 2)
        os.close(self._saved)
        return False


def op_names(fn) -> list[str]:
    """Names of the aten operators that ``fn()`` runs, in order, as ``torch.profiler`` records them."""
    from torch.profiler import ProfilerActivity, profile

    if not callable(fn):
        raise fail("fn", fn, "be a callable taking no arguments")
    with _QuietStderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    return [e.name for e in events if e.name.startswith("aten::")]


def sdpa_ops(q, k, v, attn_mask=None, *, backends=None) -> list[str]:
    """The aten operators one ``scaled_dot_product_attention(q, k, v, attn_mask)`` call runs, in order.

    Runs under ``torch.nn.attention.sdpa_kernel(backends)`` when ``backends`` (a list of
    ``SDPBackend``) is given, else with PyTorch's own choice. The math path shows ``aten::bmm`` and
    ``aten::_softmax``; a fused path shows one kernel named in :data:`SDPA_KERNELS`.
    """
    import contextlib

    import torch.nn.functional as F
    from torch.nn.attention import sdpa_kernel

    ctx = sdpa_kernel(backends) if backends is not None else contextlib.nullcontext()
    with ctx:
        return op_names(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask))


def sdpa_backend_used(q, k, v, attn_mask=None, *, backends=None) -> str:
    """Which SDPA backend ran for these inputs: ``"math"``, ``"flash"``, ``"efficient"``, ``"cudnn"``.

    Reads the kernel's name from the profiler (:func:`sdpa_ops`, :data:`SDPA_KERNELS`).
    """
    names = sdpa_ops(q, k, v, attn_mask, backends=backends)
    for name in names:
        if name in SDPA_KERNELS:
            return SDPA_KERNELS[name]
    raise fail("q", tuple(q.shape), f"run a known SDPA kernel (the profiler saw {sorted(set(names))})")


def flop_count(fn, *, by_op: bool = False) -> int | dict[str, int]:
    """Floating-point operations of ``fn()`` as ``torch.utils.flop_counter.FlopCounterMode`` counts them.

    The counter knows matmuls, convolutions and the GPU attention kernels; it counts 0 for kernels
    it has no formula for (such as the CPU flash-attention kernel), so count attention on the math
    backend. With ``by_op`` returns ``{operator name: flops}`` (e.g. ``"bmm"`` for attention's two
    batched matmuls, ``"addmm"`` for linear layers) in descending order of flops.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if not callable(fn):
        raise fail("fn", fn, "be a callable taking no arguments")
    with FlopCounterMode(display=False) as counter:
        fn()
    if not by_op:
        return int(counter.get_total_flops())
    ops: dict[str, int] = {}
    for op, n in counter.get_flop_counts().get("Global", {}).items():
        name = getattr(op, "__name__", str(op).split(".")[-1])
        ops[name] = ops.get(name, 0) + int(n)
    return dict(sorted(ops.items(), key=lambda kv: -kv[1]))


def median_time(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeats`` calls after ``warmup`` calls.

    Synchronises CUDA around each call so GPU work is timed, not just queued.
    """
    import time

    import torch

    if not callable(fn):
        raise fail("fn", fn, "be a callable taking no arguments")
    repeats = check_int("repeats", repeats, min_value=1)
    warmup = check_int("warmup", warmup, min_value=0)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
