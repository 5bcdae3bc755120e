"""transformers interop: padlab's batches in transformers' padding-free format, and an oracle that
checks a transformers model computes the same thing on packed sequences as on each sequence alone.

**The format.** :class:`PaddingFreeCollator` returns what
``transformers.DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_position_ids=True)``
returns for the same examples: one unpadded row (``input_ids``, ``labels``, ``position_ids``: long,
``1 x T``), ``cu_seq_lens_q``/``cu_seq_lens_k`` (int32, ``S + 1``) and ``max_length_q``/``max_length_k``
(Python ints, so kernels need no device sync). Labels are the ids (or the given per-token labels)
with ``ignore_index`` at each sequence's first token: the model shifts labels left inside its loss,
so the last token of one sequence is never trained to predict the first of the next. With
``packed=True`` it takes a list of packs (each a list of examples) and concatenates their sequences.

**The trap.** transformers finds packed sequences from ``position_ids`` only when no attention mask
*and no cache* is passed; causal LMs build a cache by default (``use_cache=True``), in ``train()`` mode
too. Call the model with ``use_cache=False`` (the Trainer recipe does), or pass a mask instead:
``attention="mask"`` adds an additive float 4-D mask (``0`` where a query may attend, the dtype's
minimum elsewhere: a boolean 4-D mask is misread under ``eager``) for ``eager``/``sdpa``, and
``attention="block_mask"`` a FlexAttention ``BlockMask`` for ``flex_attention``. ``eager`` and ``sdpa``
ignore ``cu_seq_lens_*``: those are for flash-attention kernels.

**The oracle.** :func:`check_packing` runs a model on each sequence alone and on the sequences
packed, and reports the largest logit, loss and gradient differences, plus what the model's default
call (cache left on), continuing positions and ``cu_seq_lens`` alone would do.
"""
from __future__ import annotations

import copy
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .attention import dense_document_mask, document_mask_mod
from .models import forward_parameters, unwrap
from ._validate import PadlabError, check_bool, check_choice, check_float, check_int, fail

__all__ = ["ATTENTION_MODES", "PaddingFreeCollator", "additive_document_mask", "additive_mask", "document_block_mask",
           "PackingCheck", "check_packing"]

ATTENTION_MODES = ("position_ids", "mask", "block_mask")


def _ids(name: str, value: Any) -> np.ndarray:
    if isinstance(value, (str, bytes, Mapping)) or isinstance(value, numbers.Number):
        raise fail(name, value, "be a sequence of token ids")
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise fail(name, value, "be a non-empty 1-D sequence of integer ids")
    return arr.astype(np.int64, copy=False)


def _seq_ids(cu: np.ndarray) -> torch.Tensor:
    lens = np.diff(cu)
    return torch.from_numpy(np.repeat(np.arange(lens.size), lens))


def _row_seq_ids(seq_lengths: Sequence[int] | torch.Tensor, device: Any) -> torch.Tensor:
    lens = _ids("seq_lengths", seq_lengths)
    if lens.min() < 1:
        raise fail("seq_lengths", seq_lengths, "hold lengths >= 1")
    return torch.from_numpy(np.repeat(np.arange(lens.size), lens))[None].to(device)


def additive_document_mask(seq_lengths: Sequence[int] | torch.Tensor, *, causal: bool = True,
                           dtype: torch.dtype = torch.float32, device: Any = None) -> torch.Tensor:
    """``1 x 1 x T x T`` float mask for a row of sequences of ``seq_lengths``: 0 where a query may
    attend a key (same sequence, and not later when ``causal``), ``torch.finfo(dtype).min`` elsewhere.

    The rule is :func:`padlab.attention.document_mask_mod`'s; additive because eager attention
    misreads a boolean 4-D mask."""
    allowed = dense_document_mask(_row_seq_ids(seq_lengths, device), causal=causal)
    out = torch.zeros(allowed.shape, dtype=dtype, device=device)
    out.masked_fill_(~allowed, torch.finfo(dtype).min)
    return out[:, None]


