"""`padlab floats VALUE [--formats ...] [--json]`."""
from __future__ import annotations

import json

import pytest

from padlab.cli import main
from padlab.floats import FORMATS

KEYS = {"format", "bits", "hex", "sign", "exponent", "mantissa", "rounded", "relative_error"}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["floats", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_json_has_one_object_per_format_in_order(capsys):
    rc, out, _ = run(capsys, "1.0", "--json")
    rows = json.loads(out)
    assert rc == 0 and [r["format"] for r in rows] == list(FORMATS)
    for r in rows:
        assert KEYS <= set(r)
        assert set(r["bits"]) <= {"0", "1"} and len(r["bits"]) == FORMATS[r["format"]].total_bits
        assert (r["rounded"], r["relative_error"], r["sign"], r["exponent"], r["mantissa"]) == (1.0, 0.0, 0, 0, 0)


def test_json_values_by_hand(capsys):
    rc, out, _ = run(capsys, "65504", "--formats", "fp16,e4m3,bfloat16", "--json")
    fp16, e4m3, bf16 = json.loads(out)
    assert (fp16["bits"], fp16["hex"], fp16["exponent"], fp16["mantissa"]) == ("0111101111111111", "0x7bff", 15, 1023)
    assert e4m3["format"] == "fp8-e4m3fn" and e4m3["bits"] == "01111111" and e4m3["rounded"] == "nan"
    assert bf16["rounded"] == 65536.0 and bf16["relative_error"] == pytest.approx(32 / 65504)


def test_json_is_strict_json(capsys):
    rc, out, _ = run(capsys, "--formats", "fp16", "--json", "--", "-1e9")
    row = json.loads(out, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))[0]
    assert (row["rounded"], row["relative_error"], row["next_down"]) == ("-inf", "inf", "-inf")
    assert row["sign"] == 1 and row["exponent_bits"] == "11111"


def test_table_output(capsys):
    rc, out, _ = run(capsys, "-2.5", "--formats", "fp16,fp4")
    lines = out.splitlines()
    assert rc == 0 and lines[0].startswith("value -2.5") and "bits (sign exponent mantissa)" in lines[1]
    assert lines[2].split()[0] == "fp16" and lines[2].endswith("1 10000 0100000000")
    assert lines[3].split()[:2] == ["fp4-e2m1", "-2.0"] and lines[3].endswith("1 10 0")
    assert len(lines) == 4


def test_nan_skips_formats_without_nan(capsys):
    rc, out, err = run(capsys, "nan", "--json", "--formats", "fp16,fp4-e2m1")
    rows = json.loads(out)
    assert rc == 0 and [r["format"] for r in rows] == ["fp16"] and rows[0]["rounded"] == "nan"
    assert "fp4-e2m1 skipped: it has no NaN encoding" in err


def test_nan_in_formats_without_nan_only_is_an_error(capsys):
    # Found by an outside check: this printed an empty table and exited 0.
    rc, out, err = run(capsys, "nan", "--formats", "fp4-e2m1")
    assert rc == 2 and out == ""
    assert err.splitlines()[-1] == ("padlab floats: error: --formats must include a format that can store 'nan' "
                                   "(one with a NaN encoding); got 'fp4-e2m1'")
    assert main(["floats", "nan", "--json", "--formats", "fp4"]) == 2


@pytest.mark.parametrize("argv,match", [
    (["abc"], "value must be a real number or a numeric string"),
    (["1", "--formats", "fp16,fp12"], "format must be one of 'fp64'"),
    (["1", "--formats", ","], "--formats must name at least one format"),
])
def test_bad_input_is_one_clear_line(capsys, argv, match):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("padlab floats: error: ") and match in err and len(err.splitlines()) == 1


def test_help_names_the_formats_and_the_negative_value_form(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["floats", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert exit_.value.code == 0 and "fp8-e4m3fn" in text and "-- -1e-5" in text
