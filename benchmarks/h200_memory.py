"""Big models still need a big GPU (issue 12 item 4b): the largest tokens per step that fit in
16, 24 and 80 GB when training BERT-base and BERT-large-size encoders, estimated and measured.

Rows: model (``bert-base``: 12 layers, hidden 768; ``bert-large``: 24 layers, hidden 1024, 16 heads,
FFN 4096; the shipped 8,192-token vocabulary) x recipe x activation checkpointing (off / on,
``EncoderConfig(gradient_checkpointing=True)``). Recipes, each a strategy of
:data:`padlab.strategies.STRATEGIES` under a policy of :data:`padlab.precision.POLICIES`, masked-LM
on the ``fortunes`` corpus (15% of real tokens masked, as notebook 07's bench):

* ``fixed-512 fp32``: ``fixed`` rows of 512 slots, fp32; the unit is a row (512 slots);
* ``bucketed bf16-amp``: ``bucketed`` dynamic padding, bf16 autocast; the step's padded slots;
* ``packed bf16-amp``: ``packed-varlen`` (padding free, flash varlen attention on the GPU): its real tokens.

For each row:

1. **Estimate** (:func:`padlab.cost.training_memory`, :func:`padlab.cost.max_tokens_per_step`):
   parameter parts from :func:`padlab.cost.parameter_memory` and activation bytes per token and
   layer measured on the CPU on a 1-2 layer proxy of the same widths.
2. **Measure**: a step is :func:`padlab.train.train_step` (forward, backward, fused AdamW). A
   run's first step creates the optimizer state, so a small warm-up step (one row) creates it
   first and the step at the measured size comes second: ``max_memory_allocated`` and
   ``max_memory_reserved`` from ``reset_peak_memory_stats`` before it (every static tensor is then
   allocated, as in step 2 of a real run; the warm-up halves the GPU time). Done at three token
   counts; a straight line ``peak = a + b x tokens`` is fitted (allocated and reserved).
3. **Predict** the largest tokens per step for each budget from the reserved fit (what a cap
   limits); 16 GB is a T4 (no bf16): bf16 recipes run there in ``fp16-amp``, verified as such.
4. **Verify** under ``torch.cuda.set_per_process_memory_fraction(budget / total)``: the warm-up and
   a step at the prediction must fit, a step at 1.15x it should raise an out-of-memory error; both recorded
   (the fraction is reset and the cache emptied after each). Verification is skipped, and says so,
   when its estimated time (from the fit's measured seconds per token) would pass ``--time-limit``.
5. **Reconcile**: estimate / measured peak at every measured point, estimated / measured max tokens
   per budget, and chapter 00's estimate for the bert-base rows without checkpointing
   (``parameter_memory`` of the whole model + autograd's saved activations of the whole 12-layer
   model on CPU, scaled per token; no backward transient) against the measured peak.

Budgets are what the cards report: 15,360 MiB (T4 "16 GB"), 24,576 MiB (24 GB), 81,920 MiB (80 GB).
The allocator cap does not count the CUDA context (a few hundred MiB on a real card).
``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`` is set unless the caller set it (less
fragmentation: the reserved peak stays close to the allocated one); the JSON records it.

    python benchmarks/h200_memory.py --out data/benchmarks/h200_memory.json \
        2>&1 | tee data/benchmarks/h200_memory.log                              # on the H200, < 200 s
    python benchmarks/h200_memory.py --quick --out /tmp/memory.json              # CPU, tiny stand-ins

H200 wall time (estimate, bounded by ``--time-limit`` 175 s plus imports): the CPU proxies of the
estimates (bert-base and bert-large x fp32, bf16-amp, fp16-amp; 45 s on a loaded 2-core CPU, a few
seconds per profile on a free many-core host); fits: 12 rows x 3 sizes (4k, 8k, 16k slots) x (one
small warm-up + one measured step): BERT-large fp32 ~1 s a step at 16k (6 x 335M x 16k FLOPs at
~35 TFLOP/s, TF32 off), bf16 ~0.1 s, bert-base a third of that: ~25 s; verification, every row's
16 GB first, then 24 GB, then 80 GB, gets the rest: each check costs (prediction + 1.15 x
prediction) x the seconds per token of the largest fit step, and is skipped (and listed in
``skipped``) when that would pass ``--time-limit``. fp32 with checkpointing at 80 GB (~0.3-0.5M slots
a step, 10+ s a step) is expected to be skipped; packed at more tokens than the corpus holds is.
"""
from __future__ import annotations

