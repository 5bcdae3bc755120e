"""benchmarks/h200_amp_tokens.py (issue 12, E9): the quick path writes the JSON the H200 run will,
and the speed-up / verdict arithmetic matches a hand example (no timing is checked)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from padlab.experiments import results

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "h200_amp_tokens.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("h200_amp_tokens", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(model, tokens, precision, tok_s, median_ms):
    return {"model": model, "tokens_per_step": tokens, "precision": precision, "real_tokens_per_s": tok_s,
            "median_step_ms": median_ms}


def test_speedups_and_verdict_by_hand(script):
    # the script has no arithmetic of its own: results.amp_tokens_verdict (notebook 06's reader) computes it
    assert not hasattr(script, "speedups") and not hasattr(script, "verdict")
    rows = [_row("m", 1024, "fp32", 100.0, 10.0), _row("m", 1024, "bf16-amp", 150.0, 8.0),
            _row("m", 4096, "fp32", 100.0, 40.0), _row("m", 4096, "bf16-amp", 300.0, 10.0),
            _row("m", 16384, "fp32", 100.0, 160.0), _row("m", 16384, "bf16-amp", 500.0, 32.0),
            _row("m", 16384, "tf32", 250.0, 64.0),
            {"model": "m", "tokens_per_step": 65536, "precision": "fp32", "error": "OutOfMemoryError"}]
    profiles = [{"model": "m", "tokens_per_step": 1024, "precision": "bf16-amp", "gpu_busy_fraction": 0.3},
                {"model": "m", "tokens_per_step": 1024, "precision": "fp32", "gpu_busy_fraction": 0.9},
                {"model": "m", "tokens_per_step": 16384, "precision": "bf16-amp", "gpu_busy_fraction": 0.8}]
    v = results.amp_tokens_verdict({"rows": rows, "profiles": profiles}, threshold=4.0, busy_below=0.5)
    m = v["models"]["m"]
    # 150/100, 300/100, 500/100, 250/100; median steps 10/8, 40/10, 160/32, 160/64; the errored size has no ratio
    assert m["speedup"] == {"bf16-amp": {1024: 1.5, 4096: 3.0, 16384: 5.0}, "tf32": {16384: 2.5}}
    assert m["median_step_speedup"] == {"bf16-amp": {1024: 1.25, 4096: 4.0, 16384: 5.0}, "tf32": {16384: 2.5}}
    assert m["crosses_threshold_at_tokens"] == 16384 and m["max_speedup"] == 5.0
    # the bf16-amp profiles decide: 30% busy is launch-bound, 80% is not (fp32's 90% is not asked)
    assert m["launch_bound"] == {1024: True, 16384: False}
    assert script.summary(v) == [
        "m: bf16-amp over fp32 1,024: 1.5x, 4,096: 3.0x, 16,384: 5.0x; reaches 4x from 16,384 tokens a step; "
        "1,024 tokens: GPU busy 30% (launch-bound); 16,384 tokens: GPU busy 80% (GPU-bound)"]
    v6 = results.amp_tokens_verdict({"rows": rows, "profiles": []}, threshold=6.0)
    assert v6["models"]["m"]["crosses_threshold_at_tokens"] is None
    assert script.summary(v6) == ["m: bf16-amp over fp32 1,024: 1.5x, 4,096: 3.0x, 16,384: 5.0x; never reaches 6x"]


def test_steps_for_caps_tokens_a_pass(script):
    assert script.steps_for(1024, 20, 524288) == 20
    assert script.steps_for(65536, 20, 524288) == 8
    assert script.steps_for(1 << 20, 20, 524288) == 3          # never fewer than 3
    # the defaults' estimate stays inside the two-minute budget with room for start-up
    a = script.parse_args([])
    est = script.estimate_seconds(tuple(a.models), tuple(a.tokens), tuple(a.precisions), a.steps, a.row_tokens,
                                  a.max_length, tuple(a.profile_tokens), tuple(a.profile_precisions), a.profile_steps)
    assert 10 < est < 80
    assert a.profile_tokens == [1024, 16384]


@pytest.mark.slow   # about half a minute on a shared 2-core machine (mask_corpus, 8 rows, 8 profiles)
def test_quick_run_writes_the_json(script, tmp_path):
    out = tmp_path / "amp_tokens.json"
    script.main(["--quick", "--precisions", "fp32,bf16-amp", "--out", str(out)])
    r = json.loads(out.read_text())
    assert {"device", "torch", "date", "command", "config", "rows", "profiles", "verdict", "summary",
            "estimated_h200_s", "matmul_peak_tflops", "seconds"} <= set(r)
    assert r["command"].startswith("python benchmarks/h200_amp_tokens.py --quick") and "amp_tokens.json" in r["command"]
    assert str(tmp_path) not in r["command"]
    assert [(x["tokens_per_step"], x["precision"]) for x in r["rows"]] == [
        (128, "fp32"), (128, "bf16-amp"), (256, "fp32"), (256, "bf16-amp")]
    for x in r["rows"]:
        assert "error" not in x and x["model"] == "tiny" and x["strategy"] == "packed"
        assert x["real_tokens_per_s"] > 0 and x["median_step_ms"] > 0 and x["mfu"] > 0
    assert {(p["tokens_per_step"], p["precision"]) for p in r["profiles"]} == {
        (128, "fp32"), (128, "bf16-amp"), (256, "fp32"), (256, "bf16-amp")}
    assert all(p["gpu_busy_fraction"] is None and p["wall_ms_per_step"] > 0 for p in r["profiles"])  # CPU: no kernels
    # the stored speed-ups are the stored rows' ratios
    by = {(x["tokens_per_step"], x["precision"]): x["real_tokens_per_s"] for x in r["rows"]}
    assert set(r["verdict"]["models"]) == {"tiny"}
    for t, x in r["verdict"]["models"]["tiny"]["speedup"]["bf16-amp"].items():
        assert x == pytest.approx(by[(int(t), "bf16-amp")] / by[(int(t), "fp32")])
    # the stored verdict is results.amp_tokens_verdict of the file it is stored in (notebook 06's reader)
    again = results.amp_tokens_verdict(results.load_amp_tokens(out), references=results.amp_references())
    assert json.loads(json.dumps(again)) == r["verdict"] and "references_error" not in r
    assert r["summary"] == script.summary(again)
    # chapter 06's BERT-base figure read from the shipped H100 file: 26.94 ms against 58.05 ms fp32
    ref = next(x for x in r["verdict"]["references"]
               if (x["chapter"], x["model"], x["precision"]) == ("06", "bert-base", "bf16-amp"))
    assert ref["speedup"] == pytest.approx(58.048 / 26.9431, rel=1e-3) and ref["layout"] == "32x128 tokens"


def test_bad_arguments_are_refused(script):
    with pytest.raises(SystemExit):
        script.parse_args(["--precisions", "bf16-amp"])          # no fp32 base
    with pytest.raises(SystemExit):
        script.parse_args(["--tokens", "256"])                    # below max_length 512
    with pytest.raises(SystemExit):
        script.parse_args(["--models", "gpt"])
