"""The ``padlab`` command: ``padlab waste``, ``padlab floats``, ``padlab bench``."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


def _cmd_waste(args: argparse.Namespace) -> int:
    from .data import load_corpus
    from .strategies import waste_table

    corpus = load_corpus(args.corpus)
    rows = [r.as_dict() for r in waste_table(corpus.lengths, batch_size=args.batch_size,
                                               max_length=args.max_length, seed=args.seed)]
    for r in rows:
        r["corpus"] = args.corpus
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"corpus {args.corpus}: {len(corpus)} texts, batch size {args.batch_size}, "
          f"max_length {args.max_length}, seed {args.seed}")
    head = f"{'strategy':<13}{'batches':>8}{'real':>11}{'padded':>11}{'efficiency':>11}{'attn eff':>10}{'truncated':>10}"
    print(head)
    for r in rows:
        print(f"{r['strategy']:<13}{r['batches']:>8}{r['real_tokens']:>11}{r['padded_tokens']:>11}"
              f"{r['efficiency']:>10.1%}{r['attention_efficiency']:>10.1%}{r['truncated_tokens']:>10}")
    return 0


def _add_waste(sub) -> None:
    from .data import CORPORA

    p = sub.add_parser("waste", help="padding waste of each batching strategy on a shipped corpus")
    p.add_argument("--corpus", required=True, choices=CORPORA)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=_cmd_waste)


# Sub-commands register here; each module's command lives in its own _add_* function.
_ADDERS = [_add_waste]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="padlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _ADDERS:
        add(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as e:  # padlab's argument errors: one clear line, no traceback
        print(f"padlab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