import os

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime as dt  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from padlab.cost import (activation_profile, max_tokens_per_step, parameter_memory,  # noqa: E402
                         saved_activation_bytes, training_memory)
from padlab.data import load_corpus  # noqa: E402
from padlab.env import resolve_device  # noqa: E402
from padlab.experiments.bench import (BenchConfig, collate_step, mask_corpus, mlm_loss, model_config,  # noqa: E402
                                      plan_steps, sync)
from padlab.experiments.results import save_result  # noqa: E402
from padlab.models import EncoderForMaskedLM  # noqa: E402
from padlab.precision import PolicyWarning, prepare  # noqa: E402
from padlab.train import to_device, train_step  # noqa: E402

RECIPES = {"fixed-512 fp32": ("fixed", "fp32"), "bucketed bf16-amp": ("bucketed", "bf16-amp"),
           "packed bf16-amp": ("packed-varlen", "bf16-amp")}
MIB = 2**20
BUDGETS = {"16 GB": 15360 * MIB, "24 GB": 24576 * MIB, "80 GB": 81920 * MIB}
T4 = "16 GB"   # no bf16 on a T4: bf16 recipes run there in fp16-amp
OVER = 1.15
MLM_PROB = 0.15


def precision_for(recipe: str, budget: str) -> str:
    p = RECIPES[recipe][1]
    return "fp16-amp" if budget == T4 and p == "bf16-amp" else p


def slot_unit(recipe: str, max_length: int = 512) -> int:
    return max_length if RECIPES[recipe][0] == "fixed" else 1


# --------------------------------------------------------------------------- steps

def strategy_for(recipe: str, cuda: bool) -> str:
    """The recipe's strategy; off CUDA ``packed-varlen`` becomes ``packed`` (dense block mask): the
    CPU's varlen path runs nested tensors, which torch's checkpointing cannot save."""
    s = RECIPES[recipe][0]
    return "packed" if s == "packed-varlen" and not cuda else s


