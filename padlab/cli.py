"""The ``padlab`` command: ``padlab waste``, ``padlab audit``, ``padlab floats``, ``padlab bench``."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from ._validate import PadlabError, check_int, fail


def _cmd_waste(args: argparse.Namespace) -> int:
    from .data import load_corpus
    from .strategies import waste_table

    # Checked here, so the message names the option the user typed.
    check_int("--batch-size", args.batch_size, min_value=1)
    check_int("--max-length", args.max_length, min_value=1)
    check_int("--seed", args.seed, min_value=0)
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


def _cmd_audit(args: argparse.Namespace) -> int:
    from .audit import audit, tokenizer_note

    result = audit(args.file, field=args.field, tokenizer=args.tokenizer, fmt=args.format,
                   max_length=args.max_length, batch_size=args.batch_size, max_tokens=args.max_tokens,
                   limit=args.limit, strict=args.strict, target_efficiency=args.target_efficiency,
                   seed=args.seed, progress=not args.no_progress and not args.json)
    if args.report:
        from .report import write_audit_report

        write_audit_report(result, args.report)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    print(f"{result.source}: {result.documents} documents ({result.skipped} skipped), "
          f"{result.tokens} tokens kept at max_length {result.max_length}, {result.truncated_tokens} truncated")
    for reason in result.skip_reasons:
        print(f"  skipped: {reason}")
    print(tokenizer_note(result))
    print("lengths: " + ", ".join(f"{k} {v}" for k, v in result.length_percentiles.items()))
    head = f"{'strategy':<13}{'batches':>8}{'real':>11}{'padded':>11}{'efficiency':>11}{'attn eff':>10}{'truncated':>10}"
    print(head)
    for r in result.strategies:
        print(f"{r['strategy']:<13}{r['batches']:>8}{r['real_tokens']:>11}{r['padded_tokens']:>11}"
              f"{r['efficiency']:>10.1%}{r['attention_efficiency']:>10.1%}{r['truncated_tokens']:>10}")
    rec = result.recommendation
    print(f"recommendation: {rec.strategy} (expected efficiency {rec.efficiency:.1%}); settings: "
          + ", ".join(f"{k}={v}" for k, v in rec.settings.items()))
    print(rec.why)
    if args.report:
        print(f"wrote {args.report}")
    return 0


def _add_audit(sub) -> None:
    p = sub.add_parser("audit", help="padding waste and a batching recommendation for your own dataset",
                       description="Tokenize FILE (JSON Lines, CSV/TSV, text, a folder of .txt, Parquet or a "
                                   "datasets save_to_disk folder), measure each batching strategy's waste and "
                                   "recommend one. The file is only read.")
    p.add_argument("file", help="the dataset: a file, a folder of .txt files or a datasets folder")
    p.add_argument("--field", default="text", help="JSON key or CSV/Parquet column holding the text "
                   "(or a list of chat messages); default: text")
    p.add_argument("--format", default=None, choices=("jsonl", "csv", "tsv", "txt", "txt-folder", "parquet",
                                                      "datasets"), help="default: from the file name")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="a tokenizer.json or a folder holding one (default: padlab's shipped tokenizer)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=None, help="token budget of the token-budget row")
    p.add_argument("--target-efficiency", type=float, default=0.9,
                   help="efficiency the recommended bucketing setting must reach (default 0.9)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="read at most N documents")
    p.add_argument("--strict", action="store_true", help="fail on the first unreadable document instead of "
                   "skipping and counting it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--report", metavar="PATH.html", help="write a self-contained HTML page with the plots")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_audit)


def _json_number(v):
    """Strict JSON has no inf/NaN: write those as the strings "inf", "-inf", "nan"."""
    if isinstance(v, float) and v != v:
        return "nan"
    if isinstance(v, float) and v in (float("inf"), float("-inf")):
        return "inf" if v > 0 else "-inf"
    return v


def _cmd_floats(args: argparse.Namespace) -> int:
    from .floats import FORMATS, decompose, get_format

    names = list(FORMATS) if args.formats is None else [
        get_format(n).name for n in args.formats.split(",") if n.strip()]
    if not names:
        raise fail("--formats", args.formats, "name at least one format")
    is_nan = decompose(args.value, "fp64").kind == "nan"  # also rejects a non-numeric value
    rows = []
    for name in names:
        if is_nan and not FORMATS[name].has_nan:
            print(f"padlab floats: {name} skipped: it has no NaN encoding", file=sys.stderr)
            continue
        rows.append(decompose(args.value, name).as_dict())
    if not rows:  # every format asked for was skipped: nothing to show is a failure, not an empty table
        raise fail("--formats", args.formats, f"include a format that can store {args.value!r} (one with a NaN encoding)")
    if args.json:
        print(json.dumps([{k: _json_number(v) for k, v in r.items()} for r in rows], indent=2))
        return 0
    print(f"value {args.value} (as float64: {rows[0]['value']!r})")
    print(f"{'format':<12}{'stored':>24}  {'rel. error':>10}  {'kind':<10}{'exp':>6}  "
          f"{'hex':<20}bits (sign exponent mantissa)")
    for r in rows:
        print(f"{r['format']:<12}{r['rounded']!r:>24}  {r['relative_error']:>10.3g}  {r['kind']:<10}"
              f"{r['exponent']:>6}  {r['hex']:<20}{r['bits'][0]} {r['exponent_bits']} {r['mantissa_bits']}")
    return 0


def _add_floats(sub) -> None:
    p = sub.add_parser(
        "floats", help="a value's bits, stored value and error in each float format",
        description="Show how VALUE is stored in each float format. A negative value in exponent "
                    "form or '-inf' goes after the options and '--': padlab floats --json -- -1e-5")
    p.add_argument("value", help="a number such as 0.1, -2.5, 1e-8, inf, nan")
    p.add_argument("--formats", default=None,
                   help="comma-separated formats (default: all): fp64,fp32,tf32,fp16,bf16,"
                        "fp8-e4m3fn,fp8-e5m2,fp4-e2m1")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list, one object per format (inf and NaN as strings)")
    p.set_defaults(func=_cmd_floats)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .experiments.bench import PRECISIONS, BenchConfig, format_table, run_benchmark
    from .experiments.results import save_result
    from .precision import POLICIES
    from .strategies import STRATEGIES

    def names(text: str | None, allowed: tuple[str, ...], arg: str) -> tuple[str, ...]:
        if text is None:
            return allowed
        out = tuple(x.strip() for x in text.split(",") if x.strip())
        bad = [x for x in out if x not in allowed]
        if bad or not out:
            raise fail(arg, text, f"be a comma-separated list of {', '.join(allowed)}")
        return out

    quick = dict(model="tiny", timed_steps=5, max_tokens=8 * 128, max_length=128, seqs_per_step=8) if args.quick else {}
    precisions = names(args.precisions, tuple(POLICIES), "--precisions") if args.precisions else \
        (("fp32", "bf16-amp") if args.quick else PRECISIONS)
    cfg = BenchConfig(strategies=names(args.strategies, tuple(STRATEGIES), "--strategies"),
                      precisions=precisions,
                      work=args.work, seed=args.seed, device=args.device, progress=not args.no_progress,
                      compile=tuple(args.compile or ()),
                      **{**quick, **({"timed_steps": args.timed_steps} if args.timed_steps else {})})
    result = run_benchmark(cfg, command="padlab " + " ".join(args.raw_argv))
    print(format_table(result))
    if args.json:
        save_result(result, args.json)
        print(f"wrote {args.json}")
    if args.png:
        from .viz import bench_summary

        bench_summary(result["rows"], device=result["device"]).savefig(args.png, dpi=120)
        print(f"wrote {args.png}")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="train a masked LM under every batching strategy x precision; JSON and PNG out")
    p.add_argument("--quick", action="store_true", help="a tiny model and few steps: under a minute on a CPU")
    p.add_argument("--strategies", help="comma-separated subset of the strategies")
    p.add_argument("--precisions", help="comma-separated policy names (padlab.precision.POLICIES; "
                                         "default fp32,tf32,fp16-amp,bf16-amp)")
    p.add_argument("--work", choices=("tokens", "sequences"), default="tokens",
                   help="equal token slots per step (default) or equal sequences per step")
    p.add_argument("--timed-steps", type=int, default=None)
    p.add_argument("--compile", action="append", metavar="STRATEGY/PRECISION", help="torch.compile this row")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="write the result as JSON")
    p.add_argument("--png", metavar="PATH", help="write a summary figure")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_bench)


# Sub-commands register here; each module's command lives in its own _add_* function.
_ADDERS = [_add_waste, _add_audit, _add_bench, _add_floats]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="padlab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _ADDERS:
        add(sub)
    args = parser.parse_args(argv)
    args.raw_argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        return args.func(args)
    except PadlabError as e:  # a bad argument: one clear line. Anything else is a bug: its traceback shows.
        print(f"padlab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
