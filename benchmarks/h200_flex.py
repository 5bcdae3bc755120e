"""The best recipe at the limit on one GPU: packed-flex against the baseline, through padlab's harness.

``--part main`` (the reference run behind ``data/benchmarks/bench_h200.json``): in one process,
the baseline (``fixed`` padding to 512, fp32, eager) and every batching strategy of
:data:`padlab.strategies.STRATEGIES` at the same token slots per step, the compiled
``packed-varlen`` and ``packed-flex`` rows, transformers' collators as peers, the time for the
best row and the baseline to reach the baseline's final loss, the data-loading rate at the best
row, and a torch.profiler breakdown of the compiled best row. Every row is
:func:`padlab.experiments.bench.run_row` (so :func:`padlab.train.train_step`); MFU is given
against the highest bf16 matmul sampled in the run and against the datasheet peak.

``--part probe``: the gradient proof of packed-flex (compiled FlexAttention over packed rows of
real fortunes sequences, loss and every parameter gradient equal to each sequence run alone, and
a negative control without the document mask that must differ).

Run: ``PYTHONPATH=. python benchmarks/h200_flex.py --part main --out DIR``. Nothing printed is
copied in; every figure is measured in the run.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import sys
import time

import numpy as np
import torch

from padlab.attention import document_block_mask, flex_support
from padlab.data import load_corpus, vocab_size
from padlab.experiments import bench, results
from padlab.models import IGNORE_INDEX, EncoderConfig, EncoderForMaskedLM
from padlab.packing import PackedCollator, pack
from padlab.train import to_device, train_step

T0 = time.perf_counter()


def log(*a):
    print(f"[{time.perf_counter() - T0:6.1f}s]", *a, flush=True)


def env() -> dict:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:  # a CPU build of torch
        triton_version = None
    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name() if cuda else "CPU", "torch": torch.__version__,
            "triton": triton_version, "cuda": torch.version.cuda,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": "PYTHONPATH=. python benchmarks/h200_flex.py " + " ".join(sys.argv[1:]),
            "flex_support": flex_support("cuda" if cuda else "cpu")._asdict()}


# ------------------------------------------------------------------------------------ rows

#: name: (strategy, policy, token slots per step, compiled, flex block size, compile mode)
ROWS = {
    "fixed/fp32": ("fixed", "fp32", 65536, False, 128, "default"),
    "fixed/bf16": ("fixed", "bf16-amp", 65536, False, 128, "default"),
    "dynamic/bf16": ("dynamic", "bf16-amp", 65536, False, 128, "default"),
    "sorted/bf16": ("sorted", "bf16-amp", 65536, False, 128, "default"),
    "bucketed/bf16": ("bucketed", "bf16-amp", 65536, False, 128, "default"),
    "token-budget/bf16": ("token-budget", "bf16-amp", 65536, False, 128, "default"),
    "packed/bf16": ("packed", "bf16-amp", 65536, False, 128, "default"),
    "packed-varlen/bf16": ("packed-varlen", "bf16-amp", 65536, False, 128, "default"),
    "packed-flex/bf16": ("packed-flex", "bf16-amp", 65536, False, 128, "default"),
    "packed-varlen*/bf16": ("packed-varlen", "bf16-amp", 65536, True, 128, "default"),
    "packed-flex128*/bf16": ("packed-flex", "bf16-amp", 65536, True, 128, "default"),
    "packed-flex64*/bf16": ("packed-flex", "bf16-amp", 65536, True, 64, "default"),
    "packed-flex64*cg/bf16": ("packed-flex", "bf16-amp", 65536, True, 64, "cudagraphs"),
    "fixed/fp32@16k": ("fixed", "fp32", 16384, False, 128, "default"),
    "packed-flex64*/bf16@16k": ("packed-flex", "bf16-amp", 16384, True, 64, "default"),
}


SCALE = 1  # --quick divides the token slots per step (a CPU smoke run of the driver)


def row_cfg(base: bench.BenchConfig, name: str, steps: int) -> bench.BenchConfig:
    strategy, policy, slots, compiled, block, mode = ROWS[name]
    slots //= SCALE
    return dataclasses.replace(base, strategies=(strategy,), precisions=(policy,), max_tokens=slots,
                               seqs_per_step=slots // base.max_length, timed_steps=steps, flex_block_size=block,
                               compile_mode=mode, compile=(f"{strategy}/{policy}",) if compiled else ())


def collated(name: str, mc, cfg: bench.BenchConfig, n: int, epoch0: int = 0) -> tuple[list[dict], object]:
    strategy, _, _, compiled = ROWS[name][:4]
    planned, first = bench.plan_steps(strategy, mc, cfg, n, epoch0=epoch0)
    slots = None
    if compiled:  # one shape for the masked positions of every step
        probe = [bench.collate_step(strategy, mc, st, cfg) for st in planned]
        slots = int(math.ceil(max(b["masked_tokens"] for b in probe) / 128) * 128)
    return [bench.collate_step(strategy, mc, st, cfg, mlm_slots=slots) for st in planned], first


def one_row(name: str, mc, mcfg, init, dev, base, steps: int, peak: float) -> dict:
    strategy, policy, _, compiled = ROWS[name][:4]
    policy = policy if SCALE == 1 else "fp32"  # the CPU smoke run: bf16 is slow on most CPUs
    cfg = row_cfg(base, name, steps)
    data, first = collated(name, mc, cfg, steps)
    row = bench.run_row(strategy, policy, data, init, mcfg, cfg, dev, peak, compiled)
    row.update(name=name, pool_size=first.pool_size, pool_unit=first.pool_unit, strategy_options=first.options)
    log(f"{name}: {row['real_tokens_per_s']:,.0f} real tok/s (cold {row['cold_real_tokens_per_s']:,.0f}, median step "
        f"{row['median_step_real_tokens_per_s']:,.0f}), {row['model_tflops']:.0f} TFLOP/s, recompiles "
        f"{row.get('recompiles', '-')}, {(row['peak_memory_bytes'] or 0) / 2**30:.1f} GiB, loss {row['loss']:.3f}")
    return row


# ------------------------------------------------------------------------------------ profile

FAMILIES = (  # first match wins; kernel names as torch.profiler reports a compiled run's
    ("attention (flex)", ("flex_attention", "triton_tem_fused", "tem_fused")),
    ("attention (flash/sdpa)", ("flash", "fmha", "attention")),
    ("gemm", ("gemm", "nvjet", "cutlass", "cublas", "xmma", "sm90_", "matmul")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("fused triton (elementwise, norms, reductions)", ("triton_",)),
    ("copies / index / fill", ("copy", "index", "gather", "scatter", "cat", "fill", "memset", "memcpy")),
)


def profile_compiled(name: str, mc, mcfg, init, dev, base, out: str, n: int = 6) -> dict:
    """torch.profiler over ``n`` steps of the COMPILED row ``name``: GPU time by kernel family,
    and the step time the kernels leave idle (launch gaps, host work)."""
    from torch.profiler import ProfilerActivity, profile

    strategy, policy = ROWS[name][:2]
    cfg = row_cfg(base, name, n + 3)
    data, _ = collated(name, mc, cfg, n + 3)
    prep = bench.prepare_row(policy, init, mcfg, cfg, dev)
    model = bench.compile_for(prep.model, strategy, cfg)
    steps = [to_device(s["inputs"], dev) for s in data]

    def step(inp):
        if cfg.compile_mode == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()
        train_step(model, inp, prep.optimizer, prep.policy, prep.scaler, bench.mlm_loss, measure=False)

    for inp in steps[:3]:
        step(inp)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for inp in steps[3:]:
            step(inp)
        torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) * 1e3 / n
    kernels: dict[str, float] = {}
    avgs = prof.key_averages()
    for e in avgs:  # kernel entries carry the CUDA device type; their self time is the kernel's
        if str(getattr(e, "device_type", "")).endswith("CUDA") and getattr(e, "self_device_time_total", 0) > 0:
            kernels[e.key] = e.self_device_time_total
    fam = {f: 0.0 for f, _ in FAMILIES} | {"other": 0.0}
    for k, v in kernels.items():
        low = k.lower()
        fam[next((f for f, keys in FAMILIES if any(x in low for x in keys)), "other")] += v / 1e3 / n
    kern_ms = sum(fam.values())
    res = {"name": name, "compiled": True, "compile_mode": cfg.compile_mode, "flex_block_size": cfg.flex_block_size,
           "steps": n, "step_ms_under_profiler": wall_ms, "kernel_ms_per_step": kern_ms,
           "idle_ms_per_step": max(0.0, wall_ms - kern_ms), "families_ms_per_step": fam,
           "families_fraction_of_step": {k: v / wall_ms for k, v in fam.items()},
           "top_kernels": [{"kernel": k[:140], "ms_per_step": v / 1e3 / n}
                           for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:25]]}
    with open(os.path.join(out, f"profile_{name.replace('/', '_').replace('*', 'c')}.txt"), "w") as fh:
        fh.write(avgs.table(sort_by="cuda_time_total", row_limit=45))
        fh.write("\n\nfamilies (ms per step): " + json.dumps(fam, indent=1))
        fh.write(f"\nstep {wall_ms:.2f} ms under the profiler, kernels {kern_ms:.2f} ms\n")
    log("profile", json.dumps({k: round(v, 3) for k, v in res["families_fraction_of_step"].items()}),
        f"step {wall_ms:.1f} ms, kernels {kern_ms:.1f} ms")
    return res


# ------------------------------------------------------------------------------------ gradient proof

def gradient_proof(mc, dev, block_sizes=(128, 64), n_seqs=48, cap=256) -> dict:
    """Compiled packed-flex loss and gradients against each sequence alone, with a negative control."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    mcfg = EncoderConfig(vocab_size=vocab_size(), hidden=128, layers=2, heads=2, ffn=256, max_position=cap)
    idx = np.random.default_rng(7).permutation(np.flatnonzero(mc.lengths <= cap))[:n_seqs]
    packs = [idx[p] for p in pack(mc.lengths[idx], cap, algorithm="ffd").packs]
    b = PackedCollator(cap, return_block_mask=False)([[mc.example(int(i)) for i in p] for p in packs])
    lab = b["labels"].reshape(-1)
    pos = torch.nonzero(lab != IGNORE_INDEX).squeeze(1)
    inp = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "position_ids": b["position_ids"],
           "masked_positions": pos, "mlm_labels": lab[pos]}
    inp = {k: v.to(dev) for k, v in inp.items()}
    seq_ids = b["seq_ids"].to(dev)
    torch.manual_seed(0)
    model = EncoderForMaskedLM(mcfg).to(dev)

    def flat_grads():
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone()

    total = 0.0  # each sequence alone (eager SDPA, fp32), summed losses: the reference
    model.zero_grad(set_to_none=True)
    for i in idx:
        ex = mc.example(int(i))
        lab_i = torch.as_tensor(ex["labels"], device=dev)[None]
        if (lab_i != IGNORE_INDEX).any():
            loss = model(torch.as_tensor(ex["input_ids"], device=dev)[None], mlm_labels=lab_i, loss_normalizer=1.0).loss
            loss.backward()
            total += float(loss.detach())
    g_ref = flat_grads()
    out = {"sequences": int(len(idx)), "rows": len(packs), "capacity": cap, "reference_loss_sum": total,
           "config": "hidden 128, 2 layers, 2 heads (head_dim 64), fp32, TF32 off", "block_sizes": {}}
    for bs in block_sizes:
        compiled = bench.compile_for(model, "packed-flex", bench.BenchConfig(flex_block_size=bs))
        r = {}
        for label, sid in (("document_mask", seq_ids), ("negative_control_row_mask", torch.where(seq_ids >= 0, 0, -1))):
            model.zero_grad(set_to_none=True)
            loss = compiled(block_mask=document_block_mask(sid, bs), loss_normalizer=1.0, **inp).loss
            loss.backward()
            g = flat_grads()
            r[label] = {"loss": float(loss.detach()), "loss_rel_err": abs(float(loss.detach()) - total) / abs(total),
                        "grad_rel_err": float((g - g_ref).norm() / g_ref.norm()),
                        "grad_max_abs_err": float((g - g_ref).abs().max())}
        r["passed"] = r["document_mask"]["grad_rel_err"] < 1e-3 and r["negative_control_row_mask"]["grad_rel_err"] > 1e-2
        out["block_sizes"][str(bs)] = r
        log(f"gradient proof bs={bs}: {json.dumps(r)}")
    out["passed"] = all(v["passed"] for v in out["block_sizes"].values())
    return out


