"""packed-flex in the registry and the harness (padlab.experiments.bench), and the honest-figure
helpers (both MFU denominators, time to loss), on the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from padlab._validate import PadlabError
from padlab.attention import FlexFallbackWarning
from padlab.data import load_corpus
from padlab.experiments import bench, results
from padlab.experiments.bench import BenchConfig, collate_step, mask_corpus, mlm_loss
from padlab.models import EncoderForMaskedLM
from padlab.strategies import STRATEGIES, plan

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

TINY = dict(model="tiny", timed_steps=2, max_tokens=4 * 64, max_length=64, seqs_per_step=4, progress=False,
            flex_block_size=32)


@pytest.fixture(scope="module")
def mc():
    return mask_corpus(load_corpus("fortunes"), 0.15, 64, seed=0)


def test_registry_entry_plans_the_packs_of_packed_varlen():
    lengths = np.array([8, 7, 6, 5, 4, 3, 2, 1])
    assert STRATEGIES["packed-flex"].packs
    flex = plan("packed-flex", lengths, batch_size=8, max_length=10, rows=4)
    varlen = plan("packed-varlen", lengths, batch_size=8, max_length=10, rows=4)
    assert [[p.tolist() for p in b] for b in flex.batches] == [[p.tolist() for p in b] for b in varlen.batches]
    # FFD at capacity 10 over 8..1, by hand: 8+2 | 7+3 | 6+4 | 5+1
    assert sorted(sorted(lengths[p].tolist()) for p in flex.batches[0]) == [[1, 5], [2, 8], [3, 7], [4, 6]]


def test_collate_carries_seq_ids_and_static_rows(mc):
    cfg = BenchConfig(**TINY)
    step = bench.plan_steps("packed-flex", mc, cfg, 1)[0][0]
    b = collate_step("packed-flex", mc, step, cfg)
    inp = b["inputs"]
    assert set(inp) == {"input_ids", "attention_mask", "position_ids", "seq_ids", "flex_block_size",
                        "masked_positions", "mlm_labels"}
    rows = cfg.max_tokens // cfg.max_length
    assert tuple(inp["seq_ids"].shape) == (rows, cfg.max_length) and b["slots"] == rows * cfg.max_length
    assert torch.equal(inp["seq_ids"] >= 0, inp["attention_mask"].bool())
    assert inp["flex_block_size"] == 32 and "block_mask" not in inp


def _model(cfg):
    torch.manual_seed(0)
    return EncoderForMaskedLM(bench.model_config("tiny", cfg.max_length)).eval()


def test_flex_loss_equals_the_dense_block_mask_and_a_negative_control(mc):
    cfg = BenchConfig(**TINY)
    step = bench.plan_steps("packed-flex", mc, cfg, 1)[0][0]
    flex = collate_step("packed-flex", mc, step, cfg)["inputs"]
    dense = collate_step("packed", mc, step, cfg)["inputs"]
    model = _model(cfg)
    with torch.no_grad():
        lf, ld = float(mlm_loss(model, flex)), float(mlm_loss(model, dense))
        assert abs(lf - ld) < 1e-5
        leaky = dict(flex, seq_ids=torch.where(flex["seq_ids"] >= 0, 0, -1))  # one document per row
        assert abs(float(mlm_loss(model, leaky)) - ld) > 1e-3
    assert "seq_ids" in flex  # mlm_loss did not consume the caller's dict


def test_training_on_the_cpu_falls_back_with_a_warning(mc):
    cfg = BenchConfig(**TINY)
    step = bench.plan_steps("packed-flex", mc, cfg, 1)[0][0]
    inp = collate_step("packed-flex", mc, step, cfg)["inputs"]
    model = _model(cfg).train()
    with pytest.warns(FlexFallbackWarning, match="dense block mask"):
        loss = mlm_loss(model, inp)
    loss.backward()
    assert model.encoder.layers[0].qkv.weight.grad.abs().sum() > 0


def test_both_mfu_denominators():
    res = {"device": "NVIDIA H200", "matmul_peak_samples_tflops": [700.0, 780.0], "matmul_peak_tflops": 700.0,
           "rows": [{"model_tflops": 390.0}, {"error": "x"}]}
    bench.add_peaks(res)
    assert res["matmul_peak_tflops"] == 780.0 and res["matmul_peak_spread_tflops"] == [700.0, 780.0]
    assert res["rows"][0]["mfu"] == res["rows"][0]["mfu_measured_peak"] == 0.5
    assert res["rows"][0]["mfu_datasheet"] == pytest.approx(390 / 989.4)
    assert res["datasheet_peak_tflops"] == 989.4 and "datasheet" in res["datasheet_peak_source"]
    assert "mfu" not in res["rows"][1]
    cpu = bench.add_peaks({"device": "CPU (x86_64)", "matmul_peak_tflops": 2.0, "rows": [{"model_tflops": 1.0}]})
    assert cpu["rows"][0]["mfu"] == 0.5 and cpu["rows"][0]["mfu_datasheet"] is None


def test_time_to_loss_by_hand():
    base = {"strategy": "fixed", "loss": [5.0, 4.0, 3.0, 2.0, 1.0], "step_ms": [1000.0] * 5}
    best = {"strategy": "packed-flex", "loss": [5.0, 3.0, 1.0, 1.0, 1.0], "step_ms": [30000.0, 100.0, 100.0, 100.0, 100.0]}
    t = results.time_to_loss(base, best, window=1)
    # target: the baseline's last loss, 1.0; the baseline reaches it at step 4 (5 s), the best at step 2
    assert t["target_loss"] == 1.0
    assert (t["baseline"]["step"], t["baseline"]["seconds"]) == (4, 5.0)
    assert (t["best"]["step"], t["best"]["seconds"]) == (2, pytest.approx(30.2))
    assert t["best"]["seconds_after_first_step"] == pytest.approx(0.2)
    assert t["ratio"] == pytest.approx(5.0 / 30.2) and t["ratio_after_first_step"] == pytest.approx(4.0 / 0.2)
    # window 2: target mean(2, 1) = 1.5; running means best 5, 4, 2, 1 -> step 3
    assert results.time_to_loss(base, best, window=2)["best"]["step"] == 3
    never = dict(best, loss=[9.0] * 5)
    assert results.time_to_loss(base, never, window=1)["ratio"] is None


def test_bad_input():
    with pytest.raises(PadlabError, match="flex_block_size"):
        BenchConfig(flex_block_size=48)
    with pytest.raises(PadlabError, match="compile_mode"):
        BenchConfig(compile_mode="max-autotune")
    with pytest.raises(PadlabError, match="best"):
        results.time_to_loss({"loss": [1.0, 2.0]}, {"loss": [1.0]}, window=1)


def test_the_shipped_h200_reference():
    res = results.load_result("h200")
    assert "H200" in res["device"] and not results.is_history(res)
    assert res["datasheet_peak_tflops"] == 989.4 and res["datasheet_peak_source"]
    assert res["matmul_peak_tflops"] == max(res["matmul_peak_samples_tflops"])
    rows = {r["name"]: r for r in res["rows"] if "error" not in r}
    best = rows[res["best"]]
    assert best["strategy"] == "packed-flex" and best["compiled"] and best["recompiles"] == 0
    for r in rows.values():
        for key in ("strategy", "precision", "real_tokens_per_s", "slots_per_step", "model_tflops", "mfu",
                    "mfu_datasheet", "cold_real_tokens_per_s", "median_step_real_tokens_per_s"):
            assert key in r
    base = rows["fixed/fp32"]
    assert best["slots_per_step"] == base["slots_per_step"] == 65536
    assert best["speedup_vs_fixed_fp32_same_slots"] == pytest.approx(best["real_tokens_per_s"] / base["real_tokens_per_s"])
    t = res["time_to_loss"]
    assert t["ratio"] == pytest.approx(t["baseline"]["seconds"] / t["best"]["seconds"])
