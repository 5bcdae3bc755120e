"""The one training step and loop: GradScaler skipping, records, schedule, evaluate."""
from __future__ import annotations

import inspect
import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from padlab import precision, train
from padlab.models import HeadOutput

from tiny_models import VOCAB, quiet_prepare as _quiet_prepare, state_of as _state, tiny_batch as _batch, tiny_classifier as _model  # noqa: F401

# ----------------------------------------------------------------------------- GradScaler

def _poison(model: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """Make one gradient hold +inf: a hook on a weight adds inf to its gradient."""
    p = model.classifier.weight
    return p.register_hook(lambda g: g + torch.where(torch.arange(g.numel()).reshape(g.shape) == 0,
                                                      torch.tensor(math.inf), torch.tensor(0.0)))


def test_gradscaler_skips_an_inf_step_and_leaves_no_nan():
    prep = _quiet_prepare(_model(), "fp16-amp")
    before = _state(prep.model)
    handle = _poison(prep.model)
    rec = train.train_step(prep.model, _batch(), prep.optimizer, "fp16-amp", prep.scaler)
    handle.remove()
    assert rec.skipped and not rec.finite and rec.scale == 2.0 ** 16
    assert prep.scaler.get_scale() == 2.0 ** 15                      # backed off by half
    after = _state(prep.model)
    assert all(torch.equal(before[k], after[k]) for k in before)     # the step was not taken
    assert all(torch.isfinite(v).all() for v in after.values())
    assert len(prep.optimizer.state) == 0                            # Adam never saw the bad gradient
    rec2 = train.train_step(prep.model, _batch(), prep.optimizer, "fp16-amp", prep.scaler, step=1)
    assert not rec2.skipped and rec2.finite and rec2.scale == 2.0 ** 15
    assert not torch.equal(before["classifier.weight"], prep.model.classifier.weight)


def test_negative_control_without_gradscaler_inf_reaches_the_weights():
    prep = _quiet_prepare(_model(), "fp32")
    handle = _poison(prep.model)
    rec = train.train_step(prep.model, _batch(), prep.optimizer, "fp32")
    handle.remove()
    assert not rec.skipped and not rec.finite and rec.scale is None
    assert not torch.isfinite(prep.model.classifier.weight).all()


def test_scaled_gradients_underflow_less():
    prep = _quiet_prepare(_model(), "fp16-amp")
    rec = train.train_step(prep.model, _batch(), prep.optimizer, "fp16-amp", prep.scaler)
    assert 0.0 <= rec.underflow_fraction <= rec.underflow_fraction_unscaled <= 1.0
    plain = _quiet_prepare(_model(), "fp32")
    rec32 = train.train_step(plain.model, _batch(), plain.optimizer, "fp32")
    assert rec32.underflow_fraction == rec32.underflow_fraction_unscaled
    assert rec32.grad_norm == pytest.approx(rec.grad_norm, rel=1e-2)



def test_flush_threshold_from_fp16_layout():
    # fp16: 5 exponent bits, bias 15, 10 mantissa bits -> smallest subnormal 2**(1-15-10) = 2**-24.
    assert train.FP16_FLUSH_THRESHOLD == 2.0 ** -25


# ----------------------------------------------------------------------------- training loop

def test_train_records_and_measure_every():
    batches = [_batch(0), _batch(1)]
    snapshot = [{k: v.clone() for k, v in b.items()} for b in batches]
    run = train.train(_model(), batches, "fp32", 5, "cpu", progress=False, measure_every=2)
    assert [r.step for r in run] == [0, 1, 2, 3, 4]
    assert [r.measured for r in run] == [True, False, True, False, True]
    assert all(math.isfinite(r.loss) for r in run if r.measured) and math.isnan(run[1].loss)
    assert run.column("loss").shape == (5,) and np.isnan(run.column("scale")).all()
    for b, s in zip(batches, snapshot):   # the caller's batches are untouched
        assert b.keys() == s.keys() and all(torch.equal(b[k], s[k]) for k in b)


def test_same_seed_same_run():
    a = train.train(_model(seed=1), [_batch(0)], "bf16-amp", 3, "cpu", progress=False)
    b = train.train(_model(seed=1), [_batch(0)], "bf16-amp", 3, "cpu", progress=False)
    assert [r.loss for r in a] == [r.loss for r in b]


def test_fp16_pure_adam_diverges_and_is_recorded():
    # Adam's eps=1e-8 is below fp16's smallest subnormal: it becomes 0 and m / sqrt(v) divides by 0.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", precision.PolicyWarning)
        run = train.train(_model(), [_batch(0)], "fp16-pure", 3, "cpu", progress=False)
    assert math.isfinite(run[0].loss)
    assert not all(torch.isfinite(p).all() for p in run.model.parameters())
    assert torch.tensor(1e-8, dtype=torch.float16).item() == 0.0


class _Const(nn.Module):
    """Predicts a fixed vector, whatever the input: a model whose scores can be worked out by hand."""

    def __init__(self, values):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(values, dtype=torch.float32))

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return HeadOutput(None, self.w[: input_ids.shape[0]].reshape(-1, 1) + 0 * input_ids[:, :1])


