"""padlab.experiments.profiling: kernel families by name, the per-step summary by hand, the CPU profile."""
from __future__ import annotations

import pytest
import torch

from padlab.experiments import profiling


@pytest.mark.parametrize("name, family", [
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128>>", "attention"),
    ("fmha_cutlassB_bf16_aligned_64x64_k64_sm80", "attention"),      # attention before cutlass's matmuls
    ("triton_tem_fused_flex_attention_0", "attention"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
    ("nvjet_tst_128x256_64x4_2x1_v_bz_coopA_TNT", "matmul"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>", "optimizer"),
    ("triton_poi_fused_add_mul_rsqrt_0", "other"),
    ("Memcpy HtoD (Pageable -> Device)", "other"),
])
def test_kernel_family_by_name(name, family):
    assert profiling.kernel_family(name) == family


def test_summarise_kernels_by_hand():
    kernels = [("flash_fwd_kernel", 4000.0, 2), ("sm90_xmma_gemm_x", 6000.0, 8), ("fused_adam", 1000.0, 1),
               ("triton_poi_fused_add", 1000.0, 9)]
    s = profiling.summarise_kernels(kernels, steps=2, wall_ms=10.0, top=2)
    # 12,000 us over 2 steps: 6 ms a step of a 10 ms step; 20 launches over 2 steps
    assert s["kernel_ms_per_step"] == 6.0 and s["gpu_busy_fraction_under_profiler"] == 0.6
    assert s["kernels_per_step"] == 10.0
    assert s["family_ms_per_step"] == {"attention": 2.0, "matmul": 3.0, "optimizer": 0.5, "other": 0.5}
    assert s["top_kernels"] == [
        {"kernel": "sm90_xmma_gemm_x", "ms_per_step": 3.0, "calls_per_step": 4.0, "family": "matmul"},
        {"kernel": "flash_fwd_kernel", "ms_per_step": 2.0, "calls_per_step": 1.0, "family": "attention"}]


def test_kernel_profile_on_a_cpu_has_wall_time_only():
    lin = torch.nn.Linear(8, 8)
    calls = []
    prof = profiling.kernel_profile(lambda: calls.append(lin(torch.ones(4, 8)).sum().item()), 3, "cpu")
    assert len(calls) == 1 and prof["steps"] == 3 and prof["wall_ms_per_step"] > 0
    assert prof["kernel_ms_per_step"] is None and prof["family_ms_per_step"] is None and prof["top_kernels"] == []


@pytest.mark.parametrize("call, match", [
    (lambda: profiling.kernel_profile(lambda: None, 0, "cpu"), "steps must be an integer >= 1"),
    (lambda: profiling.kernel_profile("run", 1, "cpu"), "run must be a callable"),
    (lambda: profiling.kernel_profile(lambda: None, 1, "cpu", top=-1), "top must be an integer >= 0"),
    (lambda: profiling.kernel_family(3), "name must be a kernel name"),
    (lambda: profiling.summarise_kernels([("k", 1.0, 1)], 1, 0.0), "wall_ms must be a positive number"),
    (lambda: profiling.summarise_kernels([("k", 1.0, 1)], 0, 1.0), "steps must be an integer >= 1"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
