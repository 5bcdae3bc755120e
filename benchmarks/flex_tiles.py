"""How much of attention packed-flex computes: FlexAttention tiles by block size and pack order (CPU, exact).

For FFD packs of 512 tokens of the fortunes corpus (a seeded sample of ``--rows`` packs, as one
64k-token step holds), the share of (query tile, key tile) pairs that FlexAttention skips, runs
in full (no mask function) or runs masked (on a sequence boundary), for each block size and for
the sequences of a pack in FFD order, sorted by length ascending, descending, or shuffled. The
counts are exact (:func:`padlab.attention.document_block_mask`); no timing, no GPU.

Run: ``PYTHONPATH=. python benchmarks/flex_tiles.py``.
"""
from __future__ import annotations

import argparse

import numpy as np

from padlab.attention import FLEX_BLOCK_SIZES, document_block_mask
from padlab.data import load_corpus
from padlab.packing import PackedCollator, pack

ORDERS = ("ffd", "ascending", "descending", "shuffled")


def ordered(p: np.ndarray, lens: np.ndarray, order: str, seed: int) -> np.ndarray:
    if order == "ffd":
        return p
    if order == "shuffled":
        return np.random.default_rng(seed).permutation(p)
    k = np.argsort(lens[p], kind="stable")
    return p[k] if order == "ascending" else p[k[::-1]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--capacity", type=int, default=512)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    c = load_corpus("fortunes")
    lens = np.minimum(c.lengths, a.capacity)
    perm = np.random.default_rng(0).permutation(len(lens))
    packs = [perm[p] for p in pack(lens[perm], a.capacity, algorithm="ffd").packs]
    sel = np.random.default_rng(a.seed).permutation(len(packs))[:a.rows]
    coll = PackedCollator(a.capacity, return_block_mask=False)
    print(f"fortunes, FFD packs of {a.capacity}, {a.rows} packs ({int(lens[np.concatenate([packs[i] for i in sel])].sum())} "
          f"real tokens); tile pairs as fractions of all")
    print(f"{'block':>5}  {'order':<11}{'skipped':>9}{'full':>7}{'masked':>8}{'computed':>10}")
    for bs in sorted(FLEX_BLOCK_SIZES, reverse=True):
        for order in ORDERS:
            seqs = [[list(range(int(lens[i]))) for i in ordered(packs[j], lens, order, j)] for j in sel]
            sid = coll(seqs)["seq_ids"]
            bm = document_block_mask(sid, bs)
            total = a.rows * (a.capacity // bs) ** 2
            part, full = int(bm.kv_num_blocks.sum()), int(bm.full_kv_num_blocks.sum())
            print(f"{bs:>5}  {order:<11}{1 - (part + full) / total:>9.1%}{full / total:>7.1%}{part / total:>8.1%}"
                  f"{(part + full) / total:>10.1%}")


if __name__ == "__main__":
    main()
