"""The GPU reference run behind data/benchmarks/ and notebook 07.

Each part fits one 10-minute call on the device machine:

* ``--part matrix``: ``padlab bench`` in equal-token mode, every strategy x precision, plus the
  data-loading rate and a torch.compile'd best recipe (JSON + PNG);
* ``--part extra``: equal-sequence mode (32 sequences a step), the dynamic-shape anomaly (cold
  vs warm, SDPA backends, multiples), the 200-step loss curves, the transformers recipe as a
  peer, and a torch.profiler breakdown of the best recipe.

Run: ``PYTHONPATH=. python benchmarks/gpu_reference.py --part matrix --out DIR``.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time

import torch

from padlab.data import load_corpus
from padlab.env import resolve_device
from padlab.experiments import bench, results
from padlab.experiments.bench import BenchConfig, collate_step, format_table, mask_corpus, plan_steps, run_benchmark
from padlab.train import to_device, train_step


def log(*a):
    print(*a, flush=True)


def part_matrix(out: str, quick: bool) -> None:
    kw = dict(model="tiny", timed_steps=5, max_tokens=8 * 128, max_length=128) if quick else {}
    best = "packed-varlen/bf16-amp"
    cfg = BenchConfig(progress=False, **kw)
    def save(partial):
        results.save_result(partial, os.path.join(out, "bench_tokens.partial.json"))
        r = partial["rows"][-1]
        log(f"row {r['strategy']}/{r['precision']}: {r['real_tokens_per_s']:,.0f} real tok/s, "
            f"cold {r['cold_real_tokens_per_s']:,.0f}, mfu {r['mfu']}")

    res = run_benchmark(cfg, command="python benchmarks/gpu_reference.py --part matrix", on_row=save)
    # The compiled best recipe as an extra row (the plain row above is the eager one).
    if not quick:
        cfg_c = dataclasses.replace(cfg, strategies=("packed-varlen",), precisions=("bf16-amp",), compile=(best,))
        t0 = time.perf_counter()
        comp = run_benchmark(cfg_c, command="(compiled row)")
        row = comp["rows"][0]
        row["compile_and_cold_s"] = time.perf_counter() - t0
        res["rows"].append(row)
        row["speedup_vs_fixed_fp32"] = results.speedups(res)[results.row_label(row)]
    mc = mask_corpus(load_corpus(cfg.corpus), cfg.mlm_prob, cfg.max_length, cfg.seed)
    best_row = max(res["rows"], key=lambda r: r["real_tokens_per_s"])
    res["loader"] = loader_vs_gpu(best_row, mc, cfg)
    log(format_table(res))
    log("loader", json.dumps(res["loader"]))
    results.save_result(res, os.path.join(out, "bench_tokens.json"))
    from padlab.viz import bench_summary
    bench_summary(res).savefig(os.path.join(out, "bench_tokens.png"), dpi=110)


def loader_vs_gpu(best_row, mc, cfg, workers=(0, 4)):
    """Batches per second from sampler + collator against what the GPU consumes at the best recipe."""
    gpu = 1e3 / best_row["median_step_ms"]
    out = []
    for w in workers:
        rate = bench.loader_rate(best_row["strategy"], mc, cfg, steps=20 if w == 0 else 200, workers=w)
        rate["gpu_batches_per_s"] = gpu
        rate["ratio"] = rate["batches_per_s"] / gpu
        out.append(rate)
    return out


def save(out: str, result: dict, name: str = "bench_extra.json") -> None:
    results.save_result(result, os.path.join(out, name))


def part_tune(out: str, quick: bool) -> None:
    """The best recipe, compiled, at 1x and 4x the token budget: how MFU grows with step size."""
    kw = dict(model="tiny", timed_steps=5, max_length=128) if quick else {}
    cap = kw.get("max_length", 512)
    result = {"command": "python benchmarks/gpu_reference.py --part tune", "rows": []}
    mc = None
    for budget, vmax in (((8 * cap, "batch"), (32 * cap, "batch")) if quick else
                         ((32 * cap, "batch"), (128 * cap, "batch"), (128 * cap, "max_length"))):
        cfg = BenchConfig(strategies=("packed-varlen",), precisions=("bf16-amp",), max_tokens=budget,
                          compile=("packed-varlen/bf16-amp",), progress=False, varlen_max=vmax, **kw)
        t0 = time.perf_counter()
        r = run_benchmark(cfg, command=f"tune budget={budget}")
        row = r["rows"][0]
        row["budget"] = budget
        row["varlen_max"] = vmax
        row["compile_and_cold_s"] = time.perf_counter() - t0
        for k in ("device", "torch", "date", "matmul_peak_tflops"):
            result[k] = r[k]
        result["rows"].append(row)
        log(format_table(r))
        if mc is None:
            mc = mask_corpus(load_corpus(cfg.corpus), cfg.mlm_prob, cfg.max_length, cfg.seed)
        row["loader"] = loader_vs_gpu(row, mc, cfg)
        log("loader", json.dumps(row["loader"]))
        save(out, result, "bench_tune.json")
        mcfg = bench.model_config(cfg.model, cfg.max_length)
        torch.manual_seed(cfg.seed)
        from padlab.models import EncoderForMaskedLM
        init = {k: v.detach().clone() for k, v in EncoderForMaskedLM(mcfg).state_dict().items()}
        row["profile"] = profile_best(cfg, mc, mcfg, init, resolve_device("auto"), out, n=6,
                                      name=f"profile_budget{budget}_{vmax}.txt")
        save(out, result, "bench_tune.json")


def part_extra(out: str, quick: bool) -> None:
    kw = dict(model="tiny", timed_steps=5, max_tokens=8 * 128, max_length=128) if quick else {}
    result = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU",
              "torch": torch.__version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "command": "python benchmarks/gpu_reference.py --part extra"}
    # 1. Equal sequences per step: 32 sequences, fp32 and bf16.
    cfg = BenchConfig(work="sequences", precisions=("fp32", "bf16-amp"), progress=False, **kw)
    seq = run_benchmark(cfg, command="python benchmarks/gpu_reference.py --part extra (work=sequences)")
    log(format_table(seq))
    result["sequences"] = seq
    save(out, result)
    # 2. The anomaly: dynamic shapes under bf16, which SDPA backend, and the fixes.
    rows = []
    choices = ((), ("efficient",), ("flash", "efficient")) if torch.cuda.is_available() else ((),)
    for backends in choices:
        c = BenchConfig(work="sequences", strategies=("dynamic", "dynamic-multiple"), precisions=("fp32", "bf16-amp"),
                        sdpa_backends=backends, progress=False, **kw)
        r = run_benchmark(c, command=f"anomaly sdpa_backends={backends or 'default'}")
        log(format_table(r))
        rows.extend(r["rows"])
    result["anomaly"] = rows
    save(out, result)
    # 3. Loss curves: best recipe against the baseline, 200 steps each, per example seen.
    steps = 10 if quick else 200
    cfgl = BenchConfig(progress=False, **kw)
    mc = mask_corpus(load_corpus(cfgl.corpus), cfgl.mlm_prob, cfgl.max_length, cfgl.seed)
    from padlab.models import EncoderForMaskedLM
    mcfg = bench.model_config(cfgl.model, cfgl.max_length)
    torch.manual_seed(cfgl.seed)
    init = {k: v.detach().clone() for k, v in EncoderForMaskedLM(mcfg).state_dict().items()}
    dev = resolve_device("auto")
    curves = []
    for s, p in (("fixed", "fp32"), ("packed-varlen", "bf16-amp")):
        t0 = time.perf_counter()
        c = bench.loss_curve(s, p, mc, cfgl, mcfg, init, dev, steps)
        c["wall_s"] = time.perf_counter() - t0
        curves.append(c)
        log(f"loss curve {s}/{p}: {steps} steps in {c['wall_s']:.1f} s, final loss {c['loss'][-1]:.3f}, "
            f"examples seen {c['examples_seen'][-1]}")
    result["loss_curves"] = curves
    save(out, result)
    # 4. transformers' recipe on the same model and data.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from peers import peer_rows
    try:
        result["peers"] = peer_rows(cfgl, mc, mcfg, init, dev)
        for r in result["peers"]:
            log("peer", json.dumps({k: r.get(k) for k in ("strategy", "precision", "real_tokens_per_s", "padded_fraction",
                                                             "mfu", "collate_batches_per_s", "batches_per_s")}))
    except ImportError as e:
        result["peers"] = f"transformers not available: {e}"
    save(out, result)
    # 5. Where the best recipe's time goes.
    result["profile"] = profile_best(cfgl, mc, mcfg, init, dev, out)
    save(out, result)


def profile_best(cfg, mc, mcfg, init, dev, out, strategy="packed-varlen", precision="bf16-amp", n=8,
                 name="profile_best.txt"):
    """torch.profiler over ``n`` steps of the best recipe: GPU time by kernel family."""
    from torch.profiler import ProfilerActivity, profile

    planned, _ = plan_steps(strategy, mc, cfg, n + 3, epoch0=300)
    steps = [to_device(collate_step(strategy, mc, p, cfg)["inputs"], dev) for p in planned]
    prep = bench.prepare_row(precision, init, mcfg, cfg, dev)

    def step(inputs):
        train_step(prep.model, inputs, prep.optimizer, prep.policy, prep.scaler, bench.mlm_loss, measure=False)

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    for inp in steps[:3]:
        step(inp)
    bench.sync(dev)
    with profile(activities=acts) as prof:
        for inp in steps[3:]:
            step(inp)
        bench.sync(dev)
    attr = "device_time_total" if dev.type == "cuda" else "cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    table = prof.key_averages().table(sort_by="cuda_time_total" if dev.type == "cuda" else "cpu_time_total", row_limit=40)
    with open(os.path.join(out, name), "w") as fh:
        fh.write(table)
    # Attention first: flash kernels' names also carry "sm90".
    families = {"attention (flash varlen)": ("flash", "fmha", "attention"),
                "gemm (matmul)": ("gemm", "sm90", "cutlass", "cublas", "nvjet", "matmul", "xmma"),
                "layernorm": ("layer_norm", "layernorm"), "gelu": ("gelu",),
                "optimizer": ("adam", "foreach", "multi_tensor"),
                "cross-entropy / softmax": ("softmax", "cross_entropy", "nll", "log_softmax"),
                "copies / index": ("copy", "index", "gather", "scatter", "cat", "fill")}
    kernels = {}
    for e in events:
        if dev.type == "cuda" and getattr(e, "device_type", None) is not None and str(e.device_type).endswith("CUDA"):
            kernels[e.key] = getattr(e, attr)
    if not kernels:  # older/newer torch: take leaf events with device time
        kernels = {e.key: getattr(e, attr) for e in events if not e.key.startswith("aten::") and not e.key.startswith("Optimizer")}
    total = sum(kernels.values()) or 1.0
    fam = {k: 0.0 for k in families}
    fam["other"] = 0.0
    for k, v in kernels.items():
        low = k.lower()
        for f, keys in families.items():
            if any(x in low for x in keys):
                fam[f] += v
                break
        else:
            fam["other"] += v
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:15]
    res = {"strategy": strategy, "precision": precision, "steps": n,
           "kernel_time_ms_per_step": total / 1e3 / n,
           "families_fraction": {k: v / total for k, v in fam.items()},
           "top_kernels": [{"kernel": k[:120], "ms_per_step": v / 1e3 / n, "fraction": v / total} for k, v in top]}
    log("profile", json.dumps(res["families_fraction"]))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("matrix", "extra", "tune"), required=True)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    {"matrix": part_matrix, "extra": part_extra, "tune": part_tune}[a.part](a.out, a.quick)


if __name__ == "__main__":
    main()
