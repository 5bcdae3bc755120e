"""E9: why AMP halves the step in chapter 06 and gives 5.4-5.8x in chapter 07 (issue 12).

Chapter 06 times BERT-base at 4,096 tokens a step (32 x 128, ``amp_matrix_h100.json``) and finds
bf16-amp about 2x fp32; chapter 07 times it at 16k-64k token slots a step and finds 5.4-5.8x. This
sweep runs both models over tokens per step so that the two figures sit on one curve:

* tokens per step (``--tokens``, default 1024, 4096, 16384, 65536) x policy (``--precisions``,
  default fp32, tf32, bf16-amp, as :data:`padlab.precision.POLICIES` defines them) x model
  (``small``: chapter 06's encoder, hidden 128, 2 layers, 4 heads, FFN 512; ``bert-base``: chapter
  07's), the masked-LM objective of ``padlab bench`` on the shipped ``fortunes`` corpus, eager;
* every row is :func:`padlab.experiments.bench.run_row` (the harness of chapter 07: same planned
  steps, same initial weights, :func:`padlab.train.train_step`, CUDA events, a cold pass that warms
  up, then the timed warm pass over the same steps): median step, real tokens/s, model TFLOP/s and
  MFU against a bf16 matmul peak measured in the run (and the datasheet's on an H100/H200);
* the speed-ups ``bf16-amp/fp32`` and ``tf32/fp32`` per (model, size): ratios of real tokens/s
  over the same steps (and of median steps), computed by
  :func:`padlab.experiments.results.amp_tokens_verdict` (the reader notebook 06 uses);
* why a small step is far from the peak: for each model at ``--profile-tokens`` (default the
  smallest size and 16k), ``torch.profiler`` over a few steps gives the kernel time per step (every
  kernel, copy and memset) and the kernels launched per step; the GPU-busy fraction is that kernel
  time over the step's wall time (the row's unprofiled median step; the fraction under the
  profiler, a lower bound, is stored beside it);
* a verdict computed from those numbers by the same function, stored under ``verdict`` (with
  chapters 06 and 07's figures beside the sweep's, :func:`padlab.experiments.results.amp_references`)
  and as one ``summary`` line a model: the smallest size at which bf16-amp reaches
  ``--threshold`` (4x) over fp32, and whether the small steps are launch-bound (GPU busy
  < ``--busy-below``, 50%, of the wall time).

Strategy ``packed`` (default): rows of ``--max-length`` (512) filled by FFD, one shape every
step, a document mask, SDPA's memory-efficient kernel under every policy (so the policies differ in
their arithmetic, not in their attention kernel); ``token-budget`` is the alternative.

H200 wall time, estimated (:func:`estimate_seconds`, printed and stored): FLOPs per step from
:func:`padlab.models.model_flops` over dense rows at effective rates taken from the H200
reference run (fp32 ~45 TFLOP/s: ``bench_h200.json``'s fixed/fp32 row counted over its slots;
bf16-amp ~330; tf32 assumed 120), with an eager per-step floor (host-bound launches: about 6 ms
for the small model, 25 ms for BERT-base, from ``amp_matrix_h100.json``); every row runs its steps
twice (cold, warm). With the defaults (20 steps a pass, at most ``--row-tokens`` = 524,288 tokens a
pass, so 8 steps at 65,536) about 45 s of steps, plus start-up, model set-up and the profiles:
about 70-90 s in all. ``--deadline`` (default 95 s into the run) records the rows and profiles
not started by then as skipped. Partial JSON is written after every row; a row that fails (an OOM, a missing kernel)
records its ``error`` and the others go on.

    python benchmarks/h200_amp_tokens.py --out data/benchmarks/h200_amp_tokens.json   # the H200, < 2 min
    python benchmarks/h200_amp_tokens.py --quick --out /tmp/amp_tokens.json          # any CPU, < 1 min
"""
from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch

from padlab.data import load_corpus
from padlab.env import resolve_device
from padlab.experiments import bench, results
from padlab.experiments.profiling import kernel_profile
from padlab.models import EncoderForMaskedLM, model_flops
from padlab.precision import tf32_context
from padlab.train import to_device, train_step

