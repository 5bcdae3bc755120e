"""The benchmark harness: batching strategies x precision policies, training a masked LM.

``padlab bench`` trains a BERT-base-size encoder (12 layers, hidden 768, 12 heads, FFN 3072,
the shipped vocabulary) with a masked-language-model objective on the heavy-tailed ``fortunes``
corpus, once per (strategy, precision) row, and reports per row: real tokens per second, the
padded fraction, peak memory, model TFLOP/s, model-FLOPs utilisation (MFU) and the loss.

Honest accounting:

* **Real work only.** Model FLOPs are :func:`padlab.models.model_flops`: ``6 x body params x
  real tokens + 6 x head params x masked tokens + 12 x layers x hidden x sum(length**2)``.
  Padding and attention across packed sequences earn nothing.
* **The peak** is an 8192^3 bf16 matrix multiply on random data, median of 10, measured in the
  same run; MFU = model TFLOP/s / that peak.
* **Same examples, same weights.** Every row starts from the same initial weights, and every
  strategy sees the same masked tokens for the same example (masks are drawn once over the
  corpus). The step-0 loss of a shared probe batch, in fp32, is computed under every
  strategy's layout; equal losses prove the layouts compute the same thing.
* **Equal work.** ``work="tokens"`` (default) gives every step about the same tensor size,
  ``budget`` token slots (32 x 512): fixed holds 32 rows of 512; dynamic and bucketed take as
  many sequences as fill ``budget`` slots on average; token-budget and packed fill the budget
  step by step. ``work="sequences"`` gives every step the same 32 sequences per step instead.
  The answer changes between the two (packing gains little with 32 sequences a step), so the
  GPU reference run reports both.
* **Timing.** A cold pass over every timed batch (every shape the timed steps use) comes first
  and is reported as ``cold_real_tokens_per_s`` (what a short run sees); then the same batches
  are timed again with CUDA events (at least 50 steps) and the median step is reported.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ._validate import check_choice, check_int, fail
from .data import CLS_ID, MASK_ID, PAD_ID, SEP_ID, Corpus, load_corpus
from .models import IGNORE_INDEX, EncoderConfig, EncoderForMaskedLM, model_flops

_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
             "math": "MATH"}
STRATEGIES = ("fixed", "dynamic", "dynamic-multiple", "bucketed", "token-budget", "packed", "packed-varlen")
PRECISIONS = ("fp32", "tf32", "fp16-amp", "bf16-amp")
WORK = ("tokens", "sequences")


# --------------------------------------------------------------------------- configuration

@dataclass
class BenchConfig:
    """What one benchmark run does; the defaults are the GPU reference run."""

    corpus: str = "fortunes"
    model: str = "bert-base"                 # or "tiny" (the --quick CPU run)
    strategies: tuple[str, ...] = STRATEGIES
    precisions: tuple[str, ...] = PRECISIONS
    work: str = "tokens"
    capacity: int = 512                      # max_length of fixed padding and of a pack
    seqs_per_step: int = 32                  # sequences per step (work="sequences"), rows of fixed
    budget: int = 32 * 512                   # token slots per step (work="tokens")
    multiple: int = 64                       # pad_to_multiple_of for dynamic-multiple
    mega_batch: int = 50
    timed_steps: int = 50
    mlm_prob: float = 0.15
    lr: float = 1e-4
    seed: int = 0
    compile: tuple[str, ...] = ()            # "strategy/precision" rows to torch.compile
    sdpa_backends: tuple[str, ...] = ()      # restrict SDPA to these backends ("" = PyTorch's choice)
    varlen_max: str = "batch"                # flash varlen max length: the batch's, rounded up to 64, or "capacity"
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        check_choice("corpus", self.corpus, ("wordnet", "fortunes"))
        check_choice("model", self.model, ("bert-base", "small", "tiny"))
        check_choice("work", self.work, WORK)
        check_choice("varlen_max", self.varlen_max, ("batch", "capacity"))
        for s in self.strategies:
            check_choice("strategies", s, STRATEGIES)
        for p in self.precisions:
            check_choice("precisions", p, PRECISIONS)
        for b in self.sdpa_backends:
            check_choice("sdpa_backends", b, tuple(_BACKENDS))
        for name in ("capacity", "seqs_per_step", "budget", "multiple", "mega_batch", "timed_steps"):
            check_int(name, getattr(self, name), min_value=1)
        if self.budget < self.capacity:
            raise fail("budget", self.budget, f"be >= capacity={self.capacity}")


def model_config(name: str, vocab_size: int, capacity: int) -> EncoderConfig:
    """The encoder sizes a benchmark name stands for."""
    if name == "bert-base":
        return EncoderConfig.bert_base(vocab_size, max_position=capacity)
    if name == "small":
        return EncoderConfig.small(vocab_size, max_position=capacity)
    return EncoderConfig.tiny(vocab_size, max_position=capacity)


# --------------------------------------------------------------------------- data: masks, batches

@dataclass(frozen=True)
class MaskedCorpus:
    """A corpus with its MLM masks drawn once: the same example is masked the same way everywhere."""

    corpus: Corpus
    input_ids: np.ndarray       # flat, [MASK] where chosen
    labels: np.ndarray          # flat, the original id where chosen, -100 elsewhere
    lengths: np.ndarray         # min(length, capacity): what every layout keeps

    def example(self, i: int) -> dict[str, np.ndarray]:
        s, e = self.corpus.offsets[i], self.corpus.offsets[i] + self.lengths[i]
        # numpy views: the collators take arrays without a per-token Python conversion
        return {"input_ids": self.input_ids[s:e], "labels": self.labels[s:e]}


def mask_corpus(corpus: Corpus, prob: float, capacity: int, seed: int) -> MaskedCorpus:
    """Choose ``prob`` of every text's real tokens (never [CLS]/[SEP]) for the MLM objective.

    Texts longer than ``capacity`` keep their first ``capacity`` tokens in every layout (right
    truncation), so they are masked as kept.
    """
    ids = corpus.token_ids.astype(np.int64)
    rng = np.random.default_rng(seed)
    special = np.isin(ids, (PAD_ID, CLS_ID, SEP_ID))
    chosen = (rng.random(ids.shape[0]) < prob) & ~special
    masked = np.where(chosen, MASK_ID, ids)
    labels = np.where(chosen, ids, IGNORE_INDEX)
    # A truncated text's kept part ends without [SEP]; that changes nothing for the objective.
    return MaskedCorpus(corpus, masked, labels, np.minimum(corpus.lengths, capacity))


def _examples(mc: MaskedCorpus, idx: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [mc.example(int(i)) for i in idx]


def batch_size_for_budget(lengths: np.ndarray, budget: int, make_batches: Callable[[int], list[np.ndarray]],
                          width: Callable[[np.ndarray], int]) -> int:
    """The largest batch size whose batches hold at most ``budget`` token slots on average."""
    lo, hi = 1, max(1, budget)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        batches = make_batches(mid)
        slots = np.mean([len(b) * width(lengths[b]) for b in batches])
        if slots <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def plan_batches(strategy: str, mc: MaskedCorpus, cfg: BenchConfig, n_steps: int, epoch0: int = 0) -> list[np.ndarray] | list[list[np.ndarray]]:
    """The examples of the first ``n_steps`` steps under ``strategy``.

    Padding strategies return one index array per step; packing strategies return a list of
    packs (index arrays) per step.
    """
    from .batching import BucketBatchSampler, TokenBudgetBatchSampler
    from .packing import pack

    lens = mc.lengths
    n = len(lens)
    cap, mult = cfg.capacity, cfg.multiple
    tokens = cfg.work == "tokens"
    steps: list = []
    epoch = epoch0

    def rounded(m: int) -> int:
        return -(-m // mult) * mult

    if strategy in ("fixed", "dynamic", "dynamic-multiple", "bucketed"):
        mega = 1 if strategy != "bucketed" else cfg.mega_batch
        if strategy == "fixed" or not tokens:
            bs = cfg.seqs_per_step
        else:
            w = (lambda x: int(x.max())) if strategy != "dynamic-multiple" else (lambda x: rounded(int(x.max())))
            bs = batch_size_for_budget(lens, cfg.budget,
                                       lambda b: BucketBatchSampler(lens, b, mega_batch=mega, seed=cfg.seed,
                                                                    drop_last=True).epoch_batches(0), w)
        sampler = BucketBatchSampler(lens, bs, mega_batch=mega, seed=cfg.seed, drop_last=True)
        while len(steps) < n_steps:
            steps.extend(sampler.epoch_batches(epoch))
            epoch += 1
    elif strategy == "token-budget":
        if tokens:
            sampler = TokenBudgetBatchSampler(lens, cfg.budget, mega_batch=None, seed=cfg.seed)
        else:  # about seqs_per_step sequences a step: the budget that gives that on average
            sampler = TokenBudgetBatchSampler(lens, max(cap, int(cfg.seqs_per_step * np.mean(lens) * 1.3)),
                                              mega_batch=None, seed=cfg.seed)
        while len(steps) < n_steps:
            steps.extend(sampler.epoch_batches(epoch))
            epoch += 1
    elif strategy in ("packed", "packed-varlen"):
        rows = cfg.budget // cap
        while len(steps) < n_steps:
            perm = np.random.default_rng((cfg.seed, epoch)).permutation(n)
            if tokens:
                res = pack(lens[perm], cap, algorithm="ffd")
                packs = [perm[p] for p in res.packs]
                order = np.random.default_rng((cfg.seed, epoch, 1)).permutation(len(packs))
                packs = [packs[i] for i in order]
                steps.extend(packs[i:i + rows] for i in range(0, len(packs) - rows + 1, rows))
            else:
                for i in range(0, n - cfg.seqs_per_step + 1, cfg.seqs_per_step):
                    chunk = perm[i:i + cfg.seqs_per_step]
                    res = pack(lens[chunk], cap, algorithm="ffd")
                    steps.append([chunk[p] for p in res.packs])
            epoch += 1
    else:
        raise fail("strategy", strategy, f"be one of {STRATEGIES}")
    return steps[:n_steps]


def collate_step(strategy: str, mc: MaskedCorpus, step: Any, cfg: BenchConfig, mlm_slots: int | None = None) -> dict[str, Any]:
    """Tensors for one step (on the CPU), plus its real-work counts.

    ``mlm_slots`` pads the list of masked positions to a fixed length (index 0, label -100), so
    that compiled rows see one shape.
    """
    from .packing import PackedCollator
    from .padding import PaddingCollator

    cap = cfg.capacity
    if strategy in ("packed", "packed-varlen"):
        packs = [_examples(mc, p) for p in step]
        # The dense block mask (rows x cap x cap) is only built where the model uses it.
        b = PackedCollator(cap, return_block_mask=strategy == "packed")(packs)
        seq_lengths = np.concatenate([mc.lengths[p] for p in step])
        if strategy == "packed":
            inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                      "position_ids": b["position_ids"], "block_mask": b["block_mask"]}
            labels = b["labels"].reshape(-1)
        else:
            keep = b["attention_mask"].reshape(-1).bool()
            inputs = {"input_ids": b["input_ids"].reshape(-1)[keep], "position_ids": b["position_ids"].reshape(-1)[keep],
                      "cu_seqlens": b["cu_seqlens"],
                      # The kernel's grid follows max_seqlen: the capacity launches empty blocks for
                      # short sequences; the batch's own (rounded, to bound recompiles) does not.
                      "max_seqlen": cap if cfg.varlen_max == "capacity" else min(cap, -(-int(b["max_seqlen"]) // 64) * 64)}
            labels = b["labels"].reshape(-1)[keep]
        slots = int(b["input_ids"].numel()) if strategy == "packed" else int(keep.sum())
    else:
        if strategy == "fixed":
            coll = PaddingCollator(padding="max_length", max_length=cap)
        elif strategy == "dynamic-multiple":
            coll = PaddingCollator(max_length=cap, pad_to_multiple_of=cfg.multiple)
        else:
            coll = PaddingCollator(max_length=cap)
        b = coll(_examples(mc, step))
        inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}
        labels = b["labels"].reshape(-1)
        seq_lengths = mc.lengths[step]
        slots = int(b["input_ids"].numel())
    pos = torch.nonzero(labels != IGNORE_INDEX).squeeze(1)
    lab = labels[pos]
    if mlm_slots is not None:
        extra = mlm_slots - pos.numel()
        if extra < 0:
            raise fail("mlm_slots", mlm_slots, f"be >= the masked tokens of every step ({pos.numel()})")
        pos = torch.cat([pos, torch.zeros(extra, dtype=pos.dtype)])
        lab = torch.cat([lab, torch.full((extra,), IGNORE_INDEX, dtype=lab.dtype)])
    inputs["masked_positions"] = pos
    inputs["mlm_labels"] = lab
    real = int(seq_lengths.sum())
    return {"inputs": inputs, "real_tokens": real, "slots": slots, "masked_tokens": int((lab != IGNORE_INDEX).sum()),
            "seq_lengths": seq_lengths, "sequences": int(len(seq_lengths))}


# --------------------------------------------------------------------------- device helpers

def _to(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timer:
    """CUDA events on a GPU, the host clock elsewhere; milliseconds."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __enter__(self) -> "_Timer":
        if self.cuda:
            self.a, self.b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.a.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            self.b.record()
            self.b.synchronize()
            self.ms = self.a.elapsed_time(self.b)
        else:
            self.ms = (time.perf_counter() - self.t0) * 1e3


