"""Every precision policy x task on one device: accuracy / error, loss scaling, underflow, memory, speed.

Tests the seed's claims ("FP16 saves memory and speeds training up"; "AMP suits
classification but does badly on regression that needs exact values"):

* **train rows**: the small encoder trained from the same seeded initial weights on the same
  batches under each policy in :data:`padlab.precision.POLICIES`, on each task in ``--tasks``
  (see :data:`padlab.experiments.amp_matrix.TASKS`), for ``--seeds`` seeds; the final eval accuracy or error,
  per-step loss / loss scale / underflow fraction, skipped steps, peak memory and wall time.
* **speed rows**: median step time (CUDA events; a timer on CPU) and peak memory per policy for
  the small encoder and, on a GPU, a BERT-base-size encoder on fixed 128-token batches.

Writes JSON ``{device, torch, date, command, config, rows: [...]}`` to ``--out``. Non-finite
floats are written as the strings "nan", "inf", "-inf" (strict JSON has none).

    python benchmarks/amp_matrix.py --out data/benchmarks/amp_matrix_h100.json     # a GPU, < 4 min
    python benchmarks/amp_matrix.py --quick --out amp_quick.json                   # any CPU, < 1 min
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from padlab import introspect, precision, train
from padlab.env import resolve_device
from padlab.experiments import amp_matrix as matrix
from padlab.models import EncoderConfig, EncoderForSequenceClassification

DEFAULT_TASKS = ("wordnet-topic", "wordnet-length", "wordnet-length-raw", "wordnet-length-offset")


def _clean(v):
    """JSON-safe: non-finite floats as strings, tensors and numpy scalars as Python numbers."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return float(f"{v:.6g}")  # six significant digits: enough for every figure, a third of the bytes
    return v


def _device_info(dev: torch.device) -> dict:
    if dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        props = torch.cuda.get_device_properties(dev)
        return {"type": "cuda", "name": torch.cuda.get_device_name(dev), "capability": f"{major}.{minor}",
                "memory_gib": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda}
    return {"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def _speed_batch(length: int, batch_size: int, seed: int) -> dict:
    """``batch_size`` fortunes cut or padded to exactly ``length`` tokens (fixed shape), with their labels."""
    import numpy as np

    from padlab.data import load_corpus
    from padlab.padding import PaddingCollator

    corpus = load_corpus("fortunes")
    idx = np.random.default_rng(seed).choice(len(corpus), size=batch_size, replace=False)
    collate = PaddingCollator(padding="max_length", max_length=length)
    return collate([corpus[int(i)] for i in idx]), len(corpus.label_names)


def time_policy(config: EncoderConfig, batch: dict, policy: str, dev: torch.device, *, warmup: int,
                iters: int) -> dict:
    """Median step time and peak memory of ``iters`` timed training steps after ``warmup`` steps."""
    torch.manual_seed(0)
    model = EncoderForSequenceClassification(config)
    b = {k: v.to(dev) for k, v in batch.items()}
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", precision.PolicyWarning)
        prep = precision.prepare(model, None, policy, dev)
    del model
    step = lambda: train.train_step(prep.model, b, prep.optimizer, prep.policy, prep.scaler, measure=False)  # noqa: E731
    for _ in range(warmup):
        step()
    times = []
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(dev)
        times = [s.elapsed_time(e) for s, e in events]
        peak = int(torch.cuda.max_memory_allocated(dev))
    else:
        for _ in range(iters):
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1e3)
        peak = None
    params = sum(p.numel() * p.element_size() for p in prep.model.parameters())
    tokens = int(b["attention_mask"].sum())
    med = statistics.median(times)
    q = statistics.quantiles(times, n=4) if len(times) >= 2 else [med, med, med]
    return {"step_ms_median": med, "step_ms_q1": q[0], "step_ms_q3": q[2], "tokens_per_s": tokens / med * 1e3,
            "peak_memory_bytes": peak, "param_bytes": params, "timed_steps": iters}


