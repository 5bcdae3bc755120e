"""Inference precisions on one device: accuracy against fp32 and speed, for "FP16 suits inference".

Sections (the JSON is saved after every row, so a failure keeps what came before):

* **probe**: the device, :func:`padlab.experiments.inference.fp8_support`, which precisions run
  here (the others are listed under ``skipped`` with their reason), and the measured dense
  matmul peak in bf16 and fp32 (CUDA only; :func:`padlab.experiments.bench.matmul_peak_tflops`).
* **accuracy**: chapter 06's encoder (``EncoderConfig.small()``; ``tiny`` with ``--quick``)
  trained in fp32 on each task with :func:`padlab.experiments.amp_matrix.train_task` (the
  amp-matrix recipe: AdamW 1e-3, linear schedule), then evaluated on the task's eval set under
  every precision: accuracy and prediction agreement with fp32 (``wordnet-topic``), MAE in tokens
  and the largest prediction difference from fp32 (``wordnet-length``, ``wordnet-length-offset``).
* **speed**: median latency per batch and sequences / real tokens per second of the forward
  pass, at each ``--batch-sizes``, on dynamically padded batches of real WordNet glosses, for the
  trained chapter-06 model and a BERT-base-size encoder (random weights: speed does not depend
  on them; the small model is too small to feed tensor cores).
* **verdict**: :func:`padlab.experiments.results.inference_verdict`, computed from the rows.

    python benchmarks/h200_inference.py --out data/benchmarks/h200_inference.json   # one H200: about 90 s
    python benchmarks/h200_inference.py --quick --out /tmp/inference_quick.json     # any CPU: < 60 s

H200 wall-time estimate (defaults): training 3 x 400 steps of batch 64 on the small encoder, about
8 s each (an H100 took ~10 s with a statistic every step; here every 50th), ~25 s; 3 x 8
precisions x 2048 eval texts, a few seconds; speed: 2 models x 8 precisions x 4 batch sizes x
(8 warm-up + 40 timed) forwards. The largest, BERT-base at batch 256 (~256 x 70 padded tokens,
2 x 85M x 18k = 3 TFLOP a forward), takes ~60 ms in fp32 (~50 TFLOP/s) and <10 ms in half
precision: ~3 s + 7 x 0.5 s; the small batches are launch-bound (~2-4 ms a forward): ~20 s for
the section; plus start-up, tokenising and batching ~15 s. About 70-90 s in all (budget 150 s).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

from padlab.data import load_corpus
from padlab.env import detect_device, resolve_device
from padlab.experiments import amp_matrix, inference, results
from padlab.experiments.bench import matmul_peak_tflops
from padlab.models import EncoderConfig, EncoderForSequenceClassification
from padlab.precision import PolicyWarning, tf32_mode

DEFAULT_TASKS = ("wordnet-topic", "wordnet-length", "wordnet-length-offset")


def _device_info(dev: torch.device) -> dict:
    """padlab.env.detect_device's record, plus the GPU's memory and CUDA version."""
    info = detect_device(dev.type).as_dict()
    if dev.type == "cuda":
        info["memory_gib"] = round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def fp32_peak(dev: torch.device) -> float:
    """The fp32 matmul peak with TF32 off (exact float32, as the fp32 rows run)."""
    with tf32_mode(False):
        return matmul_peak_tflops(dev, dtype=torch.float32)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def _table(out: dict) -> str:
    lines = []
    for task, t in out["verdict"]["tasks"].items():
        ch = ", ".join(f"{p} {v:+.4g}" for p, v in t["changes"].items() if p != "fp32")
        lines.append(f"{task:<22} fp32 {t['metric']} {t.get('fp32_value', float('nan')):.4g}; change: {ch}")
    lines.append("")
    names = [p for p in out["config"]["precisions"] if p not in {s["precision"] for s in out["skipped"]}]
    lines.append(f"{'model':<10} {'batch':>5} {'fp32 ms':>8}  " + " ".join(f"{p:>13}" for p in names[1:]))
    for model, by_bs in out["verdict"]["speed"].items():
        for bs, v in by_bs.items():
            ups = " ".join(f"{v['speedup'].get(p, float('nan')):>12.2f}x" for p in names[1:])
            lines.append(f"{model:<10} {bs:>5} {v['fp32_ms_median']:>8.2f}  {ups}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="where to write the JSON")
    p.add_argument("--quick", action="store_true", help="tiny encoder, few steps, small batches: a CPU smoke run")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    p.add_argument("--precisions", default=",".join(inference.INFERENCE_PRECISIONS))
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,8,64,256; quick 1,8)")
    p.add_argument("--steps", type=int, default=None, help="fp32 training steps per task (default 400; quick 8)")
    p.add_argument("--n-eval", type=int, default=None, help="eval texts per task (default 2048; quick 64)")
    p.add_argument("--models", default=None, help="speed models: small,bert-base (quick: tiny)")
    p.add_argument("--repeats", type=int, default=None, help="timed passes over the speed batches (default 5; quick 2)")
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    dev = resolve_device(args.device)
    quick = args.quick
    if dev.type == "cpu":
        # One thread for the smoke run: on a shared CPU, two threads' spin-waits made tiny forwards
        # 30x slower at random; the smoke run checks the pipeline, not the CPU's speed.
        torch.set_num_threads(1 if quick else min(2, torch.get_num_threads()))
    steps = args.steps or (8 if quick else 400)
    n_eval = args.n_eval or (64 if quick else 2048)
    batch_size = 16 if quick else 64
    repeats = args.repeats or (2 if quick else 5)
    n_batches = 2 if quick else 8
    sizes = [int(x) for x in (args.batch_sizes or ("1,8" if quick else "1,8,64,256")).split(",") if x]
    models = [m for m in (args.models or ("tiny" if quick else "small,bert-base")).split(",") if m]
    tasks = [t for t in args.tasks.split(",") if t]
    precisions = [q for q in args.precisions.split(",") if q]
    for t in tasks:
        t in amp_matrix.TASKS or p.error(f"unknown task {t!r}; choose from {', '.join(amp_matrix.TASKS)}")
    for q in precisions:
        q in inference.INFERENCE_PRECISIONS or p.error(
            f"unknown precision {q!r}; choose from {', '.join(inference.INFERENCE_PRECISIONS)}")
    if "fp32" not in precisions:
        precisions.insert(0, "fp32")  # the reference every change is measured against
    for m in models:
        m in ("tiny", "small", "bert-base") or p.error(f"unknown model {m!r}; choose tiny, small or bert-base")
    if any(s < 1 for s in sizes) or not sizes:
        p.error(f"--batch-sizes must be integers >= 1; got {args.batch_sizes!r}")
    train_config = EncoderConfig.tiny() if quick else EncoderConfig.small()
    given = list(sys.argv[1:] if argv is None else argv)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)

    checks = {q: inference.check_precision(q, dev) for q in precisions}
    runnable = [q for q in precisions if checks[q].runnable]
    out: dict = {
        "kind": "inference",
        "device": _device_info(dev),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        # The --out folder is the machine's business: keep the file name only.
        "command": "python benchmarks/h200_inference.py " + " ".join(
            Path(a).name if i and given[i - 1] == "--out" else a for i, a in enumerate(given)),
        "config": {"quick": quick, "tasks": tasks, "precisions": precisions, "batch_sizes": sizes,
                   "speed_models": models, "train_steps": steps, "train_batch_size": batch_size, "n_eval": n_eval,
                   "train_model": {"hidden": train_config.hidden, "layers": train_config.layers,
                                   "heads": train_config.heads, "ffn": train_config.ffn},
                   "train_recipe": "fp32, AdamW lr 1e-3 (padlab.precision.default_optimizer), linear schedule: "
                                   "padlab.experiments.amp_matrix.train_task",
                   "speed_batches": f"{n_batches} dynamically padded batches (PaddingCollator, pad_to_multiple_of=8) "
                                    "of real WordNet glosses per batch size",
                   "timing": f"1 warm-up pass, {repeats} timed passes; each batch timed alone (CUDA events + sync "
                             "on a GPU, host clock on a CPU); ms_median is the latency of one batch",
                   "precision_table": {n: {"policy": q.policy, "fp8": q.fp8, "half": q.half,
                                           "description": q.description}
                                       for n, q in inference.INFERENCE_PRECISIONS.items() if n in precisions},
                   "task_descriptions": {t: amp_matrix.TASKS[t].description for t in tasks}},
        "fp8": inference.fp8_support(dev)._asdict(),
        "skipped": [{"precision": q, "reason": checks[q].reason} for q in precisions if not checks[q].runnable],
        "peak_tflops": None,
        "train_rows": [],
        "accuracy_rows": [],
        "speed_rows": [],
        "verdict": None,
    }

    def save(section: str) -> None:
        out["seconds"] = round(time.perf_counter() - t_start, 1)
        out["last_section"] = section
        out["verdict"] = results.inference_verdict(out)
        results.save_result(out, path)

    for s in out["skipped"]:
        print(f"skip {s['precision']}: {s['reason']}", file=sys.stderr)
    if dev.type == "cuda":
        try:
            out["peak_tflops"] = {"bf16": matmul_peak_tflops(dev, dtype=torch.bfloat16),
                                  "fp32": fp32_peak(dev), "n": 8192,
                                  "what": "median TFLOP/s of an 8192^3 matmul on random data, TF32 off"}
        except Exception as exc:  # noqa: BLE001
            out["peak_tflops"] = {"error": _error(exc)}
    save("probe")

    # ---- accuracy: train each task in fp32, evaluate under every precision
    trained_topic = None
    for t in tasks:
        try:
            task = amp_matrix.make_task(t, n_train=steps * batch_size, n_eval=n_eval, batch_size=batch_size, seed=0)
            row, run = amp_matrix.train_task(task, "fp32", steps=steps, device=dev, seed=0, config=train_config,
                                             measure_every=50)
        except Exception as exc:  # noqa: BLE001
            out["train_rows"].append({"task": t, "error": _error(exc)})
            save(f"train {t}")
            continue
        keep = ("task", "kind", "unit", "steps", "steps_run", "batch_size", "hidden", "layers", "accuracy", "mae",
                "exact_fraction", "final_loss_mean10", "train_seconds", "peak_memory_bytes")
        out["train_rows"].append({k: row[k] for k in keep if k in row})
        print(f"train {t}: {row.get('accuracy', row.get('mae')):.4g} in {row['train_seconds']:.1f} s",
              file=sys.stderr, flush=True)
        if t == "wordnet-topic":
            trained_topic = run.model
        try:
            rows = inference.evaluate_precisions(run.model, task, precisions, dev)
        except Exception as exc:  # noqa: BLE001
            rows = [{"task": t, "precision": "*", "error": _error(exc)}]
        out["accuracy_rows"] += rows
        for r in rows:
            what = r.get("error") or r.get("reason") or f"{r['metric']} {r['value']:.4g} ({r['change_vs_fp32']:+.3g})"
            print(f"  {t:<22} {r['precision']:<14} {what}", file=sys.stderr, flush=True)
        save(f"accuracy {t}")
        del run

    # ---- speed: forward latency and throughput per model, precision and batch size
    n_topics = len(load_corpus("wordnet").label_names)  # the wordnet-topic head: the trained model's shape
    batches = {bs: inference.speed_batches(bs, n_batches=n_batches, seed=1) for bs in sizes}
    for name in models:
        cfg = {"tiny": EncoderConfig.tiny, "small": EncoderConfig.small,
               "bert-base": EncoderConfig.bert_base}[name]().replace(num_labels=n_topics)
        trained = name == _trained_model_name(train_config) and trained_topic is not None
        if trained:
            model = trained_topic
        else:
            torch.manual_seed(0)
            model = EncoderForSequenceClassification(cfg).to(dev)   # each precision's copy is then a device copy
        for q in runnable:
            try:
                prepared = inference.prepare_inference(model, q, dev)
            except Exception as exc:  # noqa: BLE001
                out["speed_rows"].append({"model": name, "precision": q, "error": _error(exc)})
                save(f"speed {name} {q}")
                continue
            for bs in sizes:
                row = {"model": name, "trained": trained, "hidden": cfg.hidden, "layers": cfg.layers,
                       "precision": q, "half": inference.INFERENCE_PRECISIONS[q].half, "batch_size": bs,
                       "fp8_layers": prepared.fp8_layers, "fp8_fallback_layers": prepared.fp8_fallback_layers}
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", PolicyWarning)
                        row.update(inference.time_forward(prepared, batches[bs], warmup=1, repeats=repeats))
                    print(f"speed {name:<10} {q:<14} bs {bs:>4}  {row['ms_median']:8.3f} ms  "
                          f"{row['real_tokens_per_s']:12.0f} tok/s", file=sys.stderr, flush=True)
                except Exception as exc:  # noqa: BLE001
                    row["error"] = _error(exc)
                    print(f"speed {name} {q} bs {bs}: {row['error']}", file=sys.stderr, flush=True)
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                out["speed_rows"].append(row)
                save(f"speed {name} {q} {bs}")
            del prepared
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    save("done")
    print(_table(out))
    print(f"wrote {path} in {out['seconds']} s", file=sys.stderr)
    return 0


def _trained_model_name(config: EncoderConfig) -> str:
    """``tiny`` or ``small``: which speed model is the trained chapter-06 encoder."""
    return "tiny" if config.hidden == EncoderConfig.tiny().hidden else "small"


if __name__ == "__main__":
    sys.exit(main())