def matmul_peak_tflops(device: torch.device, n: int = 8192, reps: int = 10, dtype: torch.dtype = torch.bfloat16) -> float:
    """Median TFLOP/s of an ``n^3`` matrix multiply on random data (the MFU denominator)."""
    n = check_int("n", n, min_value=1)
    reps = check_int("reps", reps, min_value=1)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(3):
        a @ b
    _sync(device)
    times = []
    for _ in range(reps):
        with _Timer(device) as t:
            a @ b
        times.append(t.ms)
    return 2 * n**3 / (float(np.median(times)) / 1e3) / 1e12


# --------------------------------------------------------------------------- one row

class _Precision:
    """autocast / GradScaler / TF32 for one benchmark row; restores global flags on exit."""

    def __init__(self, name: str, device: torch.device) -> None:
        self.name, self.device = name, device
        self.dtype = {"fp16-amp": torch.float16, "bf16-amp": torch.bfloat16}.get(name)
        self.scaler = torch.amp.GradScaler(device.type, enabled=(name == "fp16-amp" and device.type == "cuda"))

    def __enter__(self) -> "_Precision":
        self._saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        tf32 = self.name != "fp32"  # tf32 and both AMP policies let leftover fp32 matmuls use TF32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._saved

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)


def sdpa_backends(names: Sequence[str]):
    """A context restricting SDPA to the named backends; no names, PyTorch's own choice."""
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not names:
        return contextlib.nullcontext()
    return sdpa_kernel([getattr(SDPBackend, _BACKENDS[n]) for n in names])