def test_evaluate_regression_by_hand():
    m = _Const([1.0, 2.0, 3.0, 4.0])
    b = {"input_ids": torch.ones(4, 2, dtype=torch.long), "labels": torch.tensor([1.0, 2.5, 2.0, 4.25])}
    # z-scored labels: units = y * 10 + 100; errors 0, 5, 10, 2.5 units
    r = train.evaluate(m, [b], "fp32", task="regression", target_mean=100.0, target_std=10.0)
    assert r["mae"] == pytest.approx((0 + 5 + 10 + 2.5) / 4)
    assert r["rmse"] == pytest.approx(math.sqrt((0 + 25 + 100 + 6.25) / 4))
    assert r["max_error"] == 10.0 and r["exact_fraction"] == 0.25 and r["nonfinite"] == 0
    # bf16 autocast does not touch a model that does no matmul: the same numbers.
    assert train.evaluate(m, [b], "bf16-amp", task="regression")["mae"] == pytest.approx((0 + .5 + 1 + .25) / 4)


def test_evaluate_classification_by_hand():
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]))

        def forward(self, input_ids, attention_mask=None, position_ids=None):
            return HeadOutput(None, self.w)

    b = {"input_ids": torch.ones(3, 2, dtype=torch.long), "labels": torch.tensor([0, 1, 1])}
    r = train.evaluate(Fixed(), [b], "fp32")
    assert r["accuracy"] == pytest.approx(2 / 3) and r["n"] == 3
    want = -(math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(math.e / (1 + math.e))
             + math.log(1 / (math.exp(3) + 1))) / 3
    assert r["loss"] == pytest.approx(want)


def test_linear_schedule_and_early_stop():
    run = train.train(_model(), [_batch(0)], "fp32", 20, "cpu", progress=False, lr_schedule="linear")
    # warm-up: 1 step (20 // 20), then linear decay to zero after the last step
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", precision.PolicyWarning)
        bad = train.train(_model(), [_batch(0)], "fp16-pure", 50, "cpu", progress=False, stop_after_nonfinite=2)
    assert len(bad) < 50 and all(math.isnan(r.loss) for r in bad[-2:])
    # a GradScaler run is never stopped: its non-finite steps are skipped, not fatal
    assert len(train.train(_model(), [_batch(0)], "fp32", 5, "cpu", progress=False, stop_after_nonfinite=1)) == 5