def steps_for(recipe: str, mc, model: str, tokens: int, max_length: int, cuda: bool, n: int = 8) -> list[dict]:
    """Collated candidate steps at about ``tokens`` slots a step (the recipe's planner)."""
    strategy = strategy_for(recipe, cuda)
    rows = max(1, tokens // max_length)
    cfg = BenchConfig(corpus="fortunes", model=model, strategies=(strategy,), precisions=(RECIPES[recipe][1],),
                      max_length=max_length, seqs_per_step=rows, max_tokens=max(max_length, tokens),
                      mlm_prob=MLM_PROB, progress=False)
    planned, _ = plan_steps(strategy, mc, cfg, 1 if strategy == "fixed" else n)
    return [collate_step(strategy, mc, p, cfg) for p in planned]


def pick(steps: list[dict], target: int) -> dict:
    """The step with the most slots not above ``target`` (else the smallest)."""
    below = [s for s in steps if s["slots"] <= target]
    return max(below, key=lambda s: s["slots"]) if below else min(steps, key=lambda s: s["slots"])


class Trainer:
    """One prepared model (weights, fused AdamW, scaler) on the device, reused across measurements."""

    def __init__(self, mcfg, precision: str, device: torch.device, seed: int, warm: dict) -> None:
        # ``warm``: a small collated step whose optimizer step creates AdamW's state cheaply, so
        # that the measured step (the second) starts with every static tensor allocated
        self.warm = warm
        torch.manual_seed(seed)
        with torch.device(device):  # initialised on the device: seconds saved for BERT-large
            model = EncoderForMaskedLM(mcfg)
        fused = device.type == "cuda"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PolicyWarning)
            self.prep = prepare(model, lambda ps: torch.optim.AdamW(ps, lr=1e-4, fused=fused), precision, device)
        del model
        self.device = device

    def reset(self) -> None:
        """Drop gradients and optimizer state: the next step starts as a fresh run's first."""
        self.prep.optimizer.state.clear()
        self.prep.optimizer.zero_grad(set_to_none=True)
        if self.prep.scaler is not None:   # a step cut by an OOM may leave the scaler mid-step
            self.prep.scaler = torch.amp.GradScaler(self.device.type)
        if self.device.type == "cuda":   # only the GPU's allocator needs the freed blocks back
            gc.collect()
            torch.cuda.empty_cache()

    def step(self, batch: dict) -> None:
        p = self.prep
        train_step(p.model, batch, p.optimizer, p.policy, p.scaler, mlm_loss, measure=False)

    def measure(self, step: dict) -> dict:
        """A warm-up step (the small ``warm`` batch: creates the optimizer state), then ``step``'s
        batch with the peaks reset: its peak allocated and reserved bytes and its seconds."""
        self.reset()
        cuda = self.device.type == "cuda"
        self.step(to_device(self.warm["inputs"], self.device))   # creates the optimizer state
        batch = to_device(step["inputs"], self.device)
        sync(self.device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        self.step(batch)
        sync(self.device)
        out = {"slots": step["slots"], "real_tokens": step["real_tokens"], "masked_tokens": step["masked_tokens"],
               "sequences": step["sequences"], "step_s": time.perf_counter() - t0,
               "peak_allocated": int(torch.cuda.max_memory_allocated(self.device)) if cuda else None,
               "peak_reserved": int(torch.cuda.max_memory_reserved(self.device)) if cuda else None}
        del batch
        return out


def under_cap(trainer: Trainer, step: dict, budget: int) -> dict:
    """The warm-up step and ``step`` under a memory fraction of ``budget`` bytes: fits, or the
    out-of-memory error, recorded."""
    # set_per_process_memory_fraction wants an indexed device ("cuda" alone raised ValueError on the H200).
    dev = torch.device("cuda", torch.cuda.current_device()) if trainer.device.index is None else trainer.device
    total = torch.cuda.get_device_properties(dev).total_memory
    trainer.reset()
    rec = {"slots": step["slots"], "real_tokens": step["real_tokens"], "budget_bytes": budget}
    torch.cuda.set_per_process_memory_fraction(budget / total, dev)
    torch.cuda.reset_peak_memory_stats(dev)
    try:
        trainer.step(to_device(trainer.warm["inputs"], dev))   # optimizer state, as in the fit
        batch = to_device(step["inputs"], dev)
        trainer.step(batch)
        sync(dev)
        rec.update(fits=True, peak_reserved=int(torch.cuda.max_memory_reserved(dev)),
                   peak_allocated=int(torch.cuda.max_memory_allocated(dev)))
        del batch
    except torch.OutOfMemoryError as exc:
        rec.update(fits=False, error=f"OutOfMemoryError: {str(exc).splitlines()[0][:200]}")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
        trainer.reset()
    return rec


# --------------------------------------------------------------------------- estimates

def fit_line(x: list[float], y: list[float]) -> dict | None:
    if len(x) < 2 or any(v is None for v in y):
        return None
    b, a = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    resid = np.asarray(y, float) - (a + b * np.asarray(x, float))
    return {"a_bytes": float(a), "b_bytes_per_token": float(b), "max_abs_residual_bytes": float(np.abs(resid).max())}


def fit_max(fit: dict, budget: int, unit: int) -> int:
    t = (budget - fit["a_bytes"]) / fit["b_bytes_per_token"] + 1e-6   # a fit's rounding never drops a unit
    return max(0, int(t // unit) * unit)


def chapter00(mcfg, precision: str) -> dict:
    """Chapter 00's way: the whole model's parameter table + autograd's saved activations of the
    whole model (CPU, rows of 64 real tokens, 64 and 128 tokens, linear per token)."""
    torch.manual_seed(0)
    model = EncoderForMaskedLM(mcfg.replace(gradient_checkpointing=False))
    params = parameter_memory(model, precision, "adamw")
    model.train()
    stream = torch.from_numpy(load_corpus("fortunes").token_ids[:128].astype(np.int64))
    policy_dtype = {"fp32": None, "bf16-amp": torch.bfloat16, "fp16-amp": torch.float16}[precision]
    saved = {}
    width = min(64, mcfg.max_position)
    for t in (64, 128):
        ids = stream[:t].reshape(t // width, width)
        pos = torch.arange(0, t, 7)

        def run():
            with torch.autocast("cpu", dtype=policy_dtype or torch.bfloat16, enabled=policy_dtype is not None):
                return model(ids, torch.ones_like(ids), masked_positions=pos, mlm_labels=ids.reshape(-1)[pos]).loss
        saved[t] = saved_activation_bytes(run, exclude=model.parameters())
    per_token = (saved[128] - saved[64]) / 64
    return {"parameter_memory": dict(params), "saved_fixed_bytes": saved[64] - per_token * 64,
            "saved_per_token_bytes": per_token}


def chapter00_peak(c00: dict, tokens: int) -> int:
    return int(c00["parameter_memory"]["total"] + c00["saved_fixed_bytes"] + c00["saved_per_token_bytes"] * tokens)


# --------------------------------------------------------------------------- the run

def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CPU smoke run: tiny stand-ins, measured fields None")
    ap.add_argument("--out", default="data/benchmarks/h200_memory.json")
    ap.add_argument("--models", default="bert-base,bert-large")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--fit-tokens", default="4096,8192,16384", help="token slots a step for the fit")
    ap.add_argument("--time-limit", type=float, default=175.0, help="seconds; later work is skipped and recorded")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    device = resolve_device("cpu" if args.quick else args.device)
    cuda = device.type == "cuda"
    models = [m for m in args.models.split(",") if m]
    recipes = [r for r in args.recipes.split(",") if r]
    for r in recipes:
        if r not in RECIPES:
            ap.error(f"--recipes: {r!r} is not one of {list(RECIPES)}")
    fit_tokens = [int(x) for x in args.fit_tokens.split(",")]
    max_length = 512
    if args.quick:   # tiny stand-ins keep the structure: the names say what they stand for
        stand_in = {m: "tiny" for m in models}
        fit_tokens = [64, 128]
        max_length = 32
    else:
        stand_in = {m: m for m in models}
    mc = mask_corpus(load_corpus("fortunes"), MLM_PROB, max_length, args.seed)
    result: dict = {
        "name": "memory budget: largest tokens per step in 16/24/80 GB, estimated and measured",
        "device": torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "device_total_bytes": int(torch.cuda.get_device_properties(device).total_memory) if cuda else None,
        "torch": torch.__version__, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python"] + sys.argv) if argv is None else "h200_memory.main(" + repr(argv) + ")",
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "config": {"models": models, "stand_ins": stand_in, "recipes": {r: RECIPES[r] for r in recipes},
                   "fit_tokens": fit_tokens, "max_length": max_length, "budgets_bytes": BUDGETS, "t4_budget": T4,
                   "over_factor": OVER, "mlm_prob": MLM_PROB, "corpus": "fortunes", "optimizer": "AdamW (fused on CUDA)",
                   "time_limit_s": args.time_limit, "quick": args.quick},
        "rows": [], "skipped": [], "complete": False,
    }

    def save() -> None:
        if args.out:
            save_result(result, args.out)

    def elapsed() -> float:
        return time.perf_counter() - t_start

    # phase 1: estimates and fits for every row (cheap); phase 2: verification with the time left
    rows = [(m, r, ck) for m in models for r in recipes for ck in (False, True)]
    chapter = {}
    for m, recipe, ck in rows:
        label = f"{m} / {recipe} / checkpointing {'on' if ck else 'off'}"
        if elapsed() > args.time_limit:
            result["skipped"].append({"row": label, "phase": "fit", "why": f"past --time-limit at {elapsed():.0f} s"})
            save()
            continue
        row: dict = {"model": m, "recipe": recipe, "strategy": strategy_for(recipe, cuda), "precision": RECIPES[recipe][1],
                     "checkpointing": ck, "stand_in": stand_in[m], "unit": f"row of {max_length} slots" if slot_unit(recipe) > 1
                     else ("padded slots" if RECIPES[recipe][0] == "bucketed" else "real tokens (no padding)")}
        t_row = time.perf_counter()
        trainer = None
        try:
            mcfg = model_config(stand_in[m], max_length, gradient_checkpointing=ck)
            row["model_config"] = {k: getattr(mcfg, k) for k in ("hidden", "layers", "heads", "ffn", "vocab_size")}
            # what the estimate scales: bytes per token and layer measured on a CPU proxy
            row["activation_profile"] = dataclasses.asdict(activation_profile(mcfg, row["precision"]))
            warm = pick(steps_for(recipe, mc, stand_in[m], max_length, max_length, cuda), max_length)
            trainer = Trainer(mcfg, row["precision"], device, args.seed, warm)
            points = []
            for t in fit_tokens:
                step = pick(steps_for(recipe, mc, stand_in[m], t, max_length, cuda), t)
                point = trainer.measure(step)
                est = training_memory(mcfg, row["precision"], tokens=step["slots"], masked_tokens=step["masked_tokens"],
                                      checkpointing=ck)
                point["estimate"] = dict(est)
                point["estimate_over_measured"] = est.total / point["peak_allocated"] if point["peak_allocated"] else None
                if m == "bert-base" and not ck and row["precision"] != "fp16-amp":
                    key = (stand_in[m], row["precision"])
                    if key not in chapter:
                        chapter[key] = chapter00(mcfg, row["precision"])
                    c00 = chapter00_peak(chapter[key], step["slots"])
                    point["chapter00_estimate"] = c00
                    point["chapter00_over_measured"] = c00 / point["peak_allocated"] if point["peak_allocated"] else None
                points.append(point)
            del trainer
            row["points"] = points
            x = [p["slots"] for p in points]
            row["fit_allocated"] = fit_line(x, [p["peak_allocated"] for p in points])
            row["fit_reserved"] = fit_line(x, [p["peak_reserved"] for p in points])
            # the largest point's rate: small steps are dominated by launch overheads
            row["seconds_per_token"] = points[-1]["step_s"] / points[-1]["slots"]
            row["budgets"] = {}
            # masked tokens per slot as the recipe's steps have them (15% of real tokens; padding is never masked)
            mfrac = float(np.mean([p["masked_tokens"] / p["slots"] for p in points]))
            row["masked_per_slot"] = mfrac
            for name, budget in BUDGETS.items():
                prec = precision_for(recipe, name)
                est_max = max_tokens_per_step(budget, mcfg, prec, checkpointing=ck, masked_fraction=mfrac,
                                              multiple_of=slot_unit(recipe, max_length))
                b = {"precision": prec, "estimated_max_tokens": est_max,
                     "measured_fit_max_tokens": fit_max(row["fit_reserved"], budget, slot_unit(recipe, max_length))
                     if row["fit_reserved"] else None,
                     "measured_fit_from": "fp16-amp is not fitted: the bf16-amp fit (same bytes) predicts it"
                     if prec != row["precision"] else row["precision"]}
                b["estimate_over_measured"] = (est_max / b["measured_fit_max_tokens"]
                                               if b["measured_fit_max_tokens"] else None)
                if slot_unit(recipe) > 1:
                    b["estimated_max_rows"] = est_max // max_length
                # real tokens such a step holds: the fit steps' real tokens per slot (fixed and bucketed pad)
                per_slot = float(np.mean([p["real_tokens"] / p["slots"] for p in points]))
                b["real_tokens_at_estimated_max"] = int(est_max * per_slot)
                if (stand_in[m], row["precision"]) in chapter and m == "bert-base" and not ck:
                    c00 = chapter[stand_in[m], row["precision"]]
                    b["chapter00_max_tokens"] = max(0, int((budget - chapter00_peak(c00, 0))
                                                           / c00["saved_per_token_bytes"]))
                row["budgets"][name] = b
            row["fit_wall_s"] = time.perf_counter() - t_row
            if row["fit_allocated"]:
                big = training_memory(mcfg, row["precision"], tokens=2 * fit_tokens[-1],
                                      masked_tokens=round(mfrac * 2 * fit_tokens[-1]), checkpointing=ck)
                small = training_memory(mcfg, row["precision"], tokens=fit_tokens[-1],
                                        masked_tokens=round(mfrac * fit_tokens[-1]), checkpointing=ck)
                est_b = (big.total - small.total) / fit_tokens[-1]
                row["reconciliation"] = {
                    "estimated_bytes_per_token": est_b,
                    "measured_bytes_per_token": row["fit_allocated"]["b_bytes_per_token"],
                    "per_token_ratio": est_b / row["fit_allocated"]["b_bytes_per_token"],
                    "estimated_static_bytes": small.weights + small.optimizer + small.half_copies + small.gradients,
                    "measured_intercept_bytes": row["fit_allocated"]["a_bytes"],
                    "estimate_over_measured_per_point": [p["estimate_over_measured"] for p in points]}
        except Exception as exc:  # noqa: BLE001 - one row's failure (OOM, a missing kernel) is recorded
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            trainer = None
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        result["rows"].append(row)
        save()
        fit = row.get("fit_allocated")
        print(f"[{elapsed():6.1f} s] fit {label}: " + (f"error {row['error']}" if "error" in row else
              f"{fit['a_bytes'] / 2**30:.2f} GiB + {fit['b_bytes_per_token'] / 2**10:.1f} KiB/token" if fit else
              "estimated only (no GPU)"), flush=True)

    # phase 2: verify the predictions under a capped memory fraction (CUDA only): every row's 16 GB
    # first, then 24 GB, then 80 GB, so the time guard drops the costliest checks
    corpus_tokens = int(mc.lengths.sum())
    for name, budget in BUDGETS.items():
        for row in result["rows"]:
            if not cuda or "error" in row or not row.get("fit_reserved"):
                continue
            m, recipe, ck = row["model"], row["recipe"], row["checkpointing"]
            b = row["budgets"][name]
            target = b["measured_fit_max_tokens"]
            unit = slot_unit(recipe, max_length)
            over_target = max(target + unit, int(target * OVER) // unit * unit) if target else 0
            cost = (target + over_target) * row["seconds_per_token"] + 3.0
            why = None
            if not target:
                why = "the fit predicts that nothing fits"
            elif row["strategy"] == "packed-varlen" and over_target > 0.95 * corpus_tokens:
                why = f"{over_target:,} tokens a step: more than the corpus holds ({corpus_tokens:,} real tokens)"
            elif elapsed() + cost > args.time_limit:
                why = f"about {cost:.0f} s needed at {elapsed():.0f} s of --time-limit {args.time_limit:.0f}"
            if why:
                b["verified"] = {"skipped": why}
                result["skipped"].append({"row": f"{m} / {recipe} / checkpointing {ck} / {name}", "phase": "verify",
                                          "why": why})
                save()
                continue
            trainer = None
            try:
                mcfg = model_config(stand_in[m], max_length, gradient_checkpointing=ck)
                warm = pick(steps_for(recipe, mc, stand_in[m], max_length, max_length, cuda), max_length)
                trainer = Trainer(mcfg, b["precision"], device, args.seed, warm)
                fit_step = pick(steps_for(recipe, mc, stand_in[m], target, max_length, cuda), target)
                over_step = pick(steps_for(recipe, mc, stand_in[m], over_target, max_length, cuda), over_target)
                v = {"at_prediction": under_cap(trainer, fit_step, budget), "at_over": under_cap(trainer, over_step, budget)}
                v["prediction_fits"] = v["at_prediction"]["fits"]
                v["over_raises_oom"] = not v["at_over"]["fits"]
                # the cap is the allocator's: a run that "fits" above the budget means it was not enforced
                v["cap_enforced"] = all(r.get("peak_reserved", 0) <= budget for r in (v["at_prediction"], v["at_over"]))
                b["verified"] = v
                print(f"[{elapsed():6.1f} s] verify {m} / {recipe} / ckpt {ck} / {name}: {target:,} fits "
                      f"{v['prediction_fits']}, {over_step['slots']:,} raises OOM {v['over_raises_oom']}", flush=True)
                del trainer
            except Exception as exc:  # noqa: BLE001 - recorded, the other checks go on
                b["verified"] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
            trainer = None  # noqa: F841 - the model goes before the next one is built
            gc.collect()
            torch.cuda.empty_cache()
            save()
    result["wall_s"] = elapsed()
    # complete: every row estimated and fitted; verifications the time guard or the corpus skipped are listed
    result["complete"] = not any(x["phase"] == "fit" for x in result["skipped"])
    save()
    print(format_table(result))
    return result


def format_table(result: dict) -> str:
    """Max tokens per step per budget: estimated / measured fit (verified: y fits, n failed, - not run)."""
    lines = [f"device {result['device']}, torch {result['torch']}; max tokens per step: estimate / fit [verified]",
             f"{'model':<11}{'recipe':<19}{'ckpt':<5}" + "".join(f"{n:>24}" for n in BUDGETS) + f"{'est/meas':>9}"]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"{r['model']:<11}{r['recipe']:<19}{str(r['checkpointing'])[0]:<5} error: {r['error'][:60]}")
            continue
        cells = []
        for n in BUDGETS:
            b = r["budgets"][n]
            v = b.get("verified", {})
            mark = "-" if "at_prediction" not in v else ("y" if v["prediction_fits"] else "n") + \
                ("y" if v["over_raises_oom"] else "n")
            fit = b["measured_fit_max_tokens"]
            cells.append(f"{b['estimated_max_tokens']:>10,}/{fit if fit is not None else '-':>9}[{mark}]")
        ratio = np.median([p["estimate_over_measured"] for p in r["points"]]) \
            if r["points"] and r["points"][0]["estimate_over_measured"] else None
        lines.append(f"{r['model']:<11}{r['recipe']:<19}{str(r['checkpointing'])[0]:<5}"
                     + "".join(f"{c:>24}" for c in cells) + (f"{ratio:>9.2f}" if ratio else f"{'-':>9}"))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
