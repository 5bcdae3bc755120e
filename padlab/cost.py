"""What a training step costs: parameter memory, saved activations, FLOPs, kernels and wall time.

Measurements of a model or a callable, not of batches (for what a set of batches wastes, see
:mod:`padlab.waste`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ._records import FieldMapping
from ._validate import check_choice, check_float, check_int, fail
from .precision import POLICIES

__all__ = ["BYTES_PER_ELEMENT", "PARAMETER_STORAGE", "OPTIMIZER_STATES", "SDPA_KERNELS", "CAST_MODULES",
           "ParameterMemory", "parameter_memory", "cast_parameters", "measured_parameter_memory",
           "saved_activation_bytes", "op_names", "sdpa_ops", "sdpa_backend_used", "flop_count", "median_time",
           "Scaling", "time_scaling", "TimeVerdict", "compare_times"]

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


def _cast_module_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
            nn.ConvTranspose3d, nn.RNNBase, nn.MultiheadAttention)


#: Module types whose parameters autocast casts to half (they feed its lower-precision ops:
#: ``linear``, ``conv*``, ``matmul``/``addmm``, the RNN cells); :func:`parameter_memory`'s rule when
#: it cannot run the model. Embeddings (a lookup) and LayerNorm (an fp32 op) are never cast.
CAST_MODULES: tuple[str, ...] = tuple(t.__name__ for t in _cast_module_types())


def _example_forward(model):
    """A forward on two token ids, in eval mode, for a model that holds a ``config.vocab_size``
    (padlab's encoders, HF models), else ``None``: enough to see which parameters autocast casts."""
    import torch

    cfg = getattr(model, "config", None)
    if not isinstance(getattr(cfg, "vocab_size", None), int):
        return None
    first = next(model.parameters(), None)
    ids = torch.zeros(1, 2, dtype=torch.long, device=first.device if first is not None else "cpu")

    def run():
        # in eval mode (no dropout, no running statistics updated), each module's mode restored after
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            return model(ids)
        finally:
            for m, mode in modes:
                m.training = mode
    return run


def _distinct_parameters(model) -> dict[int, tuple[str, object]]:
    # storage address -> (first name, parameter); shared parameters once, as model.parameters() does
    out: dict[int, tuple[str, object]] = {}
    for name, p in model.named_parameters():
        out.setdefault(p.data_ptr(), (name, p))
    return out


def _watch_casts(model, fn, device_type: str, dtype) -> tuple[list[str], int]:
    """Run ``fn()`` under autocast(``device_type``, ``dtype``) and see every ``aten::_to_copy`` that
    reads a parameter and writes ``dtype``: (names of the parameters cast, bytes of the casts)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    params = _distinct_parameters(model)
    cast: dict[int, int] = {}

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            if func is torch.ops.aten._to_copy.default and isinstance(args[0], torch.Tensor) \
                    and args[0].data_ptr() in params and kwargs.get("dtype") == dtype:
                cast.setdefault(args[0].data_ptr(), out.numel() * out.element_size())
            return out

    with torch.autocast(device_type, dtype=dtype), Watch():
        fn()
    return sorted(params[k][0] for k in cast), int(sum(cast.values()))


def cast_parameters(model, fn=None, *, precision: str = "bf16-amp") -> list[str]:
    """Names of the parameters that autocast casts to half while ``fn()`` runs under ``precision``.

    Measured, not assumed: every ``aten::_to_copy`` that reads one of the model's parameters and
    writes the policy's autocast dtype is seen by a ``TorchDispatchMode`` (a weight cast once and
    reused, as autocast caches it, counts once; a tied weight under two names counts under its
    first). ``fn`` is a callable running the model (default for a model with ``config.vocab_size``:
    a forward on two token ids); ``precision`` must be an ``-amp`` policy. On padlab's encoders it
    finds every ``nn.Linear`` weight and bias and the masked-LM decoder (the tied embedding,
    through ``F.linear``), and no embedding used as a lookup, no LayerNorm.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise fail("model", model, "be a torch.nn.Module")
    check_choice("precision", precision, [n for n, p in POLICIES.items() if p.autocast_dtype is not None])
    if fn is None:
        fn = _example_forward(model)
        if fn is None:
            raise fail("fn", None, "be a callable running the model (this model has no config.vocab_size "
                                   "to build an example input from)")
    if not callable(fn):
        raise fail("fn", fn, "be a callable taking no arguments")
    first = next(model.parameters(), None)
    device_type = first.device.type if first is not None else "cpu"
    with torch.no_grad():
        names, _ = _watch_casts(model, fn, device_type, POLICIES[precision].autocast_dtype)
    return names


