"""The notebooks that train in bf16 pass nbval on a CPU without AVX512-BF16 or AMX too.

bf16 matrix products on a CPU take one of several kernel families (AMX, AVX512-BF16, AVX2), which
round their sums differently, so a bf16 loss after a few steps differs in its last digits from
CPU to CPU. The notebooks print such numbers rounded to what is stable, or show them in a cell
marked NBVAL_IGNORE_OUTPUT followed by a cell that asserts the lesson with a tolerance. This test
checks that on whatever CPU runs it, by running those notebooks again under nbval in a
subprocess whose oneDNN, ATen and MKL kernels are capped at AVX2 (what an AVX2-only CPU, or a
machine whose CPU is hidden from its guest, gets). On an AVX2-only CPU it repeats the plain run;
on a Xeon with AMX it runs the other kernel family.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The notebooks whose cells train or step a model under bf16 autocast on the CPU.
BF16_NOTEBOOKS = ("notebooks/06_mixed_precision.ipynb", "notebooks/07_putting_it_together.ipynb")
#: The environment that caps every CPU kernel family torch uses at AVX2.
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2",        # oneDNN (bf16 matmuls on CPUs with native bf16)
        "ATEN_CPU_CAPABILITY": "avx2",       # ATen's own vectorised kernels
        "MKL_ENABLE_INSTRUCTIONS": "AVX2"}   # MKL's fp32 GEMMs


def _run(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=timeout)


def test_the_cap_reaches_a_subprocess():
    probe = _run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                 AVX2, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.strip() == "AVX2", probe.stdout


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_bf16_notebooks_pass_nbval_with_cpu_kernels_capped_at_avx2():
    # pyproject's addopts add --nbval, the sanitize file and the cell timeout to this run too.
    run = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *BF16_NOTEBOOKS],
               {**AVX2, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))},
               timeout=1150)
    assert run.returncode == 0, (f"nbval under {AVX2} failed (exit {run.returncode}):\n"
                                 + run.stdout[-6000:] + run.stderr[-2000:])
