"""What padding wastes: tokens, attention cost and memory, for a set of batches.

A batch is described by its :class:`BatchShape`: how many rows the tensor has, how wide
each row is (the padded length), and the lengths of the real sequences it holds (one per
row when padding, several per row when packing). Everything here is arithmetic on those
shapes, so it applies to any strategy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

from ._validate import check_choice, check_int, fail


@dataclass(frozen=True)
class BatchShape:
    """One batch: a ``rows x width`` tensor holding sequences of ``seq_lengths`` real tokens."""

    rows: int
    width: int
    seq_lengths: np.ndarray

    def __post_init__(self) -> None:
        check_int("rows", self.rows, min_value=1)
        check_int("width", self.width, min_value=1)
        lens = np.asarray(self.seq_lengths)
        if lens.ndim != 1 or lens.size == 0 or not np.issubdtype(lens.dtype, np.integer):
            raise fail("seq_lengths", self.seq_lengths, "be a non-empty 1-D array of integers")
        if lens.min() < 1:
            raise fail("seq_lengths", self.seq_lengths, "hold lengths >= 1")
        if lens.sum() > self.rows * self.width:
            raise fail("seq_lengths", self.seq_lengths,
                       f"fit in rows x width = {self.rows} x {self.width} (sum is {int(lens.sum())})")


@dataclass(frozen=True)
class WasteReport:
    """Totals over a set of batches; ``padded_tokens`` counts pad slots only."""

    strategy: str
    batches: int
    sequences: int
    real_tokens: int
    padded_tokens: int
    computed_tokens: int
    efficiency: float
    attention_real: int
    attention_computed: int
    attention_efficiency: float
    truncated_tokens: int
    max_width: int

    def as_dict(self) -> dict:
        return asdict(self)


def waste(strategy: str, batches: Iterable[BatchShape], truncated_tokens: int = 0,
          *, block_diagonal: bool = False) -> WasteReport:
    """Measure what a set of batches computes against what it needs.

    * token efficiency = real tokens / (rows x width) summed over batches;
    * attention efficiency = sum of real ``length**2`` / sum of computed ``width**2`` per row:
      the quadratic score matrix that dense attention computes. With ``block_diagonal``
      (packed rows through a varlen kernel) a row computes only its own blocks, so the
      computed term becomes the sum of ``length**2`` plus nothing for the pad tail.
    """
    truncated_tokens = check_int("truncated_tokens", truncated_tokens, min_value=0)
    batches = list(batches)
    if not batches:
        raise fail("batches", batches, "hold at least one BatchShape")
    for i, b in enumerate(batches):
        if not isinstance(b, BatchShape):
            raise fail(f"batches[{i}]", b, "be a BatchShape")
    rows = np.array([b.rows for b in batches], dtype=np.int64)
    width = np.array([b.width for b in batches], dtype=np.int64)
    lens = np.concatenate([np.asarray(b.seq_lengths, dtype=np.int64) for b in batches])
    real = int(lens.sum())
    computed = int((rows * width).sum())
    att_real = int((lens * lens).sum())
    att_computed = att_real if block_diagonal else int((rows * width * width).sum())
    return WasteReport(
        strategy=strategy, batches=len(batches), sequences=int(lens.size), real_tokens=real,
        padded_tokens=computed - real, computed_tokens=computed, efficiency=real / computed,
        attention_real=att_real, attention_computed=att_computed,
        attention_efficiency=att_real / att_computed, truncated_tokens=truncated_tokens,
        max_width=int(width.max()))


def padded_batches(lengths: np.ndarray, batches: Sequence[np.ndarray], *, max_length: int | None = None,
                   fixed: bool = False, pad_to_multiple_of: int | None = None) -> tuple[list[BatchShape], int]:
    """Shapes of one-sequence-per-row batches, and the tokens truncation drops.

    ``batches`` holds arrays of indices into ``lengths``. With ``fixed`` every batch is
    ``max_length`` wide; otherwise each batch is as wide as its longest (kept) sequence,
    rounded up to ``pad_to_multiple_of``.
    """
    lengths = np.asarray(lengths)
    if max_length is not None:
        max_length = check_int("max_length", max_length, min_value=1)
    if fixed and max_length is None:
        raise fail("max_length", max_length, "be given when fixed=True")
    mult = check_int("pad_to_multiple_of", pad_to_multiple_of, min_value=1, allow_none=True)
    shapes, truncated = [], 0
    for idx in batches:
        lens = lengths[np.asarray(idx, dtype=np.int64)]
        kept = np.minimum(lens, max_length) if max_length is not None else lens
        truncated += int((lens - kept).sum())
        w = max_length if fixed else int(kept.max())
        if mult and not fixed:
            w = -(-w // mult) * mult
        shapes.append(BatchShape(rows=len(kept), width=w, seq_lengths=kept))
    return shapes, truncated


def length_eta_squared(lengths, batches: Sequence[np.ndarray]) -> float:
    """How much batch membership depends on length: the correlation ratio eta².

    ``SS_between / SS_total`` of the lengths grouped by batch (``batches`` holds arrays of
    indices into ``lengths``; an index that appears twice counts twice). 0: every batch has
    the same mean length (membership says nothing about length); 1: every batch holds one
    length only (knowing the batch is knowing the length). Random batches of ``b`` texts
    score about ``1 / b``; a full sort scores close to 1. Equal lengths everywhere give 0.
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.size == 0 or not np.issubdtype(lengths.dtype, np.number):
        raise fail("lengths", lengths, "be a non-empty 1-D array of numbers")
    if isinstance(batches, (str, bytes)) or len(batches) == 0:
        raise fail("batches", batches, "hold at least one batch of indices")
    arrays = [np.asarray(b) for b in batches]
    for i, b in enumerate(arrays):  # a loop over batches
        if b.ndim != 1 or b.size == 0 or not np.issubdtype(b.dtype, np.integer):
            raise fail(f"batches[{i}]", batches[i], "be a non-empty 1-D array of integer indices")
    order = np.concatenate(arrays)
    if order.min() < 0 or order.max() >= lengths.size:
        raise fail("batches", batches, f"hold indices in [0, {lengths.size})")
    x = lengths[order].astype(np.float64)
    sizes = np.fromiter((b.size for b in arrays), dtype=np.int64, count=len(arrays))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    grand = x.mean()
    total = float(((x - grand) ** 2).sum())
    if total == 0.0:
        return 0.0
    means = np.add.reduceat(x, starts) / sizes
    return float((sizes * (means - grand) ** 2).sum() / total)


