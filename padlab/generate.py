"""Batched greedy generation with a causal LM and its KV cache: left padding, sorted batches, caller's order.

A decoder writes its next token after the last token of each row, so in a batch of prompts of
different lengths the pads must go to the **left**: every row's last prompt token then sits in
the last column, where the next-token logits are read. Pads are kept out by the attention mask,
and the position ids start at 0 on each row's first real token (:func:`padlab.padding.pad_batch`
builds both), so each row computes what it would alone. With pads on the right, the last column
is a pad for every shorter prompt: the model continues from a pad and writes different tokens
(``padding_side="right"`` is accepted to show exactly that trap).

The KV cache: the prompts are run once (the prefill); each later step feeds one new token per
row with the keys and values of the earlier ones from the cache (``use_cache=False`` re-runs the
whole sequence every step: same tokens, quadratic work).

Prompts are grouped by length (:func:`padlab.batching.sorted_inference_batches`), so a batch holds
prompts of similar lengths and few pads, and the outputs are put back in the caller's order
(:func:`padlab.batching.restore_order`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ._sequences import as_int_array, check_list
from ._validate import check_bool, check_choice, check_int, fail
from .batching import restore_order, sorted_inference_batches
from .models import forward_parameters
from .padding import SIDES, pad_batch

__all__ = ["GenerationResult", "greedy_generate"]


@dataclass(frozen=True)
class GenerationResult:
    """What :func:`greedy_generate` produced, in the caller's order.

    ``tokens[i]``: the new tokens of prompt ``i`` (up to and including ``eos_id`` when it was
    written, at most ``max_new_tokens``). ``new_tokens``: their total. ``batches``: the model's
    batches, as index arrays into the prompts, in the order they ran. ``prompt_pad_fraction``: pads
    in the prefill batches over their slots. ``seconds``: wall time of the whole call (model
    calls included; a CUDA device is synchronised before the clock stops).
    """

    tokens: list[list[int]]
    new_tokens: int
    batches: list[np.ndarray]
    prompt_pad_fraction: float
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        """New tokens per second of wall time."""
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")


def _logits(out: Any) -> torch.Tensor:
    return out["logits"] if isinstance(out, dict) else out.logits


def _cache_name(model) -> str:
    # transformers 5.2x calls the KV cache ``cache`` (``past_key_values`` before, still accepted with a warning).
    params = forward_parameters(model)
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(out: Any) -> Any:
    for name in ("cache", "past_key_values"):
        c = out.get(name) if isinstance(out, dict) else getattr(out, name, None)
        if c is not None:
            return c
    raise fail("model", type(out).__name__, "return its KV cache (as `cache` or `past_key_values`) when use_cache=True")


def _generate_batch(model, prompts: list[np.ndarray], *, max_new_tokens: int, pad_id: int, eos_id: int | None,
                    padding_side: str, use_cache: bool, device: torch.device) -> tuple[list[list[int]], int, int]:
    """Greedy tokens for one batch; also (pad slots, slots) of its prefill."""
    b = pad_batch(prompts, padding_side=padding_side, pad_id=pad_id)
    ids = b["input_ids"].to(device)
    mask = b["attention_mask"].to(device)
    pos = b["position_ids"].to(device)
    rows, width = ids.shape
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    new = torch.empty(rows, 0, dtype=torch.long, device=device)
    # Where each row's next position is: its own length under left padding (positions restart at its
    # first real token); under right padding a naive loop continues from the batch width.
    next_pos = b["seq_lengths"].to(device) if padding_side == "left" else torch.full((rows,), width, device=device)
    past, cache_kw = None, _cache_name(model)
    step_ids, step_pos = ids, pos
    for _ in range(max_new_tokens):
        kw = {"input_ids": step_ids, "attention_mask": mask, "position_ids": step_pos, "use_cache": use_cache}
        if past is not None:
            kw[cache_kw] = past
        out = model(**kw)
        nxt = _logits(out)[:, -1].argmax(-1)
        if eos_id is not None:
            nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        new = torch.cat([new, nxt[:, None]], 1)
        if eos_id is not None:
            done |= nxt == eos_id
            if bool(done.all()):
                break
        mask = torch.cat([mask, torch.ones(rows, 1, dtype=mask.dtype, device=device)], 1)
        if use_cache:
            past = _cache_of(out)
            step_ids, step_pos = nxt[:, None], next_pos[:, None]
        else:  # the whole sequence again, every step
            step_ids = torch.cat([step_ids, nxt[:, None]], 1)
            step_pos = torch.cat([step_pos, next_pos[:, None]], 1)
        next_pos = next_pos + 1
    tokens = new.cpu().numpy()
    outs = []
    for row in tokens:
        row = row.tolist()
        if eos_id is not None and eos_id in row:
            row = row[:row.index(eos_id) + 1]
        outs.append(row)
    return outs, int(rows * width - b["seq_lengths"].sum()), rows * width


@torch.no_grad()
def greedy_generate(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, batch_size: int = 8,
                    pad_id: int = 0, eos_id: int | None = None, sort: bool = True, padding_side: str = "left",
                    use_cache: bool = True) -> GenerationResult:
    """Greedy continuations of ``prompts`` (lists of token ids) by a causal LM, batch by batch.

    ``model``: a transformers causal LM (or any module taking ``input_ids``, ``attention_mask``,
    ``position_ids``, ``use_cache``, ``past_key_values`` and returning ``logits`` and
    ``past_key_values``); it runs in eval mode (restored afterwards). ``sort``: batches of similar
    prompt lengths (longest first), outputs restored to the caller's order; ``False``: batches in the
    caller's order. ``eos_id``: a row stops after writing it (then pads; the call ends when every
    row has). ``padding_side="left"`` is the correct layout; ``"right"`` shows the trap (see the
    module docstring). ``use_cache=False`` recomputes every step without the KV cache.
    """
    if not isinstance(model, torch.nn.Module):
        raise fail("model", model, "be a torch.nn.Module (a causal LM)")
    seqs = check_list("prompts", prompts, items="prompts (lists of token ids)", item="prompt")
    arrays = [as_int_array(f"prompts[{i}]", p, allow_negative=False, allow_empty=False) for i, p in enumerate(seqs)]
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, min_value=1)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    pad_id = check_int("pad_id", pad_id, min_value=0)
    eos_id = check_int("eos_id", eos_id, min_value=0, allow_none=True)
    sort = check_bool("sort", sort)
    check_choice("padding_side", padding_side, SIDES)
    use_cache = check_bool("use_cache", use_cache)
    first = next(model.parameters(), None)
    if first is None:
        raise fail("model", type(model).__name__, "have parameters")
    device = first.device
    lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
    if sort:
        batches = sorted_inference_batches(lengths, batch_size)
    else:
        batches = np.split(np.arange(lengths.size), np.arange(batch_size, lengths.size, batch_size))
    was_training = model.training
    model.eval()
    outs: list[list[int]] = []
    pads = slots = 0
    start = time.perf_counter()
    try:
        for idx in batches:
            o, p, s = _generate_batch(model, [arrays[i] for i in idx], max_new_tokens=max_new_tokens, pad_id=pad_id,
                                      eos_id=eos_id, padding_side=padding_side, use_cache=use_cache, device=device)
            outs.extend(o)
            pads += p
            slots += s
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        model.train(was_training)
    seconds = time.perf_counter() - start
    tokens = restore_order(outs, np.concatenate(batches))
    return GenerationResult(tokens, int(sum(len(t) for t in tokens)), batches, pads / slots, seconds)
