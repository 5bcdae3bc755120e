"""The packed-flex recipe on a GPU: the gradient proof, and throughput against the baseline.

``--part probe`` (one short device call): the environment and the bf16 matmul peak; the
gradient proof (compiled FlexAttention over packed rows of real fortunes sequences: loss and
every parameter gradient equal to each sequence run alone, and a negative control without the
document mask that must differ); then compiled BERT-base rows, packed-flex at several block
sizes against packed-varlen, at 64k and 16k token slots a step, with their recompile counts.

``--part main``: the baseline (fixed-512, fp32, eager) and the best recipe at the same token
slots per step, plus the ablations named on the command line (see ``ROWS``), the time to reach
the baseline's final loss, the data-loading rate and a profile of the compiled best row.

Run: ``PYTHONPATH=. python benchmarks/h200_flex.py --part probe --out DIR``.
Every figure printed is measured in the run; nothing is copied in.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np
import torch

from padlab import bench
from padlab.attention import document_block_mask, flex_compile_options, flex_support
from padlab.data import load_corpus, vocab_size
from padlab.models import IGNORE_INDEX, EncoderConfig, EncoderForMaskedLM, model_flops
from padlab.packing import PackedCollator, pack

DATASHEET_PEAK = {"tflops": 989.4, "source": "NVIDIA H100/H200 SXM datasheet, dense BF16 tensor core "
                                            "(1,979 TFLOP/s with 2:4 sparsity, halved)"}
T0 = time.perf_counter()


def log(*a):
    print(f"[{time.perf_counter() - T0:6.1f}s]", *a, flush=True)


def compiled_graphs() -> int:
    """Graphs dynamo has compiled so far in this process (a recompile adds one)."""
    from torch._dynamo.utils import counters  # torch's own counter; no public API counts graphs
    return int(counters["stats"]["unique_graphs"])


def env() -> dict:
    import triton
    d = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU",
         "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
         "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
         "flex_support": flex_support("cuda" if torch.cuda.is_available() else "cpu")._asdict(),
         "datasheet_peak_tflops": DATASHEET_PEAK["tflops"], "datasheet_peak_source": DATASHEET_PEAK["source"]}
    return d


def peak_sample(dev) -> float:
    return bench.matmul_peak_tflops(dev)


# ------------------------------------------------------------------------------------ steps

def order_pack(idx: np.ndarray, lens: np.ndarray, order: str) -> np.ndarray:
    """A pack's sequences in ``order``: as packed ("ffd"), by length ascending or descending."""
    if order == "ffd":
        return idx
    k = np.argsort(lens[idx], kind="stable")
    return idx[k] if order == "asc" else idx[k[::-1]]


def flex_steps(mc, plan, cap: int, order: str, slots: int | None) -> list[dict]:
    """Collated packed rows (CPU tensors) with seq_ids for the flex path, and their real-work counts."""
    coll = PackedCollator(cap, return_block_mask=False)
    out = []
    for step in plan:
        packs = [order_pack(np.asarray(p), mc.lengths, order) for p in step]
        b = coll([[mc.example(int(i)) for i in p] for p in packs])
        lab = b["labels"].reshape(-1)
        pos = torch.nonzero(lab != IGNORE_INDEX).squeeze(1)
        labels = lab[pos]
        if slots is not None:
            extra = slots - pos.numel()
            pos = torch.cat([pos, torch.zeros(extra, dtype=pos.dtype)])
            labels = torch.cat([labels, torch.full((extra,), IGNORE_INDEX, dtype=labels.dtype)])
        seq_lengths = np.concatenate([mc.lengths[p] for p in packs])
        out.append({"inputs": {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                               "position_ids": b["position_ids"], "seq_ids": b["seq_ids"],
                               "masked_positions": pos, "mlm_labels": labels},
                    "real_tokens": int(seq_lengths.sum()), "slots": int(b["input_ids"].numel()),
                    "masked_tokens": int((labels != IGNORE_INDEX).sum()), "seq_lengths": seq_lengths,
                    "sequences": len(seq_lengths)})
    return out


def harness_steps(strategy: str, mc, plan, cfg, slots: int | None) -> list[dict]:
    return [bench.collate_step(strategy, mc, p, cfg, mlm_slots=slots) for p in plan]


def mlm_slots(steps_probe: list[dict]) -> int:
    return int(np.ceil(max(s["masked_tokens"] for s in steps_probe) / 128) * 128)


