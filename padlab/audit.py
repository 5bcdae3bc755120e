"""Audit a dataset padlab has never seen: a user's file + a tokenizer -> lengths -> waste rows
and a recommendation.

``audit("train.jsonl", field="text", tokenizer="my-model/")`` streams the file, tokenizes it in
batches through ``tokenizers`` (``encode_batch``: no Python loop per token), keeps one length
per document (never the ids), and measures the strategies of :mod:`padlab.strategies` on those
lengths, exactly as ``padlab waste`` does for the shipped corpora. The user's file is only read.

Formats (chosen from the name, or ``fmt``): JSON Lines (``.jsonl``, ``.ndjson``, ``.json``; a ``.json``
file holding one array of objects is read whole; ``field`` names the text, or a list of chat messages whose contents are joined), CSV/TSV
(``field`` names the column), plain text (``.txt``: one document per non-blank line; a folder
of ``.txt`` files: one document per file), Parquet (``.parquet``, needs ``pyarrow``) and a
``datasets`` folder written by ``save_to_disk`` (needs ``pyarrow``). A ``.gz`` suffix is
read through gzip.

A document that cannot be read (a line that is not JSON, a missing or non-text field, a
text with no tokens) is skipped and counted in ``skipped``; ``strict=True`` raises instead.
Bytes that are not UTF-8 always raise. Every error names the file and the line.
"""
from __future__ import annotations

import csv
import gzip
import json
from dataclasses import asdict, dataclass, field as dc_field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ._validate import PadlabError, check_bool, check_float, check_int, fail

__all__ = ["AUDIT_STRATEGIES", "FORMATS", "TokenizerInfo", "Recommendation", "AuditResult", "load_tokenizer",
           "read_documents", "document_lengths", "recommend", "audit", "tokenizer_note"]

#: The rows an audit reports (the ``padlab waste`` rows), in table order.
AUDIT_STRATEGIES = ("fixed", "dynamic", "bucketed", "token-budget", "packed")
FORMATS = ("jsonl", "csv", "tsv", "txt", "txt-folder", "parquet", "datasets")
#: Mega-batch sizes the bucketing sweep tries (0 stands for a full sort).
MEGA_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 0)
PERCENTILES = (50, 90, 95, 99)
_CHUNK = 2048  # documents per encode_batch call: big enough for tokenizers' threads, small in memory


def _where(path: Path, line: int | None) -> str:
    return f"{path}:{line}" if line is not None else str(path)


class _Skip(Exception):
    """A document that cannot be read; counted (or raised under strict)."""


# ----------------------------------------------------------------------------- tokenizer

@dataclass(frozen=True)
class TokenizerInfo:
    """Which tokenizer produced the lengths: its file, vocabulary size, and whether it is padlab's own."""

    path: str
    vocab_size: int
    shipped: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_tokenizer(tokenizer: str | Path | None = None):
    """A ``tokenizers.Tokenizer`` from a ``tokenizer.json`` or a folder holding one; never a download.

    ``None`` means the shipped ``data/tokenizer.json``. Truncation and padding that the file
    may carry are switched off, so a length is the document's whole token count, special
    tokens of the post-processor included. Returns ``(tokenizer, TokenizerInfo)``.
    """
    from tokenizers import Tokenizer

    from .data import data_dir

    shipped = tokenizer is None
    path = Path(data_dir() / "tokenizer.json") if shipped else Path(tokenizer)
    if path.is_dir():
        if not (path / "tokenizer.json").is_file():
            raise fail("tokenizer", str(path), "be a tokenizer.json or a folder holding one "
                       f"(no tokenizer.json in that folder; found {sorted(p.name for p in path.iterdir())[:8]})")
        path = path / "tokenizer.json"
    if not path.exists():
        raise fail("tokenizer", str(path), "be an existing tokenizer.json file or a folder holding one")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception for any unreadable file
        raise fail("tokenizer", str(path), f"be a tokenizers tokenizer.json ({str(e)[:120]})") from None
    tok.no_truncation()
    tok.no_padding()
    return tok, TokenizerInfo(path=str(path), vocab_size=tok.get_vocab_size(), shipped=shipped)


# ----------------------------------------------------------------------------- reading

