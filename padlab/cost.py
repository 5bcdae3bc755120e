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
           "Scaling", "time_scaling", "TimeVerdict", "compare_times", "ActivationProfile", "activation_profile",
           "TrainingMemory", "training_memory", "max_tokens_per_step"]

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


# --------------------------------------------------------------------------- training memory budget

@dataclass(frozen=True)
class ActivationProfile:
    """Bytes a training step keeps, per token and per layer, measured on a small proxy (see
    :func:`activation_profile`); :func:`training_memory` scales them to any depth and token count.

    ``layer_per_token``: bytes one layer saves for backward per token position (checkpointing off);
    ``layer_fixed``: bytes one layer saves whatever the tokens (autocast's half copies of its
    weights, which autocast keeps for backward; 0 without autocast); ``checkpoint_per_token``:
    bytes one checkpointed layer keeps per token (its input); ``embed_per_token``: embeddings
    and the final LayerNorm per token; ``head_per_masked``: the masked-LM head and loss per
    masked token (hidden states, the ``(M, vocab)`` logits, their float32 copy, log-softmax);
    ``params_fixed`` / ``params_per_layer``: :class:`ParameterMemory` parts (dicts) of the
    layer-free model and of one layer; ``proxy``: what was measured.
    """

    layer_per_token: float
    layer_fixed: float
    checkpoint_per_token: float
    embed_per_token: float
    head_per_masked: float
    params_fixed: dict
    params_per_layer: dict
    proxy: str