# ------------------------------------------------------------------------------------ the run

def part_main(a) -> None:
    global SCALE
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = env()
    base = bench.BenchConfig(progress=False, lr=1e-4)
    if a.quick:
        SCALE = 16
        base = bench.BenchConfig(progress=False, model="tiny", max_length=128, device=dev.type)

    def peak_now() -> float:
        return bench.matmul_peak_tflops(dev) if dev.type == "cuda" else bench.matmul_peak_tflops(dev, n=256, reps=2)

    mc = bench.mask_corpus(load_corpus(base.corpus), base.mlm_prob, base.max_length, base.seed)
    mcfg = bench.model_config(base.model, base.max_length)
    torch.manual_seed(base.seed)
    init = {k: v.detach().clone() for k, v in EncoderForMaskedLM(mcfg).state_dict().items()}
    peaks = [peak_now()]
    result.update(matmul_peak_samples_tflops=peaks, matmul_peak_tflops=peaks[0],
                  peak_note="8192^3 bf16 matmul on random data (cuBLAS), median of 10 after 3 warm-ups, sampled "
                            "before the rows, after every third and at the end; the highest is the MFU denominator",
                  throughput_statistic="total real tokens / total step time of a pass (cold: first pass, compiling; "
                                       "warm: the same steps again); median_step_* is the median step",
                  model="bert-base (12 layers, hidden 768, 12 heads, FFN 3072), fortunes, max_length 512, MLM 15%",
                  steps_per_pass=a.steps, rows=[])
    rows = result["rows"]
    path = os.path.join(a.out, "bench_h200.json")

    def save():
        results.save_result(result, path)

    for name in a.rows.split(","):
        if time.perf_counter() - T0 > a.deadline:
            log(f"skip {name}: past the {a.deadline:.0f} s deadline")
            result.setdefault("skipped", []).append(name)
            continue
        try:
            rows.append(one_row(name, mc, mcfg, init, dev, base, a.steps, max(peaks)))
        except Exception as e:  # a row that fails is a finding: keep it, go on
            log(f"row {name} failed: {type(e).__name__}: {str(e)[:1500]}")
            rows.append({"name": name, "strategy": ROWS[name][0], "precision": ROWS[name][1],
                         "error": f"{type(e).__name__}: {str(e)[:1500]}"})
        torch.cuda.empty_cache()
        if len(rows) % 3 == 0:
            peaks.append(peak_now())
        save()
    ok = [r for r in rows if "error" not in r]
    bench.add_peaks(result)
    for r in ok:  # over the fixed/fp32 row planned for the same token slots per step
        b = next((x for x in ok if ROWS[x["name"]][:2] == ("fixed", "fp32") and ROWS[x["name"]][2] == ROWS[r["name"]][2]),
                 None)
        r["baseline"] = b["name"] if b else None
        r["speedup_vs_fixed_fp32_same_slots"] = r["real_tokens_per_s"] / b["real_tokens_per_s"] if b else None
    fast = [r for r in ok if r["strategy"] != "fixed"]
    best = max(fast, key=lambda r: r["real_tokens_per_s"]) if fast else None
    result["best"] = best["name"] if best else None
    save()
    if best and a.race and time.perf_counter() - T0 < a.deadline + 70:
        base_name = "fixed/fp32" if ROWS[best["name"]][2] == 65536 else "fixed/fp32@16k"
        curves = []
        for name in (base_name, best["name"]):
            cfg = row_cfg(base, name, a.race)
            curves.append(bench.loss_curve(ROWS[name][0], ROWS[name][1], mc, cfg, mcfg, init, dev, a.race,
                                           compile_model=ROWS[name][3]) | {"name": name})
            log(f"loss curve {name}: {a.race} steps, final {curves[-1]['loss'][-1]:.3f}, {curves[-1]['wall_s']:.1f} s")
        result["loss_curves"] = curves
        try:
            result["time_to_loss"] = results.time_to_loss(curves[0], curves[1])
        except ValueError as e:  # a too-short race is a finding, not the end of the run
            result["time_to_loss"] = str(e)
        log("time_to_loss", json.dumps(result["time_to_loss"]))
        save()
    if best and time.perf_counter() - T0 < a.deadline + 110:
        strategy = best["strategy"]
        cfg = row_cfg(base, best["name"], 60)
        gpu = 1e3 / best["median_step_ms"]
        result["loader"] = []
        for w in (0, 4, 8):
            rate = bench.loader_rate(strategy, mc, cfg, steps=20 if w == 0 else 60, workers=w)
            rate.update(gpu_batches_per_s=gpu, ratio=rate["batches_per_s"] / gpu)
            result["loader"].append(rate)
            log("loader", json.dumps(rate))
        save()
    if a.peers and time.perf_counter() - T0 < a.deadline + 120:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from peers import peer_rows
        try:
            cfg = row_cfg(base, "bucketed/bf16", a.steps)
            result["peers"] = peer_rows(cfg, mc, mcfg, init, dev)
            for r in result["peers"]:
                log("peer", json.dumps({k: r.get(k) for k in ("strategy", "real_tokens_per_s", "mfu", "batches_per_s",
                                                                 "collate_batches_per_s")}))
        except Exception as e:
            result["peers"] = f"{type(e).__name__}: {e}"
        save()
    if best and best.get("compiled") and a.profile and dev.type == "cuda" and time.perf_counter() - T0 < a.deadline + 135:
        try:
            result["profile"] = profile_compiled(best["name"], mc, mcfg, init, dev, base, a.out)
        except Exception as e:
            log(f"profile failed: {type(e).__name__}: {str(e)[:800]}")
    peaks.append(peak_now())
    bench.add_peaks(result)  # rows with an error carry no figures and are left as they are
    if isinstance(result.get("peers"), list):
        bench.add_peaks({"rows": [r for r in result["peers"] if "model_tflops" in r],
                         **{k: result[k] for k in ("matmul_peak_samples_tflops", "device")}})
    save()
    log("peaks", [round(p) for p in peaks])
    print(bench.format_table({**result, "rows": [dict(r, speedup_vs_fixed_fp32=r.get("speedup_vs_fixed_fp32_same_slots"))
                                                  for r in ok]}), flush=True)


def part_probe(a) -> None:
    dev = torch.device("cuda")
    result = env()
    cfg = bench.BenchConfig(progress=False)
    mc = bench.mask_corpus(load_corpus(cfg.corpus), cfg.mlm_prob, cfg.max_length, cfg.seed)
    result["gradient_proof"] = gradient_proof(mc, dev)
    results.save_result(result, os.path.join(a.out, "probe.json"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=("main", "probe"), default="main")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {list(ROWS)}")
    ap.add_argument("--steps", type=int, default=20, help="steps per pass (a cold pass, then the same steps warm)")
    ap.add_argument("--race", type=int, default=40, help="fresh steps for the time-to-loss curves (0: none)")
    ap.add_argument("--peers", action="store_true", help="transformers' collators as rows (benchmarks/peers.py)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler breakdown of the compiled best row")
    ap.add_argument("--quick", action="store_true", help="tiny model, 1/16 of the token slots (a smoke run, CPU)")
    ap.add_argument("--deadline", type=float, default=330.0, help="seconds after which no new row starts")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    (part_main if a.part == "main" else part_probe)(a)


if __name__ == "__main__":
    main()