# ------------------------------------------------------------------------------------ one row

def compile_model(model, mode: str, flex_block: int | None):
    """``torch.compile`` for a row: ``mode`` "default" or "cudagraphs" (what "reduce-overhead" turns on).

    Flex rows have static shapes (a changed int must recompile, never go symbolic) and take
    :func:`padlab.attention.flex_compile_options` (flex autotuning below block 128). Varlen's
    flat token count changes every step: torch's automatic dynamic shapes handle it.
    """
    torch.compiler.reset()  # each row compiles afresh (dynamo's recompile limit is per code object)
    opts = dict(flex_compile_options(flex_block) or {}) if flex_block else {}
    if mode == "cudagraphs":
        opts["triton.cudagraphs"] = True
    return torch.compile(model, dynamic=False if flex_block else None, options=opts or None)


def run_row(name: str, steps: list[dict], init: dict, mcfg: EncoderConfig, dev, *, precision: str,
            flex_block: int | None = None, compile_mode: str | None = None, fused: bool = True,
            lr: float = 1e-4, peaks: list[float] | None = None, passes_: tuple[str, ...] = ("cold", "warm")) -> dict:
    """Train on ``steps`` twice from ``init``: a cold pass (compiles) and a warm pass; both timed."""
    torch.manual_seed(0)
    model = EncoderForMaskedLM(mcfg).to(dev)
    model.load_state_dict(init)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, fused=fused, foreach=None if fused else True)
    run = model if compile_mode is None else compile_model(model, compile_mode, flex_block)
    graphs = compile_mode == "cudagraphs"
    bf16 = precision.startswith("bf16")
    tf32 = precision in ("bf16-amp+tf32", "tf32")
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    dev_steps = [{k: v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v
                  for k, v in s["inputs"].items()} for s in steps]
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()

    def step(inp):
        if graphs:  # tells CUDA-graph trees a new iteration starts (else they may re-record)
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            if flex_block is not None:
                kw = dict(inp)
                bm = document_block_mask(kw.pop("seq_ids"), flex_block)  # once per step, in the timed step
                out = run(block_mask=bm, **kw)
            else:
                out = run(**inp)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.detach().clone()  # a CUDA-graph output is overwritten by the next replay

    passes = {}
    g_start = compiled_graphs()
    g_after_first = None
    losses = []
    for pname in passes_:
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in dev_steps]
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i, inp in enumerate(dev_steps):
            ev[i][0].record()
            losses.append(step(inp))
            ev[i][1].record()
            if pname == "cold" and i == 0:
                torch.cuda.synchronize()
                g_after_first = compiled_graphs()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        ms = np.array([a.elapsed_time(b) for a, b in ev])
        passes[pname] = {"wall_s": wall, "step_ms": ms}
        log(f"  {name} {pname}: {wall:.1f} s")
    g_end = compiled_graphs()
    real = np.array([s["real_tokens"] for s in steps], dtype=np.float64)
    flops = np.array([model_flops(mcfg, s["real_tokens"], s["masked_tokens"], s["seq_lengths"]) for s in steps],
                     dtype=np.float64)
    timed = "warm" if "warm" in passes else "cold"
    warm_s = passes[timed]["wall_s"]
    peak = max(peaks) if peaks else None
    tflops = flops.sum() / warm_s / 1e12
    loss_curve = torch.stack(losses).float().cpu().numpy()
    per_step = real / (passes[timed]["step_ms"] / 1e3)
    row = {
        "name": name, "strategy": "packed-flex" if flex_block else steps_strategy(steps),
        "precision": precision, "compiled": compile_mode is not None, "compile_mode": compile_mode,
        "flex_block_size": flex_block, "fused_optimizer": fused, "steps": len(steps),
        "sequences_per_step": float(np.mean([s["sequences"] for s in steps])),
        "real_tokens_per_step": float(real.mean()), "slots_per_step": float(np.mean([s["slots"] for s in steps])),
        # One statistic for both passes: total real tokens over total wall time.
        "real_tokens_per_s": float(real.sum() / warm_s),
        "cold_real_tokens_per_s": float(real.sum() / passes["cold"]["wall_s"]),
        "median_step_real_tokens_per_s": float(np.median(per_step)),
        "median_step_ms": float(np.median(passes[timed]["step_ms"])),
        "cold_wall_s": passes["cold"]["wall_s"], "warm_wall_s": warm_s,
        "cold_first_step_ms": float(passes["cold"]["step_ms"][0]),
        "padded_fraction": float(1 - real.sum() / sum(s["slots"] for s in steps)),
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated()),
        "model_tflops": float(tflops),
        "mfu": float(tflops / peak) if peak else None,
        "mfu_measured_peak": float(tflops / peak) if peak else None,
        "mfu_datasheet": float(tflops / DATASHEET_PEAK["tflops"]),
        "loss": float(loss_curve[-1]),
        # cumulative seconds at the end of each step (cold pass, then warm pass) with the loss of that step
        "loss_curve": loss_curve.tolist(),
        "step_seconds": np.concatenate([passes[p]["step_ms"] for p in passes_]).tolist(),
    }
    if compile_mode is not None:
        row["graphs_compiled"] = g_end - g_start
        row["recompiles"] = g_end - g_after_first  # graphs compiled after the first step
    log(f"  {name}: {row['real_tokens_per_s']:,.0f} real tok/s (cold {row['cold_real_tokens_per_s']:,.0f}), "
        f"{tflops:.0f} TFLOP/s, mfu {row['mfu'] or 0:.1%} / datasheet {row['mfu_datasheet']:.1%}, "
        f"recompiles {row.get('recompiles')}, mem {row['peak_memory_bytes'] / 2**30:.1f} GiB, loss {row['loss']:.3f}")
    torch.cuda.empty_cache()
    return row


