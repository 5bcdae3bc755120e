"""The benchmark harness: strategies of :data:`padlab.strategies.STRATEGIES` x policies of
:data:`padlab.precision.POLICIES`, training a masked LM with :func:`padlab.train.train_step`.

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
  ``max_tokens`` token slots (32 x 512): fixed holds 32 rows of 512; dynamic, sorted and
  bucketed take as many sequences as fill ``max_tokens`` slots on average; token-budget and
  packed fill the budget step by step. ``work="sequences"`` gives every step the same 32
  sequences instead. The answer changes between the two (packing gains little with 32 sequences a step), so the
  GPU reference run reports both.
* **One planner, one step, one policy table.** Batches come from :func:`padlab.strategies.plan`;
  a row's precision is a policy name with exactly :data:`padlab.precision.POLICIES`' numerics
  (``bf16-amp`` has TF32 off; ``bf16-amp+tf32`` turns it on for leftover fp32 matmuls); every
  step is :func:`padlab.train.train_step` with ``measure=False`` (no statistic, no host sync of
  its own; fp16-amp's GradScaler checks for inf as torch's always does).
* **Pools.** ``bucketed`` and ``token-budget`` sort within pools; as transformers'
  length-grouped sampler does, ``mega_batch`` is capped so that a pool holds at most a quarter
  of the corpus (``min(mega_batch, n // (4 x batch size))``, at least 1), so a pool never spans
  the whole corpus (that is ``sorted``). Each row states its ``pool_size`` and ``pool_unit``.
* **Timing.** A cold pass over every timed batch (every shape the timed steps use) comes first
  and is reported as ``cold_real_tokens_per_s`` (what a short run sees); then the same batches
  are timed again with CUDA events (at least 50 steps) and the median step is reported.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import math
import platform
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .._validate import check_choice, check_int, fail
from ..attention import FLEX_BLOCK_SIZES, flex_compile_options, packed_block_mask
from ..data import Corpus, load_corpus, vocab_size
from ..env import resolve_device
from ..models import IGNORE_INDEX, EncoderConfig, EncoderForMaskedLM, mask_tokens, model_flops, parameter_counts
from ..precision import POLICIES, PolicyWarning, prepare, tf32_context
from ..strategies import STRATEGIES, Plan, plan
from ..train import StepRecord, to_device, train_step
from .results import WORK

__all__ = ["DATASHEET_BF16_TFLOPS", "compile_for", "compiled_graphs", "add_peaks", "BenchConfig",
           "MaskedCorpus", "PRECISIONS", "MODELS", "WORK", "mask_corpus", "model_config", "batch_size_for_budget",
           "step_plan", "plan_steps", "collate_step", "mlm_loss", "StepTimer", "sync", "matmul_peak_tflops",
           "sdpa_backends", "prepare_row", "run_row", "PlannedSteps", "probe_losses", "loss_curve",
           "loader_rate", "run_benchmark", "format_table", "padded_widths", "flop_shares"]

_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
             "math": "MATH"}
#: The datasheet's dense bf16 tensor-core peak of the H100 SXM and the H200 (same chip), the
#: second MFU denominator beside the matmul measured in the run.
DATASHEET_BF16_TFLOPS = {"tflops": 989.4, "devices": ("H100", "H200"),
                         "source": "NVIDIA H100/H200 SXM datasheets: dense BF16 tensor core 989.4 TFLOP/s "
                                   "(1,979 with 2:4 sparsity)"}
#: The policies a run times by default (any key of :data:`padlab.precision.POLICIES` may be asked for).
PRECISIONS = ("fp32", "tf32", "fp16-amp", "bf16-amp")
#: The model names :func:`model_config` knows.
MODELS = ("bert-large", "bert-base", "small", "tiny")


# --------------------------------------------------------------------------- configuration

@dataclass
class BenchConfig:
    """What one benchmark run does; the defaults are the GPU reference run."""

    corpus: str = "fortunes"
    model: str = "bert-base"                 # or "bert-large", "small", "tiny" (the --quick CPU run)
    strategies: tuple[str, ...] = tuple(STRATEGIES)
    precisions: tuple[str, ...] = PRECISIONS
    work: str = "tokens"
    max_length: int = 512                    # width of fixed padding, truncation cap, a pack's capacity
    seqs_per_step: int = 32                  # sequences per step (work="sequences"), rows of fixed
    max_tokens: int = 32 * 512               # token slots per step (work="tokens")
    pad_to_multiple_of: int = 64             # for dynamic-multiple
    mega_batch: int = 50                     # pool size in batches (capped at a quarter of the corpus)
    timed_steps: int = 50
    mlm_prob: float = 0.15
    lr: float = 1e-4
    seed: int = 0
    compile: tuple[str, ...] = ()            # "strategy/precision" rows to torch.compile
    sdpa_backends: tuple[str, ...] = ()      # restrict SDPA to these backends ("" = PyTorch's choice)
    varlen_max: str = "batch"                # flash varlen max length: the batch's, rounded up to 64, or "max_length"
    flex_block_size: int = 128               # packed-flex: the BlockMask's tile (64 needs flex autotuning, torch 2.11)
    compile_mode: str = "default"            # compiled rows: "default" or "cudagraphs" (what reduce-overhead turns on)
    device: str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        check_choice("corpus", self.corpus, ("wordnet", "fortunes"))
        check_choice("model", self.model, MODELS)
        check_choice("work", self.work, WORK)
        check_choice("varlen_max", self.varlen_max, ("batch", "max_length"))
        check_choice("flex_block_size", self.flex_block_size, FLEX_BLOCK_SIZES)
        check_choice("compile_mode", self.compile_mode, ("default", "cudagraphs"))
        for s in self.strategies:
            check_choice("strategies", s, tuple(STRATEGIES))
        for p in self.precisions:
            check_choice("precisions", p, tuple(POLICIES))
        for b in self.sdpa_backends:
            check_choice("sdpa_backends", b, tuple(_BACKENDS))
        for name in ("max_length", "seqs_per_step", "max_tokens", "pad_to_multiple_of", "mega_batch", "timed_steps"):
            check_int(name, getattr(self, name), min_value=1)
        if self.max_tokens < self.max_length:
            raise fail("max_tokens", self.max_tokens, f"be >= max_length={self.max_length}")


def model_config(name: str, max_length: int = 512, **overrides: Any) -> EncoderConfig:
    """The encoder sizes a benchmark name of :data:`MODELS` stands for (the shipped vocabulary);
    ``overrides`` are config fields (e.g. ``gradient_checkpointing=True``)."""
    check_choice("model", name, MODELS)
    return _model_config(name, max_length).replace(**overrides)


def _model_config(name: str, max_length: int) -> EncoderConfig:
    vocab = vocab_size()
    if name == "bert-large":
        return EncoderConfig.bert_large(vocab, max_position=max_length)
    if name == "bert-base":
        return EncoderConfig.bert_base(vocab, max_position=max_length)
    if name == "small":
        return EncoderConfig.small(vocab, max_position=max_length)
    return EncoderConfig.tiny(vocab, max_position=max_length)


# --------------------------------------------------------------------------- data: masks, batches

@dataclass(frozen=True)
class MaskedCorpus:
    """A corpus with its MLM masks drawn once: the same example is masked the same way everywhere."""

    corpus: Corpus
    input_ids: np.ndarray       # flat, [MASK] where chosen
    labels: np.ndarray          # flat, the original id where chosen, -100 elsewhere
    lengths: np.ndarray         # min(length, max_length): what every layout keeps

    def example(self, i: int) -> dict[str, np.ndarray]:
        s, e = self.corpus.offsets[i], self.corpus.offsets[i] + self.lengths[i]
        # numpy views: the collators take arrays without a per-token Python conversion
        return {"input_ids": self.input_ids[s:e], "labels": self.labels[s:e]}


def mask_corpus(corpus: Corpus, prob: float, max_length: int, seed: int) -> MaskedCorpus:
    """Choose ``prob`` of every text's real tokens (never [CLS]/[SEP]) for the MLM objective.

    The one masker, :func:`padlab.models.mask_tokens`, runs once over the flat concatenation of
    the corpus (a seeded ``torch.Generator``), so every layout sees the same masked tokens.
    Texts longer than ``max_length`` keep their first ``max_length`` tokens in every layout
    (right truncation), so they are masked as kept.
    """
    max_length = check_int("max_length", max_length, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    ids = torch.from_numpy(corpus.token_ids.astype(np.int64))
    masked, _, labels = mask_tokens(ids, prob=prob, generator=torch.Generator().manual_seed(seed))
    # A truncated text's kept part ends without [SEP]; that changes nothing for the objective.
    return MaskedCorpus(corpus, masked.numpy(), labels.numpy(), np.minimum(corpus.lengths, max_length))


def _examples(mc: MaskedCorpus, idx: np.ndarray) -> list[dict[str, np.ndarray]]:
    return [mc.example(int(i)) for i in idx]


def batch_size_for_budget(lengths: np.ndarray, max_tokens: int, make_batches: Callable[[int], list[np.ndarray]],
                          width: Callable[[np.ndarray], int]) -> int:
    """The largest batch size whose batches hold at most ``max_tokens`` token slots on average.

    A batch size that gives no batch at all (larger than the corpus, short batches dropped)
    counts as too large.
    """
    lo, hi = 1, max(1, min(max_tokens, len(lengths)))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        batches = make_batches(mid)
        if batches and np.mean([len(b) * width(lengths[b]) for b in batches]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _mega_batch(cfg: BenchConfig, n: int, batch_size: int) -> int:
    # transformers' length-grouped sampler: min(n // (4 x batch size), 50), at least 1.
    return max(1, min(cfg.mega_batch, n // (4 * batch_size)))


def step_plan(strategy: str, lengths: np.ndarray, cfg: BenchConfig, epoch: int = 0) -> Plan:
    """One epoch of the bench's batches under ``strategy``, planned by :func:`padlab.strategies.plan`.

    The bench chooses the registry's settings from ``cfg``: with ``work="tokens"`` a batch size
    that fills ``max_tokens`` slots on average (fixed: ``seqs_per_step`` rows), packs of
    ``max_tokens // max_length`` rows, a token budget of ``max_tokens``; with
    ``work="sequences"`` ``seqs_per_step`` sequences a step (token-budget: the budget that gives
    about that many; packing: each random batch packed on its own). Short last batches are dropped.
    """
    check_choice("strategy", strategy, tuple(STRATEGIES))
    lens = np.asarray(lengths)
    n, cap = len(lens), cfg.max_length
    tokens = cfg.work == "tokens"
    common = dict(max_length=cap, seed=cfg.seed, epoch=epoch)
    if STRATEGIES[strategy].packs:
        if tokens:
            return plan(strategy, lens, batch_size=cfg.seqs_per_step, rows=cfg.max_tokens // cap, drop_last=True,
                        **common)
        return plan(strategy, lens, batch_size=cfg.seqs_per_step, within_batch=True, drop_last=True, **common)
    if strategy == "token-budget":
        budget = cfg.max_tokens if tokens else max(cap, int(cfg.seqs_per_step * np.mean(lens) * 1.3))
        mega = max(1, min(cfg.mega_batch, int(lens.sum()) // (4 * budget)))
        return plan(strategy, lens, max_tokens=budget, mega_batch=mega, **common)
    extra: dict[str, Any] = {}
    if strategy == "dynamic-multiple":
        extra["pad_to_multiple_of"] = cfg.pad_to_multiple_of

    def opts(bs: int) -> dict[str, Any]:
        return {**extra, "mega_batch": _mega_batch(cfg, n, bs)} if strategy == "bucketed" else extra

    if strategy == "fixed" or not tokens:
        bs = cfg.seqs_per_step
    else:
        mult = cfg.pad_to_multiple_of if strategy == "dynamic-multiple" else 1
        bs = batch_size_for_budget(
            lens, cfg.max_tokens,
            lambda b: plan(strategy, lens, batch_size=b, drop_last=True, **{**common, "epoch": 0}, **opts(b)).batches,
            lambda x: -(-int(x.max()) // mult) * mult)
    return plan(strategy, lens, batch_size=bs, drop_last=True, **common, **opts(bs))


def plan_steps(strategy: str, mc: MaskedCorpus, cfg: BenchConfig, n_steps: int,
               epoch0: int = 0) -> tuple[list[Any], Plan]:
    """The examples of the first ``n_steps`` steps under ``strategy``, epoch after epoch from
    ``epoch0`` (:func:`step_plan`), and the first epoch's :class:`~padlab.strategies.Plan`
    (its pool and options). Padding strategies give one index array per step; packing
    strategies a list of packs (index arrays) per step."""
    n_steps = check_int("n_steps", n_steps, min_value=1)
    steps: list[Any] = []
    first = None
    epoch = epoch0
    while len(steps) < n_steps:
        p = step_plan(strategy, mc.lengths, cfg, epoch)
        if not p.batches:
            raise fail("cfg", strategy, "give at least one full step per epoch (max_tokens or seqs_per_step too large)")
        if first is None:
            first = p
        steps.extend(p.batches)
        epoch += 1
    return steps[:n_steps], first


def collate_step(strategy: str, mc: MaskedCorpus, step: Any, cfg: BenchConfig, mlm_slots: int | None = None) -> dict[str, Any]:
    """Tensors for one step (on the CPU), plus its real-work counts: the bench's adapter from a
    planned step to the model's inputs, through padlab's collators.

    ``mlm_slots`` pads the list of masked positions to a fixed length (index 0, label -100), so
    that compiled rows see one shape.
    """
    from ..packing import PackedCollator
    from ..padding import PaddingCollator

    cap = cfg.max_length
    if STRATEGIES[strategy].packs:
        packs = [_examples(mc, p) for p in step]
        # The dense block mask (rows x cap x cap) is only built where the model uses it.
        b = PackedCollator(cap, return_block_mask=strategy == "packed")(packs)
        seq_lengths = np.concatenate([mc.lengths[p] for p in step])
        if strategy in ("packed", "packed-flex"):
            inputs = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                      "position_ids": b["position_ids"]}
            if strategy == "packed":
                inputs["block_mask"] = b["block_mask"]
            else:  # the BlockMask is built on the device, inside the timed step (mlm_loss)
                inputs.update(seq_ids=b["seq_ids"], flex_block_size=cfg.flex_block_size)
            labels = b["labels"].reshape(-1)
        else:
            keep = b["attention_mask"].reshape(-1).bool()
            inputs = {"input_ids": b["input_ids"].reshape(-1)[keep], "position_ids": b["position_ids"].reshape(-1)[keep],
                      "cu_seqlens": b["cu_seqlens"],
                      # The kernel's grid follows max_seqlen: max_length launches empty blocks for
                      # short sequences; the batch's own (rounded, to bound recompiles) does not.
                      "max_seqlen": cap if cfg.varlen_max == "max_length" else min(cap, -(-int(b["max_seqlen"]) // 64) * 64)}
            labels = b["labels"].reshape(-1)[keep]
        slots = int(keep.sum()) if strategy == "packed-varlen" else int(b["input_ids"].numel())
    else:
        if strategy == "fixed":
            coll = PaddingCollator(padding="max_length", max_length=cap)
        elif strategy == "dynamic-multiple":
            coll = PaddingCollator(max_length=cap, pad_to_multiple_of=cfg.pad_to_multiple_of)
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



def mlm_loss(model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    """The bench's loss for :func:`padlab.train.train_step`: the model called on the step's inputs.

    packed-flex steps carry ``seq_ids``: their block mask is built here, once per step (inside
    the timed step, outside a compiled model) and shared by every layer; where FlexAttention
    cannot train (the CPU) it is the dense mask of the same rule (:func:`padlab.attention.packed_block_mask`).
    """
    if "seq_ids" in inputs:
        inputs = dict(inputs)
        seq_ids, block = inputs.pop("seq_ids"), inputs.pop("flex_block_size", 128)
        inputs["block_mask"] = packed_block_mask(seq_ids, block, training=torch.is_grad_enabled())
    return model(**inputs).loss


def compile_for(model: torch.nn.Module, strategy: str, cfg: BenchConfig) -> torch.nn.Module:
    """``torch.compile`` for a row, afresh (dynamo's recompile limit is per code object).

    packed-flex rows have static shapes (a changed int must recompile, never turn symbolic) and
    take :func:`padlab.attention.flex_compile_options`; varlen's flat token count changes every
    step, which torch's automatic dynamic shapes handle. ``cfg.compile_mode="cudagraphs"`` adds
    CUDA graphs (what ``mode="reduce-overhead"`` turns on).
    """
    torch.compiler.reset()
    flex = strategy == "packed-flex"
    opts: dict[str, Any] = dict(flex_compile_options(cfg.flex_block_size) or {}) if flex else {}
    if cfg.compile_mode == "cudagraphs":
        opts["triton.cudagraphs"] = True
    return torch.compile(model, dynamic=False if flex else None, options=opts or None)


def compiled_graphs() -> int:
    """Graphs dynamo has compiled in this process so far (a recompile adds one); torch's own
    counter, as its tests read it (no public API counts them)."""
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


# --------------------------------------------------------------------------- device helpers

def sync(device: torch.device) -> None:
    """Wait for the GPU (nothing elsewhere)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """CUDA events on a GPU, the host clock elsewhere; ``.ms`` after the block.

    ``sync=False`` (GPU) records the end event without waiting for it: the host goes on to queue
    the next step while this one runs, and ``.ms`` waits for the event when first read (read it
    after the loop). Consecutive steps' events then tile the GPU's timeline, so their sum is the
    loop's GPU time without the host's per-step preparation showing as idle GPU.
    """

    def __init__(self, device: torch.device, sync: bool = True) -> None:
        self.cuda = device.type == "cuda"
        self.sync = sync
        self._ms: float | None = None

    def __enter__(self) -> "StepTimer":
        if self.cuda:
            self.a, self.b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.a.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            self.b.record()
            if self.sync:
                self.b.synchronize()
                self._ms = self.a.elapsed_time(self.b)
        else:
            self._ms = (time.perf_counter() - self.t0) * 1e3

    @property
    def ms(self) -> float:
        """Milliseconds from the block's start to its end (waits for the end event if needed)."""
        if self._ms is None:
            self.b.synchronize()
            self._ms = self.a.elapsed_time(self.b)
        return self._ms


def matmul_peak_tflops(device: torch.device, n: int = 8192, reps: int = 10, dtype: torch.dtype = torch.bfloat16) -> float:
    """Median TFLOP/s of an ``n^3`` matrix multiply on random data (the MFU denominator)."""
    n = check_int("n", n, min_value=1)
    reps = check_int("reps", reps, min_value=1)
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    for _ in range(3):
        a @ b
    sync(device)
    times = []
    for _ in range(reps):
        with StepTimer(device) as t:
            a @ b
        times.append(t.ms)
    return 2 * n**3 / (float(np.median(times)) / 1e3) / 1e12



# --------------------------------------------------------------------------- one row

def sdpa_backends(names: Sequence[str]):
    """A context restricting SDPA to the named backends; no names, PyTorch's own choice."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if not names:
        return contextlib.nullcontext()
    return sdpa_kernel([getattr(SDPBackend, _BACKENDS[n]) for n in names])


def _row_flops(mcfg: EncoderConfig, steps: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.array([model_flops(mcfg, s["real_tokens"], s["masked_tokens"], s["seq_lengths"]) for s in steps],
                    dtype=np.float64)


def prepare_row(precision: str, init_state: dict[str, torch.Tensor], mcfg: EncoderConfig, cfg: BenchConfig,
                device: torch.device):
    """A fresh encoder from ``init_state`` prepared for ``precision`` (:func:`padlab.precision.prepare`):
    weights in the policy's dtype on ``device``, AdamW at ``cfg.lr`` (fused on CUDA), the policy's GradScaler."""
    model = EncoderForMaskedLM(mcfg)
    model.load_state_dict(init_state)
    fused = device.type == "cuda"

    def optimizer(params):
        return torch.optim.AdamW(params, lr=cfg.lr, fused=True) if fused else torch.optim.AdamW(params, lr=cfg.lr)

    with warnings.catch_warnings():
        # A pointless policy (TF32 on a CPU) is still timed: the row says what it costs here.
        warnings.simplefilter("ignore", PolicyWarning)
        return prepare(model, optimizer, precision, device)


def run_row(strategy: str, precision: str, steps: Sequence[dict[str, Any]], init_state: dict[str, torch.Tensor],
            mcfg: EncoderConfig, cfg: BenchConfig, device: torch.device, peak_tflops: float,
            compile_model: bool = False, passes: Sequence[str] = ("cold", "warm")) -> dict[str, Any]:
    """Train on ``steps`` once per pass and report the figures of the last pass.

    ``"cold"`` is the first pass (every shape seen once, compilation included), ``"warm"`` the
    same steps again. Every step is :func:`padlab.train.train_step` with ``measure=False`` (no
    host sync inside the step, none between steps: :class:`StepTimer` with ``sync=False``). Each
    pass's throughput is one statistic, total real tokens over the pass's total step time (CUDA
    events); the median step's rate is a second column.
    Compiled rows report ``recompiles``: graphs compiled after the first step.
    """
    prep = prepare_row(precision, init_state, mcfg, cfg, device)
    model = compile_for(prep.model, strategy, cfg) if compile_model else prep.model
    graphs = compile_model and cfg.compile_mode == "cudagraphs"
    dev_steps = [to_device(s["inputs"], device) for s in steps]

    def step(inputs: dict[str, Any]) -> StepRecord:
        if graphs:  # a new iteration for CUDA-graph trees (else they may record again)
            torch.compiler.cudagraph_mark_step_begin()
        return train_step(model, inputs, prep.optimizer, prep.policy, prep.scaler, mlm_loss, measure=False)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ms: dict[str, list[float]] = {p: [] for p in passes}
    wall: dict[str, float] = {}
    losses, scales = [], []
    g_start, g_first = compiled_graphs(), None
    # The policy's TF32 setting once for the row: each step's own tf32_context then writes nothing.
    with sdpa_backends(cfg.sdpa_backends), tf32_context(prep.policy):
        for p in passes:
            t_start = time.perf_counter()
            timers = []
            for inp in dev_steps:
                # No host sync between steps: the next step is queued while this one runs.
                with StepTimer(device, sync=False) as t:
                    rec = step(inp)
                timers.append(t)
                losses.append(rec.loss_tensor.clone())  # a CUDA-graph output is overwritten by the next replay
                scales.append(prep.scaler.get_scale() if prep.scaler is not None else 1.0)
                g_first = compiled_graphs() if g_first is None else g_first
            sync(device)
            wall[p] = time.perf_counter() - t_start
            ms[p] = [t.ms for t in timers]
    timed, first = passes[-1], passes[0]
    real = np.array([s["real_tokens"] for s in steps], dtype=np.float64)
    slots = np.array([s["slots"] for s in steps], dtype=np.float64)
    flops = _row_flops(mcfg, steps)
    step_s = np.array(ms[timed]) / 1e3
    med = int(np.argsort(step_s)[len(step_s) // 2])
    tflops = float(flops.sum() / step_s.sum()) / 1e12
    loss_vals = torch.stack(losses).float().cpu().numpy()
    policy = prep.policy
    row = {
        "strategy": strategy, "precision": precision, "work": cfg.work, "compiled": compile_model,
        # What the policy name means (padlab.precision.POLICIES), written out for readers of the JSON.
        "autocast_dtype": str(policy.autocast_dtype).replace("torch.", "") if policy.autocast_dtype else None,
        "param_dtype": str(policy.param_dtype).replace("torch.", ""), "tf32": policy.tf32,
        "grad_scaler": prep.scaler is not None,
        "steps": len(steps), "sequences_per_step": float(np.mean([s["sequences"] for s in steps])),
        "real_tokens_per_step": float(real.mean()), "slots_per_step": float(slots.mean()),
        "real_tokens_per_s": float(real.sum() / step_s.sum()),
        "cold_real_tokens_per_s": float(real.sum() / (np.sum(ms[first]) / 1e3)),
        "median_step_real_tokens_per_s": float(real[med] / step_s[med]),
        "median_step_ms": float(np.median(ms[timed])), "median_step_real_tokens": float(real[med]),
        "cold_wall_s": wall[first], "cold_first_step_ms": float(ms[first][0]),
        "padded_fraction": float(1 - real.sum() / slots.sum()),
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        "model_tflops": tflops, "mfu": tflops / peak_tflops if peak_tflops else None,
        "loss": float(loss_vals[-1]), "loss_mean_timed": float(loss_vals[-len(steps):].mean()),
        "loss_curve": loss_vals.tolist(), "step_ms": [x for p in passes for x in ms[p]],
        # GradScaler halves its scale exactly when it skips a step (inf/NaN gradients).
        "skipped_steps": int(np.sum(np.diff(scales) < 0)) if prep.scaler is not None else 0,
        "sdpa_backends": list(cfg.sdpa_backends) or "default",
    }
    if strategy == "packed-flex":
        row["flex_block_size"] = cfg.flex_block_size
    if compile_model:
        row.update(compile_mode=cfg.compile_mode, graphs_compiled=compiled_graphs() - g_start,
                   recompiles=compiled_graphs() - g_first)
    return row


def probe_losses(mc: MaskedCorpus, cfg: BenchConfig, mcfg: EncoderConfig, init_state: dict[str, torch.Tensor],
                 device: torch.device, n: int = 64) -> dict[str, float]:
    """fp32 loss of the same ``n`` examples under every strategy's layout, same weights.

    Equal values prove that the layouts compute the same function (padding and packing
    change the cost, not the result). The ``n`` examples form one batch (packing strategies:
    the registry's packs of that batch).
    """
    model = EncoderForMaskedLM(mcfg).to(device)
    model.load_state_dict(init_state)
    model.eval()
    idx = np.random.default_rng(cfg.seed).permutation(len(mc.lengths))[:n]
    out = {}
    for s in cfg.strategies:
        if STRATEGIES[s].packs:
            packs = plan(s, mc.lengths[idx], batch_size=len(idx), max_length=cfg.max_length, seed=cfg.seed,
                         within_batch=True).batches[0]
            step = [idx[p] for p in packs]
        else:
            step = idx
        b = collate_step(s, mc, step, cfg)
        with torch.no_grad():
            out[s] = float(mlm_loss(model, to_device(b["inputs"], device)))
    return out


def loss_curve(strategy: str, precision: str, mc: MaskedCorpus, cfg: BenchConfig, mcfg: EncoderConfig,
               init_state: dict[str, torch.Tensor], device: torch.device, steps: int,
               compile_model: bool = False) -> dict[str, list[float]]:
    """Training loss per step with the examples seen so far (for per-example comparisons)."""
    planned, _ = plan_steps(strategy, mc, cfg, steps, epoch0=100)
    batches = [collate_step(strategy, mc, p, cfg) for p in planned]
    if compile_model:  # one shape for the masked positions of every step (as run_benchmark's compiled rows)
        slots = int(math.ceil(max(b["masked_tokens"] for b in batches) / 128) * 128)
        batches = [collate_step(strategy, mc, p, cfg, mlm_slots=slots) for p in planned]
    prep = prepare_row(precision, init_state, mcfg, cfg, device)
    model = compile_for(prep.model, strategy, cfg) if compile_model else prep.model
    losses, seen, n, timers = [], [], 0, []
    t0 = time.perf_counter()
    with tf32_context(prep.policy):
        for b in batches:
            with StepTimer(device, sync=False) as t:  # compilation lands in the first step: what a run sees
                rec = train_step(model, to_device(b["inputs"], device), prep.optimizer, prep.policy, prep.scaler,
                                 mlm_loss, measure=False)
            timers.append(t)
            losses.append(rec.loss_tensor.clone())
            n += b["sequences"]
            seen.append(n)
    sync(device)
    ms = [t.ms for t in timers]
    return {"strategy": strategy, "precision": precision, "compiled": compile_model, "examples_seen": seen,
            "loss": [float(x) for x in torch.stack(losses).float().cpu()], "step_ms": ms,
            "wall_s": time.perf_counter() - t0}


class PlannedSteps(torch.utils.data.Dataset):
    """Planned steps as a dataset: item ``i`` is step ``i`` collated (so DataLoader workers can share it)."""

    def __init__(self, strategy: str, mc: MaskedCorpus, cfg: BenchConfig, planned: list) -> None:
        self.strategy, self.mc, self.cfg, self.planned = strategy, mc, cfg, planned

    def __len__(self) -> int:
        return len(self.planned)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return collate_step(self.strategy, self.mc, self.planned[i], self.cfg)


def loader_rate(strategy: str, mc: MaskedCorpus, cfg: BenchConfig, steps: int = 20,
                workers: int = 0) -> dict[str, float]:
    """Sampler plus collator on the CPU: batches and real tokens per second.

    ``workers=0`` times one process doing both; ``workers>0`` times a ``DataLoader`` with that
    many worker processes, from its first batch to its last (start-up reported apart).
    """
    t0 = time.perf_counter()
    planned, _ = plan_steps(strategy, mc, cfg, steps, epoch0=200)
    t_plan = time.perf_counter() - t0
    if workers == 0:
        t0 = time.perf_counter()
        batches = [collate_step(strategy, mc, p, cfg) for p in planned]
        dt = time.perf_counter() - t0 + t_plan
        startup = 0.0
    else:
        loader = torch.utils.data.DataLoader(PlannedSteps(strategy, mc, cfg, planned), batch_size=None,
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

def run_benchmark(cfg: BenchConfig, command: str = "", extra: dict[str, Any] | None = None,
                  on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run every (strategy, precision) row of ``cfg``; returns the JSON-ready result.

    ``on_row`` is called with the partial result after each row (to save progress). Each row
    says what its policy means (``autocast_dtype``, ``param_dtype``, ``tf32``, ``grad_scaler``)
    and its strategy's pool (``pool_size``, ``pool_unit``) and options; ``speedup_vs_fixed_fp32``
    comes from :func:`padlab.experiments.results.speedups`.
    """
    from tqdm.auto import tqdm

    from .results import rows_where, row_label, speedups

    if not isinstance(cfg, BenchConfig):
        raise fail("cfg", cfg, "be a BenchConfig")
    device = resolve_device(cfg.device)
    corpus = load_corpus(cfg.corpus)
    mc = mask_corpus(corpus, cfg.mlm_prob, cfg.max_length, cfg.seed)
    mcfg = model_config(cfg.model, cfg.max_length)
    torch.manual_seed(cfg.seed)
    init_state = {k: v.detach().clone() for k, v in EncoderForMaskedLM(mcfg).state_dict().items()}
    def peak_now() -> float:
        return matmul_peak_tflops(device) if device.type == "cuda" else \
            matmul_peak_tflops(device, n=512, reps=3, dtype=torch.float32)

    peaks = [peak_now()]
    peak = peaks[0]
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})",
        "torch": torch.__version__, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command, "matmul_peak_tflops": peak,
        "peak_note": ("8192^3 bf16 matmul on random data, median of 10, sampled before the rows, after every "
                      "fourth and after the last; the highest sample is the MFU denominator") if device.type == "cuda"
        else "512^3 fp32 matmul (CPU)",
        "matmul_peak_samples_tflops": peaks,
        "throughput_statistic": "total real tokens / total step time of a pass (cold: the first pass, "
                                "compiling; warm: the same steps again); median_step_* is the median step",
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
        planned, first = plan_steps(s, mc, cfg, cfg.timed_steps)
        compiled = f"{s}/{p}" in cfg.compile
        slots = None
        if compiled:
            probe = [collate_step(s, mc, st, cfg) for st in planned]
            slots = int(math.ceil(max(b["masked_tokens"] for b in probe) / 128) * 128)
        steps = [collate_step(s, mc, st, cfg, mlm_slots=slots) for st in planned]
        row = run_row(s, p, steps, init_state, mcfg, cfg, device, peak, compiled)
        row.update(pool_size=first.pool_size, pool_unit=first.pool_unit, strategy_options=first.options)
        result["rows"].append(row)
        if len(result["rows"]) % 4 == 0:
            peaks.append(peak_now())
        if on_row is not None:
            on_row(result)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    peaks.append(peak_now())
    add_peaks(result)
    sp = speedups(result) if rows_where(result, strategy="fixed", precision="fp32", compiled=False) else {}
    for r in result["rows"]:
        r["speedup_vs_fixed_fp32"] = sp.get(row_label(r))
    if extra:
        result.update(extra)
    return result