# ---------------------------------------------------------------------------------------------
# Memory and time of a model: parameters, optimizer state, saved activations, FLOPs, kernels
# ---------------------------------------------------------------------------------------------

#: Bytes per element of each storage precision.
BYTES_PER_ELEMENT = {"fp64": 8, "fp32": 4, "bf16": 2, "fp16": 2}
#: Training precisions :func:`parameter_memory` knows: pure fp32, pure half (weights, gradients and
#: optimizer states all in bf16/fp16), and ``"amp"`` (torch.autocast: fp32 weights, gradients and
#: states, plus the half-precision weight copies autocast makes for the forward pass).
PRECISIONS = ("fp32", "bf16", "fp16", "amp")
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


def parameter_memory(model, precision: str = "fp32", optimizer: str = "adam") -> dict[str, int]:
    """Bytes that a model's parameters cost in training, before any activation.

    Counts the model's own parameter tensors (shared ones once, as ``model.parameters()`` does):
    ``weights`` for all of them; ``gradients`` and ``optimizer`` state only for those with
    ``requires_grad``. Per trainable parameter this gives 16 bytes for fp32 + Adam (4 + 4 + 2 x 4),
    8 for pure bf16/fp16 + Adam (2 + 2 + 2 x 2) and, for ``"amp"``, the fp32 16 plus 2 bytes of
    ``half_copies`` (the casts autocast keeps for backward). Returns ints:
    ``parameters, trainable, weights, gradients, optimizer, half_copies, total``.
    """
    import torch

    if not isinstance(model, torch.nn.Module):
        raise fail("model", model, "be a torch.nn.Module")
    check_choice("precision", precision, PRECISIONS)
    check_choice("optimizer", optimizer, OPTIMIZER_STATES)
    params = list(model.parameters())
    n = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    full = BYTES_PER_ELEMENT["fp32"] if precision == "amp" else BYTES_PER_ELEMENT[precision]
    out = {
        "parameters": n,
        "trainable": trainable,
        "weights": n * full,
        "gradients": trainable * full,
        "optimizer": trainable * full * OPTIMIZER_STATES[optimizer],
        "half_copies": trainable * BYTES_PER_ELEMENT["bf16"] if precision == "amp" else 0,
    }
    out["total"] = sum(v for k, v in out.items() if k not in ("parameters", "trainable"))
    return out


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
    del result, keep
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