def additive_mask(allowed: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A boolean ``P x T x T`` mask (True where a query may attend a key, such as
    :class:`padlab.packing.PackedCollator`'s ``block_mask``, causal with ``causal=True``) as the additive
    float ``P x 1 x T x T`` mask transformers' ``eager``/``sdpa`` take: 0 where allowed, the dtype's minimum
    elsewhere (a boolean 4-D mask is misread under ``eager``)."""
    if not isinstance(allowed, torch.Tensor) or allowed.dtype != torch.bool or allowed.ndim != 3 \
            or allowed.shape[1] != allowed.shape[2]:
        raise fail("allowed", getattr(allowed, "shape", allowed), "be a boolean P x T x T tensor")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise fail("dtype", dtype, "be a floating torch.dtype")
    out = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    out.masked_fill_(~allowed, torch.finfo(dtype).min)
    return out[:, None]


def document_block_mask(seq_lengths: Sequence[int] | torch.Tensor, *, causal: bool = True, device: Any = "cpu"):
    """A FlexAttention ``BlockMask`` (batch 1, every head) for a row of sequences of ``seq_lengths``
    (any total length), from :func:`padlab.attention.document_mask_mod`."""
    from torch.nn.attention.flex_attention import create_block_mask

    seq = _row_seq_ids(seq_lengths, device)
    T = seq.shape[1]
    return create_block_mask(document_mask_mod(seq, causal=causal), B=1, H=None, Q_LEN=T, KV_LEN=T, device=device)


class PaddingFreeCollator:
    """padlab's collators in transformers' padding-free format (see the module docstring).

    Examples are dicts with ``"input_ids"`` (and optional per-token ``"labels"``) or plain id
    sequences. ``packed=True``: the collator takes a list of packs (lists of examples, as
    :class:`padlab.packing.PackedDataset` yields) and, with ``capacity``, refuses a pack holding more
    tokens. ``max_length`` with ``truncation=True`` keeps each example's first ``max_length`` tokens.
    ``attention``: ``"position_ids"`` (the format alone: call the model with ``use_cache=False``),
    ``"mask"`` (adds an additive float ``attention_mask`` of ``mask_dtype``, for eager/sdpa) or
    ``"block_mask"`` (adds a ``BlockMask``, for flex_attention); ``causal=False`` for encoders.
    """

    def __init__(self, *, packed: bool = False, capacity: int | None = None, max_length: int | None = None,
                 truncation: bool = False, ignore_index: int = -100, attention: str = "position_ids",
                 causal: bool = True, mask_dtype: torch.dtype = torch.float32) -> None:
        self.packed = check_bool("packed", packed)
        self.capacity = check_int("capacity", capacity, min_value=1, allow_none=True)
        if self.capacity is not None and not self.packed:
            raise fail("capacity", capacity, "be given with packed=True only (use max_length for examples)")
        self.max_length = check_int("max_length", max_length, min_value=1, allow_none=True)
        self.truncation = check_bool("truncation", truncation)
        if self.truncation and self.max_length is None:
            raise fail("max_length", max_length, "be given when truncation=True")
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.attention = check_choice("attention", attention, ATTENTION_MODES)
        self.causal = check_bool("causal", causal)
        if not isinstance(mask_dtype, torch.dtype) or not mask_dtype.is_floating_point:
            raise fail("mask_dtype", mask_dtype, "be a floating torch.dtype")
        self.mask_dtype = mask_dtype

    def __repr__(self) -> str:
        return (f"PaddingFreeCollator(packed={self.packed}, capacity={self.capacity}, max_length={self.max_length}, "
                f"truncation={self.truncation}, ignore_index={self.ignore_index}, attention={self.attention!r}, "
                f"causal={self.causal})")

    def _examples(self, batch: Any) -> tuple[list[Any], list[str], list[int]]:
        if isinstance(batch, (str, bytes, Mapping)) or isinstance(batch, numbers.Number) or batch is None:
            raise fail("examples", batch, "be a list of " + ("packs" if self.packed else "examples"))
        batch = list(batch)
        if not batch:
            raise fail("examples", batch, "hold at least one " + ("pack" if self.packed else "example"))
        if not self.packed:
            return batch, [f"examples[{i}]" for i in range(len(batch))], [len(batch)]
        out, names, sizes = [], [], []
        for p, pk in enumerate(batch):
            if isinstance(pk, (str, bytes, Mapping)) or isinstance(pk, numbers.Number) or pk is None:
                raise fail(f"packs[{p}]", pk, "be a list of examples")
            pk = list(pk)
            if not pk:
                raise fail(f"packs[{p}]", pk, "hold at least one example")
            out.extend(pk)
            names.extend(f"packs[{p}][{j}]" for j in range(len(pk)))
            sizes.append(len(pk))
        return out, names, sizes

    def __call__(self, batch: Sequence[Any]) -> dict[str, Any]:
        examples, names, pack_sizes = self._examples(batch)
        ids, labels = [], []
        for e, nm in zip(examples, names):
            if isinstance(e, Mapping):
                if "input_ids" not in e:
                    raise fail(nm, e, "have an 'input_ids' key")
                a = _ids(f"{nm}['input_ids']", e["input_ids"])
                lab = e.get("labels")
                if lab is not None:
                    lab = np.asarray(lab.detach().cpu() if isinstance(lab, torch.Tensor) else lab)
                    if lab.shape != a.shape or not np.issubdtype(lab.dtype, np.integer):
                        raise fail(f"{nm}['labels']", e["labels"], f"be per-token integer labels, one per id ({a.size})")
            else:
                a, lab = _ids(nm, e), None
            if self.max_length is not None and a.size > self.max_length:
                if not self.truncation:
                    raise fail(f"{nm}", a.tolist(), f"have at most max_length={self.max_length} tokens "
                               f"(it has {a.size}; pass truncation=True)")
                a = a[:self.max_length]
                lab = None if lab is None else lab[:self.max_length]
            ids.append(a)
            labels.append(a if lab is None else lab.astype(np.int64))
        lens = np.fromiter((a.size for a in ids), dtype=np.int64, count=len(ids))
        if self.packed and self.capacity is not None:
            sizes = np.add.reduceat(lens, np.r_[0, np.cumsum(pack_sizes)[:-1]])
            if sizes.max() > self.capacity:
                p = int(np.argmax(sizes > self.capacity))
                raise fail(f"packs[{p}]", f"{int(sizes[p])} tokens", f"fit in capacity={self.capacity} tokens")
        cu = np.zeros(lens.size + 1, dtype=np.int64)
        np.cumsum(lens, out=cu[1:])
        flat_labels = np.concatenate(labels)
        flat_labels[cu[:-1]] = self.ignore_index  # no sequence's first token is a target
        T = int(cu[-1])
        out: dict[str, Any] = {
            "input_ids": torch.from_numpy(np.concatenate(ids))[None],
            "labels": torch.from_numpy(flat_labels)[None],
            "position_ids": torch.from_numpy(np.arange(T) - np.repeat(cu[:-1], lens))[None],
            "cu_seq_lens_q": torch.from_numpy(cu.astype(np.int32)),
            "cu_seq_lens_k": torch.from_numpy(cu.astype(np.int32)),
            "max_length_q": int(lens.max()),
            "max_length_k": int(lens.max()),
        }
        if self.attention == "mask":
            out["attention_mask"] = additive_document_mask(lens, causal=self.causal, dtype=self.mask_dtype)
        elif self.attention == "block_mask":
            out["attention_mask"] = document_block_mask(lens, causal=self.causal)
        return out


# ----------------------------------------------------------------------------- the oracle

@dataclass(frozen=True)
class PackingCheck:
    """What :func:`check_packing` measured (differences are largest absolute ones, packed vs alone).

    ``grad_diff`` is NaN and ``grad_checked`` False where the attention has no backward on this device
    (FlexAttention on the CPU). ``ok``: the packed call (``method``) matched every sequence alone within ``atol`` in logits, loss and
    gradients. ``method``: ``"position_ids"`` (padding-free, ``use_cache=False``) or ``"mask"`` (a 4-D
    additive mask, or a ``BlockMask`` under flex_attention, with restarted positions), the first that
    passed (``"position_ids"`` if neither did); with ``negative_control`` the packed call drops the
    boundaries (positions continue, no mask) and ``method`` is ``"none"``.
    Probes (each a forward pass, logits only):
    ``default_call_cross_attends``: the padding-free batch with the cache left on (the model's default
    call) differs, i.e. sequences see each other; ``position_ids_honoured``/``mask_honoured``: each way
    works; ``restart_needed``: under the document mask, continuing positions (no restart) differ
    (True for absolute positions, False for rotary); ``cu_seq_lens_honoured``: ``cu_seq_lens_*`` alone,
    positions continuing and no mask, keep sequences apart (False under eager/sdpa/flex).
    ``limits``: one sentence per way that does not work, for people.
    """

    model: str
    attn_implementation: str
    causal: bool
    method: str
    ok: bool
    atol: float
    logits_diff: float
    loss_diff: float
    grad_diff: float
    grad_checked: bool
    default_call_cross_attends: bool
    default_call_logits_diff: float
    position_ids_honoured: bool
    position_ids_logits_diff: float
    mask_honoured: bool
    mask_logits_diff: float
    restart_needed: bool
    no_restart_logits_diff: float
    cu_seq_lens_honoured: bool
    cu_seq_lens_logits_diff: float
    negative_control: bool
    limits: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_ATOL = {torch.float64: 1e-8, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def _is_causal(model) -> bool:
    cfg = model.config
    if getattr(cfg, "is_encoder_decoder", False):
        raise fail("model", type(model).__name__, "be a decoder-only or encoder-only model (not encoder-decoder)")
    name = type(model).__name__
    if "CausalLM" in name or "LMHead" in name or getattr(cfg, "is_decoder", False):
        return True
    if "MaskedLM" in name or "ForPreTraining" in name:
        return False
    raise fail("model", name, "be a causal LM (…ForCausalLM) or a masked LM (…ForMaskedLM)")


class _Runner:
    """Calls the model the ways the oracle compares, on one device and dtype, logits as float64."""

    def __init__(self, model, seqs: list[np.ndarray], causal: bool, impl: str):
        self.model, self.seqs, self.causal, self.impl = model, seqs, causal, impl
        self.device = next(model.parameters()).device
        lens = np.array([s.size for s in seqs])
        self.lens = lens
        self.flat = torch.from_numpy(np.concatenate(seqs))[None].to(self.device)
        cu = np.zeros(lens.size + 1, dtype=np.int64)
        np.cumsum(lens, out=cu[1:])
        self.cu = cu
        self.restart = torch.from_numpy(np.arange(cu[-1]) - np.repeat(cu[:-1], lens))[None].to(self.device)
        self.cont = torch.arange(int(cu[-1]), device=self.device)[None]
        params = forward_parameters(model)
        self.takes_cache = "use_cache" in params
        self.takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
        self.dtype = next(model.parameters()).dtype

    def mask(self):
        if self.impl == "flex_attention":
            return document_block_mask(self.lens, causal=self.causal, device=self.device)
        return additive_document_mask(self.lens, causal=self.causal, dtype=self.dtype, device=self.device)

    def labels(self, ids: torch.Tensor, starts: np.ndarray) -> torch.Tensor:
        lab = ids.clone()
        if self.causal:
            lab[0, torch.from_numpy(starts)] = -100
        return lab

    def call(self, ids, *, positions, mask=None, cache: bool | None = False, extra=None, labels=None):
        kw: dict[str, Any] = {"input_ids": ids, "position_ids": positions}
        if mask is not None:
            kw["attention_mask"] = mask
        if cache is not None and self.takes_cache:
            kw["use_cache"] = cache
        if labels is not None:
            kw["labels"] = labels
        kw.update(extra or {})
        return self.model(**kw)

    def packed(self, way: str, *, cache: bool | None = False, labels: bool = False):
        """One packed forward: way is position_ids | mask | no_restart | cu_seq_lens | none."""
        positions = self.restart if way in ("position_ids", "mask") else self.cont
        mask = self.mask() if way in ("mask", "no_restart") else None
        extra = None
        if way == "cu_seq_lens":
            cu = torch.from_numpy(self.cu.astype(np.int32)).to(self.device)
            m = int(self.lens.max())
            extra = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": m, "max_length_k": m}
        lab = self.labels(self.flat, self.cu[:-1]) if labels else None
        return self.call(self.flat, positions=positions, mask=mask, cache=cache, extra=extra, labels=lab)


def _grads(model) -> list[torch.Tensor]:
    return [p.grad.detach().double().clone() if p.grad is not None else torch.zeros_like(p, dtype=torch.float64)
            for p in model.parameters()]


def check_packing(model, sequences: Sequence[Sequence[int]], *, attn_implementation: str | None = None,
                  atol: float | None = None, negative_control: bool = False) -> PackingCheck:
    """Does ``model`` compute the same on ``sequences`` packed as on each sequence alone?

    ``model``: a transformers causal LM (any family whose ``forward`` takes ``position_ids``) or a
    masked LM. ``sequences``: lists of token ids, each at least 2 long. ``attn_implementation``: run
    under this one (``"eager"``, ``"sdpa"``, ``"flex_attention"``, ...) and restore the model's own
    afterwards (default: the model's). ``atol``: tolerance on logits, loss and gradients (default by the
    model's dtype: 1e-4 for float32). The model is not changed (a copy is run, in eval mode so dropout
    is off; gradients are taken of the per-token mean loss: labels are the ids, shifted by the model for
    a causal LM). A model wrapped by ``torch.compile`` (or a data-parallel wrapper) is run through its
    wrapper, the path its training takes; ``model`` in the result names the wrapped class. See
    :class:`PackingCheck` for the fields.
    """
    if not isinstance(model, torch.nn.Module) or not hasattr(unwrap(model), "config"):
        raise fail("model", model, "be a transformers model (a torch.nn.Module with a config)")
    inner = unwrap(model)
    causal = _is_causal(inner)
    if "position_ids" not in forward_parameters(model):
        raise fail("model", type(inner).__name__, "take position_ids in forward")
    if isinstance(sequences, (str, bytes, Mapping)) or sequences is None:
        raise fail("sequences", sequences, "be a list of lists of token ids")
    seqs = [_ids(f"sequences[{i}]", s) for i, s in enumerate(sequences)]
    if len(seqs) < 2:
        raise fail("sequences", sequences, "hold at least 2 sequences (one alone packs nothing)")
    vocab = model.get_input_embeddings().num_embeddings
    for i, s in enumerate(seqs):
        if s.size < 2:
            raise fail(f"sequences[{i}]", s.tolist(), "hold at least 2 tokens (a causal loss needs a target)")
        if s.min() < 0 or s.max() >= vocab:
            raise fail(f"sequences[{i}]", s.tolist(), f"hold ids in [0, {vocab})")
    negative_control = check_bool("negative_control", negative_control)
    # A compiled (or data-parallel) model is copied wrapper and all, and run through its wrapper: the oracle
    # then checks the code path training will take.
    model = copy.deepcopy(model)
    if attn_implementation is not None:
        if not isinstance(attn_implementation, str):
            raise fail("attn_implementation", attn_implementation, "be a name such as 'eager', 'sdpa'")
        try:
            unwrap(model).set_attn_implementation(attn_implementation)
        except (ValueError, ImportError) as e:
            raise PadlabError(f"attn_implementation must be one this model and installation support; "
                              f"got {attn_implementation!r} ({str(e).splitlines()[0][:160]})") from None
    impl = model.config._attn_implementation
    atol = check_float("atol", atol if atol is not None else _ATOL.get(next(model.parameters()).dtype, 1e-4),
                       min_value=0.0)
    model.eval()
    run = _Runner(model, seqs, causal, impl)

    # Each sequence alone: its logits, its summed loss, the summed-loss gradients; divided by the
    # number of targets in all, this is the per-token mean loss of the packed step.
    n_targets = int(sum(s.size - 1 for s in seqs)) if causal else int(run.lens.sum())
    grad_checked = True

    def alone() -> tuple[torch.Tensor, float]:
        logits, loss = [], 0.0
        for s in seqs:
            ids = torch.from_numpy(s)[None].to(run.device)
            pos = torch.arange(s.size, device=run.device)[None]
            out = run.call(ids, positions=pos, labels=ids)
            k = s.size - 1 if causal else s.size
            if grad_checked:
                (out.loss * k / n_targets).backward()
            loss += float(out.loss.detach().double()) * k / n_targets
            logits.append(out.logits.detach().double()[0])
        return torch.cat(logits), loss

    model.zero_grad(set_to_none=True)
    try:
        ref_logits, alone_loss = alone()
    except NotImplementedError:  # e.g. FlexAttention has no backward on the CPU: compare forwards only
        grad_checked = False
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            ref_logits, alone_loss = alone()
    ref_grads = _grads(model)

    def logits_diff(way: str, cache: bool | None = False) -> float:
        with torch.no_grad():
            out = run.packed(way, cache=cache)
        return float((out.logits.double()[0] - ref_logits).abs().max())

    probes = {way: logits_diff(way) for way in ("position_ids", "mask", "no_restart", "cu_seq_lens")}
    default_diff = logits_diff("position_ids", cache=None)
    if negative_control:
        method = "none"
    else:
        method = "position_ids" if probes["position_ids"] <= atol or probes["mask"] > atol else "mask"
    model.zero_grad(set_to_none=True)
    with torch.set_grad_enabled(grad_checked):
        out = run.packed(method, labels=True)
    ldiff = float((out.logits.detach().double()[0] - ref_logits).abs().max())
    loss_diff = abs(float(out.loss.detach().double()) - alone_loss)
    if grad_checked:
        out.loss.backward()
        packed_grads = _grads(model)
        grad_scale = max(1.0, max(float(g.abs().max()) for g in ref_grads))
        grad_diff = max(float((a - b).abs().max()) for a, b in zip(packed_grads, ref_grads))
    else:
        grad_scale, grad_diff = 1.0, float("nan")
    ok = ldiff <= atol and loss_diff <= atol and (not grad_checked or grad_diff <= atol * grad_scale)

    limits = []
    if not grad_checked:
        limits.append(f"{impl} has no backward on {run.device.type} here: logits and loss compared, gradients not")
    if probes["position_ids"] > atol:
        limits.append(f"{type(inner).__name__} under {impl} does not honour packed position_ids "
                      f"(logits off by {probes['position_ids']:.3g}): pass the mask")
    if probes["mask"] > atol:
        limits.append(f"{type(inner).__name__} under {impl} does not honour a document mask "
                      f"(logits off by {probes['mask']:.3g})")
    if probes["cu_seq_lens"] > atol:
        limits.append(f"{impl} ignores cu_seq_lens_* (a flash-attention varlen argument): without restarted "
                      f"positions or a mask, sequences attend to each other (logits off by {probes['cu_seq_lens']:.3g})")
    if default_diff > atol and causal:
        limits.append("the default call (cache left on) attends across sequences: pass use_cache=False "
                      f"(logits off by {default_diff:.3g})")
    return PackingCheck(
        model=type(inner).__name__, attn_implementation=impl, causal=causal, method=method, ok=bool(ok),
        atol=atol, logits_diff=ldiff, loss_diff=loss_diff, grad_diff=grad_diff, grad_checked=grad_checked,
        default_call_cross_attends=default_diff > atol, default_call_logits_diff=default_diff,
        position_ids_honoured=probes["position_ids"] <= atol, position_ids_logits_diff=probes["position_ids"],
        mask_honoured=probes["mask"] <= atol, mask_logits_diff=probes["mask"],
        restart_needed=probes["no_restart"] > atol, no_restart_logits_diff=probes["no_restart"],
        cu_seq_lens_honoured=probes["cu_seq_lens"] <= atol, cu_seq_lens_logits_diff=probes["cu_seq_lens"],
        negative_control=negative_control, limits=tuple(limits))
