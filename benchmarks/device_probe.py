"""First look at a GPU machine: versions, attention backends, and the per-shape cost of masks.

Prints what the benchmark relies on (varlen flash attention, torch.compile, transformers) and
times SDPA with a key-padding mask at odd and aligned lengths in fp32 and bf16, to separate
per-shape set-up from steady-state cost. Run: python benchmarks/device_probe.py
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def cuda_time(fn, reps=20, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


def main():
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(),
           "python": sys.version.split()[0]}
    for mod in ("transformers", "triton", "tokenizers"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            out[mod] = f"missing ({e.__class__.__name__})"
    try:
        from torch.nn.attention.varlen import varlen_attn
        q = torch.randn(300, 12, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        cu = torch.tensor([0, 100, 250, 300], device="cuda", dtype=torch.int32)
        o = varlen_attn(q, q, q, cu, cu, 150, 150)
        o.sum().backward()
        out["varlen_attn"] = "ok"
    except Exception as e:  # noqa: BLE001
        out["varlen_attn"] = f"failed: {e!r}"[:300]
    # SDPA with a key-padding mask: which backend accepts which length and dtype.
    B, H, D = 32, 12, 64
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for L in (127, 128, 131, 192, 255, 256):
            q = torch.randn(B, H, L, D, device="cuda", dtype=dtype)
            mask = torch.ones(B, 1, 1, L, device="cuda", dtype=torch.bool)
            mask[: B // 2, ..., L - 7:] = False
            res = {"dtype": str(dtype).split(".")[-1], "L": L}
            for name, be in (("efficient", SDPBackend.EFFICIENT_ATTENTION), ("math", SDPBackend.MATH),
                             ("cudnn", SDPBackend.CUDNN_ATTENTION)):
                try:
                    with sdpa_kernel([be]):
                        torch.cuda.synchronize(); t0 = time.perf_counter()
                        F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
                        torch.cuda.synchronize(); res[f"{name}_first_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
                        res[f"{name}_ms"] = round(cuda_time(lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=mask)), 4)
                except Exception as e:  # noqa: BLE001
                    res[f"{name}_ms"] = f"refused: {str(e).splitlines()[0][:80]}"
            torch.cuda.synchronize(); t0 = time.perf_counter()
            F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
            torch.cuda.synchronize(); res["default_first_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
            res["default_ms"] = round(cuda_time(lambda: F.scaled_dot_product_attention(q, q, q, attn_mask=mask)), 4)
            rows.append(res)
    out["sdpa_mask"] = rows
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms = cuda_time(lambda: a @ a, reps=10)
    out["matmul_bf16_tflops"] = round(2 * 8192**3 / ms / 1e9, 1)
    print(json.dumps(out, indent=1))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "probe.json"), "w") as fh:
            json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
