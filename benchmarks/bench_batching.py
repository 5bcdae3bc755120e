"""Bucket sampler benchmark: padding efficiency and randomness against mega-batch size; speed.

Prints three tables:

(a) on each shipped corpus, for mega_batch in 1, 2, 5, ..., 100 and a full sort: token and
    attention efficiency of one epoch (batch size 32, max_length 512), and two measures of
    how much batch membership still depends on length (eta², from
    ``padlab.waste.length_eta_squared``, and ``mate_repeat``);
(b) the time to build one epoch of batches (arrays of indices) over 10 million lengths drawn
    from the shipped fortunes length distribution (target: 2 s or less);
(c) where transformers is installed (the ``bench`` extra), the time of its
    ``get_length_grouped_indices`` on the same lengths in the same run, and the ratio
    (target: 10x or more).

Run: ``python benchmarks/bench_batching.py`` (``--help`` for sizes).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch

from padlab.batching import BucketBatchSampler, TokenBudgetBatchSampler
from padlab.data import CORPORA, load_corpus
from padlab.waste import length_eta_squared, padded_batches, waste

MEGA_BATCHES = (1, 2, 5, 10, 20, 50, 100, None)


def mate_repeat(n: int, epoch0: list[np.ndarray], epoch1: list[np.ndarray]) -> float:
    """Share of pairs that share a batch in epoch 0 and again in epoch 1.

    The randomness training sees from epoch to epoch: random batches of 32 over n examples
    repeat about 31 / n of their pairs; a full sort without noise repeats every pair whose
    lengths have no ties to reshuffle.
    """
    b0, b1 = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    for ids, batches in ((b0, epoch0), (b1, epoch1)):
        sizes = np.array([len(b) for b in batches])
        ids[np.concatenate(batches)] = np.repeat(np.arange(len(batches)), sizes)
    pairs = lambda c: (c * (c - 1) // 2).sum()  # noqa: E731
    both = np.unique(b0 * (b1.max() + 1) + b1, return_counts=True)[1]
    return float(pairs(both) / pairs(np.bincount(b0)))


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}; "
            f"Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}; "
            f"load average {load:.2f} at start")


def table_a(batch_size: int, max_length: int, seed: int) -> None:
    print(f"(a) efficiency and randomness against mega_batch (batch size {batch_size}, "
          f"max_length {max_length}, seed {seed})")
    print(f"{'corpus':<10}{'mega_batch':>11}{'batches':>9}{'token eff':>11}{'attn eff':>10}"
          f"{'eta^2':>8}{'mate repeat':>13}")
    for name in CORPORA:
        lengths = load_corpus(name).lengths
        kept = np.minimum(lengths, max_length)
        for mb in MEGA_BATCHES:
            s = BucketBatchSampler(kept, batch_size, mega_batch=mb, seed=seed)
            e0, e1 = s.epoch_batches(0), s.epoch_batches(1)
            shapes, truncated = padded_batches(lengths, e0, max_length=max_length)
            r = waste("bucketed", shapes, truncated)
            print(f"{name:<10}{'full' if mb is None else mb:>11}{r.batches:>9}{r.efficiency:>11.1%}"
                  f"{r.attention_efficiency:>10.1%}{length_eta_squared(kept, e0):>8.3f}"
                  f"{mate_repeat(len(kept), e0, e1):>13.4f}")


def timed(fn, repeats: int) -> tuple[list[float], list[float]]:
    """Wall-clock and process CPU seconds of ``repeats`` calls.

    CPU time is printed beside wall time because a shared machine's load stretches wall
    time; the speed-up against transformers is given on both clocks.
    """
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def table_bc(n: int, batch_size: int, repeats: int, seed: int, skip_transformers: bool) -> None:
    pool = load_corpus("fortunes").lengths
    lengths = np.random.default_rng(seed).choice(pool, n)
    print(f"\n(b) one epoch of batches over {n:,} lengths drawn from fortunes "
          f"(mean {lengths.mean():.1f}, max {lengths.max()}), batch size {batch_size}; "
          f"{repeats} epochs each")
    print(f"  {'sampler':<40}{'build':>8}{'first':>8}{'median':>8}{'cpu med':>9}   batches per rank")
    rows = [("bucket, mega_batch 50", BucketBatchSampler, batch_size, dict(mega_batch=50)),
            ("bucket, mega_batch 50, noise 0.1", BucketBatchSampler, batch_size, dict(mega_batch=50, noise=0.1)),
            ("bucket, full sort", BucketBatchSampler, batch_size, dict(mega_batch=None)),
            ("bucket, mega_batch 50, rank 0 of 8", BucketBatchSampler, batch_size,
             dict(mega_batch=50, num_replicas=8, rank=0)),
            (f"token budget {batch_size * int(np.ceil(lengths.mean()))}, mega_batch 50", TokenBudgetBatchSampler,
             max(batch_size * int(np.ceil(lengths.mean())), int(lengths.max())), dict(mega_batch=50))]
    ours = None
    for label, cls, arg, kw in rows:
        t0 = time.perf_counter()
        s = cls(lengths, arg, seed=seed, **kw)
        build = time.perf_counter() - t0
        epochs = iter(range(repeats))
        wall, cpu = timed(lambda: s.epoch_batches(next(epochs)), repeats)
        ours = ours or (wall, cpu)
        print(f"  {label:<40}{build:>7.3f}s{wall[0]:>7.3f}s{statistics.median(wall):>7.3f}s"
              f"{statistics.median(cpu):>8.3f}s   {len(s)}")
    ours_wall, ours_cpu = statistics.median(ours[0]), statistics.median(ours[1])
    print(f"  target <= 2 s for the first row: {'met' if ours_wall <= 2 else 'NOT met'} "
          f"(median wall {ours_wall:.3f} s, CPU {ours_cpu:.3f} s)")

    print("\n(c) transformers.trainer_pt_utils.get_length_grouped_indices on the same lengths")
    if skip_transformers:
        print("  skipped (--skip-transformers)")
        return
    try:
        import transformers
        from transformers.trainer_pt_utils import get_length_grouped_indices
    except ImportError:
        print("  transformers is not installed (pip install 'padlab[bench]'): skipped")
        return
    as_list = lengths.tolist()  # what the Trainer hands it; the conversion is not timed
    g = torch.Generator().manual_seed(seed)
    wall, cpu = timed(lambda: get_length_grouped_indices(as_list, batch_size, mega_batch_mult=50, generator=g),
                      max(1, repeats // 2))
    hf_wall, hf_cpu = statistics.median(wall), statistics.median(cpu)
    ratio = min(hf_wall / ours_wall, hf_cpu / ours_cpu)
    print(f"  transformers {transformers.__version__}, mega_batch_mult 50, median of {len(wall)}: "
          f"wall {hf_wall:.3f} s, CPU {hf_cpu:.3f} s")
    print(f"  padlab (first row of (b)) is {hf_wall / ours_wall:.1f}x faster by wall clock, "
          f"{hf_cpu / ours_cpu:.1f}x by CPU time (target >= 10x: {'met' if ratio >= 10 else 'NOT met'})")
    print("  (transformers returns one flat index list; padlab also shuffles the batch order and "
          "returns one array per batch)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000_000, help="lengths for the timing tables")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-transformers", action="store_true")
    args = p.parse_args()
    print(f"machine: {machine()}\n")
    table_a(args.batch_size, args.max_length, args.seed)
    table_bc(args.n, args.batch_size, args.repeats, args.seed, args.skip_transformers)


if __name__ == "__main__":
    main()