def steps_strategy(steps) -> str:
    inp = steps[0]["inputs"]
    return "packed-varlen" if "cu_seqlens" in inp else ("packed" if "block_mask" in inp else "fixed")


# ------------------------------------------------------------------------------------ gradient proof

def gradient_proof(mc, dev, block_sizes=(128, 64), n_seqs=48, cap=256) -> dict:
    """Compiled packed-flex loss and gradients against each sequence alone, with a negative control."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    mcfg = EncoderConfig(vocab_size=vocab_size(), hidden=128, layers=2, heads=2, ffn=256, max_position=cap)
    rng = np.random.default_rng(7)
    idx = rng.permutation(np.flatnonzero(mc.lengths <= cap))[:n_seqs]
    res = pack(mc.lengths[idx], cap, algorithm="ffd")
    packs = [idx[p] for p in res.packs]
    steps = flex_steps(mc, [packs], cap, "ffd", None)
    inp = {k: v.to(dev) for k, v in steps[0]["inputs"].items()}
    torch.manual_seed(0)
    model = EncoderForMaskedLM(mcfg).to(dev)

    def grads(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone(), float(loss.detach())

    # Each sequence alone (eager SDPA, fp32), losses summed: the reference.
    total = 0.0
    model.zero_grad(set_to_none=True)
    for i in idx:
        ex = mc.example(int(i))
        ids = torch.as_tensor(ex["input_ids"], device=dev)[None]
        lab = torch.as_tensor(ex["labels"], device=dev)[None]
        if (lab != IGNORE_INDEX).any():
            loss = model(ids, mlm_labels=lab, loss_normalizer=1.0).loss
            loss.backward()
            total += float(loss.detach())
    g_ref = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).clone()
    out = {"sequences": int(len(idx)), "rows": len(packs), "capacity": cap, "reference_loss_sum": total,
           "config": "hidden 128, 2 layers, 2 heads (head_dim 64), fp32, TF32 off", "block_sizes": {}}
    compiled = torch.compile(model, dynamic=False)
    for bs in block_sizes:
        r = {}
        for label, sid in (("document_mask", inp["seq_ids"]),
                           ("negative_control_row_mask", torch.where(inp["seq_ids"] >= 0, 0, -1))):
            bm = document_block_mask(sid, bs)
            kw = {k: v for k, v in inp.items() if k != "seq_ids"}
            g, l = grads(compiled(block_mask=bm, loss_normalizer=1.0, **kw).loss)
            r[label] = {"loss": l, "loss_rel_err": abs(l - total) / abs(total),
                        "grad_rel_err": float((g - g_ref).norm() / g_ref.norm()),
                        "grad_max_abs_err": float((g - g_ref).abs().max())}
        r["passed"] = r["document_mask"]["grad_rel_err"] < 1e-3 and r["negative_control_row_mask"]["grad_rel_err"] > 1e-2
        out["block_sizes"][str(bs)] = r
        log(f"gradient proof bs={bs}: {json.dumps(r)}")
    out["passed"] = all(v["passed"] for v in out["block_sizes"].values())
    return out


# ------------------------------------------------------------------------------------ parts

def common(cap=512):
    dev = torch.device("cuda")
    cfg = bench.BenchConfig(progress=False)
    mc = bench.mask_corpus(load_corpus("fortunes"), cfg.mlm_prob, cap, cfg.seed)
    mcfg = bench.model_config("bert-base", vocab_size(), cap)
    torch.manual_seed(cfg.seed)
    init = {k: v.detach().clone() for k, v in EncoderForMaskedLM(mcfg).state_dict().items()}
    return dev, cfg, mc, mcfg, init


def packed_plan(mc, cfg, budget, n):
    import dataclasses
    c = dataclasses.replace(cfg, budget=budget)
    return c, bench.plan_batches("packed", mc, c, n)


def part_probe(out: str, deadline: float) -> None:
    result = env()
    dev, cfg, mc, mcfg, init = common()
    result["matmul_peak_samples_tflops"] = [peak_sample(dev)]
    log("env", json.dumps(result))

    def save():
        with open(os.path.join(out, "probe.json"), "w") as fh:
            json.dump(result, fh, indent=1)

    result["gradient_proof"] = gradient_proof(mc, dev)
    save()
    rows = result["rows"] = []
    n = 20
    todo = [("flex128-64k", 65536, 128, None), ("flex64-64k", 65536, 64, None),
            ("varlen-64k", 65536, None, "packed-varlen"), ("flex32-64k", 65536, 32, None),
            ("flex64-16k", 16384, 64, None)]
    for name, budget, bs, strat in todo:
        if time.perf_counter() - T0 > deadline:
            log(f"skip {name}: past the {deadline:.0f} s deadline")
            continue
        c, plan = packed_plan(mc, cfg, budget, n)
        if strat:
            steps = harness_steps(strat, mc, plan, c, None)
            steps = harness_steps(strat, mc, plan, c, mlm_slots(steps))
        else:
            steps = flex_steps(mc, plan, 512, "ffd", None)
            steps = flex_steps(mc, plan, 512, "ffd", mlm_slots(steps))
        try:
            rows.append(run_row(name, steps, init, mcfg, dev, precision="bf16-amp+tf32", flex_block=bs,
                                compile_mode="default", peaks=result["matmul_peak_samples_tflops"]))
        except Exception as e:  # a row that fails to compile is a finding, not the end of the probe
            log(f"row {name} failed: {type(e).__name__}: {str(e)[:2000]}")
            rows.append({"name": name, "error": f"{type(e).__name__}: {str(e)[:2000]}"})
        for r in rows:
            r.pop("loss_curve", None), r.pop("step_seconds", None)
        save()
    result["matmul_peak_samples_tflops"].append(peak_sample(dev))
    save()
    log("peaks", result["matmul_peak_samples_tflops"])
    for r in rows:
        if "error" not in r:
            log(f"{r['name']:<14}{r['real_tokens_per_s']:>12,.0f} tok/s  cold {r['cold_real_tokens_per_s']:>10,.0f}  "
                f"{r['model_tflops']:6.0f} TFLOP/s  recompiles {r.get('recompiles')}")

# ------------------------------------------------------------------------------------ main run

FAMILIES = (  # first match wins; names as torch.profiler reports the kernels of a compiled run
    ("attention (flex)", ("flex_attention", "triton_tem_fused", "tem_fused")),
    ("attention (flash/sdpa)", ("flash", "fmha", "attention")),
    ("gemm", ("gemm", "nvjet", "cutlass", "cublas", "xmma", "sm90_", "matmul", "mm_")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("fused triton (elementwise/reductions)", ("triton_",)),
    ("copies / index / fill", ("copy", "index", "gather", "scatter", "cat", "fill", "memset", "memcpy")),
)


def profile_compiled(steps, init, mcfg, dev, *, flex_block, compile_mode, out, name, n=6) -> dict:
    """torch.profiler over ``n`` steps of the COMPILED row: GPU time by kernel family, and launch gaps."""
    from torch.profiler import ProfilerActivity, profile
    model = EncoderForMaskedLM(mcfg).to(dev)
    model.load_state_dict(init)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    run = compile_model(model, compile_mode, flex_block)
    torch.backends.cuda.matmul.allow_tf32 = True
    dev_steps = [{k: v.to(dev) for k, v in s["inputs"].items()} for s in steps[:n + 3]]

    def step(inp):
        if compile_mode == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            kw = dict(inp)
            bm = document_block_mask(kw.pop("seq_ids"), flex_block)
            out_ = run(block_mask=bm, **kw)
        out_.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for inp in dev_steps[:3]:
        step(inp)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for inp in dev_steps[3:]:
            step(inp)
        torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) * 1e3
    kernels: dict[str, float] = {}
    avgs = prof.key_averages()
    for e in avgs:  # kernel entries carry the CUDA device type; their self time is the kernel's time
        if str(getattr(e, "device_type", "")).endswith("CUDA") and getattr(e, "self_device_time_total", 0) > 0:
            kernels[e.key] = e.self_device_time_total
    if not kernels:  # another torch: leaf entries with device time that are not CPU-side op wrappers
        for e in avgs:
            if getattr(e, "self_device_time_total", 0) > 0 and not e.key.startswith(
                    ("aten::", "Optimizer", "Torch-Compiled", "CompiledFunction", "ProfilerStep", "## ")):
                kernels[e.key] = e.self_device_time_total
    total_us = sum(kernels.values())
    fam = {f: 0.0 for f, _ in FAMILIES}
    fam["other"] = 0.0
    for k, v in kernels.items():
        low = k.lower()
        for f, keys in FAMILIES:
            if any(x in low for x in keys):
                fam[f] += v
                break
        else:
            fam["other"] += v
    steps_n = len(dev_steps) - 3
    step_ms = wall_ms / steps_n
    kern_ms = total_us / 1e3 / steps_n
    res = {"name": name, "compiled": True, "compile_mode": compile_mode, "flex_block_size": flex_block,
           "compile_options": flex_compile_options(flex_block),
           "steps": steps_n, "step_ms_under_profiler": step_ms, "kernel_ms_per_step": kern_ms,
           "gpu_idle_ms_per_step (launch gaps, host work)": max(0.0, step_ms - kern_ms),
           "families_ms_per_step": {k: v / 1e3 / steps_n for k, v in fam.items()},
           "families_fraction_of_step": {k: v / 1e3 / steps_n / step_ms for k, v in fam.items()},
           "top_kernels": [{"kernel": k[:140], "ms_per_step": v / 1e3 / steps_n}
                           for k, v in sorted(kernels.items(), key=lambda kv: -kv[1])[:25]]}
    with open(os.path.join(out, f"profile_{name}.txt"), "w") as fh:
        fh.write(prof.key_averages().table(sort_by="cuda_time_total", row_limit=45))
        fh.write("\n\nfamilies (ms per step): " + json.dumps(res["families_ms_per_step"], indent=1))
        fh.write(f"\nstep {step_ms:.2f} ms under the profiler, kernels {kern_ms:.2f} ms, idle {max(0, step_ms - kern_ms):.2f} ms\n")
    log("profile", json.dumps({k: round(v, 3) for k, v in res["families_fraction_of_step"].items()}),
        f"step {step_ms:.1f} ms, kernels {kern_ms:.1f} ms")
    torch.cuda.empty_cache()
    return res


class _FlexSteps(torch.utils.data.Dataset):
    def __init__(self, mc, plan, cap, slots):
        self.mc, self.plan, self.cap, self.slots = mc, plan, cap, slots

    def __len__(self):
        return len(self.plan)

    def __getitem__(self, i):
        return flex_steps(self.mc, [self.plan[i]], self.cap, "ffd", self.slots)[0]


def loader_rate(mc, cfg, budget, gpu_step_ms, slots, workers=(0, 4, 8), n=60) -> list[dict]:
    """Sampler (plan) + collator for packed-flex steps on this host's CPU, against the GPU's step rate."""
    out = []
    for w in workers:
        t0 = time.perf_counter()
        c, plan = packed_plan(mc, cfg, budget, n if w else 20)
        t_plan = time.perf_counter() - t0
        ds = _FlexSteps(mc, plan, 512, slots)
        if w == 0:
            t0 = time.perf_counter()
            got = [ds[i] for i in range(len(ds))]
            dt = time.perf_counter() - t0 + t_plan
        else:
            loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=w, prefetch_factor=4)
            it = iter(loader)
            got = [next(it)]
            t1 = time.perf_counter()
            got.extend(it)
            dt = (time.perf_counter() - t1) * len(got) / (len(got) - 1) + t_plan * len(got) / len(plan)
        bps = len(got) / dt
        out.append({"workers": w, "batches": len(got), "batches_per_s": bps, "plan_s": t_plan,
                    "gpu_batches_per_s": 1e3 / gpu_step_ms, "ratio": bps * gpu_step_ms / 1e3})
        log("loader", json.dumps(out[-1]))
    return out


def time_to_loss(base: dict, best: dict, window: int = 5) -> dict:
    """Seconds for each row to reach the baseline's final loss (mean of its last ``window`` steps)."""
    def smooth(x):
        x = np.asarray(x, dtype=np.float64)
        c = np.cumsum(np.insert(x, 0, 0.0))
        return np.array([(c[i + 1] - c[max(0, i + 1 - window)]) / (i + 1 - max(0, i + 1 - window)) for i in range(len(x))])

    target = float(np.mean(base["loss_curve"][-window:]))
    res = {"target_loss": target, "definition": f"baseline's mean loss over its last {window} steps; a row reaches it "
           f"when its {window}-step running mean is <= target; seconds are the summed CUDA-event step times "
           "of the steps trained so far (cold pass first: compilation counts), and again without the first step",
           "steps_each": len(base["loss_curve"])}
    for key, r in (("baseline", base), ("best", best)):
        sm = smooth(r["loss_curve"])
        sec = np.cumsum(r["step_seconds"]) / 1e3
        hit = np.flatnonzero(sm <= target)
        i = int(hit[0]) if hit.size else None
        res[key] = {"name": r["name"], "step": i, "seconds": float(sec[i]) if i is not None else None,
                    "seconds_without_first_step": float(sec[i] - sec[0]) if i is not None else None}
    b, t = res["baseline"]["seconds"], res["best"]["seconds"]
    res["ratio"] = b / t if (b and t) else None
    b0, t0 = res["baseline"]["seconds_without_first_step"], res["best"]["seconds_without_first_step"]
    res["ratio_without_first_step"] = b0 / t0 if (b0 and t0) else None
    return res


