"""Tests for the ``padlab waste`` command (in-process through main(argv), and once as a module)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from padlab.cli import main
from padlab.data import load_corpus

KEYS = {"strategy", "real_tokens", "padded_tokens", "efficiency", "attention_efficiency",
        "truncated_tokens", "batches"}


def run_json(capsys, *extra: str) -> list[dict]:
    assert main(["waste", "--corpus", "wordnet", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("max_length", [512, 16])
def test_waste_json_rows_account_for_every_token(capsys, max_length):
    rows = run_json(capsys, "--max-length", str(max_length))
    total = int(load_corpus("wordnet").lengths.sum())
    names = [r["strategy"] for r in rows]
    assert {"fixed", "dynamic"} <= set(names) and len(set(names)) == len(names)
    for r in rows:
        assert KEYS <= set(r), r
        assert r["corpus"] == "wordnet"
        assert r["real_tokens"] == total - r["truncated_tokens"], r["strategy"]
        assert 0 < r["efficiency"] <= 1 and 0 < r["attention_efficiency"] <= 1
    by = {r["strategy"]: r for r in rows}
    if max_length == 16:
        # Every batch of 32 glosses holds one of 16+ tokens: dynamic padding then saves nothing.
        assert by["fixed"]["truncated_tokens"] > 0
        assert by["dynamic"]["padded_tokens"] == by["fixed"]["padded_tokens"]
    else:
        assert by["fixed"]["truncated_tokens"] == 0  # WordNet glosses are far shorter than 512 tokens
        assert by["dynamic"]["padded_tokens"] < by["fixed"]["padded_tokens"]


def test_waste_table_output(capsys):
    assert main(["waste", "--corpus", "wordnet", "--batch-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "corpus wordnet" in out and "batch size 64" in out
    assert "fixed" in out and "dynamic" in out


@pytest.mark.parametrize("option, value, must", [
    ("--batch-size", "0", "be an integer >= 1"),
    ("--max-length", "-3", "be an integer >= 1"),
    # Found by an outside check: numpy's "expected non-negative integer" named no argument.
    ("--seed", "-1", "be an integer >= 0"),
])
def test_waste_bad_option_is_one_line_naming_it(capsys, option, value, must):
    assert main(["waste", "--corpus", "wordnet", option, value]) == 2
    err = capsys.readouterr().err
    assert err == f"padlab waste: error: {option} must {must}; got {value}\n"


@pytest.mark.parametrize("error", [RuntimeError("internal bug"), IndexError("index 9 is out of bounds"),
                                   ValueError("a numpy ValueError, not an argument error")])
def test_an_internal_error_is_a_bug_with_its_traceback(monkeypatch, error):
    # Only PadlabError is an argument error; anything else escapes main() with its traceback.
    import padlab.strategies

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(padlab.strategies, "waste_table", broken)
    with pytest.raises(type(error), match=str(error)):
        main(["waste", "--corpus", "wordnet"])


def test_the_negative_control_a_padlab_error_is_caught(monkeypatch, capsys):
    import padlab.strategies
    from padlab._validate import fail

    def refuses(*args, **kwargs):
        raise fail("max_length", 0, "be an integer >= 1")

    monkeypatch.setattr(padlab.strategies, "waste_table", refuses)
    assert main(["waste", "--corpus", "wordnet"]) == 2
    assert capsys.readouterr().err == "padlab waste: error: max_length must be an integer >= 1; got 0\n"


def test_waste_unknown_corpus_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["waste", "--corpus", "nope"])
    assert e.value.code == 2
    assert "--corpus" in capsys.readouterr().err


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "padlab.cli", "waste", "--corpus", "wordnet", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {"fixed", "dynamic"} <= {r["strategy"] for r in rows}
