"""Fixed and dynamic padding: padded ids, attention masks, position ids, labels, collators.

Two ways to make a batch rectangular:

* ``padding="max_length"`` (fixed): every row is ``max_length`` wide, whatever the batch holds;
* ``padding="longest"`` (dynamic): each batch is as wide as its longest kept sequence.

Either width may be rounded up to ``pad_to_multiple_of`` (tensor cores like multiples of 8).
Pads go to the right or the left (``padding_side``); sequences longer than ``max_length``
lose tokens from the right or the left (``truncation_side``).

This module knows nothing of samplers: it turns a list of sequences into tensors.
The fill is vectorised: all kept tokens are concatenated once and written into the
padded tensor through a single boolean-mask assignment.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import torch

from ._sequences import as_int_array, check_list, is_per_token, stack_scalars
from ._validate import check_bool, check_choice, check_int, fail

PADDINGS = ("longest", "max_length")
SIDES = ("right", "left")

# Keys the collator builds itself; an example that carries one would be silently overwritten.
_BUILT_KEYS = ("attention_mask", "position_ids", "seq_lengths", "truncated_tokens")


# ---------------------------------------------------------------------------------------------
# Conversion and validation (a loop over sequences, never over tokens)
# ---------------------------------------------------------------------------------------------

def _concat(name: str, sequences: Any, *, allow_negative: bool, allow_empty: bool
            ) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """All sequences concatenated (a fresh array: the caller's data is never aliased), their lengths,
    and the sequences as a list (so a generator can still be quoted in an error)."""
    seqs = check_list(name, sequences, items="sequences", item="sequence")
    arrays = [as_int_array(f"{name}[{i}]", s, allow_negative=allow_negative, allow_empty=allow_empty)
              for i, s in enumerate(seqs)]
    lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
    return np.concatenate(arrays), lengths, seqs


def _check_options(padding: str, max_length: int | None, pad_to_multiple_of: int | None, padding_side: str,
                   truncation: bool, truncation_side: str) -> tuple[int | None, int | None]:
    check_choice("padding", padding, PADDINGS)
    check_choice("padding_side", padding_side, SIDES)
    check_choice("truncation_side", truncation_side, SIDES)
    check_bool("truncation", truncation)
    max_length = check_int("max_length", max_length, min_value=1, allow_none=True)
    mult = check_int("pad_to_multiple_of", pad_to_multiple_of, min_value=1, allow_none=True)
    if padding == "max_length" and max_length is None:
        raise fail("max_length", max_length, 'be given when padding="max_length"')
    return max_length, mult


# ---------------------------------------------------------------------------------------------
# The vectorised core
# ---------------------------------------------------------------------------------------------

def _kept_lengths(name: str, sequences: list[Any], lengths: np.ndarray, *, padding: str, max_length: int | None,
                  truncation: bool) -> np.ndarray:
    if max_length is None:
        return lengths
    if truncation:
        return np.minimum(lengths, max_length)
    if padding == "max_length" and lengths.max() > max_length:
        i = int(np.argmax(lengths > max_length))
        raise fail(f"{name}[{i}]", sequences[i],
                   f"have at most max_length={max_length} tokens when truncation=False "
                   f"(it has {int(lengths[i])})")
    return lengths  # dynamic padding without truncation: max_length plays no part


def _width(kept: np.ndarray, *, padding: str, max_length: int | None, mult: int | None) -> int:
    w = int(max_length) if padding == "max_length" else int(kept.max())
    if mult:
        w = -(-w // mult) * mult
    return w


def _truncate_flat(flat: torch.Tensor, lengths: torch.Tensor, kept: torch.Tensor, side: str) -> torch.Tensor:
    """Drop truncated tokens from the concatenation, all rows at once."""
    if bool((kept == lengths).all()):
        return flat
    starts = torch.cumsum(lengths, 0) - lengths
    within = torch.arange(flat.numel()) - torch.repeat_interleave(starts, lengths)
    rep_kept = torch.repeat_interleave(kept, lengths)
    if side == "right":
        keep = within < rep_kept
    else:
        keep = within >= torch.repeat_interleave(lengths, lengths) - rep_kept
    return flat[keep]


def _fill(flat: torch.Tensor, kept: torch.Tensor, width: int, side: str, pad_value: int
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded ``B x width`` tensor, boolean mask and the column where each row's tokens start."""
    cols = torch.arange(width)
    start = (width - kept) if side == "left" else torch.zeros_like(kept)
    mask = (cols[None, :] >= start[:, None]) & (cols[None, :] < (start + kept)[:, None])
    out = torch.full((kept.numel(), width), pad_value, dtype=flat.dtype)
    # Boolean-mask assignment walks the mask row-major, exactly the order of the concatenation.
    out[mask] = flat
    return out, mask, start


def pad_batch(sequences: Sequence[Any], *, padding: str = "longest", max_length: int | None = None,
              pad_to_multiple_of: int | None = None, padding_side: str = "right", truncation: bool = True,
              truncation_side: str = "right", pad_id: int = 0,
              return_position_ids: bool = True) -> dict[str, torch.Tensor]:
    """Pad (and truncate) token-id sequences into one batch.

    ``sequences`` is a list of lists, 1-D integer numpy arrays or 1-D integer tensors of ids >= 0.

    * ``padding="longest"``: width = the longest kept sequence; ``"max_length"``: width = ``max_length``.
      Either is then rounded up to a multiple of ``pad_to_multiple_of`` when given.
    * With ``truncation`` (default) and ``max_length``, longer sequences keep ``max_length`` tokens,
      dropped from ``truncation_side``. With ``truncation=False`` a too-long sequence is an error under
      ``padding="max_length"`` and ``max_length`` is ignored under ``padding="longest"``.

    Returns a dict of tensors:

    * ``input_ids`` (long, B x W): pads are ``pad_id``;
    * ``attention_mask`` (long, B x W): 1 on real tokens, 0 on pads (as Hugging Face does);
    * ``position_ids`` (long, B x W, unless ``return_position_ids=False``): ``0..len-1`` over the real
      tokens whichever side the pads are on (the first real token is 0 under left padding too);
      pads get 0;
    * ``seq_lengths`` (long, B): tokens kept per row;
    * ``truncated_tokens`` (long, 0-d tensor): tokens dropped by truncation in the whole batch
      (a tensor, so ``{k: v.to(device) for k, v in batch.items()}`` works; ``int()`` it to count).
    """
    max_length, mult = _check_options(padding, max_length, pad_to_multiple_of, padding_side, truncation,
                                      truncation_side)
    pad_id = check_int("pad_id", pad_id, min_value=0)
    return_position_ids = check_bool("return_position_ids", return_position_ids)
    flat, lengths, seqs = _concat("sequences", sequences, allow_negative=False, allow_empty=False)
    kept = _kept_lengths("sequences", seqs, lengths, padding=padding, max_length=max_length,
                         truncation=truncation)
    width = _width(kept, padding=padding, max_length=max_length, mult=mult)
    return _assemble(torch.from_numpy(flat), torch.from_numpy(lengths), torch.from_numpy(kept), width,
                     padding_side, truncation_side, pad_id, return_position_ids)


def _assemble(flat: torch.Tensor, lengths: torch.Tensor, kept: torch.Tensor, width: int, padding_side: str,
              truncation_side: str, pad_id: int, return_position_ids: bool) -> dict[str, torch.Tensor]:
    flat = _truncate_flat(flat, lengths, kept, truncation_side)
    ids, mask, start = _fill(flat, kept, width, padding_side, pad_id)
    out = {"input_ids": ids, "attention_mask": mask.long()}
    if return_position_ids:
        out["position_ids"] = (torch.arange(width)[None, :] - start[:, None]) * mask
    out["seq_lengths"] = kept.clone()
    out["truncated_tokens"] = (lengths - kept).sum()
    return out


def pad_labels(labels: Sequence[Any], width: int, *, padding_side: str = "right",
               ignore_index: int = -100) -> torch.Tensor:
    """Pad per-token labels (one integer list per row, each at most ``width`` long) to ``B x width``.

    Pad slots get ``ignore_index`` (``-100`` is what ``torch.nn.CrossEntropyLoss`` skips). Labels may be
    negative (already-ignored tokens). Use the same ``padding_side`` as the ids so labels stay aligned.
    No truncation happens here: :class:`PaddingCollator` truncates labels together with their ids.
    """
    width = check_int("width", width, min_value=1)
    check_choice("padding_side", padding_side, SIDES)
    ignore_index = check_int("ignore_index", ignore_index)
    flat, lengths, seqs = _concat("labels", labels, allow_negative=True, allow_empty=True)
    if lengths.max() > width:
        i = int(np.argmax(lengths > width))
        raise fail(f"labels[{i}]", seqs[i], f"hold at most width={width} labels (it has {int(lengths[i])})")
    out, _, _ = _fill(torch.from_numpy(flat), torch.from_numpy(lengths), width, padding_side, ignore_index)
    return out


class PaddingCollator:
    """A ``DataLoader`` ``collate_fn`` that pads a list of examples with :func:`pad_batch`.

    Examples are either all dicts or all plain id sequences (lists, 1-D arrays or tensors).
    A dict needs ``"input_ids"``; its ``"labels"`` may be one int/float per example (stacked) or a
    per-token list as long as its ids (truncated with them, padded with ``ignore_index``); any
    other key must hold one int/float per example and is stacked. Every example must have the
    same keys. The result holds ``input_ids``, ``attention_mask``, ``position_ids``, ``seq_lengths``,
    ``truncated_tokens`` (see :func:`pad_batch`), then ``labels`` and the other keys.
    """

    def __init__(self, padding: str = "longest", max_length: int | None = None,
                 pad_to_multiple_of: int | None = None, padding_side: str = "right",
                 truncation_side: str = "right", pad_id: int = 0, ignore_index: int = -100,
                 truncation: bool = True) -> None:
        # Check everything now, so a bad collator fails where it is built, not inside a worker.
        self.max_length, self.pad_to_multiple_of = _check_options(
            padding, max_length, pad_to_multiple_of, padding_side, truncation, truncation_side)
        self.padding = padding
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.truncation = truncation
        self.pad_id = check_int("pad_id", pad_id, min_value=0)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def __repr__(self) -> str:
        return (f"PaddingCollator(padding={self.padding!r}, max_length={self.max_length!r}, "
                f"pad_to_multiple_of={self.pad_to_multiple_of!r}, padding_side={self.padding_side!r}, "
                f"truncation_side={self.truncation_side!r}, pad_id={self.pad_id!r}, "
                f"ignore_index={self.ignore_index!r}, truncation={self.truncation!r})")

    def __call__(self, examples: Sequence[Any]) -> dict[str, torch.Tensor]:
        examples = check_list("examples", examples, items="examples", item="example")
        dicts = [isinstance(e, Mapping) for e in examples]
        if any(dicts) and not all(dicts):
            i = dicts.index(not dicts[0])
            raise fail(f"examples[{i}]", examples[i],
                       f"be a {'dict' if dicts[0] else 'sequence of ids'} like examples[0] "
                       "(dict and plain-list examples cannot be mixed)")
        if not dicts[0]:
            return self._pad(examples)
        keys = list(examples[0].keys())
        for i, e in enumerate(examples):
            if "input_ids" not in e:
                raise fail(f"examples[{i}]", e, "have an 'input_ids' key")
            if set(e.keys()) != set(keys):
                raise fail(f"examples[{i}]", e, f"have the same keys as examples[0] {sorted(keys)}")
        for k in keys:
            if k in _BUILT_KEYS:
                raise fail("examples[0]", examples[0], f"not carry {k!r}; the collator builds it")
        ids = [e["input_ids"] for e in examples]
        out = self._pad(ids)
        for k in keys:
            if k == "input_ids":
                continue
            values = [e[k] for e in examples]
            if k == "labels" and any(is_per_token(v) for v in values):
                out[k] = self._token_labels(ids, values)
            else:
                out[k] = stack_scalars(k, values)
        return out

    def _pad(self, ids: list[Any]) -> dict[str, torch.Tensor]:
        return pad_batch(ids, padding=self.padding, max_length=self.max_length,
                         pad_to_multiple_of=self.pad_to_multiple_of, padding_side=self.padding_side,
                         truncation=self.truncation, truncation_side=self.truncation_side, pad_id=self.pad_id)

    def _token_labels(self, ids: list[Any], labels: list[Any]) -> torch.Tensor:
        for i, v in enumerate(labels):
            if not is_per_token(v):
                raise fail(f"examples[{i}]['labels']", v,
                           "be a per-token list like the other examples' labels")
        flat, lengths, seqs = _concat("labels", labels, allow_negative=True, allow_empty=True)
        id_lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        bad = np.flatnonzero(lengths != id_lengths)
        if bad.size:
            i = int(bad[0])
            raise fail(f"examples[{i}]['labels']", labels[i],
                       f"have one label per input id ({int(id_lengths[i])}), not {int(lengths[i])}")
        kept = _kept_lengths("labels", labels, lengths, padding=self.padding, max_length=self.max_length,
                             truncation=self.truncation)
        width = _width(kept, padding=self.padding, max_length=self.max_length, mult=self.pad_to_multiple_of)
        flat_t = _truncate_flat(torch.from_numpy(flat), torch.from_numpy(lengths), torch.from_numpy(kept),
                                self.truncation_side)
        out, _, _ = _fill(flat_t, torch.from_numpy(kept), width, self.padding_side, self.ignore_index)
        return out
