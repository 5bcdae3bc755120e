"""padlab.recipes: the samplers and collator in a plain PyTorch loop, the Hugging Face Trainer and Lightning.

The framework tests run where ``transformers`` + ``accelerate`` or ``lightning`` are installed and skip
elsewhere. Each checks that the batches the framework trains on are the padlab sampler's batches of the
right epoch; the Lightning test has a negative control (a bare sampler repeats epoch 0).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from padlab import recipes
from padlab.batching import BucketBatchSampler, TokenBudgetBatchSampler
from padlab.data import load_corpus
from padlab.models import EncoderConfig, EncoderForSequenceClassification
from padlab.padding import PaddingCollator

MAX_LENGTH = 16


@pytest.fixture(scope="module")
def data():
    """40 real wordnet glosses as a list dataset, and their lengths."""
    corpus = load_corpus("wordnet").subset(40, seed=1)
    return [corpus[i] for i in range(len(corpus))], corpus.lengths.copy()


def _model(num_labels=45, seed=0):
    torch.manual_seed(seed)
    return EncoderForSequenceClassification(EncoderConfig.tiny(vocab_size=8192, hidden=32, heads=2, ffn=64,
                                                               layers=1, num_labels=num_labels))


def _widths(batches, lengths, max_length=MAX_LENGTH):
    return [int(min(lengths[b].max(), max_length)) for b in batches]


# --- plain PyTorch -------------------------------------------------------------------------------

def test_bucket_loader_serves_the_sampler_batches_of_each_epoch(data):
    dataset, lengths = data
    loader = recipes.bucket_loader(dataset, lengths, 8, max_length=MAX_LENGTH, mega_batch=2, seed=5)
    sampler = loader.batch_sampler
    assert isinstance(sampler, BucketBatchSampler)
    # The sampler sorts by what the collator produces: lengths cut to max_length.
    np.testing.assert_array_equal(sampler.lengths, np.minimum(lengths, MAX_LENGTH))
    reference = PaddingCollator(max_length=MAX_LENGTH)
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        got = list(loader)
        want = [reference([dataset[int(i)] for i in b]) for b in sampler.epoch_batches(epoch)]
        assert len(got) == len(want) == 5
        for g, w in zip(got, want):
            assert torch.equal(g["input_ids"], w["input_ids"]) and torch.equal(g["labels"], w["labels"])
    assert sampler.epoch_batches(0)[0].tolist() != sampler.epoch_batches(1)[0].tolist()


def test_token_budget_loader_keeps_every_tensor_within_the_budget(data):
    dataset, lengths = data
    loader = recipes.token_budget_loader(dataset, lengths, 64, max_length=MAX_LENGTH, mega_batch=None, seed=0)
    assert isinstance(loader.batch_sampler, TokenBudgetBatchSampler)
    batches = list(loader)
    assert all(b["input_ids"].numel() <= 64 for b in batches)
    assert sum(b["input_ids"].shape[0] for b in batches) == len(dataset)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=50), st.integers(1, 7), st.integers(0, 3),
       st.integers(0, 2**16))
def test_bucket_loader_every_example_once_per_epoch(lengths, bs, mega, seed):
    # Each example carries its own index as its label, so the loader's output says who came.
    dataset = [{"input_ids": [7] * n, "labels": i} for i, n in enumerate(lengths)]
    loader = recipes.bucket_loader(dataset, np.array(lengths), bs, mega_batch=mega, seed=seed)
    for epoch in (0, 1):
        loader.batch_sampler.set_epoch(epoch)
        seen = torch.cat([b["labels"] for b in loader]).sort().values
        assert seen.tolist() == list(range(len(lengths)))


def _reference_loop(model, loader, steps, lr, seed):
    """The recipe written out by hand: set_epoch, forward, backward, SGD step."""
    torch.manual_seed(seed)
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses, epoch = [], 0
    while len(losses) < steps:
        loader.batch_sampler.set_epoch(epoch)
        epoch += 1
        for batch in loader:
            loss = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if len(losses) == steps:
                break
    return losses


def test_train_loop_matches_the_loop_written_by_hand(data):
    dataset, lengths = data
    model = _model()
    sgd = lambda p: torch.optim.SGD(p, lr=0.5)  # noqa: E731
    loader = recipes.bucket_loader(dataset, lengths, 8, max_length=MAX_LENGTH, mega_batch=2, seed=3)
    result = recipes.train_loop(model, loader, 7, optimizer_factory=sgd, lr_schedule="constant", seed=11)
    want = _reference_loop(model, recipes.bucket_loader(dataset, lengths, 8, max_length=MAX_LENGTH, mega_batch=2,
                                                        seed=3), 7, 0.5, 11)
    np.testing.assert_allclose(result.losses, want, rtol=1e-6)
    # 7 steps over 5 batches per epoch: two epochs begun, the second with epoch 1's batches.
    assert result.epochs == 2
    sampler = loader.batch_sampler
    widths = _widths(sampler.epoch_batches(0), lengths) + _widths(sampler.epoch_batches(1), lengths)[:2]
    assert result.widths.tolist() == widths
    assert result.rows.tolist() == [8] * 7
    kept = np.minimum(lengths, MAX_LENGTH)
    seen = list(sampler.epoch_batches(0)) + list(sampler.epoch_batches(1))[:2]
    assert result.real_tokens == sum(int(kept[b].sum()) for b in seen)
    assert result.computed_tokens == sum(8 * w for w in widths)
    np.testing.assert_allclose(result.mean_lengths, [kept[b].mean() for b in seen])


def test_train_loop_without_set_epoch_repeats_the_batches(data):
    # Negative control for set_epoch: a plain list of batches (nothing to advance) repeats epoch 0,
    # while the padlab sampler, advanced by train_loop, serves new batches.
    dataset, lengths = data
    loader = recipes.bucket_loader(dataset, lengths, 8, max_length=MAX_LENGTH, mega_batch=2, seed=3)
    frozen = DataLoader(dataset, batch_sampler=[b.tolist() for b in loader.batch_sampler.epoch_batches(0)],
                        collate_fn=PaddingCollator(max_length=MAX_LENGTH))
    advanced = recipes.train_loop(_model(), loader, 10, lr=1e-3)
    repeated = recipes.train_loop(_model(), frozen, 10, lr=1e-3)
    assert repeated.widths[:5].tolist() == repeated.widths[5:].tolist()
    assert advanced.widths[:5].tolist() != advanced.widths[5:].tolist()


def test_train_loop_trains_a_copy_and_learns(data):
    dataset, lengths = data
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = recipes.bucket_loader(dataset, lengths, 8, max_length=MAX_LENGTH, mega_batch=None, seed=0)
    result = recipes.train_loop(model, loader, 40, lr=1e-2, lr_schedule="linear")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())       # the caller's model
    assert not torch.equal(next(result.model.parameters()), next(model.parameters()))   # the trained copy
    assert result.losses[-5:].mean() < result.losses[:5].mean()


def test_predict_sorted_returns_outputs_in_dataset_order(data):
    dataset, lengths = data
    model = _model().train()
    got = recipes.predict_sorted(model, dataset, lengths, 6, max_length=MAX_LENGTH)
    assert model.training                                                             # mode restored
    collate = PaddingCollator(max_length=MAX_LENGTH)
    model.eval()
    with torch.no_grad():   # reference: one example at a time, no padding at all
        want = torch.cat([model(**{k: v for k, v in collate([e]).items() if k in ("input_ids", "attention_mask")}).logits
                          for e in dataset])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # The check has teeth: the same outputs left in sorted order do not match.
    from padlab.batching import sorted_inference_batches
    order = np.concatenate(sorted_inference_batches(np.minimum(lengths, MAX_LENGTH), 6))
    assert not torch.allclose(got[order], want, atol=1e-3)


def test_model_inputs_and_epoch_forwarding(data):
    dataset, lengths = data
    collate = recipes.ModelInputs(PaddingCollator(max_length=MAX_LENGTH))
    batch = collate(dataset[:3])
    assert list(batch) == ["input_ids", "attention_mask", "position_ids", "labels"]
    assert list(recipes.ModelInputs(keys=("input_ids",))(dataset[:2])) == ["input_ids"]
    sampler = BucketBatchSampler(lengths, 8, seed=0)
    wrapped = recipes.EpochForwarding(sampler)
    assert wrapped.sampler is sampler and len(wrapped) == len(sampler) == 5
    wrapped.set_epoch(3)
    assert sampler.epoch == 3 and list(wrapped) == list(sampler)


def test_recipes_leave_lengths_alone(data):
    dataset, lengths = data
    mine = lengths.copy()
    recipes.bucket_loader(dataset, mine, 8, max_length=4)
    recipes.predict_sorted(_model(), dataset, mine, 8, max_length=4)
    np.testing.assert_array_equal(mine, lengths)


# --- bad input -----------------------------------------------------------------------------------

def test_bad_recipe_arguments(data):
    dataset, lengths = data
    loader = recipes.bucket_loader(dataset, lengths, 8)
    cases = [
        (lambda: recipes.bucket_loader(dataset, lengths[:-1], 8), r"lengths must have one length per example \(40 examples, 39"),
        (lambda: recipes.bucket_loader(dataset, np.array([1.5] * 40), 8), r"lengths must be a non-empty 1-D sequence of integers >= 1"),
        (lambda: recipes.bucket_loader(dataset, lengths, 8, max_length=0), r"max_length must be an integer >= 1; got 0"),
        (lambda: recipes.bucket_loader(dataset, lengths, 8, collator=3), r"collator must be a callable collate_fn; got 3"),
        (lambda: recipes.bucket_loader(iter(dataset), lengths, 8), r"dataset must be a map-style dataset with a length"),
        (lambda: recipes.token_budget_loader(dataset, lengths, 2), r"max_tokens must be >= the longest sequence"),
        (lambda: recipes.train_loop(_model(), loader, 0), r"steps must be an integer >= 1; got 0"),
        (lambda: recipes.train_loop(_model(), loader, 1, lr=0.0), r"lr must be > 0.0; got 0.0"),
        (lambda: recipes.train_loop(_model(), [1, 2], 1), r"loader must be a torch.utils.data.DataLoader"),
        (lambda: recipes.train_loop("model", loader, 1), r"model must be a torch.nn.Module; got 'model'"),
        (lambda: recipes.train_loop(_model(), loader, 1, lr_schedule="cosine"), r"lr_schedule must be one of 'constant', 'linear'; got 'cosine'"),
        (lambda: recipes.train_loop(_model(), loader, 1, optimizer_factory=1), r"optimizer_factory must be a callable"),
        (lambda: recipes.predict_sorted("model", dataset, lengths, 4), r"model must be a torch.nn.Module"),
        (lambda: recipes.ModelInputs(keys="input_ids"), r"keys must be a non-empty sequence of key names"),
        (lambda: recipes.EpochForwarding([[0, 1]]), r"batch_sampler must have a set_epoch method"),
        (lambda: recipes.lightning_datamodule(dataset, lengths), r"batch_size must be given, or max_tokens instead"),
        (lambda: recipes.lightning_datamodule(dataset, lengths, batch_size=8, max_tokens=64), r"batch_size must be given, or max_tokens instead"),
        (lambda: recipes.lightning_datamodule(dataset, lengths, batch_size=8, val_dataset=dataset), r"val_lengths must be given with val_dataset"),
        (lambda: recipes.lightning_datamodule(dataset, lengths, batch_size=8, mega_batch=-1), r"mega_batch must be an integer >= 0; got -1"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()


# --- Hugging Face Trainer ------------------------------------------------------------------------

def _hf_args(tmp_path, **kw):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    kw = {"learning_rate": 1e-3, **kw}
    return transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, save_strategy="no",
                                          logging_strategy="no", disable_tqdm=True, **kw)


def _record_widths(module):
    seen = []
    module.register_forward_pre_hook(lambda m, args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)),
                                     with_kwargs=True)
    return seen


def test_hf_trainer_trains_on_the_sampler_batches_of_each_epoch(tmp_path, data):
    dataset, lengths = data
    args = _hf_args(tmp_path, per_device_train_batch_size=8, num_train_epochs=2, seed=4)
    model = _model()
    trainer = recipes.hf_trainer_with_bucketing(model, args, dataset, lengths, max_length=MAX_LENGTH, mega_batch=2)
    assert isinstance(trainer.model, recipes.HFAdapter) and trainer.model.model is model
    seen = _record_widths(trainer.model)
    before = next(model.parameters()).detach().clone()
    trainer.train()
    sampler = trainer.padlab_sampler
    assert isinstance(sampler, BucketBatchSampler) and sampler.seed == 4 and sampler.epoch == 1
    want = [(8, w) for e in (0, 1) for w in _widths(sampler.epoch_batches(e), lengths)]
    assert seen == want
    assert not torch.equal(before, next(model.parameters()))            # the Trainer trains model in place


def test_hf_trainer_with_a_token_budget(tmp_path, data):
    dataset, lengths = data
    args = _hf_args(tmp_path, num_train_epochs=1)
    trainer = recipes.hf_trainer_with_bucketing(_model(), args, dataset, lengths, max_length=MAX_LENGTH,
                                                max_tokens=48, mega_batch=None)
    batches = list(trainer.get_train_dataloader())
    assert isinstance(trainer.padlab_sampler, TokenBudgetBatchSampler)
    assert all(b["input_ids"].numel() <= 48 for b in batches)
    assert sum(b["input_ids"].shape[0] for b in batches) == len(dataset)
    assert set(batches[0]) == {"input_ids", "attention_mask", "position_ids", "labels"}


def test_hf_trainer_bad_arguments(tmp_path, data):
    dataset, lengths = data
    args = _hf_args(tmp_path)
    with pytest.raises(ValueError, match=r"max_tokens must not be given together with batch_size"):
        recipes.hf_trainer_with_bucketing(_model(), args, dataset, lengths, batch_size=8, max_tokens=64)
    with pytest.raises(ValueError, match=r"lengths must have one length per example"):
        recipes.hf_trainer_with_bucketing(_model(), args, dataset, lengths[:3])
    with pytest.raises(ValueError, match=r"noise must be in \[0, 1\)"):
        recipes.hf_trainer_with_bucketing(_model(), args, dataset, lengths, noise=2.0)


# --- Lightning -----------------------------------------------------------------------------------

def _lightning_fit(dataset, lengths, datamodule=None, loader=None, epochs=2):
    pl = pytest.importorskip("lightning.pytorch")

    class Lit(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = _model()
            self.seen = []

        def training_step(self, batch, i):
            self.seen.append(tuple(batch["input_ids"].shape))
            return self.model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss

        def validation_step(self, batch, i):
            self.log("val_loss", self.model(batch["input_ids"], attention_mask=batch["attention_mask"],
                                            labels=batch["labels"]).loss, batch_size=batch["input_ids"].shape[0])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    lit = Lit()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, use_distributed_sampler=False, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    if datamodule is not None:
        trainer.fit(lit, datamodule=datamodule)
    else:
        trainer.fit(lit, train_dataloaders=loader)
    return lit.seen


def test_lightning_datamodule_trains_on_the_sampler_batches_of_each_epoch(data):
    pytest.importorskip("lightning.pytorch")
    dataset, lengths = data
    dm = recipes.lightning_datamodule(dataset, lengths, batch_size=8, max_length=MAX_LENGTH, mega_batch=2, seed=6,
                                      val_dataset=dataset[:10], val_lengths=lengths[:10], val_batch_size=4)
    seen = _lightning_fit(dataset, lengths, datamodule=dm)
    assert dm.sampler.epoch == 1 and dm.sampler.seed == 6
    assert seen == [(8, w) for e in (0, 1) for w in _widths(dm.sampler.epoch_batches(e), lengths)]
    # Validation runs in fully sorted batches, longest first.
    val = list(dm.val_dataloader())
    assert [b["input_ids"].shape[0] for b in val] == [4, 4, 2]
    widths = [b["input_ids"].shape[1] for b in val]
    assert widths == sorted(widths, reverse=True)


def test_lightning_without_epoch_forwarding_repeats_epoch_0(data):
    # Negative control: the bare sampler as batch_sampler never gets set_epoch from Lightning.
    pytest.importorskip("lightning.pytorch")
    dataset, lengths = data
    sampler = BucketBatchSampler(np.minimum(lengths, MAX_LENGTH), 8, mega_batch=2, seed=6)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=recipes.ModelInputs(PaddingCollator(max_length=MAX_LENGTH)))
    seen = _lightning_fit(dataset, lengths, loader=loader)
    assert sampler.epoch == 0
    assert seen[:5] == seen[5:]
    assert seen[5:] != [(8, w) for w in _widths(sampler.epoch_batches(1), lengths)]


def test_lightning_datamodule_token_budget(data):
    pytest.importorskip("lightning.pytorch")
    dataset, lengths = data
    dm = recipes.lightning_datamodule(dataset, lengths, max_tokens=48, max_length=MAX_LENGTH, mega_batch=None)
    batches = list(dm.train_dataloader())
    assert isinstance(dm.sampler, TokenBudgetBatchSampler)
    assert all(b["input_ids"].numel() <= 48 for b in batches)
    assert sum(b["input_ids"].shape[0] for b in batches) == len(dataset)


# --- Hugging Face Trainer, padding-free and packed (transformers' padding-free format) -------------

def _tiny_llama(seed=0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=8192, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg)


def _sgd_args(tmp_path, **kw):
    # SGD at lr 1 with no clipping, decay or schedule: a step moves each weight by minus its gradient.
    return _hf_args(tmp_path, optim="sgd", max_grad_norm=0.0, weight_decay=0.0, lr_scheduler_type="constant",
                    learning_rate=1.0, **kw)


def _record_calls(model):
    calls = []
    model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    return calls


def _token_loss_grads(model, seqs, divide):
    """Reference: gradients of (summed next-token loss of each sequence alone) / divide."""
    model = copy.deepcopy(model)
    model.zero_grad()
    for s in seqs:
        ids = torch.tensor([s])
        out = model(input_ids=ids, labels=ids, use_cache=False)
        (out.loss * (len(s) - 1) / divide).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.fixture(scope="module")
def lm_data():
    corpus = load_corpus("wordnet").subset(24, seed=2)
    return [{"input_ids": corpus.ids(i).tolist()} for i in range(len(corpus))], corpus.lengths.copy()


def test_hf_trainer_padding_free_normalises_the_loss_per_token_across_the_step(tmp_path, lm_data):
    dataset, lengths = lm_data
    model = _tiny_llama()
    start = copy.deepcopy(model)
    args = _sgd_args(tmp_path, gradient_accumulation_steps=2, max_steps=1, seed=3)
    trainer = recipes.hf_trainer_with_bucketing(model, args, dataset, lengths, max_tokens=96, mega_batch=None,
                                                padding_free=True)
    calls = _record_calls(trainer.model)
    trainer.train()
    assert len(calls) == 2 and all(c["use_cache"] is False for c in calls)   # the cache trap avoided
    assert all(c["input_ids"].shape[0] == 1 and "attention_mask" not in c for c in calls)  # one unpadded row
    # The sequences of the step, recovered from each row's cu_seq_lens:
    seqs = [c["input_ids"][0, a:b].tolist() for c in calls
            for a, b in zip(c["cu_seq_lens_q"][:-1].tolist(), c["cu_seq_lens_q"][1:].tolist())]
    assert sorted(map(tuple, seqs)) == sorted(tuple(d["input_ids"]) for b in trainer.padlab_sampler.epoch_batches(0)[:2]
                                              for d in (dataset[i] for i in b))
    n_targets = sum(len(s) - 1 for s in seqs)
    want = _token_loss_grads(start, seqs, n_targets)
    moved = {n: start.state_dict()[n] - p.detach() for n, p in model.named_parameters()}
    for n in want:
        torch.testing.assert_close(moved[n], want[n], rtol=1e-4, atol=1e-6, msg=n)
    # Negative control: the mean of the two micro-batches' own means (no num_items_in_batch) is another step.
    first = [s for s in seqs[:len(calls[0]["cu_seq_lens_q"]) - 1]]
    second = seqs[len(first):]
    g1 = _token_loss_grads(start, first, 2 * sum(len(s) - 1 for s in first))
    g2 = _token_loss_grads(start, second, 2 * sum(len(s) - 1 for s in second))
    wrong = {n: g1[n] + g2[n] for n in g1}
    assert max(float((wrong[n] - moved[n]).abs().max()) for n in want) > 1e-4


def test_hf_trainer_with_packs(tmp_path, lm_data):
    dataset, lengths = lm_data
    model = _tiny_llama()
    args = _hf_args(tmp_path, per_device_train_batch_size=2, max_steps=3, seed=1)
    trainer = recipes.hf_trainer_with_bucketing(model, args, dataset, lengths, capacity=64)
    calls = _record_calls(trainer.model)
    before = next(model.parameters()).detach().clone()
    trainer.train()
    assert len(calls) == 3 and all(c["use_cache"] is False for c in calls)
    packs = trainer.train_dataset.packs
    sizes = {sum(len(dataset[i]["input_ids"]) for i in p) for p in packs}
    assert max(sizes) <= 64
    for c in calls:
        cu = c["cu_seq_lens_q"]
        assert cu.dtype == torch.int32 and int(cu[-1]) == c["input_ids"].shape[1] <= 2 * 64
        starts = cu[:-1].long()
        assert (c["labels"][0, starts] == -100).all() and (c["position_ids"][0, starts] == 0).all()
    assert not torch.equal(before, next(model.parameters()))


def test_hf_trainer_padding_free_bad_arguments(tmp_path, lm_data, data):
    dataset, lengths = lm_data
    args = _hf_args(tmp_path)
    with pytest.raises(ValueError, match=r"^capacity must be at least the longest kept example"):
        recipes.hf_trainer_with_bucketing(_tiny_llama(), args, dataset, lengths, capacity=4)
    with pytest.raises(ValueError, match=r"^capacity must not be given together with max_tokens"):
        recipes.hf_trainer_with_bucketing(_tiny_llama(), args, dataset, lengths, capacity=64, max_tokens=64)
    with pytest.raises(ValueError, match=r"^model must be a transformers causal LM for padding_free"):
        recipes.hf_trainer_with_bucketing(_model(), args, data[0], data[1], padding_free=True)
    with pytest.raises(ValueError, match=r"^padding_free must be True or False"):
        recipes.hf_trainer_with_bucketing(_tiny_llama(), args, dataset, lengths, padding_free=1)
