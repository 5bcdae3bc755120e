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
        with pytest.raises(ValueError, match=r"prefer must name an available device; got 'cuda'"):
            env.detect_device("cuda")


def test_setup_seeds_and_threads():
    env.setup(seed=3, threads=1)
    a = (np.random.rand(), torch.rand(1).item())
    env.setup(seed=3, threads=1)
    assert (np.random.rand(), torch.rand(1).item()) == a
    assert torch.get_num_threads() == 1
    env.setup(seed=0, threads=2)


@pytest.mark.parametrize("call,match", [
    (lambda: env.detect_device("tpu"), r"prefer must be one of 'auto', 'cpu', 'cuda', 'mps'; got 'tpu'"),
    (lambda: env.seed_everything(-1), r"seed must be an integer >= 0; got -1"),
    (lambda: env.setup(threads=0), r"threads must be an integer >= 1; got 0"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
