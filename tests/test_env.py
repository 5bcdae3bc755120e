"""Device detection and seeding."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from padlab import env


def test_cpu_detection_here():
    info = env.detect_device("cpu")
    assert info.device == "cpu" and info.fp16 is False and info.half_dtype == "bf16"
    assert info.torch == torch.__version__


def test_auto_matches_cuda_availability():
    assert env.detect_device().device == ("cuda" if torch.cuda.is_available() else
                                          env.detect_device().device)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"prefer must name an available device \(no CUDA GPU found\); got 'cuda'"):
            env.detect_device("cuda")


def test_resolve_device_is_the_one_resolver(monkeypatch):
    assert env.resolve_device("cpu") == torch.device("cpu")
    assert env.resolve_device(torch.device("cuda", 1)) == torch.device("cuda", 1)   # the form only, not presence
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert env.resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert env.resolve_device("auto") == torch.device("cpu")


def test_setup_seeds_and_threads():
    env.setup(seed=3, threads=1)
    a = (np.random.rand(), torch.rand(1).item())
    env.setup(seed=3, threads=1)
    assert (np.random.rand(), torch.rand(1).item()) == a
    assert torch.get_num_threads() == 1
    env.setup(seed=0, threads=2)


@pytest.mark.parametrize("call,match", [
    (lambda: env.detect_device("tpu"), r"prefer must be one of 'auto', 'cpu', 'cuda', 'mps'; got 'tpu'"),
    (lambda: env.resolve_device("meta"), r"device must be a 'cpu', 'cuda' or 'mps' device; got 'meta'"),
    (lambda: env.resolve_device("gpu!"), r"device must be 'auto' or a device such as"),
    (lambda: env.resolve_device(3), r"device must be 'auto' or a device such as .*; got 3"),
    (lambda: env.seed_everything(-1), r"seed must be an integer >= 0; got -1"),
    (lambda: env.setup(threads=0), r"threads must be an integer >= 1; got 0"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
