"""benchmarks/h200_decoder.py --quick: every row of the decoder benchmark runs on the CPU (a smoke test:
the numbers are not checked, the rows, the oracle gate and the JSON's provenance are). The packed-flex
row's batch and loss (FlexAttention under transformers, forward only: no CPU backward) are held equal,
token for token, to the packed-mask (sdpa) row's on the same packs, in a subprocess (compiled on the CPU)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("transformers")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "h200_decoder.py"


def load_script():
    spec = importlib.util.spec_from_file_location("h200_decoder", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow   # about half a minute on a shared 2-core machine (the oracle runs twice)
def test_quick_run_has_every_row(tmp_path):
    mod = load_script()
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


def test_rows_names_checked_before_any_work(capsys):
    with pytest.raises(SystemExit):
        load_script().main(["--quick", "--rows", "packed-mask (sdpa),packed-flex (flex_attention)"])
    assert "packed-flex (flex_attention)" in capsys.readouterr().err   # not a row without flex_attention in --attn


@pytest.mark.slow   # the oracle and two rows on the CPU
def test_rows_run_in_the_given_order(tmp_path):
    out = tmp_path / "decoder.json"
    load_script().main(["--quick", "--examples", "300", "--steps", "1", "--warmup", "0", "--gen-prompts", "2",
                        "--gen-batch-sizes", "1", "--gen-new-tokens", "1",
                        "--rows", "hf-length-grouped,packed-mask (sdpa)", "--out", str(out)])
    result = json.loads(out.read_text())
    assert [r["strategy"] for r in result["rows"]] == ["hf-length-grouped", "packed-mask (sdpa)"]
    assert result["config"]["rows"] == ["hf-length-grouped", "packed-mask (sdpa)"]


@pytest.mark.slow   # the oracle, one row eager and compiled on the CPU
def test_profile_and_compile_records(tmp_path):
    out = tmp_path / "decoder.json"
    load_script().main(["--quick", "--examples", "300", "--steps", "2", "--warmup", "1", "--gen-batch-sizes", "none",
                        "--rows", "packed-mask (sdpa)", "--compile", "both", "--profile", "packed-mask (sdpa)",
                        "--profile-steps", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    eager, compiled = result["rows"]
    assert (eager["compiled"], compiled["compiled"]) == (False, True) and result["generation"] == []
    # eager compiles nothing; the compiled row compiles its graph(s) in its warm-up, none in its timed steps
    assert eager["graphs_compiled_in_warmup"] == 0 and compiled["graphs_compiled_in_warmup"] >= 1
    assert compiled["graphs_compiled_in_timed_steps"] == 0
    for r in (eager, compiled):      # a CPU has no kernels: the profile holds its wall time only
        assert r["profile"]["steps"] == 1 and r["profile"]["wall_ms_per_step"] > 0
        assert r["profile"]["kernel_ms_per_step"] is None and r["profile"]["unprofiled_ms_per_step"] > 0
        # the profiled step is the first timed one: its own tokens (the collated batch counted here)
        assert 0 < r["profile"]["real_tokens"] <= r["profile"]["slots"]
        assert r["profile"]["profiled_steps_ms_per_step"] > 0    # the same step, timed without the profiler
    assert result["by_compile"]["eager"]["best_padlab"] == "packed-mask (sdpa)"

    # --replan plans the run's batches again: the profiled steps' tokens come back the same; a row whose
    # recorded tokens are not the plan's is refused.
    recorded = [dict(r["profile"]) for r in result["rows"]]
    for r in result["rows"]:
        del r["profile"]["real_tokens"], r["profile"]["slots"]
    out.write_text(json.dumps(result))
    load_script().main(["--replan", str(out)])
    again = json.loads(out.read_text())
    for r, before in zip(again["rows"], recorded):
        assert (r["profile"]["real_tokens"], r["profile"]["slots"]) == (before["real_tokens"], before["slots"])
        assert r["profile"]["tokens_from"] == "replanned"
    again["rows"][0]["real_tokens_per_step"] += 1
    out.write_text(json.dumps(again))
    with pytest.raises(SystemExit, match="not the run's batches"):
        load_script().main(["--replan", str(out)])


@pytest.mark.slow   # the oracle eager and compiled, one padding-free row eager and compiled, on the CPU
def test_oracle_on_the_compiled_model_gates_the_compiled_padding_free_rows(tmp_path):
    out = tmp_path / "decoder.json"
    load_script().main(["--quick", "--examples", "300", "--steps", "1", "--warmup", "1", "--gen-batch-sizes", "none",
                        "--rows", "hf-flattening (sdpa)", "--compile", "both", "--oracle-compiled", "--out", str(out)])
    result = json.loads(out.read_text())
    eager_oracle, compiled_oracle = result["oracle"]
    assert not eager_oracle.get("compiled") and compiled_oracle["compiled"]
    assert compiled_oracle["ok"] and not compiled_oracle["negative_control_ok"]
    assert result["config"]["oracle_compiled"]
    assert [(r["strategy"], r["compiled"], "error" in r) for r in result["rows"]] == [
        ("hf-flattening (sdpa)", False, False), ("hf-flattening (sdpa)", True, False)]


@pytest.mark.slow   # the oracle, one padded row compiled on the CPU, its timed steps twice
def test_a_row_compiled_in_its_timed_steps_is_timed_again(tmp_path):
    out = tmp_path / "decoder.json"
    # No warm-up: the row's graphs compile in its first timed pass; the second pass, same batches, compiles none.
    load_script().main(["--quick", "--examples", "300", "--steps", "2", "--warmup", "0", "--gen-batch-sizes", "none",
                        "--rows", "hf-length-grouped", "--compile", "on", "--retime-recompiled", "--out", str(out)])
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert result["config"]["retime_recompiled"]
    assert row["first_timed_pass"]["graphs_compiled"] >= 1 and row["graphs_compiled_in_timed_steps"] == 0
    assert row["first_timed_pass"]["seconds"] > 0 and row["seconds"] > 0
    assert result["by_compile"]["compiled"]["best_hf"] == "hf-length-grouped [compiled]"   # steady: not left out


@pytest.mark.slow   # the oracle, one padded row compiled on the CPU
def test_the_compiled_oracle_runs_only_for_the_padding_free_rows_timed(tmp_path):
    out = tmp_path / "decoder.json"
    # No padding-free row among --rows: no implementation's compiled oracle (one under flex_attention on changing
    # lengths compiled for minutes on the H200 and cost a run).
    load_script().main(["--quick", "--examples", "300", "--steps", "1", "--warmup", "0", "--gen-batch-sizes", "none",
                        "--rows", "packed-mask (sdpa)", "--compile", "on", "--oracle-compiled", "--out", str(out)])
    result = json.loads(out.read_text())
    assert [o.get("compiled", False) for o in result["oracle"]] == [False]
    assert [("error" in r) for r in result["rows"]] == [False]


def test_profile_names_checked_before_any_work(capsys):
    with pytest.raises(SystemExit):
        load_script().main(["--quick", "--profile", "packed (flash)"])
    assert "--profile ['packed (flash)'] are not rows of this run" in capsys.readouterr().err


FLEX_ROW = textwrap.dedent("""
    import importlib.util, json, sys
    import torch
    from torch.nn.attention.flex_attention import create_block_mask
    from padlab import data
    from padlab.attention import document_block_mask
    from padlab.packing import PackedCollator
    from padlab.train import causal_lm_loss

    spec = importlib.util.spec_from_file_location("h200_decoder", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    pairs = data.load_instructions("wordnet-define")
    # Two packs of real pairs (completion-only labels) in rows of 128, a step of three rows: the third is
    # the all-padding row the packed-flex batch appends to keep its shape.
    packs = [[pairs[i] for i in (3, 4000, 50000)], [pairs[i] for i in (90000, 7, 61000, 12345)]]
    mask_b, flex_b = mod.packed_batches(PackedCollator(128, causal=True), packs, 3)
    model = mod.build_model("tiny", 128, 0, "sdpa").eval()

    def per_token(batch, mask):
        out = model(batch["input_ids"], attention_mask=mask, position_ids=batch["position_ids"], use_cache=False)
        labels = batch["labels"][:, 1:].flatten()
        keep = labels != -100
        return torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1).float()[keep], labels[keep],
                                                 reduction="none")

    with torch.no_grad():
        sdpa = per_token(mask_b, mask_b["attention_mask"])
        sdpa_loss = causal_lm_loss(model, mask_b)
        model.set_attn_implementation("flex_attention")
        flex = per_token(flex_b, document_block_mask(flex_b["seq_ids"], mod.FLEX_BLOCK, causal=True))
        flex_loss = mod.flex_loss(model, flex_b)
        # (a BlockMask is taken by flex_attention only: sdpa would fail on it)
        # negative control: the causal mask without the document rule (packed sequences see each other)
        causal_only = create_block_mask(lambda b, h, q, kv: q >= kv, 3, None, 128, 128, device="cpu")
        control = per_token(flex_b, causal_only)
    print(json.dumps({"rows": list(mask_b["input_ids"].shape) + list(flex_b["input_ids"].shape),
                      "targets": [len(sdpa), len(flex)], "diff": float((flex - sdpa).abs().max()),
                      "loss": [float(sdpa_loss), float(flex_loss)],
                      "control_diff": float((control - sdpa).abs().max())}))
