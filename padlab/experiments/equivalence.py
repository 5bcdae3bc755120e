"""Proof experiments of chapter 04, as functions: packed texts equal the texts alone, and gradient
accumulation over packs equals one unpacked batch when the loss is divided by the step's count.

Each returns a small dataclass of relative differences with its negative controls built in (the
variant or rule that must fail), so a notebook prints the table and a test asserts the verdict.
Experiments call the mechanisms (collators, :func:`padlab.models.sequence_loss`,
:func:`padlab.train.train_step`); the caller's model is never changed (they work on a copy).
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._validate import check_choice, fail
from ..models import sequence_loss
from ..precision import get_policy
from ..train import train_step

__all__ = ["PACKED_VARIANTS", "PackedEquivalence", "packed_vs_alone", "GradientSum", "AccumulationCheck",
           "ACCUMULATION_RULES", "accumulation_vs_one_batch"]

#: The packed row as the collator makes it, then with one mechanism taken away each (negative controls).
PACKED_VARIANTS = ("packed", "no block mask", "positions not restarted")
#: How micro-batch losses are divided: by the whole step's count (right), or each by its own (naive).
ACCUMULATION_RULES = ("global count", "each batch's mean")


def _flat_grad(model: nn.Module) -> Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in model.parameters()])


def _relative(a: Tensor, ref: Tensor) -> float:
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(torch.finfo(ref.dtype).tiny))


@dataclass(frozen=True)
class PackedEquivalence:
    """Per packed text: ``outputs[variant][k]`` is max |hidden packed - hidden alone| over text k's
    tokens; ``gradients[variant][k]`` is max |grad packed - grad alone| / max |grad alone| of text
    k's own classification loss, over every weight."""

    seq_lengths: tuple[int, ...]
    outputs: dict[str, tuple[float, ...]]
    gradients: dict[str, tuple[float, ...]]

    def equal(self, variant: str = "packed", threshold: float = 1e-5) -> bool:
        """Every text's outputs and gradients under ``variant`` are within ``threshold`` of alone."""
        check_choice("variant", variant, self.outputs)
        return all(v < threshold for part in (self.outputs, self.gradients) for v in part[variant])


def packed_vs_alone(model: nn.Module, batch: Mapping[str, Any], *,
                    variants: Iterable[str] = PACKED_VARIANTS) -> PackedEquivalence:
    """Run each text of a packed ``batch`` alone and inside the pack; compare outputs and gradients.

    ``model`` is a :class:`padlab.models.EncoderForSequenceClassification` (``.encoder``, pooling by
    ``seq_starts``); ``batch`` a :class:`padlab.packing.PackedCollator` output with ``labels``.
    The variants (:data:`PACKED_VARIANTS`): the batch as collated; without its ``block_mask``;
    without its ``position_ids`` (positions counted across the row). Works on an ``eval()`` copy.
    """
    need = ("input_ids", "attention_mask", "position_ids", "block_mask", "seq_starts", "seq_lengths", "labels")
    if not isinstance(batch, Mapping) or any(k not in batch for k in need):
        raise fail("batch", sorted(batch) if isinstance(batch, Mapping) else batch,
                   f"be a PackedCollator batch holding {list(need)}")
    if not (isinstance(model, nn.Module) and isinstance(getattr(model, "encoder", None), nn.Module)):
        raise fail("model", type(model).__name__, "be an EncoderForSequenceClassification (with .encoder)")
    variants = tuple(variants)
    for v in variants:
        check_choice("variants", v, PACKED_VARIANTS)
    model = copy.deepcopy(model).eval()
    row = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "block_mask")}
    inputs = {"packed": row, "no block mask": {**row, "block_mask": None},
              "positions not restarted": {**row, "position_ids": None}}
    flat_ids = batch["input_ids"].flatten()
    labels = batch["labels"]
    outputs = {v: [] for v in variants}
    grads = {v: [] for v in variants}
    for k, (start, n) in enumerate(zip(batch["seq_starts"].tolist(), batch["seq_lengths"].tolist())):
        ids = flat_ids[start:start + n][None]                 # the text alone: a 1 x n batch, no padding
        model.zero_grad()
        with torch.no_grad():
            alone = model.encoder(ids)[0]
        sequence_loss(model(ids).logits, labels[k:k + 1]).backward()
        grad_alone = _flat_grad(model)
        for v in variants:
            model.zero_grad()
            with torch.no_grad():
                hidden = model.encoder(**inputs[v]).flatten(0, 1)[start:start + n]
            logits = model(**inputs[v], seq_starts=batch["seq_starts"]).logits
            sequence_loss(logits[k:k + 1], labels[k:k + 1]).backward()
            outputs[v].append(float((hidden - alone).abs().max()))
            grads[v].append(_relative(_flat_grad(model), grad_alone))
    return PackedEquivalence(tuple(int(n) for n in batch["seq_lengths"].tolist()),
                             {v: tuple(x) for v, x in outputs.items()}, {v: tuple(x) for v, x in grads.items()})


