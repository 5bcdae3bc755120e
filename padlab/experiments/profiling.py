"""Where a training step's GPU time goes: ``torch.profiler`` over a few steps, summed by kernel.

:func:`kernel_profile` runs a caller's steps under the profiler and returns the kernel time per
step, the kernels launched per step, the share of the step's wall time the GPU was busy, the
heaviest kernels, and the kernel time split into families by name (:data:`KERNEL_FAMILIES`:
attention, matmul, optimizer, the rest). The benchmark scripts of ``benchmarks/`` use it to say
*why* a row is fast or slow, not only how fast it is.

The family of a kernel is read from its name, which is what the profiler gives: a heuristic, so
the top kernels are returned beside the split for a reader to check it.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import torch

from .._validate import check_int, fail

__all__ = ["KERNEL_FAMILIES", "kernel_family", "kernel_profile", "summarise_kernels"]

#: Kernel families by name, tried in order (the first match wins; no match: ``"other"``).
#: Attention first: FlexAttention's Triton kernels and cuDNN's fused attention also run matmuls.
KERNEL_FAMILIES: dict[str, str] = {
    "attention": r"flash|fmha|attention|attn|sdpa|flex|cudnn_generated_fort_native_sdpa|_fwd_kernel|_bwd_kernel",
    "matmul": r"gemm|sm90_xmma|sm80_xmma|cutlass|matmul|nvjet|cublas|_mm_|bmm|addmm",
    "optimizer": r"adam|multi_tensor|foreach",
}
_COMPILED = {k: re.compile(v, re.IGNORECASE) for k, v in KERNEL_FAMILIES.items()}


def kernel_family(name: str) -> str:
    """The :data:`KERNEL_FAMILIES` family of a kernel's name, ``"other"`` if none matches."""
    if not isinstance(name, str):
        raise fail("name", name, "be a kernel name (a string)")
    return next((k for k, rx in _COMPILED.items() if rx.search(name)), "other")


def kernel_profile(run: Callable[[], Any], steps: int, device: "str | torch.device", *,
                   top: int = 8, sync: Callable[[], Any] | None = None) -> dict[str, Any]:
    """Profile ``run()``, which performs ``steps`` training steps, on ``device``.

    Returns ``steps``, ``wall_ms_per_step`` (host clock from the start to a device sync after the
    last step, under the profiler: its CPU-side recording slows the host, so this is an upper
    bound of the unprofiled step), ``kernel_ms_per_step`` (every kernel's, copy's and memset's GPU
    time; one stream, so they do not overlap), ``gpu_busy_fraction_under_profiler``,
    ``kernels_per_step``, ``family_ms_per_step`` (:func:`kernel_family` of each kernel) and
    ``top_kernels`` (``top`` heaviest: name, ms and calls per step). On a CPU there are no kernels:
    the kernel fields are ``None``. Warm ``run``'s path up (compile, allocator) before calling this.
    """
    from torch.profiler import ProfilerActivity, profile

    steps = check_int("steps", steps, min_value=1)
    top = check_int("top", top, min_value=0)
    if not callable(run):
        raise fail("run", run, "be a callable that runs the profiled steps")
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if sync is None:
        sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
    # CPU and CUDA activities both: CUDA alone has been seen to record no kernels at all.
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        run()
        sync()
        wall_ms = (time.perf_counter() - t0) * 1e3 / steps
    out: dict[str, Any] = {"steps": steps, "wall_ms_per_step": wall_ms, "kernel_ms_per_step": None,
                           "gpu_busy_fraction_under_profiler": None, "kernels_per_step": None,
                           "family_ms_per_step": None, "top_kernels": []}
    if not cuda:
        return out
    kernels = [(e.key, e.self_device_time_total, e.count) for e in prof.key_averages()
               if str(getattr(e, "device_type", "")).endswith("CUDA") and getattr(e, "self_device_time_total", 0) > 0]
    if not kernels:
        raise RuntimeError("torch.profiler recorded no CUDA kernels (CUPTI not attached?)")
    return {**out, **summarise_kernels(kernels, steps, wall_ms, top=top)}


def summarise_kernels(kernels: "list[tuple[str, float, int]]", steps: int, wall_ms: float, *,
                      top: int = 8) -> dict[str, Any]:
    """The per-step kernel summary of :func:`kernel_profile` from ``(name, device microseconds,
    calls)`` over ``steps`` steps of ``wall_ms`` each (split out so that it is tested without a GPU)."""
    steps = check_int("steps", steps, min_value=1)
    top = check_int("top", top, min_value=0)
    if isinstance(wall_ms, bool) or not isinstance(wall_ms, (int, float)) or not wall_ms > 0:
        raise fail("wall_ms", wall_ms, "be a positive number of milliseconds")
    kernel_us = sum(us for _, us, _ in kernels)
    families: dict[str, float] = {k: 0.0 for k in (*KERNEL_FAMILIES, "other")}
    for name, us, _ in kernels:
        families[kernel_family(name)] += us / 1e3 / steps
    heavy = sorted(kernels, key=lambda k: -k[1])[:top]
    kernel_ms = kernel_us / 1e3 / steps
    return {"kernel_ms_per_step": kernel_ms, "gpu_busy_fraction_under_profiler": kernel_ms / wall_ms,
            "kernels_per_step": sum(c for _, _, c in kernels) / steps, "family_ms_per_step": families,
            "top_kernels": [{"kernel": k[:120], "ms_per_step": us / 1e3 / steps, "calls_per_step": c / steps,
                             "family": kernel_family(k)} for k, us, c in heavy]}

