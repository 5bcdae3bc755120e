"""THE training step and loop: one ``train_step``, one ``train``, one ``evaluate`` for all of padlab.

:func:`train_step` runs one optimizer step under a precision policy (:mod:`padlab.precision`)
and returns a :class:`StepRecord`; :func:`train` loops over a loader, one epoch after another
(:func:`cycle_epochs` calls ``set_epoch`` on the loader's sampler, so padlab's samplers give new
batches each epoch), with one learning-rate schedule (:func:`make_lr_schedule`); :func:`evaluate`
scores a model. :func:`to_device` is the one way a batch reaches a device. Gradient accumulation:
:func:`train_step` takes a list of micro-batches and, by default, divides their summed token losses
by the target tokens of the whole step (:func:`count_targets`; transformers' ``num_items_in_batch``),
so any split into micro-batches, packs or padded rows gives the full batch's gradient;
:func:`causal_lm_loss` is the next-token loss of a causal LM (a transformers model or any module
returning logits) computed that way. The notebooks, the
recipes (:func:`padlab.recipes.train_loop`), the benchmark harnesses (:mod:`padlab.experiments`)
and the ``benchmarks/`` scripts all step through :func:`train_step`.

**The underflow statistic.** fp16's smallest subnormal is ``2**-24``; round-to-nearest-even
stores any magnitude ``<= 2**-25`` (half of it, the tie going to the even pattern 0) as zero.
:func:`train_step` counts (:func:`underflow_count`) the *non-zero, finite* parameter-gradient
values ``g`` for which ``|g * scale| <= 2**-25``, before unscaling (for ``fp16-amp`` the
gradients then hold ``g * S``, the values fp16 would carry at the current scale ``S``), and
also at scale 1 (what fp16 without loss scaling would lose).
:func:`padlab.introspect.grad_underflow_fraction` is the same statistic for any gradients.

**Timing.** ``measure=False`` takes no statistic and makes no host sync: the record then holds
the loss as a device tensor (``loss_tensor``) for the caller to read after its timed loop.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from . import floats
from ._validate import check_choice, check_float, check_int, fail
from .env import resolve_device
from .models import forward_parameters
from .precision import Policy, Prepared, autocast_context, get_policy, prepare, tf32_context

__all__ = [
    "StepRecord", "TrainRun", "LR_SCHEDULES", "FP16_FLUSH_THRESHOLD",
    "train_step", "train", "evaluate", "predict", "score", "to_device", "model_device", "default_loss", "cycle_epochs",
    "make_lr_schedule", "flat_gradients", "underflow_count", "NORMALIZATIONS", "count_targets", "causal_lm_loss",
]

# Magnitudes at or below half of fp16's smallest subnormal (2**-24) round to zero.
FP16_FLUSH_THRESHOLD: float = floats.get_format("fp16").smallest_subnormal / 2


def flat_gradients(grads: list[Tensor]) -> Tensor:
    """The gradient tensors as one flat float32 tensor (a copy, detached)."""
    return torch.cat([g.detach().reshape(-1).float() for g in grads])


def underflow_count(flat: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """(values that flush to zero in fp16 at ``scale``, non-zero finite values), as 0-d tensors (no sync)."""
    live = (flat != 0) & torch.isfinite(flat)
    flushed = live & ((flat.abs() * scale) <= FP16_FLUSH_THRESHOLD)
    return flushed.sum(), live.sum()


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter."""
    p = next(model.parameters(), None)
    if p is None:
        raise fail("model", type(model).__name__, "have parameters")
    return p.device


