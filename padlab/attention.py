"""Document masks for FlexAttention over packed rows (the ``packed-flex`` path).

A packed row holds several sequences back to back, then padding. ``seq_ids`` ``(B, L)`` says
which sequence of its row each token belongs to (``0, 1, ...``; ``-1`` on padding), as
:class:`padlab.packing.PackedCollator` returns it. The rule, the same as the collator's dense
``block_mask``:

* a real token attends to the real tokens of its own sequence only;
* a padding token attends to itself only (so no softmax row is empty; its output means nothing);
* with ``causal=True`` (a decoder) a real token attends to no later token: the document mask inside
  the causal mask, the rule of ``PackedCollator(causal=True)``.

:func:`document_mask_mod` is that rule as a FlexAttention ``mask_mod`` (the definition).
:func:`document_block_mask` turns ``seq_ids`` into a :class:`BlockMask` without materialising the
``B x L x L`` mask: it counts, per ``block_size`` tile, how many allowed (query, key) pairs the
tile holds (a product of per-tile sequence histograms), so an empty tile is skipped, a full tile
runs without the mask function, and only the tiles on a sequence boundary evaluate it. It makes
no host sync (static shapes, graph-capturable). :func:`document_block_mask_reference` builds the
same mask by evaluating the rule on every pair (``create_block_mask``); tests hold them equal.

Build the block mask once per step, outside the compiled model, and pass it in: every layer
shares it. :func:`flex_attend` calls FlexAttention with the kernel tile sizes a block size needs
(a block of 64 needs kernel tiles that divide it; torch's defaults are 128).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import warnings

import torch
from torch import Tensor

from ._validate import check_bool, check_int, fail

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, create_mask
    from torch.nn.attention.flex_attention import flex_attention as _torch_flex_attention
except ImportError:  # pragma: no cover - older torch
    BlockMask = None
    create_block_mask = create_mask = None
    _torch_flex_attention = None

__all__ = ["BlockMask", "FlexSupport", "FlexFallbackWarning", "flex_support", "document_mask_mod",
           "document_block_mask", "document_block_mask_reference", "dense_document_mask", "packed_block_mask",
           "flex_kernel_options", "flex_compile_options", "flex_attend", "is_block_mask", "FLEX_BLOCK_SIZES"]

#: Block sizes the flex path accepts (square tiles; each must divide the row width).
FLEX_BLOCK_SIZES = (16, 32, 64, 128)


class FlexSupport(NamedTuple):
    """Whether FlexAttention can run here (``forward``) and train (``backward``), and why not."""

    forward: bool
    backward: bool
    reason: str


def flex_support(device: "str | torch.device") -> FlexSupport:
    """What FlexAttention can do on ``device``: CUDA runs both passes; the CPU the forward only.

    On the CPU, torch's FlexAttention has no backward (training there falls back to the dense
    block mask of :class:`padlab.packing.PackedCollator`, the ``packed`` path).
    """
    dev = torch.device(device)
    if _torch_flex_attention is None:
        return FlexSupport(False, False, f"torch {torch.__version__} has no FlexAttention (torch >= 2.5 needed)")
    if dev.type == "cuda":
        return FlexSupport(True, True, "CUDA: FlexAttention forward and backward (Triton kernels under torch.compile)")
    return FlexSupport(True, False, f"{dev.type}: FlexAttention runs the forward only (no backward on "
                                    f"{dev.type}); training falls back to the dense block mask")


def is_block_mask(obj: object) -> bool:
    """Whether ``obj`` is a FlexAttention :class:`BlockMask`."""
    return BlockMask is not None and isinstance(obj, BlockMask)


def _check_seq_ids(seq_ids: object) -> Tensor:
    if not isinstance(seq_ids, Tensor) or seq_ids.dim() != 2 or seq_ids.is_floating_point() \
            or seq_ids.dtype == torch.bool or seq_ids.is_complex():
        raise fail("seq_ids", tuple(seq_ids.shape) if isinstance(seq_ids, Tensor) else seq_ids,
                   "be a 2-D integer tensor (rows, capacity), -1 on padding")
    return seq_ids


def _check_block(block_size: int, width: int) -> int:
    block_size = check_int("block_size", block_size)
    if block_size not in FLEX_BLOCK_SIZES:
        raise fail("block_size", block_size, f"be one of {FLEX_BLOCK_SIZES}")
    if width % block_size:
        raise fail("block_size", block_size, f"divide the row width {width}")
    return block_size


def document_mask_mod(seq_ids: Tensor, *, causal: bool = False) -> Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]:
    """The document rule as a FlexAttention ``mask_mod(b, h, q, kv)`` over ``seq_ids`` ``(B, L)``.

    A token attends to the tokens of its own sequence (and only to earlier ones when ``causal``);
    a padding token (id -1) only to itself. The one definition of the rule: the encoder's
    packed-flex path, the dense masks and :mod:`padlab.hf`'s decoder masks all evaluate it.
    """
    seq_ids = _check_seq_ids(seq_ids)
    causal = check_bool("causal", causal)

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        sq = seq_ids[b, q]
        same = (sq == seq_ids[b, kv]) & (sq >= 0)
        if causal:
            same = same & (q >= kv)
        return same | (q == kv)

    return mask_mod


def document_block_mask_reference(seq_ids: Tensor, block_size: int = 128, *, causal: bool = False) -> "BlockMask":
    """The block mask by evaluating :func:`document_mask_mod` on every (query, key) pair."""
    seq_ids = _check_seq_ids(seq_ids)
    b, n = seq_ids.shape
    block_size = _check_block(block_size, n)
    return create_block_mask(document_mask_mod(seq_ids, causal=causal), b, None, n, n, device=seq_ids.device,
                             BLOCK_SIZE=block_size)


def document_block_mask(seq_ids: Tensor, block_size: int = 128, *, causal: bool = False) -> "BlockMask":
    """The :class:`BlockMask` of the document rule over ``seq_ids`` ``(B, L)``, tile by tile.

    Per tile pair ``(i, j)``, the allowed pairs are ``sum_s n_i(s) n_j(s)`` (``n_i(s)``: tokens of
    sequence ``s`` in query tile ``i``) plus, on the diagonal, one per padding token. Zero: the
    tile is skipped; ``block_size**2``: the tile is full (no mask function); else partial. Any
    layout of ``seq_ids`` works (sequences need not be contiguous); ids must be ``< L``.

    ``causal=True`` (a decoder's packed rows: B = rows, every head, Q = KV = L) keeps the tiles
    below the diagonal as they are (every key there precedes every query), drops those above it,
    and makes each diagonal tile partial (its upper triangle is masked; each token sees itself).
    """
    if BlockMask is None:  # pragma: no cover - older torch
        raise RuntimeError(flex_support("cpu").reason)
    seq_ids = _check_seq_ids(seq_ids)
    causal = check_bool("causal", causal)
    b, n = seq_ids.shape
    block_size = _check_block(block_size, n)
    nb = n // block_size
    dev = seq_ids.device
    # Histogram of sequence ids per tile: (B, tiles, L + 1); column 0 collects padding (-1 + 1).
    tile = (torch.arange(n, device=dev) // block_size).expand(b, n)
    col = (seq_ids.to(torch.int64) + 1).clamp(min=0)
    hist = torch.zeros(b, nb, n + 1, device=dev, dtype=torch.float32)
    hist.view(b, nb * (n + 1)).scatter_add_(1, tile * (n + 1) + col, torch.ones(b, n, device=dev))
    # Exact in float32: counts are at most block_size**2 <= 2**14.
    allowed = torch.einsum("bis,bjs->bij", hist[..., 1:], hist[..., 1:])
    allowed = allowed + torch.diag_embed(hist[..., 0])
    full = allowed == block_size * block_size
    partial = (allowed > 0) & ~full
    if causal:
        below = torch.ones(nb, nb, dtype=torch.bool, device=dev).tril(-1)
        diagonal = torch.eye(nb, dtype=torch.bool, device=dev)
        full = full & below
        partial = (partial & below) | diagonal

    def ordered(dense: Tensor) -> tuple[Tensor, Tensor]:
        d = dense.to(torch.int32)[:, None]  # (B, 1 head, tiles, tiles): the mask is the same for every head
        return d.sum(-1).to(torch.int32), torch.argsort(d, dim=-1, descending=True, stable=True).to(torch.int32)

    kv_num, kv_idx = ordered(partial)
    full_num, full_idx = ordered(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=block_size,
                                    mask_mod=document_mask_mod(seq_ids, causal=causal), seq_lengths=(n, n))


def dense_document_mask(seq_ids: Tensor, *, causal: bool = False) -> Tensor:
    """The rule as a dense bool mask ``(B, L, L)`` (``True`` = may attend), for SDPA."""
    seq_ids = _check_seq_ids(seq_ids)
    b, n = seq_ids.shape
    return create_mask(document_mask_mod(seq_ids, causal=causal), b, 1, n, n, device=seq_ids.device)[:, 0]


class FlexFallbackWarning(UserWarning):
    """Training over packed rows fell back from FlexAttention to the dense block mask."""


def packed_block_mask(seq_ids: Tensor, block_size: int = 128, *, training: bool = True) -> "BlockMask | Tensor":
    """The mask a packed step trains with: a :class:`BlockMask` where FlexAttention can train on
    ``seq_ids``' device; else (the CPU) the dense ``(B, L, L)`` mask of the same rule, with a
    :class:`FlexFallbackWarning` saying why. Forward-only use (``training=False``) keeps flex."""
    seq_ids = _check_seq_ids(seq_ids)
    sup = flex_support(seq_ids.device)
    if sup.backward or (sup.forward and not training):
        return document_block_mask(seq_ids, block_size)
    warnings.warn(f"packed-flex falls back to the dense block mask (the 'packed' path): {sup.reason}",
                  FlexFallbackWarning, stacklevel=2)
    return dense_document_mask(seq_ids)


def flex_kernel_options(block_size: int) -> dict[str, int] | None:
    """Kernel tile sizes for a block mask of ``block_size``: ``None`` (torch's defaults) at 128.

    torch's kernels default to 128-wide tiles (forward ``BLOCK_M``/``BLOCK_N``; backward
    ``BLOCK_M1``/``BLOCK_N1``/``BLOCK_M2``/``BLOCK_N2``), and each must divide the mask's block
    size, else compiling fails with "Q and KV block size must be divisible by BLOCK_M and BLOCK_N".
    Smaller blocks get tiles of the block size (backward's inner tiles half of it, at least 16).
    """
    block_size = check_int("block_size", block_size)
    if block_size not in FLEX_BLOCK_SIZES:
        raise fail("block_size", block_size, f"be one of {FLEX_BLOCK_SIZES}")
    if block_size == 128:
        return None
    inner = max(16, block_size // 2)
    return {"BLOCK_M": block_size, "BLOCK_N": block_size, "BLOCK_M1": inner, "BLOCK_N1": block_size,
            "BLOCK_M2": block_size, "BLOCK_N2": inner}


def flex_compile_options(block_size: int) -> dict[str, object] | None:
    """``torch.compile(..., options=...)`` a flex model of ``block_size`` needs: ``None`` at 128.

    Seen on torch 2.11 (H200): below 128 the backward has no kernel config without autotuning
    (its one default config, 128-wide, is dropped before ``kernel_options`` apply: "No choices
    exist for backend"). Autotuning the flex kernels only (GEMMs stay cuBLAS) adds a few seconds
    to the first compile.
    """
    flex_kernel_options(block_size)  # validates
    return None if block_size == 128 else {"max_autotune": True, "max_autotune_gemm_backends": "ATEN"}


def flex_attend(q: Tensor, k: Tensor, v: Tensor, block_mask: "BlockMask") -> Tensor:
    """FlexAttention of ``(B, heads, L, d)`` tensors under ``block_mask``, with matching tiles.

    Fast under ``torch.compile`` (fused Triton kernels that skip empty tiles); called eagerly it
    runs torch's unfused reference (fine for tests, slow for training).
    """
    if not is_block_mask(block_mask):
        raise fail("block_mask", type(block_mask).__name__, "be a FlexAttention BlockMask")
    bs = block_mask.BLOCK_SIZE[0]
    opts = flex_kernel_options(bs) if q.is_cuda else None
    return _torch_flex_attention(q, k, v, block_mask=block_mask, kernel_options=opts)