def _train_step(model, opt, prec: _Precision, inputs: dict[str, Any]) -> torch.Tensor:
    with prec.autocast():
        loss = model(**inputs).loss
    prec.scaler.scale(loss).backward()
    prec.scaler.step(opt)
    prec.scaler.update()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def _row_flops(mcfg: EncoderConfig, steps: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.array([model_flops(mcfg, s["real_tokens"], s["masked_tokens"], s["seq_lengths"]) for s in steps],
                    dtype=np.float64)


def run_row(strategy: str, precision: str, steps: Sequence[dict[str, Any]], init_state: dict[str, torch.Tensor],
            mcfg: EncoderConfig, cfg: BenchConfig, device: torch.device, peak_tflops: float,
            compile_model: bool = False) -> dict[str, Any]:
    """Train on ``steps`` twice (cold pass, then the timed pass) and report the figures."""
    model = EncoderForMaskedLM(mcfg).to(device)
    model.load_state_dict(init_state)
    model.train()
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=fused) if fused else \
        torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    run = torch.compile(model) if compile_model else model
    prec = _Precision(precision, device)
    dev_steps = [_to(s["inputs"], device) for s in steps]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cold, warm, losses, scales = [], [], [], []
    with prec, sdpa_backends(cfg.sdpa_backends):
        t_start = time.perf_counter()
        for inp in dev_steps:                      # cold pass: every shape seen once
            with _Timer(device) as t:
                _train_step(run, opt, prec, inp)
            cold.append(t.ms)
        cold_wall = time.perf_counter() - t_start
        for inp in dev_steps:                      # timed pass
            with _Timer(device) as t:
                losses.append(_train_step(run, opt, prec, inp))
            warm.append(t.ms)
            scales.append(prec.scaler.get_scale() if prec.scaler.is_enabled() else 1.0)
    real = np.array([s["real_tokens"] for s in steps], dtype=np.float64)
    slots = np.array([s["slots"] for s in steps], dtype=np.float64)
    flops = _row_flops(mcfg, steps)
    warm_s = np.array(warm) / 1e3
    per_step_tps = real / warm_s
    med = int(np.argsort(warm_s)[len(warm_s) // 2])
    tflops = float(np.median(flops / warm_s)) / 1e12
    loss_vals = torch.stack(losses).float().cpu().numpy()
    return {
        "strategy": strategy, "precision": precision, "work": cfg.work, "compiled": compile_model,
        "steps": len(steps), "sequences_per_step": float(np.mean([s["sequences"] for s in steps])),
        "real_tokens_per_step": float(real.mean()), "slots_per_step": float(slots.mean()),
        "real_tokens_per_s": float(np.median(per_step_tps)),
        "median_step_ms": float(np.median(warm)), "median_step_real_tokens": float(real[med]),
        "cold_real_tokens_per_s": float(real.sum() / (np.sum(cold) / 1e3)),
        "cold_wall_s": cold_wall, "cold_first_step_ms": float(cold[0]),
        "padded_fraction": float(1 - real.sum() / slots.sum()),
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        "model_tflops": tflops, "mfu": tflops / peak_tflops if peak_tflops else None,
        "loss": float(loss_vals[-1]), "loss_mean_timed": float(loss_vals.mean()),
        # GradScaler halves its scale exactly when it skips a step (inf/NaN gradients).
        "skipped_steps": int(np.sum(np.diff(scales) < 0)) if prec.scaler.is_enabled() else 0,
        "sdpa_backends": list(cfg.sdpa_backends) or "default",
    }


def probe_losses(mc: MaskedCorpus, cfg: BenchConfig, mcfg: EncoderConfig, init_state: dict[str, torch.Tensor],
                 device: torch.device, n: int = 64) -> dict[str, float]:
    """fp32 loss of the same ``n`` examples under every strategy's layout, same weights.

    Equal values prove that the layouts compute the same function (padding and packing
    change the cost, not the result).
    """
    from .packing import pack

    model = EncoderForMaskedLM(mcfg).to(device)
    model.load_state_dict(init_state)
    model.eval()
    idx = np.random.default_rng(cfg.seed).permutation(len(mc.lengths))[:n]
    out = {}
    for s in cfg.strategies:
        if s in ("packed", "packed-varlen"):
            res = pack(mc.lengths[idx], cfg.capacity, algorithm="ffd")
            step = [idx[p] for p in res.packs]
        else:
            step = idx
        b = collate_step(s, mc, step, cfg)
        with torch.no_grad():
            out[s] = float(model(**_to(b["inputs"], device)).loss)
    return out


def loss_curve(strategy: str, precision: str, mc: MaskedCorpus, cfg: BenchConfig, mcfg: EncoderConfig,
               init_state: dict[str, torch.Tensor], device: torch.device, steps: int,
               compile_model: bool = False) -> dict[str, list[float]]:
    """Training loss per step with the examples seen so far (for per-example comparisons)."""
    plan = plan_batches(strategy, mc, cfg, steps, epoch0=100)
    batches = [collate_step(strategy, mc, p, cfg) for p in plan]
    model = EncoderForMaskedLM(mcfg).to(device)
    model.load_state_dict(init_state)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, fused=device.type == "cuda")
    run = torch.compile(model) if compile_model else model
    prec = _Precision(precision, device)
    losses, seen, n = [], [], 0
    with prec:
        for b in batches:
            losses.append(_train_step(run, opt, prec, _to(b["inputs"], device)))
            n += b["sequences"]
            seen.append(n)
    return {"strategy": strategy, "precision": precision, "examples_seen": seen,
            "loss": [float(x) for x in torch.stack(losses).float().cpu()]}


class _PlannedSteps(torch.utils.data.Dataset):
    """Planned steps as a dataset: item ``i`` is step ``i`` collated (so workers can share it)."""

    def __init__(self, strategy: str, mc: MaskedCorpus, cfg: BenchConfig, plan: list) -> None:
        self.strategy, self.mc, self.cfg, self.plan = strategy, mc, cfg, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return collate_step(self.strategy, self.mc, self.plan[i], self.cfg)


def loader_rate(strategy: str, mc: MaskedCorpus, cfg: BenchConfig, steps: int = 20,
                workers: int = 0) -> dict[str, float]:
    """Sampler plus collator on the CPU: batches and real tokens per second.

    ``workers=0`` times one process doing both; ``workers>0`` times a ``DataLoader`` with that
    many worker processes, from its first batch to its last (start-up reported apart).
    """
    t0 = time.perf_counter()
    plan = plan_batches(strategy, mc, cfg, steps, epoch0=200)
    t_plan = time.perf_counter() - t0
    if workers == 0:
        t0 = time.perf_counter()
        batches = [collate_step(strategy, mc, p, cfg) for p in plan]
        dt = time.perf_counter() - t0 + t_plan
        startup = 0.0
    else:
        loader = torch.utils.data.DataLoader(_PlannedSteps(strategy, mc, cfg, plan), batch_size=None,
                                             num_workers=workers, prefetch_factor=4)
        t0 = time.perf_counter()
        it = iter(loader)
        batches = [next(it)]
        t1 = time.perf_counter()
        batches.extend(it)
        dt = (time.perf_counter() - t1) * len(batches) / max(1, len(batches) - 1)
        startup = t1 - t0
    return {"strategy": strategy, "workers": workers, "steps": len(batches), "batches_per_s": len(batches) / dt,
            "real_tokens_per_s": sum(b["real_tokens"] for b in batches) / dt, "plan_s": t_plan,
            "startup_s": startup}


# --------------------------------------------------------------------------- the run

def resolve_device(name: str) -> torch.device:
    """``auto`` picks the GPU when there is one."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_benchmark(cfg: BenchConfig, command: str = "", extra: dict[str, Any] | None = None,
                  on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run every (strategy, precision) row of ``cfg``; returns the JSON-ready result.

    ``on_row`` is called with the partial result after each row (to save progress).
    """
    from tqdm.auto import tqdm

    device = resolve_device(cfg.device)
    corpus = load_corpus(cfg.corpus)
    mc = mask_corpus(corpus, cfg.mlm_prob, cfg.capacity, cfg.seed)
    mcfg = model_config(cfg.model, _vocab(), cfg.capacity)
    torch.manual_seed(cfg.seed)
    init_state = {k: v.detach().clone() for k, v in EncoderForMaskedLM(mcfg).state_dict().items()}
    peak = matmul_peak_tflops(device) if device.type == "cuda" else matmul_peak_tflops(device, n=512, reps=3, dtype=torch.float32)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})",
        "torch": torch.__version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command, "matmul_peak_tflops": peak,
        "peak_note": "8192^3 bf16 matmul on random data, median of 10" if device.type == "cuda" else "512^3 fp32 matmul (CPU)",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()},
        "model": dataclasses.asdict(mcfg),
        "body_parameters": EncoderForMaskedLM(mcfg).body_parameters(),
        "rows": [],
    }
    result["step0_loss_fp32"] = probe_losses(mc, cfg, mcfg, init_state, device)
    rows = [(s, p) for s in cfg.strategies for p in cfg.precisions]
    bar = tqdm(rows, desc="bench", disable=not cfg.progress)
    for s, p in bar:
        bar.set_postfix_str(f"{s}/{p}")
        plan = plan_batches(s, mc, cfg, cfg.timed_steps)
        compiled = f"{s}/{p}" in cfg.compile
        slots = None
        if compiled:
            probe = [collate_step(s, mc, st, cfg) for st in plan]
            slots = int(math.ceil(max(b["masked_tokens"] for b in probe) / 128) * 128)
        steps = [collate_step(s, mc, st, cfg, mlm_slots=slots) for st in plan]
        result["rows"].append(run_row(s, p, steps, init_state, mcfg, cfg, device, peak, compiled))
        if on_row is not None:
            on_row(result)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = next((r for r in result["rows"] if r["strategy"] == "fixed" and r["precision"] == "fp32"), None)
    for r in result["rows"]:
        r["speedup_vs_fixed_fp32"] = r["real_tokens_per_s"] / base["real_tokens_per_s"] if base else None
    if extra:
        result.update(extra)
    return result