@pytest.mark.parametrize("call,match", [
    (lambda: train.train(_model(), [_batch()], "fp32", 0, "cpu"), r"steps must be an integer >= 1; got 0"),
    (lambda: train.train(_model(), [], "fp32", 1, "cpu", progress=False), r"loader must yield at least one batch"),
    (lambda: train.evaluate(_model(), [_batch()], "fp32", task="ranking"), r"task must be one of .*; got 'ranking'"),
    (lambda: train.train(_model(), [_batch()], "fp32", 2, "cpu", lr_schedule="cosine"),
     r"lr_schedule must be one of 'constant', 'linear'; got 'cosine'"),
    (lambda: train.to_device({"x": 1}, "cpu"), r"batch must be a mapping of tensors"),
    (lambda: train.to_device([torch.zeros(2)], "cpu"), r"batch must be a mapping of tensors"),
    (lambda: train.train(_model(), [_batch()], "fp32", 1, "cpu", on_step=3), r"on_step must be a callable"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
    with pytest.raises(ValueError, match=match):
        call()


def test_custom_loss_batches_need_no_input_ids():
    # A custom loss_fn owns the batch's keys: to_device moves its tensors, keeps its other values,
    # and train_step trains on it; the default loss still says what it lacks.
    batch = {"features": torch.randn(4, 3), "target": torch.randn(4), "note": 7}
    moved = train.to_device(batch, "cpu")
    assert set(moved) == set(batch) and moved["note"] == 7 and torch.equal(moved["features"], batch["features"])
    assert moved is not batch
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.weight.detach().clone()

    def mse(m, b):
        return ((m(b["features"]).squeeze(1) - b["target"]) ** 2).mean()

    rec = train.train_step(model, batch, opt, "fp32", loss_fn=mse)
    assert rec.finite and not torch.equal(before, model.weight)
    with pytest.raises(ValueError, match=r"batch must hold 'input_ids' for the default loss"):
        train.train_step(model, {"labels": torch.zeros(2)}, opt, "fp32")


def test_bad_step_arguments():
    prep = _quiet_prepare(_model(), "fp16-amp")
    with pytest.raises(ValueError, match=r"scaler must be a torch.amp.GradScaler for policy 'fp16-amp'"):
        train.train_step(prep.model, _batch(), prep.optimizer, "fp16-amp", None)
    plain = _quiet_prepare(_model(), "fp32")
    with pytest.raises(ValueError, match=r"scaler must be None for policy 'fp32'"):
        train.train_step(plain.model, _batch(), plain.optimizer, "fp32", prep.scaler)
    with pytest.raises(ValueError, match=r"model must hold torch.bfloat16 weights for policy 'bf16-pure'.*; got 'torch.float32'"):
        train.train_step(plain.model, _batch(), plain.optimizer, "bf16-pure")
    with pytest.raises(ValueError, match=r"batch must be a mapping of tensors"):
        train.train_step(plain.model, [1, 2], plain.optimizer, "fp32")
    with pytest.raises(ValueError, match=r"policy must be one of .*; got 'fp64'"):
        train.train_step(plain.model, _batch(), plain.optimizer, "fp64")
    with pytest.raises(ValueError, match=r"max_grad_norm must be > 0.0; got -1"):
        train.train_step(plain.model, _batch(), plain.optimizer, "fp32", max_grad_norm=-1)


def test_train_run_is_a_dataclass_of_records():
    import dataclasses

    seen = []
    run = train.train(_model(), [_batch(0), _batch(1)], "fp32", 3, "cpu", progress=False,
                      on_step=lambda rec, batch: seen.append((rec.step, batch["input_ids"].shape)))
    assert dataclasses.is_dataclass(run) and not isinstance(run, list)
    assert [r.step for r in run.records] == [0, 1, 2] and len(run) == 3 and run[2] is run.records[2]
    assert run.epochs == 2                                   # 2 batches an epoch: step 2 starts epoch 1
    assert seen == [(0, (4, 6)), (1, (4, 6)), (2, (4, 6))]
    assert run.policy is precision.get_policy("fp32") and run.device == torch.device("cpu")
    assert "loss_tensor" not in run.records[0].as_dict()


def test_unmeasured_step_keeps_the_loss_on_the_device():
    prep = _quiet_prepare(_model(), "fp32")
    ref = _quiet_prepare(_model(), "fp32")
    rec = train.train_step(prep.model, _batch(), prep.optimizer, "fp32", measure=False)
    want = train.train_step(ref.model, _batch(), ref.optimizer, "fp32")
    assert not rec.measured and math.isnan(rec.loss) and rec.loss_tensor.requires_grad is False
    assert rec.loss_tensor.item() == want.loss                # the same step, read later
    assert want.loss_tensor is None


def test_cycle_epochs_calls_set_epoch():
    class Loader:
        def __init__(self):
            self.epochs = []

        def set_epoch(self, e):
            self.epochs.append(e)

        def __iter__(self):
            return iter(["a", "b"])

    loader = Loader()
    it = train.cycle_epochs(loader)
    got = [next(it) for _ in range(5)]
    assert got == [(0, "a"), (0, "b"), (1, "a"), (1, "b"), (2, "a")] and loader.epochs == [0, 1, 2]


def test_linear_schedule_by_hand():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = train.make_lr_schedule(opt, "linear", 40)        # warm-up 40 // 20 = 2 steps, then 38 to zero
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.5, 1.0, 38 / 38, 37 / 38])
    assert lrs[-1] == pytest.approx(1 / 38)
    assert train.make_lr_schedule(opt, "constant", 10) is None


@pytest.mark.parametrize("policy, tf32", [("tf32", True), ("bf16-amp+tf32", True), ("fp32", False), ("bf16-amp", False)])
def test_tf32_follows_the_policy_through_the_whole_step(policy, tf32):
    """TF32 is on in the forward and the backward exactly when the policy says so, whatever the
    global flag was; the flag is restored after the step. (TF32 acts on CUDA matmuls only; the
    flag is what is checked here.)"""
    seen = []

    def loss_fn(model, batch):
        seen.append(("forward", torch.backends.cuda.matmul.allow_tf32))
        loss = train.default_loss(model, batch)
        loss.register_hook(lambda g: seen.append(("backward", torch.backends.cuda.matmul.allow_tf32)))
        return loss

    prep = _quiet_prepare(_model(), policy)
    before = torch.backends.cuda.matmul.allow_tf32
    with precision.tf32_mode(not tf32):                      # the global flag says the opposite
        train.train_step(prep.model, _batch(), prep.optimizer, policy, prep.scaler, loss_fn)
        assert torch.backends.cuda.matmul.allow_tf32 is (not tf32)
    assert seen == [("forward", tf32), ("backward", tf32)]
    assert torch.backends.cuda.matmul.allow_tf32 == before


# ----------------------------------------------------------------------------- accumulation (decoder)

def _tiny_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=8192, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
                                   attn_implementation="eager")
    return transformers.LlamaForCausalLM(cfg)


