"""Packing benchmark: efficiency at capacity 512 and the time to pack 16 million lengths.

Prints two tables:

(a) on each shipped corpus (lengths cut to the capacity), for FFD and SPFHP without a limit and
    with at most 3 sequences per pack (the paper's setting for Wikipedia): packs, efficiency
    (kept tokens / packs x capacity; target 99.5% or more) and the lower bound on packs;
(b) the time to pack 16 million lengths drawn from each shipped length distribution
    (``default_rng(0).choice(lengths cut to 512, 16_000_000)``) into a full assignment: packing
    plus expansion to flat indices and pack offsets (target: 1 s or less), and, timed apart,
    :meth:`PackResult.validate` and the optional list of one array per pack (``result.packs``).
    Wall time is the best of ``--repeats`` runs after a warm-up (median and CPU time also shown);
    the machine's CPU count and load average are printed, since other work on a small machine
    shows up in wall time.

Run: ``python benchmarks/bench_packing.py`` (``--help`` for sizes).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np

from padlab.data import CORPORA, load_corpus
from padlab.packing import ALGORITHMS, pack


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} CPUs, "
            f"load average {load}; numpy {np.__version__}, Python {platform.python_version()}")


def efficiency_table(capacity: int) -> None:
    print(f"(a) packing efficiency at capacity {capacity}")
    print(f"{'corpus':<10}{'sequences':>10}{'algorithm':>10}{'max/pack':>9}{'packs':>8}{'lower bound':>12}"
          f"{'efficiency':>12}{'truncated':>10}")
    for name in CORPORA:
        lengths = load_corpus(name).lengths
        for algorithm in ALGORITHMS:
            for limit in (None, 3):
                r = pack(lengths, capacity, algorithm=algorithm, max_per_pack=limit, truncation=True).validate()
                bound = -(-int(r.lengths.sum()) // capacity)
                print(f"{name:<10}{lengths.size:>10}{algorithm:>10}{str(limit or '-'):>9}{r.n_packs:>8}"
                      f"{bound:>12}{r.efficiency:>11.3%} {r.truncated_tokens:>9}")
    print()


def timed(fn, repeats: int):
    fn()  # warm-up: first-touch page faults and lazy imports are not the algorithm
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return out, walls, cpus


def speed_table(n: int, capacity: int, repeats: int) -> None:
    print(f"(b) packing {n:,} lengths drawn from each corpus (cut to {capacity}) into a validated full "
          f"assignment; best / median of {repeats} after a warm-up")
    print(f"{'corpus':<10}{'algorithm':>10}{'packs':>10}{'efficiency':>12}{'pack best':>11}{'median':>9}"
          f"{'cpu':>8}{'validate':>10}{'.packs':>8}{'target':>8}")
    for name in CORPORA:
        dist = np.minimum(load_corpus(name).lengths, capacity)
        lengths = np.random.default_rng(0).choice(dist, n)
        for algorithm in ALGORITHMS:
            r, walls, cpus = timed(lambda: pack(lengths, capacity, algorithm=algorithm), repeats)
            t = time.perf_counter()
            r.validate(n)
            v = time.perf_counter() - t
            t = time.perf_counter()
            r.packs
            lst = time.perf_counter() - t
            best = min(walls)
            print(f"{name:<10}{algorithm:>10}{r.n_packs:>10}{r.efficiency:>11.3%} {best:>10.3f}s"
                  f"{statistics.median(walls):>8.3f}s{min(cpus):>7.3f}s{v:>9.3f}s{lst:>7.3f}s"
                  f"{'ok' if best <= 1.0 else 'MISS':>8}")
    print()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--capacity", type=int, default=512)
    p.add_argument("--n", type=int, default=16_000_000, help="lengths to pack in the speed table")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-speed", action="store_true")
    args = p.parse_args()
    print(f"machine: {machine()}\n")
    efficiency_table(args.capacity)
    if not args.skip_speed:
        speed_table(args.n, args.capacity, args.repeats)
    print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