def add_peaks(result: dict[str, Any]) -> dict[str, Any]:
    """MFU by both denominators on every row: the highest matmul sample of the run
    (``matmul_peak_tflops``, with ``matmul_peak_spread_tflops``) and, on an H100/H200, the
    datasheet's dense bf16 peak (:data:`DATASHEET_BF16_TFLOPS`, named with its source)."""
    samples = result.get("matmul_peak_samples_tflops") or [result["matmul_peak_tflops"]]
    peak = max(samples)
    result.update(matmul_peak_tflops=peak, matmul_peak_spread_tflops=[min(samples), peak])
    sheet = DATASHEET_BF16_TFLOPS if any(d in str(result.get("device")) for d in DATASHEET_BF16_TFLOPS["devices"]) else None
    if sheet:
        result.update(datasheet_peak_tflops=sheet["tflops"], datasheet_peak_source=sheet["source"])
    for r in result["rows"]:
        if r.get("model_tflops") is not None:
            r["mfu"] = r["mfu_measured_peak"] = r["model_tflops"] / peak
            r["mfu_datasheet"] = r["model_tflops"] / sheet["tflops"] if sheet else None
    return result


def format_table(result: dict[str, Any]) -> str:
    """A fixed-width table of the rows of a result, best first."""
    if not isinstance(result, dict) or not isinstance(result.get("rows"), list):
        raise fail("result", result, "be a benchmark result (a dict with 'rows', as run_benchmark returns)")
    sheet = result.get("datasheet_peak_tflops")
    lines = [f"device {result['device']}, torch {result['torch']}, peak {result['matmul_peak_tflops']:.0f} TFLOP/s "
             f"measured" + (f", {sheet:.1f} datasheet" if sheet else ""),
             f"{'strategy':<17}{'precision':<14}{'real tok/s':>12}{'cold tok/s':>12}{'padded':>8}"
             f"{'mem GiB':>9}{'TFLOP/s':>9}{'MFU':>7}{'MFU ds':>7}{'speed-up':>9}{'loss':>8}{'recomp':>7}"]
    for r in sorted(result["rows"], key=lambda r: -r["real_tokens_per_s"]):
        mem = f"{r['peak_memory_bytes'] / 2**30:.1f}" if r["peak_memory_bytes"] else "-"
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        mds = f"{r['mfu_datasheet']:.1%}" if r.get("mfu_datasheet") is not None else "-"
        sp = f"{r['speedup_vs_fixed_fp32']:.1f}x" if r.get("speedup_vs_fixed_fp32") else "-"
        name = r["strategy"] + ("*" if r["compiled"] else "")
        lines.append(f"{name:<17}{r['precision']:<14}{r['real_tokens_per_s']:>12,.0f}{r['cold_real_tokens_per_s']:>12,.0f}"
                     f"{r['padded_fraction']:>8.1%}{mem:>9}{r['model_tflops']:>9.1f}{mfu:>7}{mds:>7}{sp:>9}{r['loss']:>8.3f}"
                     f"{str(r.get('recompiles', '-')):>7}")
    return "\n".join(lines)