class GradientSum(torch.optim.Optimizer):
    """An optimizer that never moves a weight: each ``step()`` adds every ``p.grad`` to ``total[p]``.

    Lets :func:`padlab.train.train_step` (which zeroes the gradients, runs one micro-batch and
    steps) collect the gradient of a sequence of micro-batches: after k steps, ``flat()`` is the
    sum of the k gradients, the quantity gradient accumulation hands to a real optimizer.
    It needs no change to ``train_step``; the smallest hook that would replace it is a
    ``train_step(..., zero_grad=False, optimizer_step=False)`` pair of switches.
    """

    def __init__(self, params: Iterable[nn.Parameter]) -> None:
        super().__init__(params, {})
        self.total: dict[nn.Parameter, Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 (the class says it)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.total[p] = self.total[p] + p.grad if p in self.total else p.grad.clone()

    def flat(self) -> Tensor:
        """The summed gradients of every parameter, flattened in parameter order (zeros where none)."""
        return torch.cat([self.total.get(p, torch.zeros_like(p)).flatten()
                          for group in self.param_groups for p in group["params"]])


@dataclass(frozen=True)
class AccumulationCheck:
    """``errors[rule]``: max |accumulated grad - one-batch grad| / max |one-batch grad| (see
    :data:`ACCUMULATION_RULES`); ``step_count`` is the step's count the global rule divides by
    (masked tokens, or texts with a masked token); ``micro_counts`` each micro-batch's own count."""

    reduction: str
    step_count: int
    micro_counts: tuple[int, ...]
    loss: float
    errors: dict[str, float]


def _seq_of_tokens(batch: Mapping[str, Any]) -> Tensor:
    # one id per text in the batch: per-row seq_ids of a packed batch made unique across rows,
    # else the row index of a padded batch
    labels = batch["labels"]
    rows = torch.arange(labels.shape[0])[:, None].expand_as(labels)
    if "seq_ids" in batch:
        return rows * labels.shape[1] + batch["seq_ids"]
    return rows


def _mlm_loss(reduction: str, normalizer: float | None, divide: int):
    def loss_fn(model: nn.Module, b: Mapping[str, Any]) -> Tensor:
        m = b["labels"] != -100
        kw = {k: b[k] for k in ("attention_mask", "position_ids", "block_mask") if k in b}
        logits = model(b["input_ids"], **kw, masked_positions=m).logits
        loss = sequence_loss(logits, b["labels"][m], reduction=reduction, seq_ids=_seq_of_tokens(b)[m],
                             normalizer=normalizer)
        return loss / divide
    return loss_fn


def _count(b: Mapping[str, Any], reduction: str) -> int:
    m = b["labels"] != -100
    return int(m.sum()) if reduction == "token" else int(torch.unique(_seq_of_tokens(b)[m]).numel())


def _summed_gradient(model: nn.Module, batches: Sequence[Mapping[str, Any]], loss_fn, policy: str) -> Tensor:
    # a copy in the policy's weight dtype; fp16-amp gets its GradScaler, which unscales before each step
    pol = get_policy(policy)
    twin = copy.deepcopy(model).to(pol.param_dtype)
    device = next(twin.parameters()).device
    scaler = torch.amp.GradScaler(device.type) if pol.grad_scaler else None
    collect = GradientSum(twin.parameters())
    for b in batches:
        train_step(twin, b, collect, pol, scaler, loss_fn=loss_fn, measure=False)
    return collect.flat().float()


def accumulation_vs_one_batch(model: nn.Module, one_batch: Mapping[str, Any],
                              micro_batches: Sequence[Mapping[str, Any]], *, reduction: str = "token",
                              policy: str = "fp32") -> AccumulationCheck:
    """Gradient accumulated over ``micro_batches`` against the gradient of ``one_batch`` (the same texts).

    A masked-LM (:class:`padlab.models.EncoderForMaskedLM`) loss, ``labels`` -100 where not masked;
    micro-batches may be packed (``position_ids``, ``block_mask``, ``seq_ids``) or padded. Each
    micro-batch runs through :func:`padlab.train.train_step` under ``policy`` with a
    :class:`GradientSum` as its optimizer, so the weights stay put and the gradients add up.
    Two rules (:data:`ACCUMULATION_RULES`): :func:`padlab.models.sequence_loss` divided by the whole
    step's count (``reduction="token"``: masked tokens; ``"sequence"``: texts), and the naive mean
    of each micro-batch's own mean (the negative control). Works on copies of ``model``.
    """
    check_choice("reduction", reduction, ("token", "sequence"))
    get_policy(policy)
    if not isinstance(model, nn.Module):
        raise fail("model", model, "be a torch.nn.Module")
    for name, bs in (("one_batch", [one_batch]), ("micro_batches", micro_batches)):
        if not bs or not all(isinstance(b, Mapping) and "input_ids" in b and "labels" in b for b in bs):
            raise fail(name, type(bs).__name__, "hold collated batches with input_ids and labels")
    micro_counts = tuple(_count(b, reduction) for b in micro_batches)
    step_count = sum(micro_counts)
    if step_count != _count(one_batch, reduction):
        raise fail("micro_batches", micro_counts, f"count as many {reduction}s as one_batch "
                                                  f"({_count(one_batch, reduction)}): the same texts, the same masks")
    reference = _summed_gradient(model, [one_batch], _mlm_loss(reduction, None, 1), policy)
    with torch.no_grad():
        loss = float(_mlm_loss(reduction, None, 1)(copy.deepcopy(model).float().eval(), one_batch))
    rules = {"global count": _mlm_loss(reduction, step_count, 1),
             "each batch's mean": _mlm_loss(reduction, None, len(micro_batches))}
    errors = {rule: _relative(_summed_gradient(model, micro_batches, fn, policy), reference)
              for rule, fn in rules.items()}
    return AccumulationCheck(reduction, step_count, micro_counts, loss, errors)