def run_cells(cells: list[tuple[int, str]], policies: list[str], checks: dict, *, steps: int, batch_size: int,
              n_eval: int, quick: bool, device: str, threads: int | None = None) -> list[dict]:
    """Train rows for each (seed, task) cell under every runnable policy (one worker's share)."""
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    config = EncoderConfig.tiny() if quick else EncoderConfig.small()
    rows = []
    for seed, t in cells:
        task = matrix.make_task(t, n_train=steps * batch_size, n_eval=n_eval, batch_size=batch_size, seed=seed)
        for q in policies:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", precision.PolicyWarning)
                row = matrix.run_experiment(task, q, steps=steps, device=dev, seed=seed, config=config)
            row["kind_of_row"] = "train"
            row["pointless_here"] = checks[q].pointless
            if seed > 0:  # per-step curves of the first seed are enough for the plots; keep the file small
                for key in ("loss", "scale", "underflow", "underflow_unscaled", "grad_norm"):
                    row[key] = None
            rows.append(row)
            metric = (f"acc {row['accuracy']:.3f}" if task.kind == "classification"
                      else f"mae {row['mae']:.3f} exact {row['exact_fraction']:.3f}")
            print(f"seed {seed} {t:<22} {q:<10} {metric}  loss {row['final_loss_mean10']:.4g}  "
                  f"skipped {len(row['skipped_steps'])}  steps {row['steps_run']}  "
                  f"underflow {row['underflow_unscaled_mean']:.2e}  {row['train_seconds']:.1f}s",
                  file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="where to write the JSON")
    p.add_argument("--quick", action="store_true", help="a tiny encoder, few steps, one seed: a CPU smoke run")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated names from padlab.experiments.amp_matrix.TASKS")
    p.add_argument("--policies", default=",".join(precision.POLICIES))
    p.add_argument("--steps", type=int, default=None, help="training steps per run (default 400; quick 8)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per task and policy (default 3; quick 1)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--n-eval", type=int, default=None, help="eval texts per task (default 2048; quick 128)")
    p.add_argument("--no-speed", action="store_true", help="skip the speed and memory rows")
    p.add_argument("--jobs", type=int, default=None, help="worker processes for the train rows (default 3 on a GPU, 1 on CPU)")
    args = p.parse_args(argv)

    dev = resolve_device(args.device)
    if dev.type == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    steps = args.steps or (8 if args.quick else 400)
    seeds = args.seeds or (1 if args.quick else 3)
    n_eval = args.n_eval or (64 if args.quick else 2048)
    batch_size = 16 if args.quick else args.batch_size
    config = EncoderConfig.tiny() if args.quick else EncoderConfig.small()
    tasks = [t for t in args.tasks.split(",") if t]
    policies = [q for q in args.policies.split(",") if q]
    for t in tasks:
        matrix.TASKS.get(t) or p.error(f"unknown task {t!r}; choose from {', '.join(matrix.TASKS)}")
    for q in policies:
        q in precision.POLICIES or p.error(f"unknown policy {q!r}; choose from {', '.join(precision.POLICIES)}")

    t_start = time.perf_counter()
    given = list(sys.argv[1:] if argv is None else argv)
    checks = {q: precision.check_policy(q, dev) for q in policies}
    runnable = [q for q in policies if checks[q].runnable]
    rows: list[dict] = []
    for q in policies:
        if not checks[q].runnable:
            rows.append({"kind_of_row": "unrunnable", "policy": q, "reason": checks[q].reason})
            print(f"skip {q}: {checks[q].reason}", file=sys.stderr)

    from padlab.data import load_corpus

    load_corpus("wordnet")  # tokenise once here, so that workers find the disk cache
    cells = [(seed, t) for seed in range(seeds) for t in tasks]
    jobs = max(1, min(args.jobs or (3 if dev.type == "cuda" else 1), len(cells)))
    kw = dict(steps=steps, batch_size=batch_size, n_eval=n_eval, quick=args.quick, device=str(dev))
    if jobs == 1:
        rows += run_cells(cells, runnable, checks, **kw)
    else:
        # The small encoder's step is bound by the host (kernel launches, Python), not the GPU:
        # a few processes sharing one GPU finish the matrix several times sooner. Step times of
        # train rows are then shared-GPU times; the speed rows below run alone.
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs) as pool:
            parts = [pool.apply_async(run_cells, (cells[i::jobs], runnable, checks), dict(kw, threads=2))
                     for i in range(jobs)]
            for part in parts:
                rows += part.get()
    order = {(s_, t): i for i, (s_, t) in enumerate(cells)}
    rows.sort(key=lambda r: (order.get((r.get("seed"), r.get("task")), -1), policies.index(r["policy"])))

    # Which ops autocast runs in which dtype on this device (CPU and CUDA keep their own op lists).
    probe = matrix.make_task(tasks[0], n_train=batch_size, n_eval=1, batch_size=batch_size, seed=0)
    torch.manual_seed(0)
    probe_model = EncoderForSequenceClassification(config.replace(num_labels=probe.num_labels), task=probe.kind)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", precision.PolicyWarning)
        table = introspect.autocast_table(probe_model, probe.train[0], [q for q in runnable if precision.get_policy(q).half],
                                   dev)
    rows.append({"kind_of_row": "autocast", "task": probe.name, "ops": table})

    if not args.no_speed:
        speed_cfgs = ([("tiny", EncoderConfig.tiny(), 16, 64)] if args.quick else
                      [("small", EncoderConfig.small(), 64, 128), ("bert-base", EncoderConfig.bert_base(), 32, 128)])
        if dev.type == "cpu" and not args.quick:
            speed_cfgs = speed_cfgs[:1]
        warmup, iters = (2, 3) if args.quick else (8, 25)
        for name, cfg, bs, length in speed_cfgs:
            batch, num_labels = _speed_batch(length, bs, seed=0)
            cfg = cfg.replace(num_labels=num_labels)
            for q in runnable:
                r = time_policy(cfg, batch, q, dev, warmup=warmup, iters=iters)
                rows.append({"kind_of_row": "speed", "model": name, "policy": q, "batch_size": bs, "length": length,
                             "hidden": cfg.hidden, "layers": cfg.layers, **r})
                mem = f"{r['peak_memory_bytes'] / 2**20:.0f} MiB" if r["peak_memory_bytes"] else "-"
                print(f"speed {name:<10} {q:<10} {r['step_ms_median']:.2f} ms/step  {mem}", file=sys.stderr,
                      flush=True)

    out = {
        "device": _device_info(dev),
        "torch": torch.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        # The --out folder is the machine's business (often a temporary path): keep the file name only.
        "command": "python benchmarks/amp_matrix.py " + " ".join(
            Path(a).name if i and given[i - 1] == "--out" else a for i, a in enumerate(given)),
        "config": {"steps": steps, "seeds": seeds, "batch_size": batch_size, "n_eval": n_eval, "tasks": tasks,
                   "policies": policies, "model": {"hidden": config.hidden, "layers": config.layers,
                                                   "heads": config.heads, "ffn": config.ffn},
                   "optimizer": "AdamW lr 1e-3, weight decay 0.01, eps 1e-8 (padlab.precision.default_optimizer)",
                   "lr_schedule": "linear: 5% warm-up, then decay to zero", "jobs": jobs,
                   "task_descriptions": {t: matrix.TASKS[t].description for t in tasks},
                   "policy_checks": {q: vars(checks[q]) for q in policies}},
        "seconds": round(time.perf_counter() - t_start, 1),
        "rows": rows,
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean = _clean(out)
    head = {k: v for k, v in clean.items() if k != "rows"}
    text = json.dumps(head, indent=1, allow_nan=False)[:-2]  # drop the closing "\n}"
    # One row per line: readable diffs without one line per number of the curves.
    text += ',\n "rows": [\n  ' + ",\n  ".join(json.dumps(r, allow_nan=False) for r in clean["rows"]) + "\n ]\n}\n"
    json.loads(text)  # the file must parse
    path.write_text(text)
    print(f"wrote {path} ({len(rows)} rows) in {out['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