def _vocab() -> int:
    from .data import vocab_size
    return vocab_size()


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width table of the rows, best first."""
    lines = [f"device {result['device']}, torch {result['torch']}, peak {result['matmul_peak_tflops']:.0f} TFLOP/s",
             f"{'strategy':<17}{'precision':<10}{'real tok/s':>12}{'cold tok/s':>12}{'padded':>8}"
             f"{'mem GiB':>9}{'TFLOP/s':>9}{'MFU':>7}{'speed-up':>9}{'loss':>8}"]
    for r in sorted(result["rows"], key=lambda r: -r["real_tokens_per_s"]):
        mem = f"{r['peak_memory_bytes'] / 2**30:.1f}" if r["peak_memory_bytes"] else "-"
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        sp = f"{r['speedup_vs_fixed_fp32']:.1f}x" if r.get("speedup_vs_fixed_fp32") else "-"
        name = r["strategy"] + ("*" if r["compiled"] else "")
        lines.append(f"{name:<17}{r['precision']:<10}{r['real_tokens_per_s']:>12,.0f}{r['cold_real_tokens_per_s']:>12,.0f}"
                     f"{r['padded_fraction']:>8.1%}{mem:>9}{r['model_tflops']:>9.1f}{mfu:>7}{sp:>9}{r['loss']:>8.3f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- reading results

#: The shipped reference results (``data/benchmarks/``), by what they hold.
SHIPPED = {"tokens": "bench_h100_tokens.json", "extra": "bench_h100_extra.json",
           "tune": "bench_h100_tune.json", "sdpa_probe": "h100_sdpa_probe.json"}


def load_result(path: Any) -> dict[str, Any]:
    """Read a benchmark JSON file (a ``padlab bench`` result or one of the reference files).

    ``path`` may also be a key of :data:`SHIPPED` (``"tokens"``, ``"extra"``, ``"tune"``,
    ``"sdpa_probe"``): the shipped H100 file of that name.
    """
    from pathlib import Path

    from .data import data_dir

    if isinstance(path, str) and path in SHIPPED:
        path = data_dir() / "benchmarks" / SHIPPED[path]
    p = Path(path)
    if not p.is_file():
        raise fail("path", str(path), f"name an existing benchmark JSON file or one of {tuple(SHIPPED)}")
    data = json.loads(p.read_text())
    if not isinstance(data, dict) or "device" not in data:
        raise fail("path", str(path), "hold a JSON object with a 'device' key")
    return data


def result_for_work(work: str) -> dict[str, Any]:
    """The shipped H100 ``padlab bench`` result in equal-``work`` mode (``"tokens"`` or ``"sequences"``)."""
    check_choice("work", work, WORK)
    return load_result("tokens") if work == "tokens" else load_result("extra")["sequences"]


def _rows(result_or_rows: Any) -> list[dict[str, Any]]:
    rows = result_or_rows.get("rows") if isinstance(result_or_rows, dict) else result_or_rows
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, dict) for r in rows):
        raise fail("result", result_or_rows, "be a benchmark result with 'rows' or a list of row dicts")
    return list(rows)


def rows_where(result_or_rows: Any, **equal: Any) -> list[dict[str, Any]]:
    """The rows whose keys equal the given values (``compiled=False`` also matches rows without the key)."""
    out = []
    for r in _rows(result_or_rows):
        if all(r.get(k, False if k == "compiled" else None) == v for k, v in equal.items()):
            out.append(r)
    return out


def best_row(result_or_rows: Any, *, precision: str | None = None, compiled: bool | None = None) -> dict[str, Any] | None:
    """The row with the most real tokens per second (of ``precision`` / ``compiled`` if given); ``None`` if none."""
    if precision is not None:
        check_choice("precision", precision, PRECISIONS)
    if compiled is not None and not isinstance(compiled, bool):
        raise fail("compiled", compiled, "be True, False or None")
    rows = [r for r in _rows(result_or_rows)
            if (precision is None or r["precision"] == precision)
            and (compiled is None or bool(r.get("compiled")) == compiled)]
    return max(rows, key=lambda r: r["real_tokens_per_s"]) if rows else None


def row_label(row: dict[str, Any]) -> str:
    """``strategy/precision``, with ``*`` for a compiled row."""
    return f"{row['strategy']}{'*' if row.get('compiled') else ''}/{row['precision']}"


def speedups(result_or_rows: Any, *, precision: str | None = None) -> dict[str, float]:
    """Real tokens per second of each row over the uncompiled ``fixed``/``fp32`` row, best first.

    Keys are :func:`row_label`; ``precision`` keeps only that policy's rows (the baseline is
    always fixed/fp32).
    """
    rows = _rows(result_or_rows)
    base = rows_where(rows, strategy="fixed", precision="fp32", compiled=False)
    if not base:
        raise fail("result", "rows without fixed/fp32", "hold an uncompiled fixed/fp32 row (the baseline)")
    if precision is not None:
        check_choice("precision", precision, PRECISIONS)
    b = base[0]["real_tokens_per_s"]
    chosen = [r for r in rows if precision is None or r["precision"] == precision]
    chosen.sort(key=lambda r: -r["real_tokens_per_s"])
    return {row_label(r): r["real_tokens_per_s"] / b for r in chosen}


def curve_seconds(curve: dict[str, Any]) -> np.ndarray:
    """Wall-clock seconds at the end of each step of a loss curve (its ``wall_s`` spread evenly)."""
    n = len(curve.get("loss", ()))
    if n == 0 or not isinstance(curve.get("wall_s"), (int, float)) or curve["wall_s"] <= 0:
        raise fail("curve", {k: curve.get(k) for k in ("strategy", "wall_s")}, "have a non-empty 'loss' and wall_s > 0")
    return curve["wall_s"] * np.arange(1, n + 1) / n


def loss_at(curve: dict[str, Any], *, examples: int | None = None, seconds: float | None = None,
            window: int = 10) -> float:
    """Mean loss over the ``window`` steps up to the first step that reached ``examples`` examples
    seen or ``seconds`` of wall-clock time (the curve's last step if it never did)."""
    if (examples is None) == (seconds is None):
        raise fail("examples", examples, "be given, or seconds, but not both")
    window = check_int("window", window, min_value=1)
    loss = np.asarray(curve["loss"], dtype=np.float64)
    x = np.asarray(curve["examples_seen"]) if examples is not None else curve_seconds(curve)
    at = examples if examples is not None else seconds
    if not at > 0:
        raise fail("examples" if examples is not None else "seconds", at, "be > 0")
    i = min(int(np.searchsorted(x, at)), len(loss) - 1)
    return float(loss[max(0, i - window + 1):i + 1].mean())


def padded_widths(strategy: str, cfg: BenchConfig, n_steps: int | None = None) -> np.ndarray:
    """The padded width (tokens per row) of each of the first ``n_steps`` steps of a padding strategy.

    Each distinct width is a new tensor shape: kernels that plan per shape (cuDNN attention)
    pay that planning once per width.
    """
    check_choice("strategy", strategy, ("fixed", "dynamic", "dynamic-multiple", "bucketed", "token-budget"))
    n_steps = check_int("n_steps", n_steps if n_steps is not None else cfg.timed_steps, min_value=1)
    corpus = load_corpus(cfg.corpus)
    lens = np.minimum(corpus.lengths, cfg.capacity)
    # Only the lengths matter for the plan: no masks drawn.
    mc = MaskedCorpus(corpus, corpus.token_ids, corpus.token_ids, lens)
    widths = []
    for step in plan_batches(strategy, mc, cfg, n_steps):
        w = cfg.capacity if strategy == "fixed" else int(lens[step].max())
        if strategy == "dynamic-multiple":
            w = min(cfg.capacity, -(-w // cfg.multiple) * cfg.multiple)
        widths.append(w)
    return np.array(widths, dtype=np.int64)


def flop_shares(model: str, seq_lengths: Any, masked_tokens: int, capacity: int = 512) -> dict[str, float]:
    """Shares of :func:`padlab.models.model_flops` (real work) for one step of ``seq_lengths``:
    ``"attention"`` (``12 x layers x hidden x sum(len^2)``), ``"mlm head"`` and ``"body matmuls"``."""
    from .models import parameter_counts

    check_choice("model", model, ("bert-base", "small", "tiny"))
    mcfg = model_config(model, _vocab(), capacity)
    lens = np.asarray(seq_lengths, dtype=np.int64)
    total = model_flops(mcfg, int(lens.sum()), masked_tokens, lens)
    attn = 12 * mcfg.layers * mcfg.hidden * int((lens ** 2).sum())
    head = 6 * parameter_counts(mcfg)["mlm_head"] * masked_tokens
    return {"attention": attn / total, "mlm head": head / total, "body matmuls": (total - attn - head) / total}
