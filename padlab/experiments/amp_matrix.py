"""The mixed-precision experiment: the seed's claims ("AMP suits classification, not exact
regression") tested on tasks built from the shipped corpora, one training run per (task, policy).

:data:`TASKS` names the tasks, :func:`make_task` builds one (pre-collated batches),
:func:`run_experiment` trains a fresh encoder under a policy of :data:`padlab.precision.POLICIES`
with :func:`padlab.train.train` and scores it with :func:`padlab.train.evaluate`, returning one
JSON-ready row (:func:`train_task` returns the trained run beside it). ``benchmarks/amp_matrix.py`` runs the matrix; :mod:`padlab.experiments.results`
reads the JSON back.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._validate import check_choice, check_int, fail
from ..env import resolve_device
from ..precision import Policy, get_policy
from ..train import TrainRun, evaluate, to_device, train

__all__ = ["TASKS", "TaskSpec", "Task", "make_task", "run_experiment", "train_task"]

@dataclass(frozen=True)
class TaskSpec:
    """A training task built from a shipped corpus (see :data:`TASKS`)."""

    name: str
    kind: str            # "classification" or "regression"
    corpus: str
    target: str          # "label", "tokens" or "chars"
    standardize: bool    # regression targets z-scored with the training set's mean and std
    unit: str
    description: str
    offset: float = 0.0  # added to the raw target (a value far from zero, as a year or a price is)


TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("wordnet-topic", "classification", "wordnet", "label", False, "accuracy",
             "classify each WordNet gloss into its lexicographer file (45 classes: noun.animal, verb.motion, ...)"),
    TaskSpec("wordnet-length", "regression", "wordnet", "tokens", True, "tokens",
             "regress each gloss's exact token count (7 to 172), z-scored as usual: the model counts the "
             "tokens it attends to, an exact integer it can learn to within half a token"),
    TaskSpec("wordnet-length-raw", "regression", "wordnet", "tokens", False, "tokens",
             "the same exact token counts as raw numbers (the head's bias starts at their mean, about 21): "
             "the output itself must carry values near 21 to within half a token"),
    TaskSpec("wordnet-length-offset", "regression", "wordnet", "tokens", False, "tokens",
             "the same counts plus 1024, a target far from zero as a year or a price is: fp16 spaces its "
             "numbers 1 apart there, bf16 8 apart, fp32 1/8192 apart", offset=1024.0),
    TaskSpec("wordnet-chars", "regression", "wordnet", "chars", True, "characters",
             "regress each gloss's character count (13 to 505), z-scored"),
    TaskSpec("wordnet-chars-raw", "regression", "wordnet", "chars", False, "characters",
             "the character counts as raw numbers (head bias starts at the mean): above 256 bf16 cannot "
             "even store every integer"),
)}


@dataclass
class Task:
    """A built task: pre-collated train and eval batches (CPU tensors) and the target's scale."""

    spec: TaskSpec
    train: list[dict[str, Tensor]]
    eval: list[dict[str, Tensor]]
    num_labels: int
    target_mean: float       # labels are (y - target_mean) / target_std; 0 and 1 when not standardized
    target_std: float
    init_bias: float | None  # regression head bias to start from (the raw target's training mean)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind


def make_task(name: str, *, n_train: int = 4096, n_eval: int = 1024, batch_size: int = 32, seed: int = 0,
              pad_to_multiple_of: int | None = 8) -> Task:
    """Build task ``name`` (one of :data:`TASKS`) from a seeded random sample of its corpus.

    The sample (``n_train + n_eval`` texts, in random order) is split into train and eval sets,
    each cut into dynamically padded batches of ``batch_size`` with
    :class:`padlab.padding.PaddingCollator`. Regression targets are exact counts of each text
    (tokens, with ``[CLS]``/``[SEP]``, or characters); standardized tasks z-score them with the
    training set's mean and std (undo with ``y * target_std + target_mean``); the others keep
    the raw count (plus the task's ``offset``) and start the head's bias at its training mean.
    """
    from ..data import load_corpus
    from ..padding import PaddingCollator

    spec = TASKS[check_choice("task", name, list(TASKS))]
    n_train = check_int("n_train", n_train, min_value=1)
    n_eval = check_int("n_eval", n_eval, min_value=1)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    seed = check_int("seed", seed, min_value=0)
    corpus = load_corpus(spec.corpus)
    if n_train + n_eval > len(corpus):
        raise fail("n_train", n_train, f"plus n_eval={n_eval} be at most the corpus size {len(corpus)}")
    idx = np.random.default_rng(seed).choice(len(corpus), size=n_train + n_eval, replace=False)
    if spec.target == "label":
        y = corpus.labels[idx]
        num_labels, mean, std, bias = len(corpus.label_names), 0.0, 1.0, None
    else:
        raw = (corpus.lengths[idx] if spec.target == "tokens"
               else np.fromiter((len(corpus.texts[i]) for i in idx), dtype=np.int64, count=len(idx)))
        raw = raw.astype(np.float64) + spec.offset
        m, s = float(raw[:n_train].mean()), float(raw[:n_train].std())
        if spec.standardize:
            mean, std, bias = m, s, None
        else:
            mean, std, bias = 0.0, 1.0, m
        y = (raw - mean) / std
        num_labels = 1
    collate = PaddingCollator(pad_to_multiple_of=pad_to_multiple_of)

    def batches(lo: int, hi: int) -> list[dict[str, Tensor]]:
        out = []
        for s in range(lo, hi, batch_size):
            rows = idx[s:min(hi, s + batch_size)]
            labels = y[s:min(hi, s + batch_size)]
            out.append(collate([{"input_ids": corpus.ids(int(r)), "labels": lab.item()}
                                for r, lab in zip(rows, labels)]))
        return out

    return Task(spec, batches(0, n_train), batches(n_train, n_train + n_eval), num_labels, mean, std, bias)