def _proxy_saved(config, precision: str, layers: int, tokens: int, masked: int, checkpointing: bool,
                 with_head: bool) -> int:
    import torch

    from .data import load_corpus
    from .models import Encoder, EncoderForMaskedLM

    cfg = config.replace(layers=layers, gradient_checkpointing=checkpointing, dropout=0.0)
    torch.manual_seed(0)
    model = EncoderForMaskedLM(cfg) if with_head else Encoder(cfg)
    model.train()
    width = 64 if cfg.max_position >= 64 else 1 << (cfg.max_position.bit_length() - 1)  # divides 64 and 128
    stream = load_corpus("fortunes").token_ids[: tokens].astype(np.int64) % cfg.vocab_size
    ids = torch.from_numpy(stream).reshape(tokens // width, width)   # rows of real text, no padding
    mask = torch.ones_like(ids)
    pos = torch.arange(masked) * (tokens // masked)                  # masked positions, evenly spread
    policy = POLICIES[precision]
    model = model.to(policy.param_dtype)

    def run():
        with torch.autocast("cpu", dtype=policy.autocast_dtype, enabled=policy.autocast_dtype is not None):
            if with_head:
                return model(ids, mask, masked_positions=pos, mlm_labels=ids.reshape(-1)[pos]).loss
            return model(ids, mask)
    return saved_activation_bytes(run, exclude=model.parameters())


def activation_profile(config, precision: str = "bf16-amp", optimizer: str = "adamw") -> ActivationProfile:
    """Measure an :class:`ActivationProfile` on the CPU for ``config``'s widths (hidden, heads, FFN,
    vocabulary), on proxies of 1 and 2 layers running rows of 64 real ``fortunes`` tokens.

    :func:`saved_activation_bytes` counts what autograd keeps in training mode under the
    policy's autocast (CPU autocast; the policy's weight dtype), at 128 and 256 tokens: the
    difference between 2 and 1 layers is one layer, the difference between the token counts its
    per-token slope. Fused attention (the CPU's flash kernel) keeps O(L) per row, so the bytes are
    linear in tokens and do not depend on how tokens are split into rows; the math path's L x L
    scores are not modelled. Parameter parts come from :func:`parameter_memory` on the same
    proxies (parameters are linear in the depth too).
    """
    from .models import EncoderConfig

    if not isinstance(config, EncoderConfig):
        raise fail("config", config, "be a padlab.models.EncoderConfig")
    check_choice("precision", precision, PARAMETER_STORAGE)
    check_choice("optimizer", optimizer, OPTIMIZER_STATES)
    return _profile(config.replace(layers=1, gradient_checkpointing=False, dropout=0.0), precision, optimizer)


_PROFILES: dict = {}


def _profile(config, precision: str, optimizer: str) -> ActivationProfile:
    from .models import EncoderForMaskedLM

    key = (config, precision, optimizer)
    if key in _PROFILES:
        return _PROFILES[key]
    t1, t2, m1, m2 = 64, 128, 8, 16
    enc = {(n, t): _proxy_saved(config, precision, n, t, m1, False, False) for n in (1, 2) for t in (t1, t2)}
    ck = {(n, t): _proxy_saved(config, precision, n, t, m1, True, False) for n in (1, 2) for t in (t1, t2)}
    layer = {t: enc[2, t] - enc[1, t] for t in (t1, t2)}
    slope = (layer[t2] - layer[t1]) / (t2 - t1)
    fixed = layer[t1] - slope * t1
    ck_layer = {t: ck[2, t] - ck[1, t] for t in (t1, t2)}
    ck_slope = (ck_layer[t2] - ck_layer[t1]) / (t2 - t1)
    embed = (enc[1, t1] - layer[t1]) / t1
    # the head's slope over two masked counts: its half weight copies are fixed, not per masked token
    head = (_proxy_saved(config, precision, 1, t1, m2, False, True)
            - _proxy_saved(config, precision, 1, t1, m1, False, True)) / (m2 - m1)
    mem = {n: parameter_memory(EncoderForMaskedLM(config.replace(layers=n)), precision, optimizer) for n in (1, 2)}
    per_layer = {k: mem[2][k] - mem[1][k] for k in mem[1]}
    fixed_params = {k: mem[1][k] - per_layer[k] for k in mem[1]}
    out = ActivationProfile(float(slope), float(max(fixed, 0.0)), float(ck_slope), float(embed), float(head),
                            fixed_params, per_layer,
                            f"CPU, {precision}, hidden {config.hidden}, heads {config.heads}, ffn {config.ffn}, "
                            f"vocab {config.vocab_size}: 1 and 2 layers x {t1} and {t2} tokens (rows of 64), "
                            f"{m1} and {m2} masked")
    _PROFILES[key] = out
    return out


@dataclass(frozen=True, eq=False)
class TrainingMemory(FieldMapping):
    """Estimated peak bytes of one training step (forward, backward, optimizer step); see
    :func:`training_memory`. ``total`` is the peak: ``weights + optimizer + half_copies +
    max(activations + recompute + transient, gradients)``."""

    tokens: int
    masked_tokens: int
    weights: int
    gradients: int
    optimizer: int
    half_copies: int
    activations: int
    recompute: int
    transient: int
    total: int


def training_memory(config, precision: str = "bf16-amp", *, tokens: int, masked_tokens: int | None = None,
                    checkpointing: bool | None = None, optimizer: str = "adamw",
                    profile: ActivationProfile | None = None) -> TrainingMemory:
    """Peak memory of a training step of the masked-LM encoder ``config`` with ``tokens`` token
    positions a step (padding counts: every padded position is computed and stored) of which
    ``masked_tokens`` (default 15%) are predicted. Arithmetic on an :class:`ActivationProfile`
    (default: :func:`activation_profile` measured for the config's widths, cached):

    * ``weights``, ``gradients``, ``optimizer``, ``half_copies``: :func:`parameter_memory`'s parts
      (half copies only for what autocast casts), fixed + per layer x ``config.layers``;
    * ``activations``: kept at the end of the forward: ``layers x layer_per_token x tokens +
      embed_per_token x tokens + head_per_masked x masked_tokens`` (the fixed bytes autocast keeps
      are its half weight copies, counted once, in ``half_copies``). With ``checkpointing`` (default ``config.gradient_checkpointing``)
      a layer keeps ``checkpoint_per_token x tokens`` (its input) and ``recompute`` is one layer's
      full activations, rebuilt during its backward;
    * ``transient``: one layer's activations again (the gradients flowing through the layer being
      back-propagated are as large as what it saved) plus the head's per-masked bytes (the logits'
      gradient).

    The gradients grow during backward while activations are freed, so the peak takes the larger
    of the two (the gradients cannot outlive the optimizer step's start). Linear in ``tokens``
    under fused attention.
    """
    from .models import EncoderConfig

    if not isinstance(config, EncoderConfig):
        raise fail("config", config, "be a padlab.models.EncoderConfig")
    check_choice("precision", precision, PARAMETER_STORAGE)
    check_choice("optimizer", optimizer, OPTIMIZER_STATES)
    tokens = check_int("tokens", tokens, min_value=0)
    if masked_tokens is None:
        masked_tokens = int(round(0.15 * tokens))
    masked_tokens = check_int("masked_tokens", masked_tokens, min_value=0)
    if masked_tokens > tokens:
        raise fail("masked_tokens", masked_tokens, f"be <= tokens={tokens}")
    if checkpointing is None:
        checkpointing = config.gradient_checkpointing
    if not isinstance(checkpointing, bool):
        raise fail("checkpointing", checkpointing, "be True, False or None")
    if profile is None:
        profile = activation_profile(config, precision, optimizer)
    elif not isinstance(profile, ActivationProfile):
        raise fail("profile", profile, "be an ActivationProfile or None")
    n = config.layers
    part = {k: int(profile.params_fixed[k] + n * profile.params_per_layer[k])
            for k in ("weights", "gradients", "optimizer", "half_copies")}
    one_layer = profile.layer_per_token * tokens
    per_layer = profile.checkpoint_per_token * tokens if checkpointing else one_layer
    acts = n * per_layer + profile.embed_per_token * tokens + profile.head_per_masked * masked_tokens
    recompute = one_layer if checkpointing else 0.0
    transient = one_layer + profile.head_per_masked * masked_tokens
    acts, recompute, transient = int(round(max(acts, 0))), int(round(recompute)), int(round(max(transient, 0)))
    total = part["weights"] + part["optimizer"] + part["half_copies"] + max(acts + recompute + transient,
                                                                           part["gradients"])
    return TrainingMemory(tokens, masked_tokens, **part, activations=acts, recompute=recompute,
                          transient=transient, total=int(total))


def max_tokens_per_step(budget_bytes: int, config, precision: str = "bf16-amp", *,
                        checkpointing: bool | None = None, optimizer: str = "adamw",
                        masked_fraction: float = 0.15, multiple_of: int = 1,
                        profile: ActivationProfile | None = None) -> int:
    """The largest token count (a multiple of ``multiple_of``, e.g. 512 for rows of fixed-512)
    whose :func:`training_memory` ``total`` fits in ``budget_bytes``; 0 when not even one unit
    fits. ``masked_fraction`` of the tokens are predicted by the head."""
    budget_bytes = check_int("budget_bytes", budget_bytes, min_value=1)
    masked_fraction = check_float("masked_fraction", masked_fraction, min_value=0.0, max_value=1.0)
    multiple_of = check_int("multiple_of", multiple_of, min_value=1)

    def fits(units: int) -> bool:
        t = units * multiple_of
        return training_memory(config, precision, tokens=t, masked_tokens=int(round(masked_fraction * t)),
                               checkpointing=checkpointing, optimizer=optimizer, profile=profile).total <= budget_bytes

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:   # the total grows with the tokens: bisect on units
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo * multiple_of