MODELS = ("small", "bert-base")
TOKENS = (1024, 4096, 16384, 65536)
PRECISIONS = ("fp32", "tf32", "bf16-amp")
#: Effective training rates on an H200 (TFLOP/s over every computed slot) for the estimate only:
#: fp32 from bench_h200.json's fixed/fp32 row (65,536 slots, 835 ms), bf16-amp from its
#: fixed/bf16 row (110 ms); tf32 is a guess between them.
_RATE_TFLOPS = {"fp32": 45.0, "tf32": 120.0, "bf16-amp": 330.0}
#: Eager per-step floor (ms) on an H100/H200: amp_matrix_h100.json's small rows (~5-6 ms) and its
#: BERT-base rows at 4,096 tokens (bf16-pure 21 ms with far less arithmetic than that).
_FLOOR_MS = {"small": 6.0, "bert-base": 25.0, "tiny": 3.0}

_T0 = time.perf_counter()


def log(*a: Any) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s]", *a, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- plan and estimate

def steps_for(tokens: int, steps: int, row_tokens: int, min_steps: int = 3) -> int:
    """Steps a pass for ``tokens`` a step: ``steps``, at most ``row_tokens`` tokens a pass, at least ``min_steps``."""
    return max(min(min_steps, steps), min(steps, row_tokens // tokens))


def estimate_seconds(models: tuple[str, ...], tokens: tuple[int, ...], precisions: tuple[str, ...], steps: int,
                     row_tokens: int, max_length: int, profile_tokens: tuple[int, ...] = (),
                     profile_precisions: tuple[str, ...] = (), profile_steps: int = 5) -> float:
    """Estimated seconds of timed work on an H200 (both passes of every row, the profiles),
    without start-up: FLOPs of dense rows of ``max_length`` / :data:`_RATE_TFLOPS`, at least
    :data:`_FLOOR_MS` a step."""
    total = 0.0
    for m in models:
        mcfg = bench.model_config(m, max_length)
        for t in tokens:
            rows = max(1, t // max_length)
            flops = model_flops(mcfg, rows * max_length, int(0.15 * rows * max_length), np.full(rows, max_length))
            for p in precisions:
                ms = max(_FLOOR_MS.get(m, 25.0), flops / (_RATE_TFLOPS.get(p, 45.0) * 1e9))
                total += 2 * steps_for(t, steps, row_tokens) * ms / 1e3
                if t in profile_tokens and p in profile_precisions:
                    total += (profile_steps + 3) * ms / 1e3
    return total


# ----------------------------------------------------------------------------- profile

def profile_steps(steps: list[dict[str, Any]], policy: str, init_state: dict[str, torch.Tensor], mcfg: Any,
                  cfg: bench.BenchConfig, device: torch.device, warmup: int = 3) -> dict[str, Any]:
    """Kernel time and kernels per step over ``steps`` (after ``warmup`` of them), the same
    training step as the rows (:func:`padlab.train.train_step`, no host sync inside a step).

    The fields are :func:`padlab.experiments.profiling.kernel_profile`'s: the CPU-side recording
    slows the host, so the busy fraction under the profiler is a lower bound, and :func:`run` also
    divides the kernel time by the row's unprofiled median step. On a CPU there are no kernels:
    the fields are None.
    """
    prep = bench.prepare_row(policy, init_state, mcfg, cfg, device)
    dev_steps = [to_device(s["inputs"], device) for s in steps]
    n = len(dev_steps) - warmup
    with tf32_context(prep.policy):
        for inp in dev_steps[:warmup]:
            train_step(prep.model, inp, prep.optimizer, prep.policy, prep.scaler, bench.mlm_loss, measure=False)
        bench.sync(device)

        def run() -> None:
            for inp in dev_steps[warmup:]:
                train_step(prep.model, inp, prep.optimizer, prep.policy, prep.scaler, bench.mlm_loss, measure=False)

        prof = kernel_profile(run, n, device, sync=lambda: bench.sync(device))
    return {"precision": policy, **prof}


# ----------------------------------------------------------------------------- verdict

def references() -> tuple[list[dict[str, Any]], str | None]:
    """The figures the sweep reconciles, read from the shipped files (not retyped):
    :func:`padlab.experiments.results.amp_references`, and the error (None) if they cannot be read."""
    try:
        return results.amp_references(), None
    except Exception as e:  # a reference that cannot be read must not cost the run
        return [], f"{type(e).__name__}: {e}"


def summary(verdict: dict[str, Any]) -> list[str]:
    """One line a model of :func:`padlab.experiments.results.amp_tokens_verdict`'s verdict: the
    ``amp`` speed-up at each size, where it reaches the threshold, which profiled steps are launch-bound."""
    amp, base, threshold = verdict["amp"], verdict["base"], verdict["threshold"]
    lines = []
    for m, v in verdict["models"].items():
        sp = ", ".join(f"{t:,}: {x:.1f}x" for t, x in v["speedup"].get(amp, {}).items()) or "not measured"
        cross = v["crosses_threshold_at_tokens"]
        lines.append(f"{m}: {amp} over {base} {sp}; "
                     + (f"reaches {threshold:g}x from {cross:,} tokens a step" if cross else f"never reaches {threshold:g}x")
                     + "".join(f"; {t:,} tokens: GPU busy {v['profiles'][t][amp]['gpu_busy_fraction']:.0%} "
                               f"({'launch-bound' if b else 'GPU-bound'})" for t, b in v["launch_bound"].items()))
    return lines


# ----------------------------------------------------------------------------- the run

def _row_error(model: str, tokens: int, precision: str, err: str) -> dict[str, Any]:
    return {"model": model, "tokens_per_step": tokens, "precision": precision, "error": err}


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    global _T0
    _T0 = time.perf_counter()
    device = resolve_device(args.device)
    models, tokens, precisions = tuple(args.models), tuple(args.tokens), tuple(args.precisions)
    prof_tokens, prof_precisions = tuple(args.profile_tokens), tuple(args.profile_precisions)
    est = estimate_seconds(models, tokens, precisions, args.steps, args.row_tokens, args.max_length,
                           prof_tokens, prof_precisions, args.profile_steps)
    log(f"device {device}; estimated H200 time of the timed work {est:.0f} s (plus start-up)")
    corpus = load_corpus(args.corpus)
    mc = bench.mask_corpus(corpus, 0.15, args.max_length, args.seed)
    cuda = device.type == "cuda"

    def peak() -> float:
        return bench.matmul_peak_tflops(device) if cuda else bench.matmul_peak_tflops(device, n=512, reps=3,
                                                                                     dtype=torch.float32)

    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "torch": torch.__version__, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command, "quick": args.quick,
        "config": {"models": list(models), "tokens_per_step": list(tokens), "precisions": list(precisions),
                   "strategy": args.strategy, "corpus": args.corpus, "max_length": args.max_length,
                   "steps": args.steps, "row_tokens": args.row_tokens, "seed": args.seed,
                   "profile_tokens": list(prof_tokens), "profile_precisions": list(prof_precisions),
                   "profile_steps": args.profile_steps, "deadline_s": args.deadline,
                   "objective": "masked LM (padlab bench), eager, fused AdamW on CUDA"},
        "estimated_h200_s": est,
        "matmul_peak_samples_tflops": [peak()],
        "peak_note": ("8192^3 bf16 matmul on random data, median of 10, before and after the rows; the highest "
                      "sample is the MFU denominator") if cuda else "512^3 fp32 matmul (CPU)",
        "throughput_statistic": "real tokens / step time over the warm pass (the cold pass before it warms up)",
        "rows": [], "profiles": [],
    }
    result["matmul_peak_tflops"] = result["matmul_peak_samples_tflops"][0]

    def save() -> None:
        if args.out:
            results.save_result(result, args.out)

    for m in models:
        mcfg = bench.model_config(m, args.max_length)
        torch.manual_seed(args.seed)
        init_state = {k: v.detach().clone() for k, v in EncoderForMaskedLM(mcfg).state_dict().items()}
        for t in tokens:
            n = steps_for(t, args.steps, args.row_tokens)
            try:
                cfg = bench.BenchConfig(corpus=args.corpus, model=m, strategies=(args.strategy,),
                                        precisions=precisions, max_length=args.max_length, max_tokens=t,
                                        timed_steps=n, seed=args.seed, device=str(device), progress=False)
                planned, _ = bench.plan_steps(args.strategy, mc, cfg, max(n, args.profile_steps + 3))
                steps = [bench.collate_step(args.strategy, mc, p, cfg) for p in planned]
            except Exception as e:
                for p in precisions:
                    result["rows"].append(_row_error(m, t, p, f"{type(e).__name__}: {e}"))
                save()
                continue
            for p in precisions:
                if time.perf_counter() - _T0 > args.deadline:
                    result["rows"].append(_row_error(m, t, p, f"skipped: past --deadline {args.deadline} s"))
                    continue
                t_row = time.perf_counter()
                try:
                    row = bench.run_row(args.strategy, p, steps[:n], init_state, mcfg, cfg, device,
                                        result["matmul_peak_tflops"])
                    row.pop("loss_curve", None)
                    row.update(model=m, tokens_per_step=t, row_wall_s=time.perf_counter() - t_row)
                    log(f"{m:<10}{t:>7} {p:<9} median {row['median_step_ms']:8.2f} ms  "
                        f"{row['real_tokens_per_s']:>12,.0f} tok/s  {row['model_tflops']:7.2f} TFLOP/s  "
                        f"({row['row_wall_s']:.1f} s)")
                except Exception as e:
                    row = _row_error(m, t, p, f"{type(e).__name__}: {e}")
                    log(f"{m} {t} {p} failed:", traceback.format_exc(limit=3))
                if cuda:
                    torch.cuda.empty_cache()
                result["rows"].append(row)
                save()
            if t not in prof_tokens:
                continue
            for p in prof_precisions:
                if time.perf_counter() - _T0 > args.deadline:
                    result["profiles"].append({**_row_error(m, t, p, "skipped: past --deadline")})
                    continue
                try:
                    pr = profile_steps(steps[:args.profile_steps + 3], p, init_state, mcfg, cfg, device)
                    row = next((r for r in result["rows"] if (r["model"], r["tokens_per_step"], r["precision"])
                                == (m, t, p) and not r.get("error")), None)
                    med = row["median_step_ms"] if row else None
                    # The step's real wall time is the row's unprofiled median (CUDA events without a
                    # host sync between steps: a GPU waiting for launches shows in it as time).
                    kern = pr["kernel_ms_per_step"]
                    pr.update(model=m, tokens_per_step=t, unprofiled_median_step_ms=med,
                              gpu_busy_fraction=(kern / med if med and kern is not None
                                                 else pr["gpu_busy_fraction_under_profiler"]))
                    busy = pr["gpu_busy_fraction"]
                    log(f"profile {m} {t} {p}: step {pr['wall_ms_per_step']:.2f} ms, kernels "
                        f"{pr['kernel_ms_per_step'] if pr['kernel_ms_per_step'] is None else round(pr['kernel_ms_per_step'], 2)} ms, "
                        f"busy {busy if busy is None else f'{busy:.0%}'}, launches/step {pr['kernels_per_step']}")
                except Exception as e:
                    pr = _row_error(m, t, p, f"{type(e).__name__}: {e}")
                    log(f"profile {m} {t} {p} failed:", traceback.format_exc(limit=3))
                if cuda:
                    torch.cuda.empty_cache()
                result["profiles"].append(pr)
                save()
    result["matmul_peak_samples_tflops"].append(peak())
    ok = [r for r in result["rows"] if not r.get("error")]
    # MFU of every row against the highest peak sample (and the datasheet's on an H100/H200)
    both = bench.add_peaks({**result, "rows": ok})
    result.update({k: v for k, v in both.items() if k != "rows"})
    refs, refs_error = references()
    result["verdict"] = results.amp_tokens_verdict(result, references=refs, threshold=args.threshold,
                                                   busy_below=args.busy_below)
    if refs_error:
        result["references_error"] = refs_error
    result["summary"] = summary(result["verdict"])
    result["seconds"] = time.perf_counter() - _T0
    save()
    return result


def format_table(result: dict[str, Any]) -> str:
    """The rows, the speed-ups and the profiles as short fixed-width tables (< 100 characters)."""
    lines = [f"{result['device']}, torch {result['torch']}, peak {result['matmul_peak_tflops']:.1f} TFLOP/s, "
             f"{result['seconds']:.0f} s (estimated H200 timed work {result['estimated_h200_s']:.0f} s)",
             f"{'model':<10}{'tokens':>7} {'policy':<10}{'median ms':>10}{'real tok/s':>13}{'TFLOP/s':>9}{'MFU':>7}"]
    for r in result["rows"]:
        if r.get("error"):
            lines.append(f"{r['model']:<10}{r['tokens_per_step']:>7} {r['precision']:<10}  error: {r['error'][:50]}")
            continue
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
        lines.append(f"{r['model']:<10}{r['tokens_per_step']:>7} {r['precision']:<10}{r['median_step_ms']:>10.2f}"
                     f"{r['real_tokens_per_s']:>13,.0f}{r['model_tflops']:>9.2f}{mfu:>7}")
    v = result["verdict"]
    lines.append(f"speed-ups over {v['base']} (real tokens/s):")
    for m, mv in v["models"].items():
        for t in sorted({t for by in mv["speedup"].values() for t in by}):
            sp = "  ".join(f"{p}/{v['base']} {by[t]:.2f}x" for p, by in mv["speedup"].items() if t in by)
            lines.append(f"  {m:<10}{t:>7}  {sp}")
    lines.append("profiles (GPU busy = kernel time / unprofiled median step):")
    for p in result["profiles"]:
        if p.get("error"):
            lines.append(f"  {p['model']:<10}{p['tokens_per_step']:>7} {p['precision']:<9} error: {p['error'][:50]}")
            continue
        def pct(x: float | None) -> str:
            return "-" if x is None else f"{x:.0%}"

        k = "-" if p["kernels_per_step"] is None else f"{p['kernels_per_step']:.0f}"
        lines.append(f"  {p['model']:<10}{p['tokens_per_step']:>7} {p['precision']:<9} step {p['wall_ms_per_step']:8.2f} ms"
                     f"  busy {pct(p['gpu_busy_fraction']):>5} ({pct(p['gpu_busy_fraction_under_profiler'])} profiled)"
                     f"  kernels/step {k}")
    lines.append("verdict:")
    lines += [f"  {s}" for s in result["summary"]]
    lines += [f"  reference ch. {r['chapter']} {r['model']} {r['precision']}/{v['base']} ({r['device']}, "
              f"{r['layout']}): {r['speedup']:.2f}x" for r in v["references"]]
    return "\n".join(lines)


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _names(s: str) -> list[str]:
    return [x for x in s.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="where to write the JSON (partial after every row)")
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke run: the tiny model, 128 and 256 tokens a step, max_length 64, 2 steps")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--models", type=_names, default=None, help=f"comma-separated (default {','.join(MODELS)})")
    p.add_argument("--tokens", type=_ints, default=None, help="tokens per step (default 1024,4096,16384,65536)")
    p.add_argument("--precisions", type=_names, default=None, help=f"default {','.join(PRECISIONS)}")
    p.add_argument("--strategy", default="packed", choices=("packed", "token-budget"))
    p.add_argument("--corpus", default="fortunes", choices=("fortunes", "wordnet"))
    p.add_argument("--max-length", type=int, default=None, help="row width (default 512; quick 64)")
    p.add_argument("--steps", type=int, default=None, help="steps a pass (default 20; quick 2); cold + warm passes")
    p.add_argument("--row-tokens", type=int, default=524288, help="at most this many tokens a pass (fewer steps for big steps)")
    p.add_argument("--profile-tokens", type=_ints, default=None, help="sizes to profile (default smallest and 16384)")
    p.add_argument("--profile-precisions", type=_names, default=["fp32", "bf16-amp"])
    p.add_argument("--profile-steps", type=int, default=None, help="profiled steps (default 5; quick 1), after 3 warm-up")
    p.add_argument("--threshold", type=float, default=4.0, help="speed-up the verdict looks for")
    p.add_argument("--busy-below", type=float, default=0.5, help="launch-bound when GPU busy below this fraction")
    p.add_argument("--deadline", type=float, default=95.0,
                   help="rows and profiles not started this many seconds into the run are recorded as skipped")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    q = a.quick
    a.models = a.models or (["tiny"] if q else list(MODELS))
    a.tokens = sorted(a.tokens or ([128, 256] if q else list(TOKENS)))
    a.precisions = a.precisions or list(PRECISIONS)
    a.max_length = a.max_length or (64 if q else 512)
    a.steps = a.steps or (2 if q else 20)
    a.profile_steps = a.profile_steps or (1 if q else 5)
    a.profile_tokens = a.profile_tokens or sorted({a.tokens[0], 16384 if 16384 in a.tokens else a.tokens[-1]})
    for m in a.models:
        m in ("tiny", "small", "bert-base") or p.error(f"unknown model {m!r}")
    for x in a.precisions + a.profile_precisions:
        from padlab.precision import POLICIES
        x in POLICIES or p.error(f"unknown policy {x!r}; choose from {', '.join(POLICIES)}")
    "fp32" in a.precisions or p.error("--precisions must include fp32 (the speed-ups' base)")
    min(a.tokens) >= a.max_length or p.error(f"--tokens must be >= --max-length {a.max_length}")
    return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
    given = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(given)
    if resolve_device(args.device).type == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    # The --out folder is the machine's business: keep the file name only.
    command = "python benchmarks/h200_amp_tokens.py " + " ".join(
        Path(x).name if i and given[i - 1] == "--out" else x for i, x in enumerate(given))
    result = run(args, command)
    print(format_table(result))
    if args.out:
        log(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