def _pairs(n=7, seed=5):
    from padlab import data
    pairs = data.load_instructions()
    idx = np.random.default_rng(seed).choice(len(pairs), n, replace=False)
    return [pairs[int(i)] for i in idx]


def _reference_grads(model, examples):
    # The plain reference: every example alone, its summed next-token loss over response targets,
    # all divided by the targets of the whole step. Written out here, not taken from padlab.
    model.zero_grad(set_to_none=True)
    n = sum(sum(1 for t in e["labels"][1:] if t != -100) for e in examples)
    for e in examples:
        ids = torch.tensor([e["input_ids"]])
        logits = model(ids, use_cache=False).logits[0, :-1]
        target = torch.tensor(e["labels"][1:])
        keep = target != -100
        loss = torch.nn.functional.cross_entropy(logits[keep], target[keep], reduction="sum") / n
        loss.backward()
    return [p.grad.clone() for p in model.parameters()], n


def _micro_batches(examples):
    # Three micro-batches of different sizes and layouts: right padding, left padding, and packs
    # (PackedCollator, causal) fed to the model as a 4-D additive mask with restarted positions.
    from padlab.hf import additive_mask
    from padlab.packing import PackedCollator
    from padlab.padding import PaddingCollator
    right = PaddingCollator()(examples[:3])
    left = PaddingCollator(padding_side="left")(examples[3:4])
    packed = PackedCollator(64, causal=True)([examples[4:6], examples[6:]])
    additive = additive_mask(packed["block_mask"])
    packs = {"input_ids": packed["input_ids"], "labels": packed["labels"], "position_ids": packed["position_ids"],
             "attention_mask": additive}
    return [{k: right[k] for k in ("input_ids", "attention_mask", "position_ids", "labels")},
            {k: left[k] for k in ("input_ids", "attention_mask", "position_ids", "labels")}, packs]


