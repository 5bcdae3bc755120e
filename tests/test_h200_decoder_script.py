"""benchmarks/h200_decoder.py --quick: every row of the decoder benchmark runs on the CPU (a smoke test:
the numbers are not checked, the rows, the oracle gate and the JSON's provenance are)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "h200_decoder.py"


@pytest.mark.slow   # about half a minute on a shared 2-core machine (the oracle runs twice)
def test_quick_run_has_every_row(tmp_path):
    spec = importlib.util.spec_from_file_location("h200_decoder", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "decoder.json"
    mod.main(["--quick", "--examples", "300", "--steps", "1", "--warmup", "0", "--gen-prompts", "4",
              "--gen-batch-sizes", "1,2", "--gen-new-tokens", "2", "--out", str(out),
              "--png", str(tmp_path / "decoder.png")])
    assert (tmp_path / "decoder.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(out.read_text())
    assert {"device", "torch", "transformers", "date", "command", "config"} <= set(result)
    assert result["complete"] and "decoder" in result["name"]
    assert [o["attn_implementation"] for o in result["oracle"]] == ["sdpa"]
    assert result["oracle"][0]["ok"] and not result["oracle"][0]["negative_control_ok"]
    names = [r["strategy"] for r in result["rows"]]
    assert names == ["fixed", "dynamic", "bucketed", "token-budget", "packed (sdpa)", "packed-mask (sdpa)",
                     "hf-length-grouped", "hf-flattening (sdpa)"]
    assert all("error" not in r and r["real_tokens_per_s"] > 0 for r in result["rows"])
    assert [(g["batch_size"], g["order"]) for g in result["generation"]] == [(1, "sorted"), (2, "sorted"), (2, "random")]
    assert result["padlab_over_best_hf"] > 0