ROWS = {  # name: (strategy, slots per step, precision, compile mode, flex block, fused optimizer)
    # run A (data/benchmarks/bench_h200_ablations.json; its autotune row is flex64-64k here, its
    # "reduce-overhead" rows ran without cudagraph_mark_step_begin)
    "fixed-fp32-64k": ("fixed", 65536, "fp32", None, None, True),
    "flex128-64k": ("packed-flex", 65536, "bf16-amp+tf32", "default", 128, True),
    "flex128-64k-cudagraphs": ("packed-flex", 65536, "bf16-amp+tf32", "cudagraphs", 128, True),
    "flex128-64k-foreach": ("packed-flex", 65536, "bf16-amp+tf32", "default", 128, False),
    "fixed-fp32-16k": ("fixed", 16384, "fp32", None, None, True),
    "flex128-16k": ("packed-flex", 16384, "bf16-amp+tf32", "default", 128, True),
    "flex128-16k-cudagraphs": ("packed-flex", 16384, "bf16-amp+tf32", "cudagraphs", 128, True),
    "varlen-64k": ("packed-varlen", 65536, "bf16-amp+tf32", "default", None, True),
    "flex64-64k": ("packed-flex", 65536, "bf16-amp+tf32", "default", 64, True),
    # run B
    "flex32-64k": ("packed-flex", 65536, "bf16-amp+tf32", "default", 32, True),
    "flex64-64k-cudagraphs": ("packed-flex", 65536, "bf16-amp+tf32", "cudagraphs", 64, True),
    "fixed-fp32-128k": ("fixed", 131072, "fp32", None, None, True),
    "flex64-128k": ("packed-flex", 131072, "bf16-amp+tf32", "default", 64, True),
    "flex32-128k": ("packed-flex", 131072, "bf16-amp+tf32", "default", 32, True),
}