def run_experiment(task: Task, policy: "str | Policy", *, steps: int, device: "str | torch.device",
                   seed: int = 0, config: Any = None,
                   optimizer_factory: "Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None" = None,
                   lr_schedule: str = "linear", progress: bool = False, measure_every: int = 1) -> dict[str, Any]:
    """The row of :func:`train_task` (its arguments, the same meaning): one JSON-ready dict."""
    return train_task(task, policy, steps=steps, device=device, seed=seed, config=config,
                      optimizer_factory=optimizer_factory, lr_schedule=lr_schedule, progress=progress,
                      measure_every=measure_every)[0]


def train_task(task: Task, policy: "str | Policy", *, steps: int, device: "str | torch.device",
               seed: int = 0, config: Any = None,
               optimizer_factory: "Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None" = None,
               lr_schedule: str = "linear", progress: bool = False,
               measure_every: int = 1) -> "tuple[dict[str, Any], TrainRun]":
    """Train a freshly initialised encoder (seeded) on ``task`` under ``policy`` and score it:
    ``(row, run)``, the run (:class:`padlab.train.TrainRun`) holding the trained model.

    ``config`` is an :class:`padlab.models.EncoderConfig` (default ``EncoderConfig.small()``);
    its ``num_labels`` is set from the task. The same ``seed`` gives the same initial weights
    and batches under every policy. The learning rate warms up and decays linearly to zero
    (``lr_schedule``), so the final weights do not depend on where a noisy constant-rate run
    happened to stop; a run without a GradScaler that has diverged (10 non-finite losses in a
    row) stops early. Returns one JSON-ready row: the eval metrics, final loss,
    per-step ``loss``, ``scale`` and ``underflow`` curves, skipped and non-finite steps, wall
    time and (on CUDA) the peak memory allocated.
    """
    import time

    from ..models import EncoderConfig, EncoderForSequenceClassification

    if not isinstance(task, Task):
        raise fail("task", task, "be a Task from make_task()")
    policy = get_policy(policy)
    dev = resolve_device(device)
    seed = check_int("seed", seed, min_value=0)
    config = (config or EncoderConfig.small()).replace(num_labels=task.num_labels)
    torch.manual_seed(seed)
    model = EncoderForSequenceClassification(config, task=task.kind)
    if task.init_bias is not None:
        with torch.no_grad():
            model.classifier.bias.fill_(task.init_bias)
    train_b = [to_device(b, dev) for b in task.train]
    eval_b = [to_device(b, dev) for b in task.eval]
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    run = train(model, train_b, policy, steps, dev, optimizer_factory=optimizer_factory,
                progress=progress, measure_every=measure_every, lr_schedule=lr_schedule, stop_after_nonfinite=10)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    peak = int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None
    metrics = evaluate(run.model, eval_b, policy, task=task.kind, target_mean=task.target_mean,
                       target_std=task.target_std)
    measured = [r for r in run.records if r.measured]
    nonfinite = [r.step for r in measured if not r.finite]
    row = {
        "task": task.name, "kind": task.kind, "unit": task.spec.unit, "policy": policy.name, "seed": seed,
        "steps": steps, "steps_run": len(run.records), "lr_schedule": lr_schedule,
        "batch_size": int(task.train[0]["input_ids"].shape[0]),
        "hidden": config.hidden, "layers": config.layers,
        **{k: (float(v) if isinstance(v, float) else v) for k, v in metrics.items()},
        "final_loss": measured[-1].loss,
        # NaN once the run has diverged: a mean over the finite losses only would hide that.
        "final_loss_mean10": float(np.mean([r.loss for r in measured[-10:]])),
        "loss": [r.loss for r in run.records],
        "scale": [r.scale for r in run.records] if policy.grad_scaler else None,
        "skipped_steps": [r.step for r in run.records if r.skipped],
        "nonfinite_steps": len(nonfinite),
        "first_nonfinite_step": nonfinite[0] if nonfinite else None,
        "underflow": [r.underflow_fraction for r in run.records],
        "underflow_unscaled": [r.underflow_fraction_unscaled for r in run.records],
        "underflow_mean": float(np.nanmean([r.underflow_fraction for r in measured])),
        "underflow_unscaled_mean": float(np.nanmean([r.underflow_fraction_unscaled for r in measured])),
        "grad_norm": [r.grad_norm for r in run.records],
        "train_seconds": seconds,
        "peak_memory_bytes": peak,
    }
    return row, run

