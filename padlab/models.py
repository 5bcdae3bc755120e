"""The small encoder the notebooks train, and BERT-base and BERT-large-size configs for GPUs.

One model serves three uses:

* **padded batches** (``attention_mask``, optional ``position_ids``), left or right padded;
* **packed rows** (``block_mask``, restarting ``position_ids``), several sequences per row with
  no attention across sequences: a dense bool mask (SDPA) or a FlexAttention ``BlockMask``
  from :func:`padlab.attention.document_block_mask` (the ``packed-flex`` path; build it once
  per step outside a compiled model and pass it in: every layer shares it);
* **padding-free (varlen) batches**: a ``torch.nested`` jagged tensor of ids, or flat ids with
  ``cu_seqlens`` offsets, running SDPA on nested tensors where the installed torch supports it
  (see :func:`nested_supported`).

Design choices (each documented where it matters):

* **Pre-LN** layers (LayerNorm before attention and before the FFN, one final LayerNorm), which
  train from scratch without warm-up tricks; BERT itself is post-LN. FLOPs and parameter counts
  are the same either way.
* Attention is :func:`torch.nn.functional.scaled_dot_product_attention` with one boolean
  ``attn_mask`` (``True`` = may attend) of shape ``(B, 1, 1, L)`` (padding only) or
  ``(B, 1, L, L)`` (block mask), built by :func:`sdpa_mask`. No query row is ever fully
  masked: a row without any real token may attend everywhere, and under a block mask every
  query may attend to itself. A fully masked row is a 0/0 softmax (NaN in a naive softmax and
  in some fused kernels); padlab never sends one.
* Hidden states at padding positions (``attention_mask == 0``) are returned as zeros.
* The default ``position_ids`` are ``arange(L)``, as in BERT: under **left** padding pass
  position ids that start at 0 on the first real token (``padlab.padding`` makes them).
* The masked-LM decoder is **tied** to the token embedding by default (as BERT does).
* **Activation checkpointing** is a config field, ``EncoderConfig(gradient_checkpointing=True)``
  (transformers calls the same switch ``gradient_checkpointing_enable()``): in training each
  layer keeps only its input and is recomputed during backward, trading ~1/3 more compute for
  activation memory (:func:`padlab.cost.training_memory` estimates both).
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ._validate import check_choice, check_float, check_int, fail
from .attention import flex_attend, is_block_mask
from .data import CLS_ID, MASK_ID, PAD_ID, SEP_ID, UNK_ID

IGNORE_INDEX = -100

try:  # torch >= 2.10: flash attention over cu_seqlens offsets (CUDA, fp16/bf16)
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except ImportError:  # pragma: no cover - older torch
    _varlen_attn = None
_FIRST_WORD_ID = max(PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID) + 1


# --------------------------------------------------------------------------- config

@dataclass(frozen=True)
class EncoderConfig:
    """Sizes of the encoder. ``hidden`` must be a multiple of ``heads``."""

    vocab_size: int
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    ffn: int = 512
    max_position: int = 512
    num_labels: int = 2
    dropout: float = 0.0
    norm_eps: float = 1e-12
    #: Activation checkpointing: in training (``model.train()`` with grad enabled) each layer keeps
    #: only its input and is recomputed in backward (``torch.utils.checkpoint``, ``use_reentrant=False``).
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden", "layers", "heads", "ffn", "max_position", "num_labels"):
            check_int(name, getattr(self, name), min_value=1)
        if self.hidden % self.heads:
            raise fail("hidden", self.hidden, f"be a multiple of heads={self.heads}")
        check_float("dropout", self.dropout, min_value=0.0, max_value=1.0)
        if self.dropout >= 1.0:
            raise fail("dropout", self.dropout, "be < 1")
        check_float("norm_eps", self.norm_eps, min_value=0.0, min_inclusive=False)
        if not isinstance(self.gradient_checkpointing, bool):
            raise fail("gradient_checkpointing", self.gradient_checkpointing, "be True or False")

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.hidden // self.heads

    @staticmethod
    def _vocab(vocab_size: int | None) -> int:
        if vocab_size is None:
            from .data import vocab_size as shipped_vocab_size
            return shipped_vocab_size()
        return vocab_size

    @classmethod
    def tiny(cls, vocab_size: int | None = None, **overrides: Any) -> "EncoderConfig":
        """For tests and CPU demos: hidden 64, 2 layers, 4 heads, FFN 256.

        ``vocab_size`` defaults to the shipped tokenizer's vocabulary.
        """
        kw = dict(hidden=64, layers=2, heads=4, ffn=256)
        return cls(vocab_size=cls._vocab(vocab_size), **{**kw, **overrides})

    @classmethod
    def small(cls, vocab_size: int | None = None, **overrides: Any) -> "EncoderConfig":
        """What the notebooks train on a CPU: hidden 128, 2 layers, 4 heads, FFN 512."""
        kw = dict(hidden=128, layers=2, heads=4, ffn=512)
        return cls(vocab_size=cls._vocab(vocab_size), **{**kw, **overrides})

    @classmethod
    def bert_base(cls, vocab_size: int | None = None, **overrides: Any) -> "EncoderConfig":
        """BERT-base sizes: 12 layers, hidden 768, 12 heads, FFN 3072, 512 positions."""
        kw = dict(hidden=768, layers=12, heads=12, ffn=3072, max_position=512)
        return cls(vocab_size=cls._vocab(vocab_size), **{**kw, **overrides})

    @classmethod
    def bert_large(cls, vocab_size: int | None = None, **overrides: Any) -> "EncoderConfig":
        """BERT-large sizes: 24 layers, hidden 1024, 16 heads, FFN 4096, 512 positions."""
        kw = dict(hidden=1024, layers=24, heads=16, ffn=4096, max_position=512)
        return cls(vocab_size=cls._vocab(vocab_size), **{**kw, **overrides})

    def replace(self, **changes: Any) -> "EncoderConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


class HeadOutput(NamedTuple):
    """What a task model returns: ``loss`` (``None`` without labels) and ``logits``."""

    loss: Tensor | None
    logits: Tensor


# --------------------------------------------------------------------------- nested support

def _torch_version(text: str | None = None) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", str(torch.__version__ if text is None else text))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


class NestedSupport(NamedTuple):
    """What :func:`nested_supported` found: ``supported`` and a one-sentence ``reason`` (to print, not to parse)."""

    supported: bool
    reason: str


def _gpu_present() -> bool:
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken driver answers by raising: no usable GPU
        return False


def nested_supported() -> NestedSupport:
    """Whether SDPA on ``torch.nested`` jagged tensors can run here, and why (not).

    Known failure, checked by version rather than by trying (a try would kill the process): the
    CUDA build of torch >= 2.14 on a machine without a GPU (Colab's CPU runtime, PyPI's default
    wheel on a laptop) crashes inside nested-tensor SDPA; the CPU build (e.g. 2.13.0+cpu) and
    CUDA builds with a GPU work. Never raises: callers branch on ``.supported`` and fall back
    to the padded or packed path.
    """
    version = str(torch.__version__)
    if not hasattr(torch, "jagged") or not hasattr(torch.nested, "nested_tensor_from_jagged"):
        return NestedSupport(False, f"torch {version} has no jagged nested tensors (torch >= 2.3 needed)")
    cuda_build = getattr(torch.version, "cuda", None) is not None
    if cuda_build and not _gpu_present() and _torch_version() >= (2, 14):
        return NestedSupport(False, f"torch {version} is a CUDA build on a machine without a GPU; its "
                                    "nested-tensor SDPA crashes here (a CPU build such as 2.13.0+cpu works). "
                                    "Use the padded or packed path, or install a CPU build of torch.")
    return NestedSupport(True, f"torch {version}: nested jagged SDPA available")


def _require_nested() -> None:
    ok, why = nested_supported()
    if not ok:
        raise RuntimeError(f"the padding-free nested path is unavailable: {why}")


# --------------------------------------------------------------------------- masks

def sdpa_mask(attention_mask: Tensor | None = None, block_mask: Tensor | None = None) -> Tensor | None:
    """The boolean SDPA ``attn_mask`` (``True`` = may attend) for padding and/or packing.

    ``attention_mask`` ``(B, L)`` alone gives a key-padding mask ``(B, 1, 1, L)``: padding
    queries still see the real keys, so only an all-padding row could be fully masked, and such
    a row may attend everywhere (its outputs are zeroed by the encoder). With ``block_mask``
    ``(B, L, L)`` the result is ``(B, 1, L, L)``: ``block_mask & key_mask``, and every query may
    attend to itself. Either way no query row is empty, so no softmax divides 0 by 0.
    """
    if block_mask is None:
        if attention_mask is None:
            return None
        key = attention_mask.bool()
        key = key | ~key.any(dim=-1, keepdim=True)
        return key[:, None, None, :]
    m = block_mask.bool()
    if attention_mask is not None:
        m = m & attention_mask.bool()[:, None, :]
    eye = torch.eye(m.shape[-1], dtype=torch.bool, device=m.device)
    return (m | eye)[:, None]


# --------------------------------------------------------------------------- modules

class EncoderLayer(nn.Module):
    """One pre-LN Transformer layer: x + Attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        h = config.hidden
        self.heads = config.heads
        self.dropout = config.dropout
        self.norm1 = nn.LayerNorm(h, eps=config.norm_eps)
        self.qkv = nn.Linear(h, 3 * h)
        self.out = nn.Linear(h, h)
        self.norm2 = nn.LayerNorm(h, eps=config.norm_eps)
        self.ff1 = nn.Linear(h, config.ffn)
        self.ff2 = nn.Linear(config.ffn, h)
        self.drop = nn.Dropout(config.dropout)

    def _attend_padded(self, q: Tensor, k: Tensor, v: Tensor, mask: Any) -> Tensor:
        b, n, h = q.shape
        q, k, v = (t.reshape(b, n, self.heads, h // self.heads).transpose(1, 2) for t in (q, k, v))
        if is_block_mask(mask):  # packed-flex: FlexAttention skips the tiles no query may see
            if self.training and self.dropout > 0:
                raise fail("dropout", self.dropout, "be 0 with a FlexAttention BlockMask (flex has no dropout)")
            o = flex_attend(q, k, v, mask)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               dropout_p=self.dropout if self.training else 0.0)
        return o.transpose(1, 2).reshape(b, n, h)

    def _attend_varlen(self, q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor,
                       max_seqlen: int | None) -> Tensor:
        t, h = q.shape
        if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and _varlen_attn is not None \
                and not (self.training and self.dropout > 0):
            # Flash attention's varlen kernel straight on the flat tokens: no nested-tensor
            # wrapping, no padding, one launch for every sequence of the batch.
            shape = (t, self.heads, h // self.heads)
            cu = cu_seqlens.to(torch.int32)
            m = int(max_seqlen) if max_seqlen is not None else int(cu.diff().max())
            o = _varlen_attn(q.reshape(shape), k.reshape(shape), v.reshape(shape), cu, cu, m, m)
            return o.reshape(t, h)

        def nest(x: Tensor) -> Tensor:
            # SDPA on nested tensors needs contiguous (T, heads, d) values.
            x = x.reshape(t, self.heads, h // self.heads).contiguous()
            return torch.nested.nested_tensor_from_jagged(x, cu_seqlens, max_seqlen=max_seqlen).transpose(1, 2)

        o = F.scaled_dot_product_attention(nest(q), nest(k), nest(v),
                                           dropout_p=self.dropout if self.training else 0.0)
        return o.transpose(1, 2).values().reshape(t, h)

    def forward(self, x: Tensor, mask: Tensor | None = None, cu_seqlens: Tensor | None = None,
                max_seqlen: int | None = None) -> Tensor:
        """``x`` is ``(B, L, H)`` with ``mask``, or flat ``(T, H)`` with ``cu_seqlens``."""
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        if cu_seqlens is None:
            a = self._attend_padded(q, k, v, mask)
        else:
            a = self._attend_varlen(q, k, v, cu_seqlens, max_seqlen)
        x = x + self.drop(self.out(a))
        return x + self.drop(self.ff2(self.drop(F.gelu(self.ff1(self.norm2(x))))))


def _init_weights(module: nn.Module) -> None:
    # BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm.
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def _check_ids(input_ids: Any, ndim: int, what: str) -> None:
    if not isinstance(input_ids, Tensor) or input_ids.dim() != ndim or input_ids.is_floating_point() \
            or input_ids.dtype == torch.bool or input_ids.is_complex():
        shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else input_ids
        raise fail("input_ids", shape, f"be a {ndim}-D integer tensor {what}")


class Encoder(nn.Module):
    """Token + learned position embeddings, ``config.layers`` pre-LN layers, a final LayerNorm."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        if not isinstance(config, EncoderConfig):
            raise fail("config", config, "be an EncoderConfig")
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.hidden)
        self.pos_emb = nn.Embedding(config.max_position, config.hidden)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.layers))
        self.norm = nn.LayerNorm(config.hidden, eps=config.norm_eps)
        self.apply(_init_weights)

    def body_parameters(self, matmul_only: bool = False) -> int:
        """Parameters that work on every real token: all but the two embedding tables.

        The embedding lookups do no matrix multiply, so they are not body parameters. With
        ``matmul_only`` only the layers' weight matrices count (no biases, no LayerNorms): the
        part that ``FlopCounterMode`` sees.
        """
        if matmul_only:
            return sum(m.weight.numel() for m in self.layers.modules() if isinstance(m, nn.Linear))
        tables = self.tok_emb.weight.numel() + self.pos_emb.weight.numel()
        return sum(p.numel() for p in self.parameters()) - tables

    def _run_layers(self, x: Tensor, mask: Any, cu_seqlens: Tensor | None = None,
                    max_seqlen: int | None = None) -> Tensor:
        # Checkpointing only pays where a backward follows: in eval mode or under no_grad the
        # layers run plainly (nothing is saved either way).
        ckpt = self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if ckpt and cu_seqlens is not None and not (x.is_cuda and _varlen_attn is not None):
            # torch's checkpoint cannot save the nested tensors of the non-CUDA varlen path
            raise fail("gradient_checkpointing", True, "be False for varlen input off CUDA (torch.utils.checkpoint "
                                                       "cannot save nested tensors); use the padded or packed path")
        for layer in self.layers:
            if ckpt:
                x = checkpoint(layer, x, mask, cu_seqlens, max_seqlen, use_reentrant=False)
            else:
                x = layer(x, mask, cu_seqlens, max_seqlen)
        return x

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, block_mask: Tensor | None = None, *,
                cu_seqlens: Tensor | None = None, max_seqlen: int | None = None) -> Tensor:
        """Hidden states.

        * padded / packed: ``input_ids`` ``(B, L)``, ``attention_mask`` ``(B, L)`` 0/1,
          ``position_ids`` ``(B, L)`` or ``(L,)`` (default ``arange(L)``), ``block_mask``
          ``(B, L, L)`` bool (``True`` = may attend) or a FlexAttention ``BlockMask``
          ``(B, 1, L, L)`` -> ``(B, L, H)``, zeros at padding;
        * varlen: flat ``input_ids`` ``(T,)`` with ``cu_seqlens`` ``(N+1,)`` offsets (positions
          restart per sequence) -> ``(T, H)``;
        * nested: a jagged ``torch.nested`` tensor of ids ``(N, j)`` -> jagged ``(N, j, H)``.
        """
        if isinstance(input_ids, Tensor) and input_ids.is_nested:
            if any(a is not None for a in (attention_mask, position_ids, block_mask, cu_seqlens)):
                raise fail("attention_mask", "given", "be None with nested input_ids (no padding to mask)")
            return self.nested_forward(input_ids)
        if cu_seqlens is not None:
            return self.forward_varlen(input_ids, cu_seqlens, position_ids, max_seqlen=max_seqlen)
        _check_ids(input_ids, 2, "(batch, length)")
        b, n = input_ids.shape
        if attention_mask is not None and tuple(attention_mask.shape) != (b, n):
            raise fail("attention_mask", tuple(attention_mask.shape), f"have the shape of input_ids {(b, n)}")
        flex = is_block_mask(block_mask)  # a FlexAttention BlockMask (padlab.attention) or a dense bool mask
        if block_mask is not None and tuple(block_mask.shape[-2:] if flex else block_mask.shape) != \
                ((n, n) if flex else (b, n, n)) or (flex and block_mask.shape[0] not in (1, b)):
            raise fail("block_mask", tuple(block_mask.shape), f"have shape {(b, n, n)}")
        if position_ids is None:
            if n > self.config.max_position:
                raise fail("input_ids", tuple(input_ids.shape),
                           f"have length <= max_position={self.config.max_position}")
            position_ids = torch.arange(n, device=input_ids.device)
        elif tuple(position_ids.shape) not in ((b, n), (n,)):
            raise fail("position_ids", tuple(position_ids.shape), f"have shape {(b, n)} or {(n,)}")
        mask = block_mask if flex else sdpa_mask(attention_mask, block_mask)
        x = self._run_layers(self.drop(self.tok_emb(input_ids) + self.pos_emb(position_ids)), mask)
        x = self.norm(x)
        if attention_mask is not None:
            x = x * attention_mask[..., None].to(x.dtype)
        return x

    def forward_varlen(self, input_ids: Tensor, cu_seqlens: Tensor, position_ids: Tensor | None = None,
                       *, max_seqlen: int | None = None) -> Tensor:
        """Padding-free forward over flat ids ``(T,)`` split by ``cu_seqlens`` -> ``(T, H)``.

        Attention runs as SDPA on nested jagged tensors, so no token attends across sequences and
        no padding is computed. ``max_seqlen`` (optional) spares a device sync on GPUs.
        """
        _require_nested()
        _check_ids(input_ids, 1, "(total_tokens,) with cu_seqlens")
        if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 \
                or cu_seqlens.is_floating_point():
            raise fail("cu_seqlens", cu_seqlens, "be a 1-D integer tensor of N+1 offsets")
        t = input_ids.shape[0]
        cu = cu_seqlens.to(device=input_ids.device, dtype=torch.int64)
        if position_ids is None:
            # Positions restart at every sequence: global index minus the sequence's start.
            starts = torch.repeat_interleave(cu[:-1], cu.diff(), output_size=t)
            position_ids = torch.arange(t, device=input_ids.device) - starts
        elif tuple(position_ids.shape) != (t,):
            raise fail("position_ids", tuple(position_ids.shape), f"have shape {(t,)}")
        x = self._run_layers(self.drop(self.tok_emb(input_ids) + self.pos_emb(position_ids)), None, cu, max_seqlen)
        return self.norm(x)

    def nested_forward(self, input_ids: Tensor) -> Tensor:
        """Padding-free forward over a jagged nested tensor of ids ``(N, j)`` -> ``(N, j, H)``.

        Build the input with ``torch.nested.nested_tensor(list_of_1d_ids, layout=torch.jagged)``.
        """
        _require_nested()
        if not isinstance(input_ids, Tensor) or not input_ids.is_nested or input_ids.layout != torch.jagged:
            raise fail("input_ids", type(input_ids).__name__, "be a torch.jagged nested tensor")
        offsets = input_ids.offsets()
        out = self.forward_varlen(input_ids.values(), offsets)
        return torch.nested.nested_tensor_from_jagged(out, offsets)


def _flat_hidden(hidden: Tensor) -> tuple[Tensor, Tensor | None]:
    """``(B*L or T, H)`` view of hidden states, plus the offsets for nested ones."""
    if hidden.is_nested:
        return hidden.values(), hidden.offsets()
    return hidden.reshape(-1, hidden.shape[-1]), None


def _as_flat_index(positions: Any, name: str, shape: tuple[int, ...], n_flat: int) -> Tensor:
    """Flat indices into the flattened tokens from a flat index, a bool mask or (rows, cols)."""
    if isinstance(positions, (tuple, list)) and len(positions) == 2 and len(shape) == 2:
        rows, cols = (torch.as_tensor(p) for p in positions)
        return rows.to(torch.int64) * shape[1] + cols.to(torch.int64)
    if not isinstance(positions, Tensor):
        raise fail(name, positions, "be a flat index tensor, a bool mask or (rows, cols)")
    if positions.dtype == torch.bool:
        if positions.numel() != n_flat:
            raise fail(name, tuple(positions.shape), f"as a bool mask have {n_flat} elements")
        return positions.reshape(-1).nonzero().squeeze(1)
    if positions.dim() != 1 or positions.is_floating_point():
        raise fail(name, tuple(positions.shape), "be a 1-D integer index into the flattened tokens")
    return positions.to(torch.int64)


class EncoderForSequenceClassification(nn.Module):
    """Encoder + a head on each sequence's first token ([CLS]): pooler (dense+tanh) -> linear.

    ``task="classification"`` (cross-entropy over ``num_labels`` classes) or ``"regression"``
    (mean squared error against ``num_labels`` float targets, usually 1).
    """

    def __init__(self, config: EncoderConfig, task: str = "classification") -> None:
        super().__init__()
        self.task = check_choice("task", task, ("classification", "regression"))
        self.config = config
        self.encoder = Encoder(config)
        self.pooler = nn.Linear(config.hidden, config.hidden)
        self.classifier = nn.Linear(config.hidden, config.num_labels)
        self.drop = nn.Dropout(config.dropout)
        self.pooler.apply(_init_weights)
        self.classifier.apply(_init_weights)

    def body_parameters(self, matmul_only: bool = False) -> int:
        """See :meth:`Encoder.body_parameters`."""
        return self.encoder.body_parameters(matmul_only)

    def head_parameters(self, matmul_only: bool = False) -> int:
        """Pooler and classifier parameters (weights only with ``matmul_only``)."""
        mods = (self.pooler, self.classifier)
        if matmul_only:
            return sum(m.weight.numel() for m in mods)
        return sum(p.numel() for m in mods for p in m.parameters())

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, block_mask: Tensor | None = None, *,
                seq_starts: Any = None, labels: Tensor | None = None,
                cu_seqlens: Tensor | None = None, max_seqlen: int | None = None) -> HeadOutput:
        """Logits ``(num_sequences, num_labels)`` and, with ``labels``, the mean loss.

        Pooled positions: ``seq_starts`` if given (a flat index into the flattened tokens, a
        ``(B, L)`` bool mask or a ``(rows, cols)`` pair: one entry per sequence of a packed
        batch); else the first real token of each row (so left padding works), or the start of
        each sequence for varlen / nested input.
        """
        hidden = self.encoder(input_ids, attention_mask, position_ids, block_mask,
                              cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        flat, offsets = _flat_hidden(hidden)
        if seq_starts is not None:
            idx = _as_flat_index(seq_starts, "seq_starts", tuple(input_ids.shape)
                                 if not input_ids.is_nested else (), flat.shape[0])
        elif offsets is not None:
            idx = offsets[:-1]
        elif cu_seqlens is not None:
            idx = cu_seqlens[:-1].to(device=flat.device, dtype=torch.int64)
        else:
            b, n = input_ids.shape
            first = (attention_mask.to(torch.int8).argmax(dim=1) if attention_mask is not None
                     else torch.zeros(b, dtype=torch.int64, device=flat.device))
            idx = torch.arange(b, device=flat.device) * n + first
        pooled = torch.tanh(self.pooler(flat[idx]))
        logits = self.classifier(self.drop(pooled))
        loss = None
        if labels is not None:
            if labels.shape[0] != logits.shape[0]:
                raise fail("labels", tuple(labels.shape), f"have one entry per sequence ({logits.shape[0]})")
            if self.task == "classification":
                loss = F.cross_entropy(logits.float(), labels)
            else:
                if labels.numel() != logits.numel():
                    raise fail("labels", tuple(labels.shape),
                               f"hold num_labels={logits.shape[1]} targets per sequence for regression")
                loss = F.mse_loss(logits.float().reshape(labels.shape), labels.float())
        return HeadOutput(loss, logits)


class MaskedLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> decoder to the vocabulary (+ bias)."""

    def __init__(self, config: EncoderConfig, tied_weight: Tensor | None) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden, config.hidden)
        self.norm = nn.LayerNorm(config.hidden, eps=config.norm_eps)
        self.decoder = None if tied_weight is not None else nn.Linear(config.hidden, config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.apply(_init_weights)

    def forward(self, h: Tensor, tied_weight: Tensor | None = None) -> Tensor:
        h = self.norm(F.gelu(self.dense(h)))
        weight = tied_weight if self.decoder is None else self.decoder.weight
        return F.linear(h, weight, self.bias)


class EncoderForMaskedLM(nn.Module):
    """Encoder + a masked-language-model head computed only on the masked positions.

    With ``tie_weights`` (default, as BERT) the decoder matrix is the token embedding table.
    """

    def __init__(self, config: EncoderConfig, tie_weights: bool = True) -> None:
        super().__init__()
        if not isinstance(tie_weights, bool):
            raise fail("tie_weights", tie_weights, "be a bool")
        self.config = config
        self.encoder = Encoder(config)
        self.tie_weights = tie_weights
        self.head = MaskedLMHead(config, self.encoder.tok_emb.weight if tie_weights else None)

    def body_parameters(self, matmul_only: bool = False) -> int:
        """See :meth:`Encoder.body_parameters`."""
        return self.encoder.body_parameters(matmul_only)

    def head_parameters(self, matmul_only: bool = False) -> int:
        """Parameters that work on every masked token: dense, LayerNorm, decoder and its bias.

        The decoder matrix (vocab x hidden) counts here even when tied to the embedding: it
        does a matrix multiply per masked token, which the embedding lookup never does.
        """
        c = self.config
        decoder = c.vocab_size * c.hidden
        if matmul_only:
            return self.head.dense.weight.numel() + decoder
        own = sum(p.numel() for p in self.head.parameters())
        return own + (decoder if self.tie_weights else 0)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, block_mask: Tensor | None = None, *,
                masked_positions: Any = None, mlm_labels: Tensor | None = None,
                loss_normalizer: float | Tensor | None = None,
                cu_seqlens: Tensor | None = None, max_seqlen: int | None = None) -> HeadOutput:
        """Logits ``(M, vocab)`` at the ``M`` masked positions and, with labels, the loss.

        ``masked_positions``: a flat index into the flattened tokens (``B*L``, or ``T`` for
        varlen / nested input) or a bool mask of the input's shape; if omitted, the positions
        where ``mlm_labels != -100`` (labels of the input's shape), else every position.
        ``mlm_labels``: either of the input's shape (``-100`` where not masked) or ``(M,)``.
        The loss is ``sum of token losses / loss_normalizer``; the default normaliser is the
        number of masked tokens here (the mean). Pass the global number of masked tokens of the
        whole optimiser step when a step is split into micro-batches or packs (see
        :func:`sequence_loss`).
        """
        hidden = self.encoder(input_ids, attention_mask, position_ids, block_mask,
                              cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        flat, _ = _flat_hidden(hidden)
        n_flat = flat.shape[0]
        shape = (n_flat,) if input_ids.is_nested else tuple(input_ids.shape)
        full_labels = mlm_labels is not None and mlm_labels.numel() == n_flat and \
            (mlm_labels.is_nested or tuple(mlm_labels.shape) == shape)
        if full_labels and mlm_labels.is_nested:
            mlm_labels = mlm_labels.values()
        if masked_positions is None and full_labels:
            masked_positions = mlm_labels.reshape(-1) != IGNORE_INDEX
        if masked_positions is None:
            idx = None
            h = flat
        else:
            idx = _as_flat_index(masked_positions, "masked_positions", shape, n_flat)
            h = flat[idx]
        logits = self.head(h, self.encoder.tok_emb.weight if self.tie_weights else None)
        loss = None
        if mlm_labels is not None:
            labels = mlm_labels.reshape(-1)
            if full_labels and idx is not None:
                labels = labels[idx]
            if labels.shape[0] != logits.shape[0]:
                raise fail("mlm_labels", tuple(mlm_labels.shape),
                           f"have the input's shape or one entry per masked position ({logits.shape[0]})")
            loss = sequence_loss(logits, labels, reduction="token", normalizer=loss_normalizer)
        return HeadOutput(loss, logits)


# --------------------------------------------------------------------------- masking

def mask_tokens(input_ids: Tensor, attention_mask: Tensor | None = None, *, prob: float = 0.15,
                generator: torch.Generator | None = None, mask_id: int = MASK_ID,
                vocab_size: int | None = None, mask_prob: float = 1.0, random_prob: float = 0.0,
                special_ids: Sequence[int] = (PAD_ID, CLS_ID, SEP_ID)) -> tuple[Tensor, Tensor, Tensor]:
    """Choose about ``prob`` of the real tokens for masked-LM training.

    Returns ``(masked_ids, chosen, labels)``: a new id tensor, the bool mask of chosen
    positions, and labels (the original id where chosen, ``-100`` elsewhere). Only real tokens
    (``attention_mask == 1``) that are not in ``special_ids`` (padding, [CLS], [SEP]) can be
    chosen; each is chosen independently with probability ``prob``. A chosen token becomes
    ``mask_id`` with probability ``mask_prob``, a random word id (needs ``vocab_size``) with
    probability ``random_prob``, and stays itself otherwise. Default: every chosen token becomes
    [MASK]; BERT's 80/10/10 rule is ``mask_prob=0.8, random_prob=0.1, vocab_size=V``.

    The draws follow the tensor's layout. For the same masked tokens under every batching
    strategy, mask the flat concatenation of the examples (a 1-D tensor) before collating.
    The input is never modified.
    """
    _check_any_ids(input_ids)
    prob = check_float("prob", prob, min_value=0.0, max_value=1.0)
    mask_prob = check_float("mask_prob", mask_prob, min_value=0.0, max_value=1.0)
    random_prob = check_float("random_prob", random_prob, min_value=0.0, max_value=1.0)
    if mask_prob + random_prob > 1.0 + 1e-12:
        raise fail("random_prob", random_prob, f"be <= 1 - mask_prob = {1 - mask_prob:g}")
    mask_id = check_int("mask_id", mask_id, min_value=0)
    if random_prob > 0:
        if vocab_size is None:
            raise fail("vocab_size", vocab_size, "be given when random_prob > 0")
        check_int("vocab_size", vocab_size, min_value=_FIRST_WORD_ID + 1)
    if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
        raise fail("attention_mask", tuple(attention_mask.shape), f"have the shape of input_ids {tuple(input_ids.shape)}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise fail("generator", generator, "be a torch.Generator or None")

    dev = generator.device if generator is not None else input_ids.device
    shape = input_ids.shape
    eligible = ~torch.isin(input_ids, torch.as_tensor(list(special_ids), dtype=input_ids.dtype,
                                                       device=input_ids.device))
    if attention_mask is not None:
        eligible &= attention_mask.bool()
    u = torch.rand(shape, generator=generator, device=dev).to(input_ids.device)
    r = torch.rand(shape, generator=generator, device=dev).to(input_ids.device)
    chosen = eligible & (u < prob)
    # torch.where builds a new tensor (the input stays untouched) without a device sync.
    masked = torch.where(chosen & (r < mask_prob), torch.as_tensor(mask_id, dtype=input_ids.dtype,
                                                                    device=input_ids.device), input_ids)
    if random_prob > 0:
        words = torch.randint(_FIRST_WORD_ID, vocab_size, shape, generator=generator, device=dev)
        pick = chosen & (r >= mask_prob) & (r < mask_prob + random_prob)
        masked = torch.where(pick, words.to(device=input_ids.device, dtype=input_ids.dtype), masked)
    labels = torch.where(chosen, input_ids.to(torch.int64), torch.full_like(input_ids, IGNORE_INDEX, dtype=torch.int64))
    return masked, chosen, labels


def _check_any_ids(input_ids: Any) -> None:
    if not isinstance(input_ids, Tensor) or input_ids.is_floating_point() or input_ids.dtype == torch.bool \
            or input_ids.is_complex() or input_ids.is_nested:
        raise fail("input_ids", type(input_ids).__name__ if not isinstance(input_ids, Tensor) else input_ids.dtype,
                   "be an integer tensor")


# --------------------------------------------------------------------------- loss normalisation

def sequence_loss(logits: Tensor, labels: Tensor, *, reduction: str = "token", seq_ids: Tensor | None = None,
                  normalizer: float | Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Cross-entropy over tokens ``(N, C)`` / ``(N,)``, normalised per token or per sequence.

    * ``"token"``: ``sum of token losses / normalizer`` (default: the number of counted tokens).
      Every token weighs the same, however tokens are grouped into rows, packs or micro-batches,
      as long as ``normalizer`` is the count of the whole optimiser step.
    * ``"sequence"``: each sequence's mean token loss (``seq_ids`` ``(N,)`` maps tokens to
      sequences), summed and divided by ``normalizer`` (default: the number of sequences with a
      counted token). Every sequence weighs the same, whatever its length.
    * ``"sum"``: the plain sum (divide it yourself).

    The naive alternative, averaging each micro-batch's own mean, weighs a token by
    1 / (tokens in its micro-batch), so it changes with the batching strategy.
    """
    check_choice("reduction", reduction, ("token", "sequence", "sum"))
    if logits.dim() != 2:
        raise fail("logits", tuple(logits.shape), "be 2-D (tokens, classes)")
    if tuple(labels.shape) != (logits.shape[0],):
        raise fail("labels", tuple(labels.shape), f"have shape {(logits.shape[0],)}")
    if isinstance(normalizer, (int, float)) and not isinstance(normalizer, bool):
        check_float("normalizer", normalizer, min_value=0.0, min_inclusive=False)
    elif normalizer is not None and not isinstance(normalizer, Tensor):
        raise fail("normalizer", normalizer, "be a positive number, a tensor or None")
    tok = F.cross_entropy(logits.float(), labels, reduction="none", ignore_index=ignore_index)
    if reduction == "sum":
        return tok.sum()
    valid = labels != ignore_index
    if reduction == "token":
        denom = valid.sum().clamp(min=1) if normalizer is None else normalizer
        return tok.sum() / denom
    if seq_ids is None or tuple(seq_ids.shape) != tuple(labels.shape) or seq_ids.is_floating_point():
        raise fail("seq_ids", None if seq_ids is None else tuple(seq_ids.shape),
                   f"be an integer tensor of shape {tuple(labels.shape)} for reduction='sequence'")
    sid = seq_ids.to(torch.int64)
    n_seq = int(sid.max()) + 1 if sid.numel() else 0
    sums = tok.new_zeros(n_seq).index_add(0, sid, tok)
    counts = tok.new_zeros(n_seq).index_add(0, sid, valid.to(tok.dtype))
    per_seq = sums / counts.clamp(min=1)
    denom = (counts > 0).sum().clamp(min=1) if normalizer is None else normalizer
    return per_seq.sum() / denom


# --------------------------------------------------------------------------- FLOPs

def parameter_counts(config: EncoderConfig, *, matmul_only: bool = False) -> dict[str, int]:
    """Parameter counts by role, from the config alone (no model is built).

    Keys: ``embeddings`` (token + position tables: lookups, no matmul), ``body`` (everything of
    the encoder but the tables: layers and the final LayerNorm), ``mlm_head`` (dense, LayerNorm,
    decoder matrix and bias; the decoder counts even when tied) and ``classification_head``.
    With ``matmul_only``, biases and LayerNorms are left out of ``body`` and the heads.
    """
    if not isinstance(config, EncoderConfig):
        raise fail("config", config, "be an EncoderConfig")
    h, f, v, p, nl = config.hidden, config.ffn, config.vocab_size, config.max_position, config.num_labels
    if matmul_only:
        layer, final_norm = 4 * h * h + 2 * h * f, 0
        mlm, cls = h * h + v * h, h * h + h * nl
    else:
        layer = (3 * h * h + 3 * h) + (h * h + h) + (h * f + f) + (f * h + h) + 4 * h
        final_norm = 2 * h
        mlm, cls = (h * h + h) + 2 * h + v * h + v, (h * h + h) + (h * nl + nl)
    return {"embeddings": v * h + p * h, "body": config.layers * layer + final_norm,
            "mlm_head": mlm, "classification_head": cls}


def model_flops(config: EncoderConfig, real_tokens: int, masked_tokens: int, seq_lengths: Any, *,
                matmul_only: bool = False) -> int:
    """Training FLOPs (forward + backward) of the masked-LM model, counting real work only.

    ``6 * body * real_tokens + 6 * head * masked_tokens + 12 * layers * hidden * sum(len**2)``:
    2 FLOPs per multiply-add, a backward pass twice the forward; the last term is attention's
    ``Q K^T`` and ``A V`` (``4 L^2 H`` forward per layer). Padding and cross-sequence attention
    earn nothing. ``body``/``head`` are :func:`parameter_counts`' ``body``/``mlm_head``:
    embedding tables excluded (a lookup multiplies nothing), biases and LayerNorms included
    unless ``matmul_only`` (they add ~0.1% at BERT-base sizes). ``seq_lengths`` are the real
    sequence lengths; they must sum to ``real_tokens``.

    ``FlopCounterMode`` agrees exactly (``matmul_only``) when attention runs as plain matmuls
    (SDPA's math backend). Under fused GPU kernels (flash, memory-efficient, cuDNN) it counts
    the backward at 2.5x the forward, because those kernels recompute ``Q K^T``: 14, not 12,
    ``L^2 H`` per layer (seen on an H100, torch 2.11). Recomputation is not model work, so
    this formula leaves it out.
    """
    counts = parameter_counts(config, matmul_only=matmul_only)
    real_tokens = check_int("real_tokens", real_tokens, min_value=0)
    masked_tokens = check_int("masked_tokens", masked_tokens, min_value=0)
    if masked_tokens > real_tokens:
        raise fail("masked_tokens", masked_tokens, f"be <= real_tokens={real_tokens}")
    lens = np.asarray(seq_lengths.cpu() if isinstance(seq_lengths, Tensor) else seq_lengths)
    if lens.ndim != 1 or (lens.size and not np.issubdtype(lens.dtype, np.integer)) or (lens < 0).any():
        raise fail("seq_lengths", seq_lengths, "be a 1-D sequence of non-negative integers")
    if int(lens.sum()) != real_tokens:
        raise fail("seq_lengths", seq_lengths, f"sum to real_tokens={real_tokens}")
    # Python ints: sum(len^2) of millions of sequences overflows nothing.
    sq = int((lens.astype(np.int64) ** 2).sum())
    return (6 * counts["body"] * real_tokens + 6 * counts["mlm_head"] * masked_tokens
            + 12 * config.layers * config.hidden * sq)


def unwrap(model: nn.Module) -> nn.Module:
    """The module that holds ``model``'s own ``forward``: through ``torch.compile``'s wrapper
    (``_orig_mod``) and data-parallel wrappers (``module``), however deep; ``model`` itself otherwise."""
    if not isinstance(model, nn.Module):
        raise fail("model", type(model).__name__, "be a torch.nn.Module")
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def forward_parameters(model: nn.Module) -> "dict[str, inspect.Parameter]":
    """The parameters of ``model``'s own ``forward`` (:func:`unwrap`): a compiled or data-parallel
    model's ``forward`` is a wrapper taking ``*args, **kwargs``, which hides keywords such as
    ``use_cache`` and ``position_ids`` that the wrapped model takes and a caller must pass."""
    return dict(inspect.signature(unwrap(model).forward).parameters)


__all__ = [
    "EncoderConfig", "Encoder", "EncoderLayer", "EncoderForSequenceClassification", "EncoderForMaskedLM",
    "HeadOutput", "MaskedLMHead", "IGNORE_INDEX", "mask_tokens", "sequence_loss", "sdpa_mask",
    "nested_supported", "NestedSupport", "parameter_counts", "model_flops", "unwrap", "forward_parameters",
]
