"""padlab.experiments.bench on the CPU: shapes of the result, equal work, same computation, one
policy table, one planner, bad input."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from padlab import precision, strategies
from padlab.data import CLS_ID, MASK_ID, SEP_ID, load_corpus
from padlab.experiments import bench
from padlab.experiments.bench import BenchConfig, collate_step, mask_corpus
from padlab.models import IGNORE_INDEX

TINY = dict(model="tiny", timed_steps=2, max_tokens=4 * 64, max_length=64, seqs_per_step=4, progress=False)


def plan_batches(strategy, mc, cfg, n):
    return bench.plan_steps(strategy, mc, cfg, n)[0]


@pytest.fixture(scope="module")
def mc():
    return mask_corpus(load_corpus("fortunes"), 0.15, 64, seed=0)


def test_masks_are_drawn_once_per_corpus(mc):
    c = mc.corpus
    chosen = mc.labels != IGNORE_INDEX
    assert (mc.input_ids[chosen] == MASK_ID).all()
    assert (mc.labels[chosen] == c.token_ids[chosen]).all()
    assert not chosen[np.isin(c.token_ids, (CLS_ID, SEP_ID))].any()
    assert abs(chosen.mean() - 0.15 * (1 - np.isin(c.token_ids, (CLS_ID, SEP_ID)).mean())) < 0.01
    # the corpus itself is untouched
    assert c.token_ids[0] == CLS_ID and (c.token_ids != MASK_ID).all()


@pytest.mark.parametrize("strategy", list(strategies.STRATEGIES))
def test_every_layout_keeps_every_real_and_masked_token(mc, strategy):
    cfg = BenchConfig(**TINY)
    plan = plan_batches(strategy, mc, cfg, 3)
    assert len(plan) == 3
    for step in plan:
        b = collate_step(strategy, mc, step, cfg)
        idx = np.concatenate(step) if strategy.startswith("packed") else np.asarray(step)
        assert b["real_tokens"] == int(mc.lengths[idx].sum())
        assert b["sequences"] == len(idx) == len(set(idx.tolist()))
        expected = sorted(int(x) for i in idx for x in mc.example(int(i))["labels"] if x != IGNORE_INDEX)
        got = b["inputs"]["mlm_labels"]
        assert sorted(got[got != IGNORE_INDEX].tolist()) == expected
        assert b["slots"] >= b["real_tokens"]


def test_equal_token_work(mc):
    cfg = BenchConfig(**TINY)
    for s in ("fixed", "token-budget", "packed", "packed-varlen"):
        for step in plan_batches(s, mc, cfg, 4):
            assert collate_step(s, mc, step, cfg)["slots"] <= cfg.max_tokens


def test_fixed_uses_seqs_per_step_rows_of_max_length(mc):
    cfg = BenchConfig(**TINY)
    b = collate_step("fixed", mc, plan_batches("fixed", mc, cfg, 1)[0], cfg)
    assert tuple(b["inputs"]["input_ids"].shape) == (cfg.seqs_per_step, cfg.max_length)


def test_mlm_slots_pad_to_a_fixed_length(mc):
    cfg = BenchConfig(**TINY)
    step = plan_batches("packed-varlen", mc, cfg, 1)[0]
    b = collate_step("packed-varlen", mc, step, cfg, mlm_slots=256)
    assert b["inputs"]["masked_positions"].numel() == 256 == b["inputs"]["mlm_labels"].numel()
    with pytest.raises(ValueError, match="mlm_slots must be >= the masked tokens"):
        collate_step("packed-varlen", mc, step, cfg, mlm_slots=1)


def test_quick_run_shape_and_same_computation():
    cfg = BenchConfig(strategies=("fixed", "dynamic", "packed", "packed-varlen"), precisions=("fp32",), **TINY)
    res = bench.run_benchmark(cfg, command="test")
    for key in ("device", "torch", "date", "command", "matmul_peak_tflops", "rows"):
        assert key in res
    for row in res["rows"]:
        for key in ("strategy", "precision", "real_tokens_per_s", "padded_fraction", "peak_memory_bytes",
                    "model_tflops", "mfu", "loss"):
            assert key in row
        assert 0 <= row["padded_fraction"] < 1 and np.isfinite(row["loss"])
    json.dumps(res)  # JSON-ready
    # Same examples, same weights: the fp32 loss is the same under every layout...
    losses = list(res["step0_loss_fp32"].values())
    assert max(losses) - min(losses) < 1e-4
    fixed = res["rows"][0]
    assert fixed["padded_fraction"] > res["rows"][2]["padded_fraction"]


def test_step0_negative_control(mc):
    """Without the block structure (packed rows attending across sequences) the loss moves."""
    cfg = BenchConfig(**TINY)
    mcfg = bench.model_config("tiny", cfg.max_length)
    torch.manual_seed(0)
    from padlab.models import EncoderForMaskedLM
    model = EncoderForMaskedLM(mcfg).eval().double()  # float64: layouts agree to rounding, not to fp32 noise
    idx = np.arange(12)
    from padlab.packing import pack
    step = [idx[p] for p in pack(mc.lengths[idx], cfg.max_length).packs]
    b = collate_step("packed", mc, step, cfg)["inputs"]
    def logits(inputs):
        # The masked tokens' float64 logits as a sorted multiset: the layouts list them in different orders
        # (the loss itself goes through logits.float(), so it agrees only to float32 rounding).
        with torch.no_grad():
            return np.sort(model(**inputs).logits.double().numpy().ravel())

    right = logits(b)
    leaky = logits({**b, "block_mask": torch.ones_like(b["block_mask"])})
    alone = logits(collate_step("dynamic", mc, idx, cfg)["inputs"])
    assert np.abs(right - alone).max() < 1e-9
    assert np.abs(leaky - alone).max() > 1e-4  # five orders of magnitude above the layouts' agreement


def test_format_table_lists_every_row():
    res = {"device": "d", "torch": "t", "matmul_peak_tflops": 1.0,
           "rows": [{"strategy": s, "precision": "fp32", "compiled": False, "real_tokens_per_s": 10.0 * (i + 1),
                     "cold_real_tokens_per_s": 1.0, "padded_fraction": 0.5, "peak_memory_bytes": None,
                     "model_tflops": 0.1, "mfu": 0.1, "speedup_vs_fixed_fp32": 1.0, "loss": 1.0}
                    for i, s in enumerate(("fixed", "packed"))]}
    text = bench.format_table(res)
    assert text.index("packed") < text.index("fixed")  # best first


@pytest.mark.parametrize("kw,match", [
    (dict(corpus="wiki"), r"corpus must be one of"),
    (dict(model="huge"), r"model must be one of"),
    (dict(work="flops"), r"work must be one of"),
    (dict(strategies=("fixed", "shuffled")), r"strategies must be one of"),
    (dict(precisions=("fp8",)), r"precisions must be one of"),
    (dict(timed_steps=0), r"timed_steps must be an integer >= 1; got 0"),
    (dict(max_tokens=100, max_length=512), r"max_tokens must be >= max_length=512; got 100"),
    (dict(sdpa_backends=("fast",)), r"sdpa_backends must be one of"),
    (dict(varlen_max="max"), r"varlen_max must be one of"),
])
def test_bad_config(kw, match):
    with pytest.raises(ValueError, match=match):
        BenchConfig(**kw)


def test_cli_bench_rejects_unknown_strategy(capsys):
    from padlab.cli import main
    assert main(["bench", "--quick", "--strategies", "fixed,shuffled"]) == 2
    assert "--strategies must be a comma-separated list" in capsys.readouterr().err


def test_masker_is_models_mask_tokens(mc):
    """One MLM masker: the bench's masks are padlab.models.mask_tokens over the flat corpus."""
    from padlab.models import mask_tokens

    ids = torch.from_numpy(mc.corpus.token_ids.astype(np.int64))
    masked, _, labels = mask_tokens(ids, prob=0.15, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(mc.input_ids, masked.numpy()) and np.array_equal(mc.labels, labels.numpy())


def test_the_bench_plans_from_the_registry(mc):
    """One planner: each step of the bench is a batch of strategies.plan with the bench's settings."""
    cfg = BenchConfig(**TINY)
    n = len(mc.lengths)
    # fixed: seqs_per_step random rows, the registry's epoch 0 (a seeded permutation cut in fours)
    perm = np.random.default_rng(cfg.seed).permutation(n)
    got = plan_batches("fixed", mc, cfg, 3)
    assert [g.tolist() for g in got] == [perm[0:4].tolist(), perm[4:8].tolist(), perm[8:12].tolist()]
    # bucketed: pools capped as transformers caps mega_batch_mult (a quarter of the corpus at most)
    p = bench.step_plan("bucketed", mc.lengths, cfg)
    bs = len(p.batches[0])
    assert p.options["mega_batch"] == max(1, min(cfg.mega_batch, n // (4 * bs)))
    assert p.pool_size == p.options["mega_batch"] * bs <= n // 4
    assert bench.step_plan("sorted", mc.lengths, cfg).pool_size == n
    t = bench.step_plan("token-budget", mc.lengths, cfg)
    assert t.pool_unit == "tokens" and t.pool_size == t.options["mega_batch"] * cfg.max_tokens


@pytest.mark.parametrize("policy", ["fp32", "fp16-amp", "bf16-amp", "bf16-amp+tf32", "bf16-pure"])
def test_a_row_runs_its_policy_exactly_as_the_table_says(mc, monkeypatch, policy):
    """One policy name, one set of numerics: the row's autocast dtype, weights, scaler and TF32
    flag are those of precision.POLICIES, seen from inside the loss the bench's step calls."""
    cfg = BenchConfig(strategies=("dynamic",), precisions=(policy,), **TINY)
    mcfg = bench.model_config("tiny", cfg.max_length)
    torch.manual_seed(0)
    from padlab.models import EncoderForMaskedLM
    init = EncoderForMaskedLM(mcfg).state_dict()
    seen = []

    def spy(model, inputs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                     next(model.parameters()).dtype))
        return model(**inputs).loss

    monkeypatch.setattr(bench, "mlm_loss", spy)
    steps = [collate_step("dynamic", mc, s, cfg) for s in plan_batches("dynamic", mc, cfg, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = bench.run_row("dynamic", policy, steps, init, mcfg, cfg, torch.device("cpu"), 1.0)
    want = precision.POLICIES[policy]
    assert len(seen) == 4   # cold and timed pass
    for enabled, dtype, weights in seen:
        assert enabled == (want.autocast_dtype is not None) and weights == want.param_dtype
        if enabled:
            assert dtype == want.autocast_dtype
    assert row["tf32"] == want.tf32 and row["grad_scaler"] == want.grad_scaler
    assert row["autocast_dtype"] == (str(want.autocast_dtype).replace("torch.", "") if want.autocast_dtype else None)