@pytest.mark.parametrize("loss_fn", [train.causal_lm_loss, train.default_loss])
def test_accumulated_step_equals_the_unpacked_full_batch_gradient(loss_fn):
    model = _tiny_llama()
    examples = _pairs()
    ref, n = _reference_grads(model, examples)
    micro = _micro_batches(examples)
    assert sum(train.count_targets(b) for b in micro) == n
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    rec = train.train_step(model, micro, opt, "fp32", loss_fn=loss_fn)
    got = [p.grad for p in model.parameters()]
    scale = max(float(g.abs().max()) for g in ref)
    assert max(float((a - b).abs().max()) for a, b in zip(got, ref)) <= 1e-5 * scale
    assert np.isfinite(rec.loss)
    # Negative control: each micro-batch's own mean, averaged over micro-batches.
    opt.zero_grad()
    train.train_step(model, micro, opt, "fp32", loss_fn=loss_fn, normalization="mean")
    diff = max(float((p.grad - b).abs().max()) for p, b in zip(model.parameters(), ref))
    assert diff > 1e-2 * scale


def test_accumulated_loss_is_the_step_per_token_mean():
    model = _tiny_llama()
    examples = _pairs()
    micro = _micro_batches(examples)
    with torch.no_grad():
        sums = [float(train.causal_lm_loss(model, b, num_items_in_batch=1)) for b in micro]
        means = [float(train.causal_lm_loss(model, b)) for b in micro]
    counts = [train.count_targets(b) for b in micro]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    rec = train.train_step(model, micro, opt, "fp32", loss_fn=train.causal_lm_loss)
    assert rec.loss == pytest.approx(sum(sums) / sum(counts), rel=1e-5)
    assert sums == pytest.approx([m * c for m, c in zip(means, counts)], rel=1e-5)
    rec = train.train_step(model, micro, opt, "fp32", loss_fn=train.causal_lm_loss, normalization="mean")
    assert rec.loss == pytest.approx(sum(means) / 3, rel=1e-5)


def test_count_targets_by_hand():
    labels = torch.tensor([[-100, -100, 5, 6], [-100, 7, -100, -100]])
    assert train.count_targets({"labels": labels}) == 3          # the shift drops column 0
    assert train.count_targets({"labels": labels}, shift=False) == 3
    assert train.count_targets({"labels": torch.tensor([[4, -100, 5]])}) == 1
    assert train.count_targets({"labels": torch.tensor([[4, -100, 5]])}, shift=False) == 2


def test_train_accumulates_loader_batches():
    model = _tiny_llama()
    examples = _pairs()
    micro = _micro_batches(examples)
    seen = []
    run = train.train(model, micro, "fp32", 1, "cpu", loss_fn=train.causal_lm_loss, accumulation_steps=3,
                      progress=False, optimizer_factory=lambda ps: torch.optim.SGD(ps, lr=0.0),
                      on_step=lambda r, b: seen.append(len(b)))
    assert seen == [3]
    ref = train.train_step(model, micro, torch.optim.SGD(model.parameters(), lr=0.0), "fp32",
                           loss_fn=train.causal_lm_loss)
    assert run[0].loss == pytest.approx(ref.loss, rel=1e-6)