def _detect(path: Path) -> str:
    if path.is_dir() and (path / "dataset_dict.json").is_file():
        splits = json.loads((path / "dataset_dict.json").read_text()).get("splits", [])
        raise PadlabError(f"{path}: a datasets DatasetDict; pass one split's folder "
                          f"({', '.join(str(path / s) for s in splits[:4])})")
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_info.json").is_file():
            return "datasets"
        return "txt-folder"
    name = path.name.lower().removesuffix(".gz")
    for ext, fmt in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "jsonl"), (".csv", "csv"),
                     (".tsv", "tsv"), (".txt", "txt"), (".parquet", "parquet")):
        if name.endswith(ext):
            return fmt
    raise fail("path", str(path), "end in .jsonl, .json, .ndjson, .csv, .tsv, .txt or .parquet (optionally .gz), "
               "or be a folder of .txt files or a datasets save_to_disk folder; or pass fmt")


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _decoded_lines(path: Path, progress) -> Iterator[tuple[int, str]]:
    """(line number from 1, text) of each line; a line that is not UTF-8 is an error naming it."""
    for n, raw in _raw_lines(path, progress):
        try:
            yield n, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PadlabError(f"{path}:{n}: bytes that are not UTF-8 at column {e.start + 1} "
                              f"({raw[e.start:e.start + 4]!r}); re-encode the file as UTF-8") from None


def _message_text(value: Any) -> str:
    """The text of a chat message list: each message's content (or its text parts), joined by newlines."""
    parts = []
    for m in value:
        if not isinstance(m, dict) or "content" not in m:
            raise _Skip("a list whose items are not chat messages with a 'content'")
        c = m["content"]
        if isinstance(c, list):  # content as parts: [{"type": "text", "text": ...}, ...]
            c = "\n".join(p["text"] for p in c if isinstance(p, dict) and isinstance(p.get("text"), str))
        if not isinstance(c, str):
            raise _Skip(f"a message content that is {type(c).__name__}, not text")
        parts.append(c)
    return "\n".join(parts)