def padded_widths(strategy: str, cfg: Any, n_steps: int | None = None) -> np.ndarray:
    """The padded width (tokens per row) of each of the first ``n_steps`` steps of a padding strategy
    under a :class:`BenchConfig` (the bench's own plan).

    Each distinct width is a new tensor shape: kernels that plan per shape (cuDNN attention)
    pay that planning once per width.
    """
    if not isinstance(cfg, BenchConfig):
        raise fail("cfg", cfg, "be a BenchConfig")
    check_choice("strategy", strategy, tuple(s for s, spec in STRATEGIES.items() if not spec.packs))
    n_steps = check_int("n_steps", n_steps if n_steps is not None else cfg.timed_steps, min_value=1)
    corpus = load_corpus(cfg.corpus)
    lens = np.minimum(corpus.lengths, cfg.max_length)
    # Only the lengths matter for the plan: no masks drawn.
    mc = MaskedCorpus(corpus, corpus.token_ids, corpus.token_ids, lens)
    widths = []
    for step in plan_steps(strategy, mc, cfg, n_steps)[0]:
        w = cfg.max_length if strategy == "fixed" else int(lens[step].max())
        if strategy == "dynamic-multiple":
            w = min(cfg.max_length, -(-w // cfg.pad_to_multiple_of) * cfg.pad_to_multiple_of)
        widths.append(w)
    return np.array(widths, dtype=np.int64)


def flop_shares(model: str, seq_lengths: Any, masked_tokens: int, max_length: int = 512) -> dict[str, float]:
    """Shares of :func:`padlab.models.model_flops` (real work) for one step of ``seq_lengths``:
    ``"attention"`` (``12 x layers x hidden x sum(len^2)``), ``"mlm head"`` and ``"body matmuls"``."""
    mcfg = model_config(model, max_length)
    lens = np.asarray(seq_lengths, dtype=np.int64)
    total = model_flops(mcfg, int(lens.sum()), masked_tokens, lens)
    attn = 12 * mcfg.layers * mcfg.hidden * int((lens ** 2).sum())
    head = 6 * parameter_counts(mcfg)["mlm_head"] * masked_tokens
    return {"attention": attn / total, "mlm head": head / total, "body matmuls": (total - attn - head) / total}
