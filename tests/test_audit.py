"""padlab.audit and ``padlab audit``: a user's file -> lengths -> waste rows and a recommendation.

Every expected count comes from the tokenizer itself, one document at a time (``Tokenizer.encode``),
never from the audit's batched path; documents are real texts from the shipped corpora.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from padlab.audit import AUDIT_STRATEGIES, AuditResult, audit, load_tokenizer, recommend
from padlab.cli import main
from padlab.data import data_dir, load_corpus

from padlab._validate import PadlabError

WASTE_KEYS = {"strategy", "batches", "sequences", "real_tokens", "padded_tokens", "computed_tokens", "efficiency",
              "attention_real", "attention_computed", "attention_efficiency", "truncated_tokens", "max_width"}


@pytest.fixture(scope="module")
def texts() -> list[str]:
    c = load_corpus("fortunes").subset(300, seed=3)
    return list(c.texts)


@pytest.fixture(scope="module")
def reference():
    tok = Tokenizer.from_file(str(data_dir() / "tokenizer.json"))
    return lambda ts: np.array([len(tok.encode(t).ids) for t in ts])


def _jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_jsonl_counts_equal_the_tokenizers_own(tmp_path, texts, reference):
    f = _jsonl(tmp_path / "mine.jsonl", [{"text": t, "id": i} for i, t in enumerate(texts)])
    before, mtime = _digest(f), os.stat(f).st_mtime_ns
    r = audit(f, max_length=64)
    full = reference(texts)
    assert r.documents == len(texts) and r.skipped == 0
    assert r.tokens + r.truncated_tokens == int(full.sum())
    assert r.tokens == int(np.minimum(full, 64).sum()) and r.truncated_tokens > 0
    np.testing.assert_array_equal(r.lengths, full)
    assert [row["strategy"] for row in r.strategies] == list(AUDIT_STRATEGIES)
    for row in r.strategies:
        assert WASTE_KEYS <= set(row)
        assert row["real_tokens"] == r.tokens and row["truncated_tokens"] == r.truncated_tokens
    assert r.length_percentiles["max"] == int(full.max()) and r.length_percentiles["min"] == int(full.min())
    assert r.length_percentiles["p50"] == int(np.percentile(full, 50, method="higher"))
    assert r.tokenizer.shipped
    assert _digest(f) == before and os.stat(f).st_mtime_ns == mtime  # the user's file is only read


def test_cli_json_has_exactly_the_listed_keys(tmp_path, texts, reference, capsys):
    f = _jsonl(tmp_path / "d.jsonl", [{"body": t} for t in texts[:50]])
    assert main(["audit", str(f), "--field", "body", "--tokenizer", str(data_dir() / "tokenizer.json"),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert tuple(out) == AuditResult.KEYS
    assert out["documents"] == 50 and out["skipped"] == 0
    assert out["tokens"] + out["truncated_tokens"] == int(reference(texts[:50]).sum())
    assert [r["strategy"] for r in out["strategies"]] == list(AUDIT_STRATEGIES)
    rec = out["recommendation"]
    assert rec["strategy"] in AUDIT_STRATEGIES and rec["why"].endswith(".")
    assert {"batch_size", "max_length", "mega_batch", "eta_squared", "max_tokens", "capacity"} <= set(rec["settings"])


def test_cli_table_names_the_shipped_tokenizer(tmp_path, texts, capsys):
    f = _jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts[:40]])
    assert main(["audit", str(f), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "shipped WordPiece tokenizer" in out and "recommendation:" in out
    for s in AUDIT_STRATEGIES:
        assert re.search(rf"^{s}\s", out, re.M), s


def test_chat_messages_are_joined(tmp_path, texts, reference):
    rows = [{"messages": [{"role": "user", "content": a}, {"role": "assistant", "content": b}]}
            for a, b in zip(texts[:20], texts[20:40])]
    rows.append({"messages": [{"role": "user", "content": [{"type": "text", "text": texts[40]}]}]})
    r = audit(_jsonl(tmp_path / "chat.jsonl", rows), field="messages")
    expect = reference([a + "\n" + b for a, b in zip(texts[:20], texts[20:40])] + [texts[40]])
    np.testing.assert_array_equal(r.lengths, expect)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "csv.gz"])
def test_delimited(tmp_path, texts, reference, fmt):
    path = tmp_path / f"d.{fmt}"
    opener = gzip.open if fmt.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t" if fmt == "tsv" else ",")
        w.writerow(["label", "sentence"])
        for i, t in enumerate(texts[:60]):
            w.writerow([i, t])  # fortunes hold newlines, commas and quotes: csv quotes them
    r = audit(path, field="sentence")
    np.testing.assert_array_equal(r.lengths, reference(texts[:60]))


def test_text_file_and_folder(tmp_path, texts, reference):
    one_line = [t.replace("\n", " ") for t in texts[:30]]
    f = tmp_path / "d.txt"
    f.write_text("\n".join(one_line[:15]) + "\n\n" + "\n".join(one_line[15:]) + "\n", encoding="utf-8")
    np.testing.assert_array_equal(audit(f).lengths, reference(one_line))
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, t in enumerate(texts[:12]):
        (folder / f"{i:03d}.txt").write_text(t, encoding="utf-8")
    np.testing.assert_array_equal(audit(folder).lengths, reference(texts[:12]))


def test_parquet_and_datasets_folder(tmp_path, texts, reference):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    table = pa.table({"text": texts[:70], "n": list(range(70))})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=16)
    np.testing.assert_array_equal(audit(tmp_path / "d.parquet").lengths, reference(texts[:70]))
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": texts[:45]}).save_to_disk(str(tmp_path / "ds"))
    np.testing.assert_array_equal(audit(tmp_path / "ds").lengths, reference(texts[:45]))


def test_limit_reads_the_first_documents(tmp_path, texts, reference):
    f = _jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    r = audit(f, limit=25)
    np.testing.assert_array_equal(r.lengths, reference(texts[:25]))


def test_tokenizer_folder_with_truncation_in_its_file_counts_whole_documents(tmp_path, texts, reference):
    spec = json.loads((data_dir() / "tokenizer.json").read_text())
    spec["truncation"] = {"direction": "Right", "max_length": 8, "strategy": "LongestFirst", "stride": 0}
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text(json.dumps(spec))
    r = audit(_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts[:30]]), tokenizer=tmp_path / "tok")
    np.testing.assert_array_equal(r.lengths, reference(texts[:30]))
    assert not r.tokenizer.shipped and r.tokenizer.path.endswith("tokenizer.json")


# ----------------------------------------------------------------------------- bad input

def test_non_json_lines_are_skipped_and_counted_or_fail_under_strict(tmp_path, texts, reference):
    f = tmp_path / "d.jsonl"
    lines = [json.dumps({"text": t}) for t in texts[:10]]
    lines.insert(3, "{not json")
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    r = audit(f)
    assert r.documents == 10 and r.skipped == 1 and r.skip_reasons[0].startswith(f"{f}:4: not JSON")
    np.testing.assert_array_equal(r.lengths, reference(texts[:10]))
    with pytest.raises(PadlabError, match=rf"{re.escape(str(f))}:4: not JSON"):
        audit(f, strict=True)


def test_missing_or_non_text_field(tmp_path, texts):
    f = _jsonl(tmp_path / "d.jsonl", [{"text": texts[0]}, {"txt": texts[1]}, {"text": 5}])
    r = audit(f)
    assert (r.documents, r.skipped) == (1, 2)
    assert "d.jsonl:2: no field 'text'" in r.skip_reasons[0] and "d.jsonl:3: field 'text' is int" in r.skip_reasons[1]
    with pytest.raises(PadlabError, match=r"d\.jsonl:2: no field 'text' \(keys: \['txt'\]\)"):
        audit(f, strict=True)
    with pytest.raises(PadlabError, match=r"no document could be read \(3 skipped; first: .*no field 'body'"):
        audit(f, field="body")
    c = tmp_path / "d.csv"
    c.write_text("a,b\n1,2\n")
    with pytest.raises(PadlabError, match=r"d\.csv:1: no column 'text' in the header \['a', 'b'\]"):
        audit(c)


def test_bytes_that_are_not_utf8_name_the_line(tmp_path, texts):
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(PadlabError, match=r"d\.jsonl:2: bytes that are not UTF-8 at column 14"):
        audit(f)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(PadlabError, match=r"nope\.jsonl: no such file"):
        audit(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(PadlabError, match=r"e\.jsonl: the file is empty"):
        audit(tmp_path / "e.jsonl")
    (tmp_path / "d.xyz").write_text("x")
    with pytest.raises(PadlabError, match=r"path must end in \.jsonl"):
        audit(tmp_path / "d.xyz")


def test_bad_tokenizer_paths(tmp_path, texts):
    f = _jsonl(tmp_path / "d.jsonl", [{"text": texts[0]}])
    with pytest.raises(PadlabError, match=r"tokenizer must be an existing tokenizer\.json"):
        audit(f, tokenizer=tmp_path / "missing.json")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(PadlabError, match=r"no tokenizer\.json in that folder"):
        audit(f, tokenizer=tmp_path / "empty_dir")
    (tmp_path / "bad.json").write_text('{"hello": 1}')
    with pytest.raises(PadlabError, match=r"tokenizer must be a tokenizers tokenizer\.json"):
        load_tokenizer(tmp_path / "bad.json")


@pytest.mark.parametrize("kw, name", [({"max_length": 0}, "max_length"), ({"batch_size": 1.5}, "batch_size"),
                                      ({"limit": 0}, "limit"), ({"target_efficiency": 1.5}, "target_efficiency"),
                                      ({"field": ""}, "field"), ({"max_tokens": 2}, "max_tokens"),
                                      ({"fmt": "xml"}, "fmt")])
def test_bad_arguments_name_themselves(tmp_path, texts, kw, name):
    f = _jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts[:20]])
    with pytest.raises(PadlabError, match=rf"^{name} must"):
        audit(f, **kw)


def test_cli_error_is_one_line_exit_2(tmp_path, capsys):
    assert main(["audit", str(tmp_path / "nope.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("padlab audit: error:") and "no such file" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- recommendation and report

def _row(strategy, efficiency):
    return {"strategy": strategy, "efficiency": efficiency}


def test_recommendation_rule_by_hand():
    rows = [_row("fixed", 0.1), _row("dynamic", 0.3), _row("bucketed", 0.8), _row("token-budget", 0.9),
            _row("packed", 0.99)]
    sweep = [{"mega_batch": 1, "efficiency": 0.3, "eta_squared": 0.03},
             {"mega_batch": 8, "efficiency": 0.85, "eta_squared": 0.7},
             {"mega_batch": 64, "efficiency": 0.93, "eta_squared": 0.95},
             {"mega_batch": 0, "efficiency": 0.97, "eta_squared": 0.99}]
    r = recommend(rows, sweep, batch_size=32, max_length=128, max_tokens=1000, target_efficiency=0.9)
    assert (r.strategy, r.settings["mega_batch"], r.settings["eta_squared"], r.efficiency) == ("bucketed", 64, 0.95, 0.93)
    r = recommend(rows, sweep, batch_size=32, max_length=128, max_tokens=1000, target_efficiency=0.99)
    assert (r.strategy, r.efficiency) == ("packed", 0.99) and "check_packing" in r.why
    # Only a global sort reaches 0.95: that is the `sorted` strategy, named as such, not a bucketing pool.
    r = recommend(rows, sweep, batch_size=32, max_length=128, max_tokens=1000, target_efficiency=0.95)
    assert (r.strategy, r.settings["mega_batch"], r.efficiency) == ("sorted", 0, 0.97) and "global length sort" in r.why
    rows[1] = _row("dynamic", 0.95)
    assert recommend(rows, sweep, batch_size=32, max_length=128, max_tokens=1000).strategy == "dynamic"


def test_sweep_counts_a_pool_as_large_as_the_data_as_a_full_sort():
    from padlab.audit import _mega_sweep  # noqa: PLC2701 - the sweep is the audit's own helper, tested here
    lengths = np.arange(1, 101)  # 100 documents, batches of 8: pools of >= 13 x 8 cover them all
    ms = [row["mega_batch"] for row in _mega_sweep(lengths, 8, 512, seed=0)]
    assert ms == [1, 2, 4, 8, 0]


def test_uniform_lengths_recommend_dynamic(tmp_path, texts):
    same = [texts[0]] * 100  # identical documents: nothing to gain from sorting
    r = audit(_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in same]))
    assert r.recommendation.strategy == "dynamic" and r.recommendation.efficiency == 1.0


def test_report_is_self_contained_html(tmp_path, texts, capsys):
    f = _jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts])
    out = tmp_path / "report.html"
    assert main(["audit", str(f), "--report", str(out), "--no-progress"]) == 0
    page = out.read_text()
    assert page.count('src="data:image/png;base64,') == 3
    assert not re.search(r'src="(?!data:)', page) and "<link" not in page
    assert "Recommendation:" in page


def test_counts_across_encode_batch_chunks(tmp_path, reference):
    """More documents than one encode_batch chunk (2048): lengths stay in file order across chunks."""
    glosses = list(load_corpus("wordnet").subset(5000, seed=5).texts)
    r = audit(_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in glosses]))
    np.testing.assert_array_equal(r.lengths, reference(glosses))


def test_progress_bar_on_stderr(tmp_path, texts, capsys):
    audit(_jsonl(tmp_path / "d.jsonl", [{"text": t} for t in texts[:30]]), progress=True)
    assert "audit d.jsonl" in capsys.readouterr().err


def test_parquet_without_pyarrow_says_so(tmp_path, monkeypatch):
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    for name in ("pyarrow", "pyarrow.ipc", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, name, None)  # import then raises ImportError
    with pytest.raises(PadlabError, match=r"reading Parquet needs pyarrow, which is not installed here"):
        audit(tmp_path / "d.parquet")


def test_json_array_file_and_datasetdict_folder(tmp_path, texts, reference):
    f = tmp_path / "d.json"
    f.write_text(json.dumps([{"text": t} for t in texts[:15]], indent=1), encoding="utf-8")
    np.testing.assert_array_equal(audit(f).lengths, reference(texts[:15]))
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts[:5]})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(PadlabError, match=r"dd: a datasets DatasetDict; pass one split's folder \(.*dd/train\)"):
        audit(tmp_path / "dd")
    np.testing.assert_array_equal(audit(tmp_path / "dd" / "train").lengths, reference(texts[:5]))