def _text_of(value: Any, field: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _message_text(value)
    raise _Skip(f"field {field!r} is {type(value).__name__}, not text or a list of chat messages")


def _json_array(path: Path, field: str, progress) -> Iterator[tuple[int, Any]]:
    """A ``.json`` file holding one array of objects (read whole: convert big ones to JSON Lines)."""
    raw = b"".join(raw for _, raw in _raw_lines(path, progress))
    try:
        items = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise PadlabError(f"{path}:{line}: bytes that are not UTF-8 ({raw[e.start:e.start + 4]!r})") from None
    except json.JSONDecodeError as e:
        raise PadlabError(f"{path}:{e.lineno}: not JSON ({e.msg})") from None
    for i, obj in enumerate(items, start=1):
        if not isinstance(obj, dict):
            yield i, _Skip(f"item {i} is a JSON {type(obj).__name__}, not an object")
        elif field not in obj:
            yield i, _Skip(f"item {i} has no field {field!r} (keys: {sorted(obj)[:8]})")
        else:
            yield i, obj[field]


def _raw_lines(path: Path, progress) -> Iterator[tuple[int, bytes]]:
    with _open_binary(path) as fh:
        for n, raw in enumerate(fh, start=1):
            if progress is not None:
                progress.update(len(raw))
            yield n, raw


def _starts_with_array(path: Path) -> bool:
    with _open_binary(path) as fh:
        head = fh.read(4096).lstrip()
    return head[:1] == b"["


def _jsonl(path: Path, field: str, progress) -> Iterator[tuple[int, Any]]:
    if _starts_with_array(path):
        yield from _json_array(path, field, progress)
        return
    for n, line in _decoded_lines(path, progress):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, _Skip(f"not JSON ({e.msg})")
            continue
        if not isinstance(obj, dict):
            yield n, _Skip(f"a JSON {type(obj).__name__}, not an object")
        elif field not in obj:
            yield n, _Skip(f"no field {field!r} (keys: {sorted(obj)[:8]})")
        else:
            yield n, obj[field]


def _delimited(path: Path, field: str, delimiter: str, progress) -> Iterator[tuple[int, Any]]:
    lines = _decoded_lines(path, progress)
    numbers = []

    def feed():
        for n, line in lines:
            numbers.append(n)
            yield line

    reader = csv.reader(feed(), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    if field not in header:
        raise PadlabError(f"{path}:1: no column {field!r} in the header {header[:12]}; pass --field with one of them")
    col = header.index(field)
    for row in reader:
        n = numbers[-1] if numbers else None
        if not row:
            continue
        yield n, row[col] if col < len(row) else _Skip(f"a row of {len(row)} fields, no column {field!r}")


def _txt(path: Path, progress) -> Iterator[tuple[int, Any]]:
    for n, line in _decoded_lines(path, progress):
        text = line.rstrip("\r\n")
        if text.strip():
            yield n, text


def _txt_folder(path: Path, progress) -> Iterator[tuple[int | None, Any]]:
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise PadlabError(f"{path}: a folder with no .txt files (and no datasets state.json)")
    for p in files:
        raw = p.read_bytes()
        if progress is not None:
            progress.update(len(raw))
        try:
            yield None, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[:e.start].count(b"\n") + 1
            raise PadlabError(f"{p}:{line}: bytes that are not UTF-8 ({raw[e.start:e.start + 4]!r}); "
                              "re-encode the file as UTF-8") from None


def _pyarrow(what: str):
    try:
        import pyarrow  # noqa: F401
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise PadlabError(f"reading {what} needs pyarrow, which is not installed here: "
                          "pip install pyarrow (or convert the data to JSON Lines)") from None
    return pyarrow


def _arrow_batches(path: Path, fmt: str):
    pa = _pyarrow("Parquet" if fmt == "parquet" else "a datasets save_to_disk folder")
    if fmt == "parquet":
        yield from pa.parquet.ParquetFile(path).iter_batches(batch_size=_CHUNK)
        return
    state = path / "state.json"
    files = ([path / f["filename"] for f in json.loads(state.read_text())["_data_files"]] if state.is_file()
             else sorted(path.glob("*.arrow")))
    if not files:
        raise PadlabError(f"{path}: a datasets folder with no .arrow files (a DatasetDict? pass one split's folder)")
    for f in files:
        with pa.memory_map(str(f)) as src:
            try:
                reader = pa.ipc.open_stream(src)
            except pa.ArrowInvalid:
                reader = pa.ipc.open_file(src)
                for i in range(reader.num_record_batches):
                    yield reader.get_batch(i)
                continue
            yield from reader


def _arrow(path: Path, fmt: str, field: str, progress) -> Iterator[tuple[int, Any]]:
    row = 0
    for batch in _arrow_batches(path, fmt):
        if field not in batch.schema.names:
            raise PadlabError(f"{path}: no column {field!r} (columns: {batch.schema.names[:12]}); "
                              "pass --field with one of them")
        for v in batch.column(field).to_pylist():
            row += 1
            yield row, v
        if progress is not None:
            progress.update(batch.num_rows)


def read_documents(path: str | Path, *, field: str = "text", fmt: str | None = None,
                   progress: Any = None) -> Iterator[tuple[int | None, str | Exception]]:
    """Stream ``(line, text)`` from ``path``; an unreadable document comes as ``(line, exception)``.

    ``line`` is the 1-based line (row for Parquet/datasets; ``None`` for a folder of ``.txt``).
    ``progress`` is a ``tqdm`` bar updated in bytes (rows for Parquet/datasets).
    """
    path = Path(path)
    if not path.exists():
        raise PadlabError(f"{path}: no such file or folder")
    if path.is_file() and path.stat().st_size == 0:
        raise PadlabError(f"{path}: the file is empty")
    fmt = _detect(path) if fmt is None else fmt
    if fmt not in FORMATS:
        raise fail("fmt", fmt, f"be one of {', '.join(FORMATS)}")
    if fmt == "jsonl":
        items = _jsonl(path, field, progress)
    elif fmt in ("csv", "tsv"):
        items = _delimited(path, field, "," if fmt == "csv" else "\t", progress)
    elif fmt == "txt":
        items = _txt(path, progress)
    elif fmt == "txt-folder":
        items = _txt_folder(path, progress)
    else:
        items = _arrow(path, fmt, field, progress)
    for n, value in items:
        if isinstance(value, Exception):
            yield n, value
            continue
        try:
            yield n, _text_of(value, field)
        except _Skip as e:
            yield n, e


def document_lengths(path: str | Path, tokenizer: Any, *, field: str = "text", fmt: str | None = None,
                     limit: int | None = None, strict: bool = False, progress: bool = False
                     ) -> tuple[np.ndarray, int, list[str]]:
    """Token counts of the documents of ``path``: ``(lengths, skipped, first skip reasons)``.

    ``tokenizer`` is a ``tokenizers.Tokenizer`` (see :func:`load_tokenizer`). Documents are
    encoded ``_CHUNK`` at a time with ``encode_batch``; only their lengths are kept.
    """
    limit = check_int("limit", limit, min_value=1, allow_none=True)
    strict = check_bool("strict", strict)
    path = Path(path)
    if not path.exists():
        raise PadlabError(f"{path}: no such file or folder")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        arrow = (fmt or _detect(path)) in ("parquet", "datasets")
        total = None if arrow else (sum(p.stat().st_size for p in path.rglob("*.txt")) if path.is_dir()
                                    else path.stat().st_size)
        bar = tqdm(total=total, unit="row" if arrow else "B", unit_scale=True, desc=f"audit {path.name}",
                   leave=False)
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    chunks: list[np.ndarray] = []
    texts: list[str] = []
    where: list[int | None] = []
    skipped, reasons, read = 0, [], 0

    def flush() -> None:
        nonlocal skipped
        lens = np.fromiter((len(e) for e in encode(texts)), dtype=np.int64, count=len(texts))
        empty = np.flatnonzero(lens == 0)
        if empty.size:
            if strict:
                raise PadlabError(f"{_where(path, where[empty[0]])}: a document with no tokens")
            skipped += int(empty.size)
            reasons.extend(f"{_where(path, where[i])}: no tokens" for i in empty[:5 - len(reasons)])
            lens = lens[lens > 0]
        chunks.append(lens)
        texts.clear()
        where.clear()

    try:
        for n, text in read_documents(path, field=field, fmt=fmt, progress=bar):
            if isinstance(text, Exception):
                if strict:
                    raise PadlabError(f"{_where(path, n)}: {text} (without --strict such documents are "
                                      "skipped and counted)")
                skipped += 1
                if len(reasons) < 5:
                    reasons.append(f"{_where(path, n)}: {text}")
            else:
                texts.append(text)
                where.append(n)
                read += 1
                if len(texts) == _CHUNK:
                    flush()
            if limit is not None and read + skipped >= limit:
                break
        if texts:
            flush()
    finally:
        if bar is not None:
            bar.close()
    lengths = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    if lengths.size == 0:
        raise PadlabError(f"{path}: no document could be read ({skipped} skipped"
                          + (f"; first: {reasons[0]}" if reasons else "") + ")")
    return lengths, skipped, reasons


# ----------------------------------------------------------------------------- analysis

@dataclass(frozen=True)
class Recommendation:
    """What to do: a strategy from the registry, its settings, the efficiency expected, and why.

    ``settings`` holds ``batch_size``, ``max_length``, ``mega_batch`` (the smallest mega-batch
    reaching ``target_efficiency``; 0 is a full sort) with its ``eta_squared`` (how much batch
    membership then depends on length: the randomness it costs), ``max_tokens`` (a token budget
    for ``token-budget`` batches) and ``capacity`` (a pack's row width for ``packed``).
    """

    strategy: str
    settings: dict[str, Any]
    efficiency: float
    target_efficiency: float
    why: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AuditResult:
    """An audit: counts, the strategy rows (``padlab waste`` keys), the sweeps and a recommendation.

    ``tokens`` are the tokens kept at ``max_length``; ``truncated_tokens`` the rest, so their sum is
    the tokenizer's own count of the documents read. ``lengths`` holds every document's full count.
    ``mega_batch_sweep`` and ``max_tokens_sweep`` are the waste-vs-setting curves the report plots.
    """

    source: str
    documents: int
    tokens: int
    truncated_tokens: int
    skipped: int
    skip_reasons: list[str]
    length_percentiles: dict[str, float]
    strategies: list[dict[str, Any]]
    recommendation: Recommendation
    tokenizer: TokenizerInfo
    batch_size: int
    max_length: int
    lengths: np.ndarray = dc_field(repr=False)
    mega_batch_sweep: list[dict[str, float]] = dc_field(repr=False)
    max_tokens_sweep: list[dict[str, float]] = dc_field(repr=False)

    #: The keys of :meth:`as_dict` (``padlab audit --json``).
    KEYS = ("documents", "tokens", "truncated_tokens", "length_percentiles", "strategies", "recommendation",
            "tokenizer", "skipped")

    def as_dict(self) -> dict[str, Any]:
        return {"documents": self.documents, "tokens": self.tokens, "truncated_tokens": self.truncated_tokens,
                "length_percentiles": dict(self.length_percentiles), "strategies": [dict(r) for r in self.strategies],
                "recommendation": self.recommendation.as_dict(), "tokenizer": self.tokenizer.as_dict(),
                "skipped": self.skipped}


def _percentiles(lengths: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {"min": int(lengths.min())}
    out.update({f"p{q}": int(np.percentile(lengths, q, method="higher")) for q in PERCENTILES})
    out["max"] = int(lengths.max())
    out["mean"] = round(float(lengths.mean()), 2)
    return out


def _mega_sweep(lengths: np.ndarray, batch_size: int, max_length: int, seed: int) -> list[dict[str, float]]:
    from .strategies import bucket_tradeoff

    rows = []
    for m in MEGA_BATCHES:
        if m and m * batch_size >= len(lengths):
            continue  # a pool as large as the dataset is a full sort: the `sorted` strategy, measured as m = 0
        t = bucket_tradeoff(lengths, batch_size=batch_size, max_length=max_length, mega_batch=m or None, seed=seed)
        rows.append({"mega_batch": m, "efficiency": t.efficiency, "attention_efficiency": t.attention_efficiency,
                     "eta_squared": t.eta_squared})
    return rows


def _budget_sweep(lengths: np.ndarray, batch_size: int, max_length: int, seed: int, max_tokens: int,
                  mega_batch: int) -> list[dict[str, float]]:
    from .strategies import waste_table

    longest = int(min(lengths.max(), max_length))
    budgets = sorted({max(longest, int(max_tokens * f)) for f in (0.25, 0.5, 1, 2, 4)})
    rows = []
    for b in budgets:
        r = waste_table(lengths, ("token-budget",), batch_size=batch_size, max_length=max_length, seed=seed,
                        max_tokens=b, mega_batch=mega_batch or None)[0]
        rows.append({"max_tokens": b, "efficiency": r.efficiency, "batches": r.batches})
    return rows


def recommend(rows: list[dict[str, Any]], sweep: list[dict[str, float]], *, batch_size: int, max_length: int,
              max_tokens: int, target_efficiency: float = 0.9) -> Recommendation:
    """The rule: random batches if dynamic padding already meets the target; else bucketing at the
    smallest mega-batch that meets it; else packing (which needs a model that honours sequence
    boundaries: check it with :func:`padlab.hf.check_packing`)."""
    by = {r["strategy"]: r for r in rows}
    reach = [s for s in sweep if s["efficiency"] >= target_efficiency]
    pick = min(reach, key=lambda s: (s["mega_batch"] == 0, s["mega_batch"])) if reach else sweep[-1]
    settings = {"batch_size": batch_size, "max_length": max_length, "mega_batch": int(pick["mega_batch"]),
                "eta_squared": round(float(pick["eta_squared"]), 4), "max_tokens": int(max_tokens),
                "capacity": max_length}
    dyn = by["dynamic"]["efficiency"]
    if dyn >= target_efficiency:
        return Recommendation("dynamic", settings, dyn, target_efficiency,
                              f"Dynamic padding already computes {dyn:.0%} real tokens, so keep random batches: "
                              "sorting by length would buy little and cost randomness.")
    if reach:
        m = settings["mega_batch"]
        pool = "one global length sort" if m == 0 else f"pools of {m} x {batch_size} documents"
        return Recommendation("sorted" if m == 0 else "bucketed", settings, float(pick["efficiency"]), target_efficiency,
                              f"Random batches compute only {dyn:.0%} real tokens; {'sorting by length in' if m == 0 else 'bucketing in'} {pool} reaches "
                              f"{pick['efficiency']:.0%} while batch membership explains eta^2 = "
                              f"{pick['eta_squared']:.2f} of the length variance (random batches: about "
                              f"{1 / batch_size:.2f}).")
    eff = by["packed"]["efficiency"]
    return Recommendation("packed", settings, eff, target_efficiency,
                          f"No bucketing setting reaches {target_efficiency:.0%} (a full sort gives "
                          f"{sweep[-1]['efficiency']:.0%}), the lengths are too spread; packing into rows of "
                          f"{max_length} computes {eff:.0%} real tokens, provided the model keeps sequences apart "
                          "(check with padlab.hf.check_packing).")


def audit(path: str | Path, *, field: str = "text", tokenizer: str | Path | None = None, fmt: str | None = None,
          max_length: int = 512, batch_size: int = 32, max_tokens: int | None = None, limit: int | None = None,
          strict: bool = False, target_efficiency: float = 0.9, seed: int = 0, progress: bool = False) -> AuditResult:
    """Audit the documents of ``path`` (see the module docstring for formats and errors).

    ``tokenizer``: a ``tokenizer.json`` or a folder holding one (default: the shipped one, and the
    result says so). ``max_length``/``batch_size``: the rows' settings, as ``padlab waste``;
    ``max_tokens``: the ``token-budget`` row's budget (default: ``batch_size`` rows of the mean
    kept length). ``limit``: read at most this many documents. ``target_efficiency``: what the
    recommended bucketing setting must reach.
    """
    from .strategies import default_max_tokens, waste_table

    max_length = check_int("max_length", max_length, min_value=1)
    batch_size = check_int("batch_size", batch_size, min_value=1)
    max_tokens = check_int("max_tokens", max_tokens, min_value=1, allow_none=True)
    seed = check_int("seed", seed, min_value=0)
    target_efficiency = check_float("target_efficiency", target_efficiency, min_value=0.0, max_value=1.0,
                                    min_inclusive=False)
    if not isinstance(field, str) or not field:
        raise fail("field", field, "be a non-empty column or key name")
    tok, info = load_tokenizer(tokenizer)
    lengths, skipped, reasons = document_lengths(path, tok, field=field, fmt=fmt, limit=limit, strict=strict,
                                                 progress=progress)
    kept = np.minimum(lengths, max_length)
    if max_tokens is None:
        max_tokens = default_max_tokens(lengths, batch_size, max_length)
    elif max_tokens < int(kept.max()):
        raise fail("max_tokens", max_tokens, f"be at least the longest kept document ({int(kept.max())} tokens)")
    rows = []
    for r in waste_table(lengths, AUDIT_STRATEGIES, batch_size=batch_size, max_length=max_length, seed=seed,
                         max_tokens=max_tokens):
        rows.append(r.as_dict())
    sweep = _mega_sweep(lengths, batch_size, max_length, seed)
    rec = recommend(rows, sweep, batch_size=batch_size, max_length=max_length, max_tokens=max_tokens,
                    target_efficiency=target_efficiency)
    budgets = _budget_sweep(lengths, batch_size, max_length, seed, max_tokens, rec.settings["mega_batch"])
    lengths.setflags(write=False)
    return AuditResult(source=str(path), documents=int(lengths.size), tokens=int(kept.sum()),
                       truncated_tokens=int((lengths - kept).sum()), skipped=skipped, skip_reasons=reasons,
                       length_percentiles=_percentiles(lengths), strategies=rows, recommendation=rec,
                       tokenizer=info, batch_size=batch_size, max_length=max_length, lengths=lengths,
                       mega_batch_sweep=sweep, max_tokens_sweep=budgets)


def tokenizer_note(result: AuditResult) -> str:
    """One line on whose lengths these are (the shipped tokenizer's, unless one was given)."""
    t = result.tokenizer
    if t.shipped:
        return ("Lengths are from padlab's shipped WordPiece tokenizer (data/tokenizer.json), not your model's; "
                "pass --tokenizer PATH for your model's counts.")
    return f"Lengths are from {t.path} ({t.vocab_size} entries)."