def test_bad_accumulation_arguments():
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    b = _batch()
    with pytest.raises(ValueError, match=r"normalization must be one of 'token', 'mean'; got 'sum'"):
        train.train_step(model, [b], opt, "fp32", normalization="sum")
    with pytest.raises(ValueError, match=r"batch must be a mapping of tensors.*or a non-empty list"):
        train.train_step(model, [], opt, "fp32")
    with pytest.raises(ValueError, match=r"loss_fn must take num_items_in_batch="):
        train.train_step(model, [b], opt, "fp32", loss_fn=lambda m, x: m(x["input_ids"]).sum())
    with pytest.raises(ValueError, match=r"shift_labels must be True or False"):
        train.train_step(model, [b], opt, "fp32", shift_labels=1)
    with pytest.raises(ValueError, match=r"accumulation_steps must be an integer >= 1"):
        train.train(model, [b], "fp32", 1, "cpu", accumulation_steps=0, progress=False)
    with pytest.raises(ValueError, match=r"batch\['labels'\] must be per-token labels"):
        train.count_targets({"labels": torch.tensor([1, 2])})


# ----------------------------------------------------------------------------- wrapped models (torch.compile)

def test_causal_lm_loss_keeps_packed_sequences_apart_through_torch_compile():
    # A compiled model's forward is a *args/**kwargs wrapper: use_cache=False must still reach the model, or
    # transformers builds a cache and ignores the restarted position_ids (sequences attend to each other).
    from padlab.hf import PaddingFreeCollator
    model = _tiny_llama().eval()
    model.set_attn_implementation("sdpa")
    batch = {k: v for k, v in PaddingFreeCollator()(_pairs(4)).items() if k in ("input_ids", "position_ids", "labels")}
    # targets in the last pair only: its loss is what attending to the pairs before it would change
    last = _spans(batch["position_ids"][0])[-1][0]
    batch["labels"] = batch["labels"].clone()
    batch["labels"][:, :last] = -100
    compiled = torch.compile(model, backend="eager")       # the same wrapper as inductor's, no code generation
    with torch.no_grad():
        want = float(train.causal_lm_loss(model, batch))
        # the reference: each pair alone, summed over response targets, divided by the step's targets
        alone = sum(float(train.causal_lm_loss(model, {k: v[:, a:b] for k, v in batch.items()},
                                               num_items_in_batch=1))
                    for a, b in _spans(batch["position_ids"][0])) / train.count_targets(batch)
        got = float(train.causal_lm_loss(compiled, batch))
        # negative control: the call the wrapper used to get, the cache left on
        logits = model(batch["input_ids"], position_ids=batch["position_ids"], use_cache=True).logits
        leaky = float(torch.nn.functional.cross_entropy(logits[0, :-1], batch["labels"][0, 1:], ignore_index=-100))
    assert want == pytest.approx(alone, abs=1e-5)
    assert got == pytest.approx(want, abs=1e-5)
    assert abs(leaky - want) > 1e-3        # 100x the tolerance above


def _spans(position_ids):
    starts = (position_ids == 0).nonzero().flatten().tolist() + [len(position_ids)]
    return list(zip(starts[:-1], starts[1:]))


def test_forward_parameters_sees_through_wrappers():
    from padlab.models import forward_parameters, unwrap
    model = _tiny_llama()
    compiled = torch.compile(torch.nn.DataParallel(model), backend="eager")
    assert unwrap(model) is model and unwrap(compiled) is model
    assert {"use_cache", "position_ids"} <= set(forward_parameters(compiled))
    # what the wrappers themselves show: no use_cache
    assert "use_cache" not in inspect.signature(compiled.forward).parameters
    with pytest.raises(ValueError, match=r"model must be a torch.nn.Module; got 'str'"):
        forward_parameters("llama")