def base_row_for(result: dict, row: dict) -> dict | None:
    return next((b for b in result["rows"] if b.get("name") == row.get("baseline")), None)


def steps_for(name: str, mc, cfg, n: int, epoch0: int = 0) -> list[dict]:
    """Collated steps of a ROWS entry: ``n`` steps of its strategy at its slots per step."""
    import dataclasses
    strat, budget = ROWS[name][:2]
    c = dataclasses.replace(cfg, budget=budget, seqs_per_step=budget // 512)
    plan = bench.plan_batches("fixed" if strat == "fixed" else "packed", mc, c, n, epoch0=epoch0)
    if strat == "fixed":
        return harness_steps("fixed", mc, plan, c, None)
    if strat == "packed-varlen":
        steps = harness_steps(strat, mc, plan, c, None)
        return harness_steps(strat, mc, plan, c, mlm_slots(steps))
    steps = flex_steps(mc, plan, 512, "ffd", None)
    return flex_steps(mc, plan, 512, "ffd", mlm_slots(steps))


def loss_race(result, best, mc, cfg, mcfg, init, dev, n: int) -> list[dict]:
    """The baseline and the best row again, from the same weights, over ``n`` fresh steps each (one
    pass, nothing repeated): the curves behind ``time_to_loss``."""
    out = []
    for row in (base_row_for(result, best), best):
        strat, budget, prec, mode, bs, fused = ROWS[row["name"]]
        steps = steps_for(row["name"], mc, cfg, n, epoch0=500)
        r = run_row(row["name"], steps, init, mcfg, dev, precision=prec, flex_block=bs, compile_mode=mode,
                    fused=fused, passes_=("cold",))
        out.append({k: r[k] for k in ("name", "strategy", "precision", "compiled", "steps", "loss_curve",
                                      "step_seconds", "real_tokens_per_step", "slots_per_step")})
    return out


def finalize(result: dict) -> dict:
    """Derived figures from a run's own rows: the peak (highest sample) and its spread, MFU by both
    denominators, the speed-up over the fixed/fp32 row at the same slots, the best row, time to loss."""
    peaks = result["matmul_peak_samples_tflops"]
    result["matmul_peak_tflops"] = max(peaks)
    result["matmul_peak_spread_tflops"] = [min(peaks), max(peaks)]
    rows = result["rows"]
    for r in rows:
        if r.get("strategy") == "padded":  # the first run's label for its only padded rows, the fixed ones
            r["strategy"] = "fixed"
        if "error" in r:
            continue
        r["mfu"] = r["mfu_measured_peak"] = r["model_tflops"] / max(peaks)
        r["mfu_datasheet"] = r["model_tflops"] / result["datasheet_peak_tflops"]
        base = next((b for b in rows if b.get("strategy") == "fixed" and "error" not in b
                     and b.get("slots_per_step") == r["slots_per_step"]), None)
        r["baseline"] = base["name"] if base else None
        r["speedup_vs_fixed_fp32_same_slots"] = r["real_tokens_per_s"] / base["real_tokens_per_s"] if base else None
    ok = [r for r in rows if "error" not in r and r["strategy"] != "fixed"]
    if ok:
        best = max(ok, key=lambda r: r["real_tokens_per_s"])
        result["best"] = best["name"]
        base = next((b for b in rows if b.get("name") == best.get("baseline")), None)
        race = result.get("loss_race")
        if race and len(race) == 2:
            result["time_to_loss"] = time_to_loss(race[0], race[1])
            result["time_to_loss"]["source"] = "loss_race: fresh steps, one pass each, same initial weights"
        elif base:
            result["time_to_loss"] = time_to_loss(base, best)
            result["time_to_loss"]["source"] = "the timed rows: cold pass then the same steps again (warm)"
    return result


def part_main(out: str, deadline: float, rows_wanted: list[str], n: int, profile_row: str | None,
              race: int = 0, race_row: str | None = None) -> None:
    result = env()
    result["command"] = "PYTHONPATH=. python benchmarks/h200_flex.py " + " ".join(sys.argv[1:])
    dev, cfg, mc, mcfg, init = common()
    peaks = result["matmul_peak_samples_tflops"] = [peak_sample(dev)]
    result["matmul_peak_method"] = ("8192^3 bf16 matmul on random data through torch (cuBLAS), median of 10 after 3 "
                                    "warm-ups, sampled before, between and after the rows")
    result["model"] = "bert-base (12 layers, hidden 768, 12 heads, FFN 3072), fortunes corpus, capacity 512, MLM 15%"
    result["steps_per_pass"] = n
    rows = result["rows"] = []
    path = os.path.join(out, "bench_h200.json")

    def save():
        with open(path, "w") as fh:
            json.dump(result, fh, indent=1)

    cache: dict = {}
    for name in rows_wanted:
        if time.perf_counter() - T0 > deadline:
            log(f"skip {name}: past the {deadline:.0f} s deadline")
            result.setdefault("skipped", []).append(name)
            continue
        strat, budget, prec, mode, bs, fused = ROWS[name]
        key = (strat, budget)
        if key not in cache:
            cache[key] = steps_for(name, mc, cfg, n)
        steps = cache[key]
        try:
            rows.append(run_row(name, steps, init, mcfg, dev, precision=prec, flex_block=bs, compile_mode=mode,
                                fused=fused, peaks=peaks))
        except Exception as e:
            log(f"row {name} failed: {type(e).__name__}: {str(e)[:1500]}")
            rows.append({"name": name, "strategy": strat, "error": f"{type(e).__name__}: {str(e)[:1500]}"})
        save()
        if len(rows) % 3 == 0:
            peaks.append(peak_sample(dev))
    peaks.append(peak_sample(dev))
    finalize(result)
    ok = [r for r in rows if "error" not in r and r["strategy"] != "fixed"]
    if ok:
        best = next(r for r in rows if r.get("name") == result["best"])
        racer = next((r for r in rows if r.get("name") == race_row), best) if race_row else best
        if race and base_row_for(result, racer) and time.perf_counter() - T0 < deadline + 120:
            result["loss_race"] = loss_race(result, racer, mc, cfg, mcfg, init, dev, race)
            finalize(result)
        log("time_to_loss", json.dumps(result.get("time_to_loss")))
        save()
        if time.perf_counter() - T0 < deadline + 60:
            result["loader"] = loader_rate(mc, cfg, int(best["slots_per_step"]), best["median_step_ms"], None)
            save()
        if profile_row and time.perf_counter() - T0 < deadline + 90:
            profile_row = best["name"] if profile_row == "best" else profile_row
            strat, budget, prec, mode, bs, fused = ROWS[profile_row]
            try:
                result["profile"] = profile_compiled(cache[(strat, budget)], init, mcfg, dev, flex_block=bs,
                                                     compile_mode=mode, out=out, name=profile_row)
            except Exception as e:
                log(f"profile failed: {type(e).__name__}: {str(e)[:800]}")
            save()
    log("peaks", [round(p) for p in peaks])
    log(f"{'row':<26}{'real tok/s':>12}{'cold tok/s':>12}{'median/step':>12}{'TFLOP/s':>9}{'MFU meas':>9}"
        f"{'MFU 989':>8}{'x fixed':>9}{'recomp':>7}")
    for r in rows:
        if "error" in r:
            log(f"{r['name']:<26} failed")
            continue
        sp = r.get("speedup_vs_fixed_fp32_same_slots")
        log(f"{r['name']:<26}{r['real_tokens_per_s']:>12,.0f}{r['cold_real_tokens_per_s']:>12,.0f}"
            f"{r['median_step_real_tokens_per_s']:>12,.0f}{r['model_tflops']:>9.0f}{r['mfu']:>9.1%}"
            f"{r['mfu_datasheet']:>8.1%}{(f'{sp:.1f}x' if sp else '-'):>9}{str(r.get('recompiles', '-')):>7}")
    save()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("probe", "main"), default="main")
    ap.add_argument("--rows", default="fixed-fp32-64k,flex128-64k", help=f"comma-separated, of {list(ROWS)}")
    ap.add_argument("--steps", type=int, default=20, help="steps per pass (cold, then warm)")
    ap.add_argument("--race", type=int, default=0, help="fresh steps for the baseline-vs-best loss race (0: none)")
    ap.add_argument("--race-row", default=None, help="the row that races its baseline (default: the best row)")
    ap.add_argument("--profile", default=None, help="a ROWS name (or 'best') to profile compiled")
    ap.add_argument("--finalize", default=None, help="recompute the derived figures of a result JSON into NAME.final.json (no GPU)")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--deadline", type=float, default=300.0, help="seconds after which no new row starts")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.finalize:
        with open(a.finalize) as fh:
            res = finalize(json.load(fh))
        res["finalized_by"] = "python benchmarks/h200_flex.py --finalize " + a.finalize
        with open(a.finalize.replace(".json", ".final.json"), "w") as fh:
            json.dump(res, fh, indent=1)
        print(json.dumps({k: res.get(k) for k in ("best", "time_to_loss", "matmul_peak_spread_tflops")}, indent=1))
        return
    if a.part == "probe":
        part_probe(a.out, a.deadline)
    else:
        part_main(a.out, a.deadline, a.rows.split(","), a.steps, a.profile, a.race, a.race_row)


if __name__ == "__main__":
    sys.exit(main())
