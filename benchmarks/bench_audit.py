"""Audit benchmark: documents per second of ``padlab audit`` on a generated JSON Lines file.

Writes ``--documents`` (default 1,000,000) JSON lines whose texts are the shipped corpora's own
(WordNet glosses and fortunes, drawn with ``default_rng(seed)`` in the corpora's mix, so lengths
are real), then audits the file with :func:`padlab.audit.audit` and prints:

* documents read per second for the whole audit (reading, tokenizing, the strategy rows, the
  sweeps and the recommendation), and for the counting step alone (read + tokenize);
* the peak resident memory (lengths are kept, never ids: it should not grow with the file);
* the machine's CPU count and load average, since other work on a shared machine shows in wall time.

Run: ``python benchmarks/bench_audit.py`` (``--documents 200000`` for a shorter run; ``--keep PATH``
to keep the generated file).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from padlab.audit import audit, document_lengths, load_tokenizer
from padlab.data import CORPORA, load_corpus


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load}; Python {platform.python_version()}"


def write_jsonl(path: Path, n: int, seed: int) -> int:
    """``n`` lines ``{"text": ...}`` of shipped texts drawn at random (with replacement); returns bytes."""
    texts = [t for name in CORPORA for t in load_corpus(name).texts]
    lines = [json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts]
    pick = np.random.default_rng(seed).integers(0, len(lines), size=n)
    with open(path, "w", encoding="utf-8") as fh:
        for start in range(0, n, 100_000):  # a chunk of lines per write keeps the loop short
            fh.write("".join(lines[i] for i in pick[start:start + 100_000]))
    return path.stat().st_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--documents", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", metavar="PATH", help="write the JSONL here and keep it")
    args = ap.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.keep) if args.keep else Path(tmp) / "bench.jsonl"
        t = time.perf_counter()
        size = write_jsonl(path, args.documents, args.seed)
        print(f"wrote {args.documents:,} documents ({size / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s")
        tok, _ = load_tokenizer()
        t = time.perf_counter()
        lengths, _, _ = document_lengths(path, tok)
        count_s = time.perf_counter() - t
        t = time.perf_counter()
        result = audit(path)
        total_s = time.perf_counter() - t
    assert result.documents == args.documents == lengths.size
    print(f"count (read + tokenize): {count_s:.1f} s, {args.documents / count_s:,.0f} documents/s")
    print(f"full audit:              {total_s:.1f} s, {args.documents / total_s:,.0f} documents/s "
          f"({result.tokens + result.truncated_tokens:,} tokens)")
    print(f"peak resident memory: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    print(f"recommendation: {result.recommendation.strategy}: {result.recommendation.why}")


if __name__ == "__main__":
    main()
