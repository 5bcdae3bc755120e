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


def test_waste_bad_batch_size_exit_code_2(capsys):
    assert main(["waste", "--corpus", "wordnet", "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert "batch_size" in err and "got 0" in err
    assert "Traceback" not in err


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