""")


@pytest.mark.slow   # FlexAttention compiles on the CPU (tens of seconds)
def test_packed_flex_batch_equals_packed_mask_batch():
    if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
        pytest.skip("this torch has no flex_attention")
    root = str(SCRIPT.parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    p = subprocess.run([sys.executable, "-c", FLEX_ROW, str(SCRIPT)], capture_output=True, text=True, timeout=600,
                       env=env, cwd=root)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["rows"] == [2, 128, 3, 128]   # the flex batch has its padding row, same width
    assert r["targets"][0] == r["targets"][1] > 0
    assert r["diff"] <= 1e-5
    assert abs(r["loss"][0] - r["loss"][1]) <= 1e-5
    assert r["control_diff"] > 1e-3         # without the document rule the losses differ


def test_a_failed_compiled_oracle_leaves_the_compiled_padding_free_rows_out(tmp_path, monkeypatch):
    mod = load_script()
    real = mod.check_packing

    def oracle(model, *a, **kw):     # the compiled path fails its oracle (the bug this gate exists for)
        if hasattr(model, "_orig_mod"):
            raise RuntimeError("sequences attend to each other")
        return real(model, *a, **kw)

    monkeypatch.setattr(mod, "check_packing", oracle)
    out = tmp_path / "decoder.json"
    mod.main(["--quick", "--examples", "300", "--steps", "1", "--warmup", "0", "--gen-batch-sizes", "none",
              "--rows", "hf-flattening (sdpa)", "--compile", "on", "--oracle-compiled", "--out", str(out)])
    result = json.loads(out.read_text())
    assert [o.get("compiled", False) for o in result["oracle"]] == [False, True]
    assert result["oracle"][1]["ok"] is False and "attend to each other" in result["oracle"][1]["error"]
    assert result["rows"] == [{"strategy": "hf-flattening (sdpa)", "compiled": True,
                               "error": "not run: its oracle did not pass on the compiled model"}]