def to_device(batch: Any, device: "str | torch.device") -> dict[str, Any]:
    """A new dict with every tensor of ``batch`` on ``device`` (non-blocking); other values as they are.

    ``batch`` must be a mapping holding at least one tensor (as padlab's collators make); its keys
    are the loss function's business (a custom ``loss_fn`` may take batches without ``input_ids``).
    The caller's batch is left as it was. Integer maxima such as ``max_seqlen`` stay Python ints.
    """
    if not isinstance(batch, Mapping) or not any(isinstance(v, Tensor) for v in batch.values()):
        raise fail("batch", batch, "be a mapping of tensors (as padlab's collators make)")
    dev = resolve_device(device)
    return {k: (v.to(dev, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def default_loss(model: nn.Module, batch: Mapping[str, Any], *, num_items_in_batch: int | None = None) -> Tensor:
    """The model's own loss for ``batch`` (``input_ids``, ``attention_mask``, ``position_ids``, ``labels``).

    The model returns its loss as ``out["loss"]``, ``out.loss``, the first item of a tuple, or itself.
    ``num_items_in_batch`` (gradient accumulation, see :func:`train_step`) is passed on to the model,
    as transformers' models take it: their loss is then the summed token loss divided by it.
    """
    for key in ("labels", "input_ids"):
        if key not in batch:
            raise fail("batch", sorted(batch), f"hold '{key}' for the default loss")
    kw = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
    if num_items_in_batch is not None:
        kw["num_items_in_batch"] = num_items_in_batch
    out = model(batch["input_ids"], labels=batch["labels"], **kw)
    if isinstance(out, Mapping):
        return out["loss"]
    if isinstance(out, (tuple, list)):
        return out[0]
    return getattr(out, "loss", out)


def _logits(model: nn.Module, batch: Mapping[str, Any]) -> Tensor:
    kw = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
    out = model(batch["input_ids"], **kw)
    return out["logits"] if isinstance(out, Mapping) else getattr(out, "logits", out)


NORMALIZATIONS = ("token", "mean")

# Keys a causal LM's forward takes from a batch (padlab's collators and hf.PaddingFreeCollator make them).
_LM_KEYS = ("attention_mask", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def count_targets(batch: Mapping[str, Any], *, shift: bool = True, ignore_index: int = -100) -> int:
    """Target tokens of ``batch``: ``labels`` not equal to ``ignore_index``, after the causal shift
    (``labels[..., 1:]``: a row's first label is never predicted) when ``shift``."""
    if not isinstance(batch, Mapping) or "labels" not in batch:
        raise fail("batch", batch, "be a mapping with per-token 'labels'")
    labels = torch.as_tensor(batch["labels"])
    if labels.ndim != 2:
        raise fail("batch['labels']", tuple(labels.shape), "be per-token labels, rows x tokens")
    return int((labels[:, 1:] if shift else labels).ne(ignore_index).sum())


def causal_lm_loss(model: nn.Module, batch: Mapping[str, Any], *, num_items_in_batch: int | None = None,
                   ignore_index: int = -100) -> Tensor:
    """Next-token cross-entropy of a causal LM on ``batch``, computed here from its logits.

    The logits at position ``t`` predict ``labels[t + 1]`` (the shift transformers' models do inside
    their loss); ``ignore_index`` labels (prompt, pads, each packed sequence's first token) are not
    targets. The summed token loss is divided by ``num_items_in_batch`` when given (the step's
    target count, for accumulation), else by this batch's targets (its per-token mean). Batch keys
    the model takes (``attention_mask``, ``position_ids``, ``cu_seq_lens_*``, ``max_length_*``) are
    passed on, with ``use_cache=False`` where the model takes it (a cache makes transformers ignore
    packed ``position_ids``).
    """
    if "labels" not in batch:
        raise fail("batch", sorted(batch), "hold per-token 'labels' for the causal LM loss")
    kw = {k: batch[k] for k in _LM_KEYS if k in batch}
    # The model's own forward: a compiled model's wrapper takes **kwargs and would hide use_cache, and a
    # transformers model left to its default cache attends across packed sequences.
    if "use_cache" in forward_parameters(model):
        kw["use_cache"] = False
    out = model(batch["input_ids"], **kw)
    logits = out["logits"] if isinstance(out, Mapping) else getattr(out, "logits", out)
    labels = batch["labels"]
    summed = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                         ignore_index=ignore_index, reduction="sum")
    n = num_items_in_batch if num_items_in_batch is not None else count_targets(batch, ignore_index=ignore_index)
    return summed / max(int(n), 1)



# ----------------------------------------------------------------------------- training

@dataclass(frozen=True)
class StepRecord:
    """What one training step did.

    ``loss`` is the unscaled loss (NaN when not measured). ``scale`` is the loss scale used for
    this step (``None`` without a GradScaler). ``skipped``: the GradScaler found inf/NaN in the
    gradients and did not step (the scale then halves). ``underflow_fraction``: see
    :func:`grad_underflow_fraction`, measured on the gradients as the policy holds them before
    unscaling (``g * scale`` for fp16-amp); ``underflow_fraction_unscaled`` is the same at scale 1.
    ``grad_norm`` is the L2 norm of the unscaled gradients (before clipping; inf/NaN if they
    hold one). ``finite``: every gradient value was finite. ``measured``: statistics were taken
    (see ``measure`` in :func:`train_step`); otherwise the float fields are NaN and
    ``loss_tensor`` holds the detached loss on the device (read it after a timed loop).
    """

    step: int
    loss: float
    scale: float | None
    skipped: bool
    underflow_fraction: float
    underflow_fraction_unscaled: float
    grad_norm: float
    finite: bool
    measured: bool = True
    loss_tensor: Tensor | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        """The record's numbers (without ``loss_tensor``), JSON-ready."""
        d = asdict(self)
        d.pop("loss_tensor")
        return d


def _check_scaler(policy: Policy, scaler: Any) -> None:
    if policy.grad_scaler and not isinstance(scaler, torch.amp.GradScaler):
        raise fail("scaler", scaler, f"be a torch.amp.GradScaler for policy {policy.name!r} (prepare() makes one)")
    if not policy.grad_scaler and scaler is not None:
        raise fail("scaler", type(scaler).__name__, f"be None for policy {policy.name!r}, which uses no loss scaling")


def _step(model, batches, optimizer, policy, scaler, loss_fn, max_grad_norm, measure, dev, normalization, n_items):
    # The step inside the policy's TF32 setting; returns (statistics or None, scale, loss).
    # ``batches``: the step's micro-batches (one for a plain step); their gradients add up before the update.
    model.train()
    optimizer.zero_grad(set_to_none=True)
    forward = (torch.autocast(dev.type, dtype=policy.autocast_dtype) if policy.autocast_dtype is not None
               else contextlib.nullcontext())
    scale = scaler.get_scale() if (scaler is not None and measure) else None
    loss = None
    for mb in batches:
        with forward:
            part = loss_fn(model, mb) if n_items is None else loss_fn(model, mb, num_items_in_batch=n_items)
        if not isinstance(part, Tensor) or part.numel() != 1:
            raise fail("loss_fn", loss_fn, "return a one-element loss tensor")
        if normalization == "mean":
            part = part / len(batches)   # each micro-batch's own mean, weighted alike: the negative control
        (scaler.scale(part) if scaler is not None else part).backward()
        loss = part.detach() if loss is None else loss + part.detach()

    stats = None
    if measure:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        flat = flat_gradients([p.grad for p in params]) if params else torch.zeros(1, device=dev)
        s = float(scale) if scale is not None else 1.0
        f_at, live = underflow_count(flat, 1.0)
        f_one, _ = underflow_count(flat, 1.0 / s)
        norm = torch.linalg.vector_norm(flat) / s
        finite = torch.isfinite(flat).all()
        # One host sync for every number of the record.
        vals = torch.stack([loss.detach().float().reshape(()), f_at.float(), f_one.float(), live.float(),
                            norm.float(), finite.float()]).tolist()
        stats = vals
    if scaler is not None:
        if max_grad_norm is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
    else:
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
    return stats, scale, loss


def train_step(model: nn.Module, batch: "Mapping[str, Any] | list[Mapping[str, Any]]", optimizer: torch.optim.Optimizer,
               policy: "str | Policy", scaler: "torch.amp.GradScaler | None" = None,
               loss_fn: Callable[[nn.Module, Mapping[str, Any]], Tensor] = default_loss, *,
               max_grad_norm: float | None = None, measure: bool = True, step: int = 0,
               normalization: str = "token", shift_labels: bool = True) -> StepRecord:
    """One optimizer step of ``model`` on ``batch`` under ``policy``.

    ``batch`` is one batch (a mapping), or a list of micro-batches whose gradients are accumulated
    into one optimizer step (gradient accumulation; the recorded loss is then the step's). How a
    list is normalised (``normalization``):

    * ``"token"`` (default): every micro-batch's summed token loss is divided by the number of target
      tokens in the *whole step* (:func:`count_targets` over all micro-batches, labels shifted by one
      when ``shift_labels``, as a causal LM shifts them), passed to ``loss_fn`` as
      ``num_items_in_batch`` (transformers' name; :func:`default_loss` and :func:`causal_lm_loss`
      take it). The gradient is that of the per-token mean over the step, whatever the micro-batches,
      packs and padding: equal to the one big batch's.
    * ``"mean"``: each micro-batch's own mean loss, divided by the number of micro-batches (what a
      plain accumulation loop does): a token of a micro-batch with few targets weighs more.

    ``model`` must already hold the policy's weight dtype (use :func:`padlab.precision.prepare`;
    a ``torch.compile``-d module is passed in as it is); ``scaler`` is
    required for ``fp16-amp`` and must be ``None`` otherwise. The step: zero the gradients,
    forward and loss under the policy's autocast / TF32 context, backward (of the scaled loss
    for fp16-amp), statistics, unscale, optional clipping to ``max_grad_norm``, optimizer step
    (skipped by the GradScaler when a gradient is inf/NaN), scale update.
    ``measure=False`` skips every statistic and host sync (for timing); the record is then
    mostly NaN and carries the loss as ``loss_tensor``. ``step`` is only copied into the record.
    """
    policy = get_policy(policy)
    if not isinstance(model, nn.Module):
        raise fail("model", model, "be a torch.nn.Module")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise fail("optimizer", optimizer, "be a torch.optim.Optimizer")
    _check_scaler(policy, scaler)
    if max_grad_norm is not None:
        max_grad_norm = check_float("max_grad_norm", max_grad_norm, min_value=0.0, min_inclusive=False)
    if not callable(loss_fn):
        raise fail("loss_fn", loss_fn, "be a callable (model, batch) -> loss")
    check_choice("normalization", normalization, NORMALIZATIONS)
    if not isinstance(shift_labels, bool):
        raise fail("shift_labels", shift_labels, "be True or False")
    if isinstance(batch, Mapping):
        micro, n_items = [batch], None   # one batch: the loss function's own normalisation, as always
    else:
        micro = list(batch) if isinstance(batch, (list, tuple)) else None
        if not micro or not all(isinstance(b, Mapping) for b in micro):
            raise fail("batch", batch, "be a mapping of tensors (as padlab's collators make), "
                                       "or a non-empty list of them (micro-batches)")
        n_items = None
        if normalization == "token":
            params = inspect.signature(loss_fn).parameters
            if "num_items_in_batch" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                raise fail("loss_fn", loss_fn, "take num_items_in_batch= for normalization='token' "
                                               "(as default_loss and causal_lm_loss do)")
            n_items = sum(count_targets(b, shift=shift_labels) for b in micro)
    first = next(model.parameters(), None)   # one parameter: its device and dtype (cheap on the timed path)
    if first is None:
        raise fail("model", type(model).__name__, "have parameters")
    dev = first.device
    if first.dtype != policy.param_dtype:
        raise fail("model", str(first.dtype), f"hold {policy.param_dtype} weights for policy {policy.name!r} "
                                              "(prepare() casts a copy)")
    micro = [to_device(b, dev) for b in micro]
    # TF32 as the policy says for the whole step (forward, backward, optimizer), autocast for the forward only.
    with tf32_context(policy):
        stats, scale, loss = _step(model, micro, optimizer, policy, scaler, loss_fn, max_grad_norm, measure, dev,
                                   normalization, n_items)
    if stats is None:
        nan = math.nan
        return StepRecord(step, nan, None, False, nan, nan, nan, False, measured=False, loss_tensor=loss.detach())
    loss_v, f_at, f_one, live, norm, finite = stats
    skipped = scaler is not None and scaler.get_scale() < scale
    return StepRecord(step, loss_v, scale, bool(skipped), f_at / live if live else 0.0,
                      f_one / live if live else 0.0, norm, bool(finite))


@dataclass
class TrainRun:
    """What :func:`train` did: one :class:`StepRecord` per step, and the trained copy with its
    optimizer, GradScaler, policy and device. ``epochs``: epochs started (see :func:`cycle_epochs`).
    A run reads like the list of its records (``len(run)``, ``run[i]``, ``for r in run``)."""

    records: list[StepRecord]
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: "torch.amp.GradScaler | None"
    policy: Policy
    device: torch.device
    epochs: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[StepRecord]:
        return iter(self.records)

    def __getitem__(self, i: int) -> StepRecord:
        return self.records[i]

    def column(self, field: str) -> np.ndarray:
        """One field of every record as a numpy array (``None`` becomes NaN)."""
        names = [f for f in StepRecord.__dataclass_fields__ if f != "loss_tensor"]
        if field not in names:
            raise fail("field", field, "be a StepRecord field: " + ", ".join(names))
        return np.array([math.nan if getattr(r, field) is None else getattr(r, field) for r in self.records],
                        dtype=float)


def cycle_epochs(loader: Iterable[Any]) -> Iterator[tuple[int, Any]]:
    """``(epoch, batch)`` for ever: ``loader`` again and again, ``set_epoch(epoch)`` called before
    each pass on the loader and on its ``batch_sampler`` or ``sampler`` where they have one."""
    epoch = 0
    while True:
        sampler = getattr(loader, "batch_sampler", None) or getattr(loader, "sampler", None)
        for obj in (loader, sampler):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        empty = True
        for batch in loader:
            empty = False
            yield epoch, batch
        if empty:
            raise fail("loader", loader, "yield at least one batch")
        epoch += 1


LR_SCHEDULES = ("constant", "linear")


def make_lr_schedule(optimizer: torch.optim.Optimizer, name: str, steps: int) -> "torch.optim.lr_scheduler.LRScheduler | None":
    """THE schedule: ``"constant"`` (``None``: no scheduler) or ``"linear"``: a linear warm-up over
    the first 5% of ``steps`` (at least one), then a linear decay to zero at the last step."""
    check_choice("lr_schedule", name, LR_SCHEDULES)
    steps = check_int("steps", steps, min_value=1)
    if name == "constant":
        return None
    warmup = max(1, steps // 20)

    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        return max(0.0, (steps - i) / max(1, steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train(model: nn.Module, loader: Iterable[Mapping[str, Any]], policy: "str | Policy", steps: int,
          device: "str | torch.device", *,
          optimizer_factory: "Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None" = None,
          loss_fn: Callable[[nn.Module, Mapping[str, Any]], Tensor] = default_loss,
          max_grad_norm: float | None = None, measure_every: int = 1, progress: bool = True,
          lr_schedule: str = "constant", stop_after_nonfinite: int | None = None,
          prepared: Prepared | None = None,
          on_step: "Callable[[StepRecord, Mapping[str, Any]], None] | None" = None,
          accumulation_steps: int = 1, normalization: str = "token", shift_labels: bool = True) -> TrainRun:
    """Train a copy of ``model`` for ``steps`` steps under ``policy``; one :class:`StepRecord` per step.

    The copy comes from :func:`prepare` (``model`` itself is not changed) unless ``prepared``
    (:func:`padlab.precision.prepare`) is given, which is then trained in place (``policy`` and ``device`` must match it).
    ``loader`` is iterated again (a new epoch, ``set_epoch`` called where it exists) when it
    runs out. Statistics are measured every ``measure_every`` steps (others have
    ``measured=False``). ``lr_schedule``: ``"constant"`` or ``"linear"`` (5% warm-up, then
    linear decay to zero). ``stop_after_nonfinite=k`` ends a run without a GradScaler after
    ``k`` measured steps in a row with a non-finite loss (it has diverged and can only stay
    NaN); the run is then shorter than ``steps``. ``progress`` shows a tqdm bar (keep it out of
    compared notebook output). ``on_step(record, batch)`` is called after each step with the
    batch as the loader gave it (for per-batch bookkeeping such as widths).
    ``accumulation_steps=k`` makes each optimizer step from ``k`` loader batches (gradient
    accumulation, normalised as ``normalization`` and ``shift_labels`` say: see :func:`train_step`);
    ``on_step`` then gets the list of the step's batches.
    """
    steps = check_int("steps", steps, min_value=1)
    measure_every = check_int("measure_every", measure_every, min_value=1)
    stop_after_nonfinite = check_int("stop_after_nonfinite", stop_after_nonfinite, min_value=1, allow_none=True)
    check_choice("lr_schedule", lr_schedule, LR_SCHEDULES)
    accumulation_steps = check_int("accumulation_steps", accumulation_steps, min_value=1)
    check_choice("normalization", normalization, NORMALIZATIONS)
    if on_step is not None and not callable(on_step):
        raise fail("on_step", on_step, "be a callable (record, batch) -> None")
    if not isinstance(progress, bool):
        raise fail("progress", progress, "be True or False")
    policy = get_policy(policy)
    if prepared is None:
        prepared = prepare(model, optimizer_factory, policy, device)
    elif not isinstance(prepared, Prepared) or prepared.policy != policy or prepared.device != resolve_device(device):
        raise fail("prepared", prepared, f"be a Prepared for policy {policy.name!r} on {str(resolve_device(device))!r}")
    from tqdm.auto import tqdm

    run = TrainRun([], prepared.model, prepared.optimizer, prepared.scaler, policy, prepared.device)
    scheduler = make_lr_schedule(prepared.optimizer, lr_schedule, steps)
    batches = cycle_epochs(loader)
    bad_in_a_row = 0
    # TF32 set once for the run: each step's own tf32_context then finds it set and writes nothing.
    with tf32_context(policy), tqdm(total=steps, desc=policy.name, disable=not progress, leave=False) as bar:
        for i in range(steps):
            if accumulation_steps == 1:
                epoch, batch = next(batches)
            else:
                drawn = [next(batches) for _ in range(accumulation_steps)]
                epoch, batch = drawn[-1][0], [b for _, b in drawn]
            run.epochs = epoch + 1
            rec = train_step(prepared.model, batch, prepared.optimizer, policy, prepared.scaler, loss_fn,
                             max_grad_norm=max_grad_norm, measure=(i % measure_every == 0 or i == steps - 1),
                             step=i, normalization=normalization, shift_labels=shift_labels)
            run.records.append(rec)
            if on_step is not None:
                on_step(rec, batch)
            if scheduler is not None:
                with warnings.catch_warnings():
                    # A step the GradScaler skipped did not call optimizer.step(); the schedule
                    # still advances (as in torch's AMP recipe), which is what this warning is about.
                    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
                    scheduler.step()
            bar.update(1)
            if rec.measured and progress:
                bar.set_postfix(loss=f"{rec.loss:.3g}", refresh=False)
            if rec.measured and stop_after_nonfinite and prepared.scaler is None:
                bad_in_a_row = bad_in_a_row + 1 if not math.isfinite(rec.loss) else 0
                if bad_in_a_row >= stop_after_nonfinite:
                    break
    return run


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[Mapping[str, Any]], policy: "str | Policy") -> tuple[Tensor, Tensor]:
    """``(logits, labels)`` of ``model`` over ``batches`` under ``policy``'s forward context (no gradients).

    The logits are float32, concatenated over the batches (one row per sequence), the labels as
    the batches hold them; both stay on the model's device. The model's train/eval mode is restored.
    """
    policy = get_policy(policy)
    dev = model_device(model)
    was_training = model.training
    model.eval()
    preds, labels = [], []
    try:
        for b in batches:
            b = to_device(b, dev)
            with autocast_context(policy, dev):
                logits = _logits(model, b)
            preds.append(logits.float())
            labels.append(b["labels"])
    finally:
        model.train(was_training)
    if not preds:
        raise fail("batches", batches, "yield at least one batch")
    return torch.cat(preds), torch.cat(labels)


def score(logits: Tensor, labels: Tensor, *, task: str = "classification", target_mean: float = 0.0,
          target_std: float = 1.0) -> dict[str, float]:
    """The metrics of :func:`evaluate` from predictions (``logits`` and ``labels`` as :func:`predict` gives them).

    ``classification``: ``accuracy`` and ``loss`` (mean cross-entropy). ``regression``: the
    prediction and the label are both mapped back to target units by ``y * target_std +
    target_mean`` (in float64), then ``mae``, ``rmse`` and ``max_error``; ``nonfinite`` counts
    NaN/inf predictions (those count as errors of inf).
    """
    check_choice("task", task, ("classification", "regression"))
    target_mean = check_float("target_mean", target_mean)
    target_std = check_float("target_std", target_std, min_value=0.0, min_inclusive=False)
    p, y = logits.float(), labels
    if task == "classification":
        acc = (p.argmax(-1) == y).double().mean().item()
        loss = torch.nn.functional.cross_entropy(p, y).item()
        return {"accuracy": acc, "loss": loss, "n": int(y.numel())}
    pv = p.reshape(y.shape).double() * target_std + target_mean
    yv = y.double() * target_std + target_mean
    err = (pv - yv).abs()
    bad = ~torch.isfinite(err)
    err = torch.where(bad, torch.full_like(err, math.inf), err)
    return {"mae": err.mean().item(), "rmse": err.pow(2).mean().sqrt().item(), "max_error": err.max().item(),
            "exact_fraction": (err < 0.5).double().mean().item(), "nonfinite": int(bad.sum()),
            "n": int(y.numel())}


def evaluate(model: nn.Module, batches: Iterable[Mapping[str, Any]], policy: "str | Policy", *,
             task: str = "classification", target_mean: float = 0.0, target_std: float = 1.0) -> dict[str, float]:
    """Score ``model`` on ``batches`` under ``policy``'s forward context (no gradients):
    :func:`score` of :func:`predict`.

    ``classification``: ``accuracy`` and ``loss`` (mean cross-entropy). ``regression``: the
    prediction and the label are both mapped back to target units by ``y * target_std +
    target_mean`` (in float64), then ``mae``, ``rmse`` and ``max_error``; ``nonfinite`` counts
    NaN/inf predictions (those count as errors of inf). The model's train/eval mode is restored.
    """
    policy = get_policy(policy)
    check_choice("task", task, ("classification", "regression"))
    target_mean = check_float("target_mean", target_mean)
    target_std = check_float("target_std", target_std, min_value=0.0, min_inclusive=False)
    logits, labels = predict(model, batches, policy)
    return score(logits, labels, task=task, target_mean=target_mean, target_std=target_std)