def parameter_memory(model, precision: str = "fp32", optimizer: str = "adam", *, fn=None) -> ParameterMemory:
    """Bytes that a model's parameters cost in training, before any activation (arithmetic).

    Counts the model's own parameter tensors (shared ones once, as ``model.parameters()`` does):
    ``weights`` for all of them; ``gradients`` and ``optimizer`` state only for those with
    ``requires_grad``. Per trainable parameter this gives 16 bytes for fp32 + Adam (4 + 4 + 2 x 4)
    and 8 for ``bf16-pure``/``fp16-pure`` + Adam (2 + 2 + 2 x 2). The ``-amp`` policies add
    ``half_copies``: 2 bytes for each parameter that autocast actually casts (weights and biases
    of linear/conv layers, a decoder tied to the embedding), not for embeddings used as lookups
    or LayerNorms, which stay float32. Which parameters are cast is measured with
    :func:`cast_parameters` when the model can be run (``fn``, or a two-token forward for a model
    with ``config.vocab_size``), else taken from :data:`CAST_MODULES`. ``precision`` is a policy
    name of :data:`PARAMETER_STORAGE`. Returns a :class:`ParameterMemory` (ints).
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise fail("model", model, "be a torch.nn.Module")
    check_choice("precision", precision, PARAMETER_STORAGE)
    check_choice("optimizer", optimizer, OPTIMIZER_STATES)
    if fn is not None and not callable(fn):
        raise fail("fn", fn, "be a callable taking no arguments")
    full, half = PARAMETER_STORAGE[precision]
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    cast = 0
    if half:
        run = fn if fn is not None else _example_forward(model)
        if run is not None:
            names = set(cast_parameters(model, run, precision=precision))
            cast = sum(p.numel() for name, p in _distinct_parameters(model).values() if name in names)
        else:
            types = _cast_module_types()
            owned = {p.data_ptr(): p.numel() for m in model.modules() if isinstance(m, types)
                     for p in m.parameters(recurse=False)}
            cast = sum(owned.values())
    out = {
        "parameters": n,
        "trainable": trainable,
        "weights": n * full,
        "gradients": trainable * full,
        "optimizer": trainable * full * OPTIMIZER_STATES[optimizer],
        "half_copies": cast * half,
    }
    out["total"] = sum(v for k, v in out.items() if k not in ("parameters", "trainable"))
    return ParameterMemory(**out)


def _optimizer_for(name: str, params):
    import torch

    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3)
    if name == "momentum":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    return (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(params, lr=1e-3)


def measured_parameter_memory(model, precision: str = "fp32", optimizer: str = "adam", *,
                              loss_fn=None) -> ParameterMemory:
    """The bytes of :func:`parameter_memory`, measured on tensors after one real optimizer step.

    A copy of ``model`` (the caller's is not touched) is stored in the policy's weight dtype, run
    under its autocast (``loss_fn(copy)`` returns a loss; default for a model with
    ``config.vocab_size``: the sum of its float32 outputs on two token ids), backpropagated, and
    stepped once with ``optimizer`` (torch.optim's SGD, SGD with momentum, Adam or AdamW). Then
    the tensors are counted: ``weights`` the parameters' storage, ``gradients`` every ``.grad``,
    ``optimizer`` every state tensor as large as its parameter (Adam's scalar ``step`` counters
    are not parameter memory), ``half_copies`` the half tensors autocast made from parameters
    during the forward. Equal to :func:`parameter_memory` when its arithmetic is right.
    """
    import copy

    import torch

    if not isinstance(model, torch.nn.Module):
        raise fail("model", model, "be a torch.nn.Module")
    check_choice("precision", precision, PARAMETER_STORAGE)
    check_choice("optimizer", optimizer, OPTIMIZER_STATES)
    policy = POLICIES[precision]
    twin = copy.deepcopy(model).to(policy.param_dtype)
    if loss_fn is None:
        forward = _example_forward(twin)
        if forward is None:
            raise fail("loss_fn", None, "be a callable model -> loss (this model has no config.vocab_size "
                                        "to build an example input from)")

        def loss_fn(m):
            out = forward()
            out = out.logits if hasattr(out, "logits") else out
            return out.float().sum()
    if not callable(loss_fn):
        raise fail("loss_fn", loss_fn, "be a callable model -> loss")
    opt = _optimizer_for(optimizer, [p for p in twin.parameters() if p.requires_grad])
    first = next(twin.parameters(), None)
    if first is None:
        raise fail("model", type(model).__name__, "have parameters")
    half_bytes, box = 0, {}
    if policy.autocast_dtype is not None:
        _, half_bytes = _watch_casts(twin, lambda: box.setdefault("loss", loss_fn(twin)),
                                     first.device.type, policy.autocast_dtype)
        loss = box["loss"]
    else:
        loss = loss_fn(twin)
    loss.backward()
    opt.step()
    params = [p for _, p in _distinct_parameters(twin).values()]
    state = [t for p in params for t in opt.state.get(p, {}).values()
             if isinstance(t, torch.Tensor) and t.shape == p.shape]
    nbytes = lambda ts: int(sum(t.numel() * t.element_size() for t in ts))
    out = {
        "parameters": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "weights": nbytes(params),
        "gradients": nbytes([p.grad for p in params if p.grad is not None]),
        "optimizer": nbytes(state),
        "half_copies": half_bytes,
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


@dataclass(frozen=True)
class Scaling:
    """How a time grows with a size, measured over several rounds (see :func:`time_scaling`).

    ``times[k]`` is the median over rounds of size ``sizes[k]``'s median time (s); ``ratios[k]`` is the
    median over rounds of ``time(sizes[k+1]) / time(sizes[k])`` within one round, ``low[k]``/``high[k]``
    the smallest and largest of those per-round ratios (the spread the load caused); ``exponents[k]``
    is ``log(ratio) / log(size ratio)``: 2 for a cost that grows with the square of the size.
    """

    sizes: tuple[int, ...]
    times: tuple[float, ...]
    ratios: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]
    exponents: tuple[float, ...]
    rounds: int
    repeats: int


def time_scaling(make_fn, sizes, *, repeats: int = 5, warmup: int = 1, rounds: int = 5) -> Scaling:
    """Time ``make_fn(size)()`` for each size, ``rounds`` times, and report the growth per step with its spread.

    ``make_fn(size)`` returns the callable to time (built once per size, outside the timing). Each
    round times every size with :func:`median_time` (``repeats``, ``warmup``), sizes interleaved so a
    change of machine load hits all of them; a ratio is taken within a round, then the median over
    rounds is reported with the smallest and largest round (:class:`Scaling`). Robust to a slow
    round, not to a machine busy throughout: read ``low``/``high`` before reading ``ratios``.
    """
    if not callable(make_fn):
        raise fail("make_fn", make_fn, "be a callable size -> (callable taking no arguments)")
    try:
        sizes = tuple(int(s) for s in sizes)
    except (TypeError, ValueError):
        raise fail("sizes", sizes, "be a sequence of positive ints") from None
    if len(sizes) < 2 or any(s < 1 for s in sizes) or any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise fail("sizes", sizes, "hold at least two positive ints in increasing order")
    rounds = check_int("rounds", rounds, min_value=1)
    fns = [make_fn(s) for s in sizes]
    for s, f in zip(sizes, fns):
        if not callable(f):
            raise fail("make_fn", make_fn, f"return a callable (for size {s} it returned {type(f).__name__})")
    table = np.array([[median_time(f, repeats, warmup) for f in fns] for _ in range(rounds)])  # rounds x sizes
    per_round = table[:, 1:] / table[:, :-1]
    ratios = np.median(per_round, axis=0)
    steps = np.array(sizes[1:], dtype=float) / np.array(sizes[:-1], dtype=float)
    return Scaling(sizes, tuple(float(t) for t in np.median(table, axis=0)), tuple(float(r) for r in ratios),
                   tuple(float(r) for r in per_round.min(axis=0)), tuple(float(r) for r in per_round.max(axis=0)),
                   tuple(float(e) for e in np.log(ratios) / np.log(steps)), rounds, int(repeats))


class TimeVerdict(NamedTuple):
    """One timing against a reference: ``ratio`` = time / reference time; ``verdict`` is ``"faster"``,
    ``"slower"`` or ``"about the same"`` (within ``tolerance``); ``text`` a printable phrase."""

    name: str
    seconds: float
    ratio: float
    verdict: str
    text: str


def compare_times(seconds: dict[str, float], reference: str = "fp32", *, tolerance: float = 0.1) -> list[TimeVerdict]:
    """Verdicts computed from measured times, for a notebook to print instead of fixed prose.

    ``seconds[name]`` are measured times (e.g. ms per step per policy, any one unit); each is divided
    by ``seconds[reference]``. A ratio within ``1 +- tolerance`` reads ``"about the same"``; below,
    ``"faster"`` (``text`` e.g. ``"bf16-amp: 0.40x fp32's time, 2.5x faster"``); above, ``"slower"``.
    """
    if not isinstance(seconds, dict) or not seconds:
        raise fail("seconds", seconds, "be a non-empty dict name -> measured time")
    check_choice("reference", reference, seconds)
    tolerance = check_float("tolerance", tolerance, min_value=0.0, max_value=1.0, min_inclusive=False)
    for name, t in seconds.items():
        if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)) or not np.isfinite(t) or t <= 0:
            raise fail(f"seconds[{name!r}]", t, "be a positive finite time")
    ref = float(seconds[reference])
    out = []
    for name, t in seconds.items():
        r = float(t) / ref
        if abs(r - 1) <= tolerance:
            verdict, tail = "about the same", "about the same"
        elif r < 1:
            verdict, tail = "faster", f"{1 / r:.1f}x faster"
        else:
            verdict, tail = "slower", f"{r:.1f}x slower"
        out.append(TimeVerdict(name, float(t), r, verdict, f"{name}: {r:.2f}x {reference}'s time, {tail}"))
    return out
