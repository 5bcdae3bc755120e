"""Where the code runs: device detection, half-precision support, seeds and threads.

Every notebook's set-up cell calls :func:`setup`, so a learner on a laptop CPU, on a Colab T4
(fp16 but no bf16) or on a big GPU gets the right device and precision without editing code.
"""
from __future__ import annotations

import platform
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ._validate import check_choice, check_int, fail


@dataclass(frozen=True)
class DeviceInfo:
    """What the learner's machine offers."""

    device: str            # "cuda", "mps" or "cpu"
    name: str              # e.g. "NVIDIA H100 80GB HBM3" or the CPU's processor string
    torch: str
    bf16: bool             # bf16 matrix maths is supported (and fast) here
    fp16: bool             # fp16 autocast is worth using here (a GPU)
    half_dtype: str        # the half-precision format to use here: "bf16", "fp16" or "none"
    capability: str        # CUDA compute capability, "" elsewhere
    threads: int

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_device(device: "str | torch.device" = "auto") -> torch.device:
    """THE device resolver: ``"auto"`` (a CUDA GPU, else an Apple GPU, else the CPU), a name such
    as ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, or a ``torch.device``.

    Only the form is checked here, not whether the device exists: :func:`padlab.precision.check_policy`
    says why a policy cannot run on a missing GPU, and :func:`detect_device` refuses one.
    """
    if isinstance(device, str) and device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise fail("device", device, "be 'auto' or a device such as 'cpu', 'cuda', 'cuda:0' or 'mps'") from None
    else:
        raise fail("device", device, "be 'auto' or a device such as 'cpu', 'cuda', 'cuda:0' or 'mps'")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise fail("device", device, "be a 'cpu', 'cuda' or 'mps' device")
    return dev


def detect_device(prefer: str = "auto") -> DeviceInfo:
    """Detect the best device (``prefer`` may force ``"cpu"``, ``"cuda"`` or ``"mps"``)."""
    check_choice("prefer", prefer, ("auto", "cpu", "cuda", "mps"))
    has_cuda = torch.cuda.is_available()
    has_mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if prefer == "cuda" and not has_cuda:
        raise fail("prefer", prefer, "name an available device (no CUDA GPU found)")
    if prefer == "mps" and not has_mps:
        raise fail("prefer", prefer, "name an available device (no Apple GPU found)")
    device = resolve_device(prefer).type
    if device == "cuda":
        major, minor = torch.cuda.get_device_capability()
        # bf16 tensor cores arrive with Ampere (8.0); a T4 (7.5) emulates bf16 slowly.
        bf16 = major >= 8 and torch.cuda.is_bf16_supported()
        return DeviceInfo("cuda", torch.cuda.get_device_name(), torch.__version__, bf16, True,
                          "bf16" if bf16 else "fp16", f"{major}.{minor}", torch.get_num_threads())
    if device == "mps":
        return DeviceInfo("mps", "Apple GPU", torch.__version__, False, True, "fp16", "",
                          torch.get_num_threads())
    # On a CPU, bf16 autocast runs (slowly on most chips) and fp16 matmuls are far slower than fp32.
    return DeviceInfo("cpu", platform.processor() or platform.machine(), torch.__version__, True, False,
                      "bf16", "", torch.get_num_threads())


def seed_everything(seed: int = 0) -> None:
    """Seed Python, numpy and torch (all devices)."""
    seed = check_int("seed", seed, min_value=0)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(seed: int = 0, threads: int | None = 2, prefer: str = "auto") -> DeviceInfo:
    """A notebook's first call: seeds, a fixed CPU thread count (so results repeat), plot style.

    ``threads`` fixes torch's intra-op threads (``torch.set_num_threads``; the returned
    :class:`DeviceInfo` records the count in force): float sums can differ in the last bits with
    another count. ``OMP_NUM_THREADS`` is read when torch starts, so setting it here would change
    nothing and is not done.
    """
    seed_everything(seed)
    if threads is not None:
        threads = check_int("threads", threads, min_value=1)
        torch.set_num_threads(threads)
    import matplotlib

    matplotlib.rcParams.update({"figure.dpi": 90, "axes.grid": True, "grid.alpha": 0.3})
    return detect_device(prefer)
