"""Recipes: padlab's samplers and collators inside a plain PyTorch loop, the Hugging Face
Trainer and Lightning.

The pieces are always the same three: a length-grouped batch sampler
(:class:`padlab.batching.BucketBatchSampler` or :class:`~padlab.batching.TokenBudgetBatchSampler`)
passed as ``batch_sampler``, a :class:`padlab.padding.PaddingCollator` passed as
``collate_fn``, and a call to ``set_epoch`` before each epoch (without it every epoch repeats
the batches of epoch 0). What differs between frameworks is who builds the ``DataLoader`` and
who calls ``set_epoch``:

* plain PyTorch: :func:`bucket_loader` / :func:`token_budget_loader` build the loader,
  :func:`train_loop` calls ``set_epoch`` (copy it: it is the whole recipe);
* Hugging Face ``transformers.Trainer``: :func:`hf_trainer_with_bucketing` returns a Trainer
  whose ``get_train_dataloader`` builds the loader (rank and world size from the Trainer's
  arguments); the Trainer calls ``set_epoch`` through accelerate. With ``padding_free=True`` or
  ``capacity=`` a causal LM trains on unpadded rows in transformers' padding-free format
  (:class:`padlab.hf.PaddingFreeCollator`), called with ``use_cache=False``;
* Lightning: :func:`lightning_datamodule` returns a ``LightningDataModule``; Lightning calls
  ``set_epoch`` on ``dataloader.batch_sampler.sampler`` only, so the sampler is wrapped in
  :class:`EpochForwarding`. Build the Trainer with ``use_distributed_sampler=False``: the
  padlab sampler already gives each rank its share, and Lightning's own distributed sampler
  would shard it a second time.

Neither ``transformers`` nor ``lightning`` is a dependency of padlab: they are imported only
when their recipe is called.

For inference, :func:`predict_sorted` runs the model over fully sorted batches (the least
padding) and returns the outputs in dataset order with :func:`padlab.batching.restore_order`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from ._validate import check_float, check_int, fail
from .batching import BucketBatchSampler, TokenBudgetBatchSampler, restore_order, sorted_inference_batches
from .padding import PaddingCollator

__all__ = ["MODEL_KEYS", "ModelInputs", "EpochForwarding", "sort_lengths", "bucket_loader", "token_budget_loader",
           "LoopResult", "train_loop", "predict_sorted", "HFAdapter", "hf_trainer_with_bucketing", "lightning_datamodule"]

#: The collator keys padlab's encoders take as forward arguments.
MODEL_KEYS = ("input_ids", "attention_mask", "position_ids", "labels")


class ModelInputs:
    """A ``collate_fn`` that keeps only the keys a model's ``forward`` takes.

    :class:`~padlab.padding.PaddingCollator` also returns ``lengths`` and
    ``truncated_tokens`` (for measuring); trainers that call ``model(**batch)`` need them gone.
    A module-level class, so ``DataLoader`` workers can pickle it.
    """

    def __init__(self, collator: Callable[[list], Mapping[str, Any]] | None = None,
                 keys: Sequence[str] = MODEL_KEYS) -> None:
        if collator is not None and not callable(collator):
            raise fail("collator", collator, "be a callable collate_fn")
        if isinstance(keys, str) or not keys or not all(isinstance(k, str) for k in keys):
            raise fail("keys", keys, "be a non-empty sequence of key names")
        self.collator = collator if collator is not None else PaddingCollator()
        self.keys = tuple(keys)

    def __repr__(self) -> str:
        return f"ModelInputs({self.collator!r}, keys={self.keys!r})"

    def __call__(self, examples: list) -> dict[str, Any]:
        out = self.collator(examples)
        return {k: out[k] for k in self.keys if k in out}


class EpochForwarding(Sampler):
    """A batch sampler that delegates to ``batch_sampler`` and exposes it as ``.sampler``.

    Lightning calls ``set_epoch`` on ``dataloader.sampler`` and on
    ``dataloader.batch_sampler.sampler``, never on the batch sampler itself; through this
    wrapper the padlab sampler gets its ``set_epoch`` each epoch.
    """

    def __init__(self, batch_sampler: BucketBatchSampler | TokenBudgetBatchSampler) -> None:
        if not hasattr(batch_sampler, "set_epoch"):
            raise fail("batch_sampler", batch_sampler, "have a set_epoch method (a padlab sampler)")
        self.sampler = batch_sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


# ----------------------------------------------------------------------------- plain PyTorch

def sort_lengths(lengths: Any, max_length: int | None = None) -> np.ndarray:
    """The lengths a sampler should sort by: what the collator will produce (cut to ``max_length``)."""
    arr = np.asarray(lengths)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer) or arr.min() < 1:
        raise fail("lengths", lengths, "be a non-empty 1-D sequence of integers >= 1")
    max_length = check_int("max_length", max_length, min_value=1, allow_none=True)
    return np.minimum(arr, max_length) if max_length is not None else arr.copy()


def _check_dataset(dataset: Any, lengths: np.ndarray) -> None:
    try:
        n = len(dataset)
    except TypeError:
        raise fail("dataset", dataset, "be a map-style dataset with a length") from None
    if n != lengths.size:
        raise fail("lengths", lengths, f"have one length per example ({n} examples, {lengths.size} lengths)")


def bucket_loader(dataset: Any, lengths: Any, batch_size: int, *, collator: Callable | None = None,
                  max_length: int | None = None, seed: int = 0, **sampler_options: Any) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` with a :class:`BucketBatchSampler` and a collator.

    ``lengths[i]`` is example ``i``'s token count; the sampler sorts by it cut to ``max_length``
    (the collator's default cut). ``collator`` defaults to ``PaddingCollator(max_length=max_length)``.
    ``sampler_options`` go to the sampler (``mega_batch``, ``noise``, ``shuffle``, ``drop_last``,
    ``num_replicas``, ``rank``, ``remainder``, ...). The sampler is ``loader.batch_sampler``;
    call its ``set_epoch`` before each epoch (:func:`train_loop` does).
    """
    kept = sort_lengths(lengths, max_length)
    _check_dataset(dataset, kept)
    if collator is not None and not callable(collator):
        raise fail("collator", collator, "be a callable collate_fn")
    sampler = BucketBatchSampler(kept, batch_size, seed=seed, **sampler_options)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collator or PaddingCollator(max_length=max_length))


def token_budget_loader(dataset: Any, lengths: Any, max_tokens: int, *, collator: Callable | None = None,
                        max_length: int | None = None, seed: int = 0, **sampler_options: Any) -> DataLoader:
    """As :func:`bucket_loader`, with a :class:`TokenBudgetBatchSampler`: ``rows x longest <= max_tokens``."""
    kept = sort_lengths(lengths, max_length)
    _check_dataset(dataset, kept)
    if collator is not None and not callable(collator):
        raise fail("collator", collator, "be a callable collate_fn")
    sampler = TokenBudgetBatchSampler(kept, max_tokens, seed=seed, **sampler_options)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collator or PaddingCollator(max_length=max_length))


@dataclass
class LoopResult:
    """What :func:`train_loop` did, one entry per optimizer step.

    ``losses``: the batch's mean loss; ``mean_lengths``: its mean real length; ``widths``: its
    padded width; ``rows``: its number of sequences; ``epochs``: epochs started; ``model``: the
    trained copy.
    """

    losses: np.ndarray
    mean_lengths: np.ndarray
    widths: np.ndarray
    rows: np.ndarray
    real_tokens: int
    computed_tokens: int
    epochs: int
    model: nn.Module


def train_loop(model: nn.Module, loader: DataLoader, steps: int, *, lr: float = 1e-3,
               optimizer_factory: Callable[[Any], torch.optim.Optimizer] | None = None,
               lr_schedule: str = "linear", seed: int | None = 0) -> LoopResult:
    """The plain PyTorch recipe: :func:`padlab.train.train` (fp32) of a copy of ``model`` for
    ``steps`` optimizer steps, with what each batch looked like.

    Each epoch starts with ``set_epoch(epoch)`` on the loader's batch sampler (where it exists,
    :func:`padlab.train.cycle_epochs`), so a padlab sampler gives new batches every epoch; the
    loader is restarted until ``steps`` steps are done. The model is called as
    ``model(input_ids, attention_mask=..., labels=...)`` and returns its loss first
    (:func:`padlab.train.default_loss`). Optimizer: AdamW at ``lr`` (fused on CPU and CUDA), or
    ``optimizer_factory(parameters)``; ``lr_schedule`` as :func:`padlab.train.make_lr_schedule`
    (``"linear"``: 5% warm-up, then decay to zero). ``seed`` seeds torch before training
    (``None``: leave the global generator alone). ``model`` itself is not changed.
    """
    from .train import model_device, train

    if not isinstance(model, nn.Module):
        raise fail("model", model, "be a torch.nn.Module")
    if not isinstance(loader, DataLoader):
        raise fail("loader", loader, "be a torch.utils.data.DataLoader")
    steps = check_int("steps", steps, min_value=1)
    lr = check_float("lr", lr, min_value=0.0, min_inclusive=False)
    seed = check_int("seed", seed, min_value=0, allow_none=True)
    if optimizer_factory is not None and not callable(optimizer_factory):
        raise fail("optimizer_factory", optimizer_factory, "be a callable mapping parameters to an optimizer")
    if seed is not None:
        torch.manual_seed(seed)
    device = model_device(model)
    if optimizer_factory is None:
        # The fused kernel updates every tensor in one pass: on a CPU it saves most of the step
        # time of a small model (tiny batches spend more in AdamW than in the matmuls).
        fused = device.type in ("cpu", "cuda")

        def optimizer_factory(params: Any) -> torch.optim.Optimizer:
            return torch.optim.AdamW(params, lr=lr, fused=fused)

    shapes: list[tuple[int, int, int, int]] = []

    def note(_record: Any, batch: Mapping[str, Any]) -> None:
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        shapes.append((ids.shape[0], ids.shape[1], int(mask.sum()) if mask is not None else ids.numel(), ids.numel()))

    run = train(model, loader, "fp32", steps, device, optimizer_factory=optimizer_factory, lr_schedule=lr_schedule,
                progress=False, on_step=note)
    rows, widths, real, computed = (np.array(c, dtype=np.int64) for c in zip(*shapes))
    return LoopResult(run.column("loss"), real / rows, widths, rows, int(real.sum()), int(computed.sum()),
                      run.epochs, run.model)


@torch.no_grad()
def predict_sorted(model: nn.Module, dataset: Any, lengths: Any, batch_size: int, *,
                   collator: Callable | None = None, max_length: int | None = None) -> torch.Tensor:
    """Logits of every example of ``dataset``, computed longest batch first, in dataset order.

    Batches come from :func:`padlab.batching.sorted_inference_batches` (a full sort: the least
    padding, and an out-of-memory error shows on the first batch); the concatenated outputs
    are put back in dataset order with :func:`padlab.batching.restore_order`. The model's
    train/eval mode is restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise fail("model", model, "be a torch.nn.Module")
    kept = sort_lengths(lengths, max_length)
    _check_dataset(dataset, kept)
    collate = collator or PaddingCollator(max_length=max_length)
    batches = sorted_inference_batches(kept, batch_size)
    was_training = model.training
    model.eval()
    try:
        outs = []
        for idx in batches:  # a loop over batches
            b = collate([dataset[int(i)] for i in idx])
            out = model(b["input_ids"], **{k: b[k] for k in ("attention_mask", "position_ids") if k in b})
            outs.append(out.logits if hasattr(out, "logits") else out)
    finally:
        model.train(was_training)
    return restore_order(torch.cat(outs), np.concatenate(batches))


# ----------------------------------------------------------------------------- Hugging Face Trainer

def _sampler_for(lengths: np.ndarray, *, batch_size: int | None, max_tokens: int | None, seed: int,
                 num_replicas: int | None, rank: int | None, options: dict[str, Any]):
    if max_tokens is not None:
        return TokenBudgetBatchSampler(lengths, max_tokens, seed=seed, num_replicas=num_replicas, rank=rank, **options)
    return BucketBatchSampler(lengths, batch_size, seed=seed, num_replicas=num_replicas, rank=rank, **options)


class HFAdapter(nn.Module):
    """A padlab encoder as the Hugging Face Trainer expects a model: ``model(**batch)`` returns a
    dict with ``loss`` (when ``labels`` are given) and ``logits``.

    The Trainer also writes to ``model.config`` when a model has one, and padlab's
    :class:`~padlab.models.EncoderConfig` is frozen: the adapter keeps the encoder as
    ``.model`` and shows the Trainer no ``config``. Training the adapter trains ``.model``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise fail("model", model, "be a torch.nn.Module")
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> dict[str, Any]:
        out = self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids, labels=labels)
        loss, logits = (out.loss, out.logits) if hasattr(out, "logits") else (out[0], out[1])
        return {"logits": logits} if loss is None else {"loss": loss, "logits": logits}


@functools.lru_cache(maxsize=1)
def _bucketing_trainer_class():
    from transformers import Trainer

    class BucketingTrainer(Trainer):
        """A ``transformers.Trainer`` whose training batches come from a padlab sampler."""

        def __init__(self, *args: Any, padlab_lengths: np.ndarray, padlab_batch_size: int | None,
                     padlab_max_tokens: int | None, padlab_options: dict[str, Any], padlab_padding_free: bool = False,
                     **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.padlab_padding_free = padlab_padding_free
            self.padlab_lengths = padlab_lengths
            self.padlab_batch_size = padlab_batch_size
            self.padlab_max_tokens = padlab_max_tokens
            self.padlab_options = padlab_options
            self.padlab_sampler = None

        def get_train_dataloader(self) -> DataLoader:
            if self.train_dataset is None:
                raise fail("train_dataset", None, "be given to train")
            args = self.args
            # Every rank builds the same plan from args.seed; the sampler picks this rank's share.
            sampler = _sampler_for(self.padlab_lengths, batch_size=self.padlab_batch_size or
                                   args.per_device_train_batch_size, max_tokens=self.padlab_max_tokens,
                                   seed=args.seed, num_replicas=args.world_size, rank=args.process_index,
                                   options=self.padlab_options)
            self.padlab_sampler = sampler
            loader = DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                                num_workers=args.dataloader_num_workers, pin_memory=args.dataloader_pin_memory)
            loader = self.accelerator.prepare(loader)
            # In a distributed run accelerate wraps the batch sampler in a BatchSamplerShard that
            # would shard it again (as transformers does for its own rank-aware sampler, make the
            # wrapper a pass-through).
            shard = getattr(loader, "batch_sampler", None)
            if shard is not None and getattr(shard, "batch_sampler", None) is sampler:
                shard.num_processes, shard.process_index = 1, 0
            return loader

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # Padding-free rows carry no attention mask: transformers then finds the sequences from
            # position_ids, but only when no cache is built, and causal LMs build one by default.
            if self.padlab_padding_free:
                inputs = {**inputs, "use_cache": False}
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return BucketingTrainer


def hf_trainer_with_bucketing(model: nn.Module, args: Any, train_dataset: Any, lengths: Any, *,
                              batch_size: int | None = None, max_tokens: int | None = None,
                              max_length: int | None = None, collator: Callable | None = None,
                              mega_batch: int | None = 50, noise: float = 0.0, padding_free: bool = False,
                              capacity: int | None = None, **trainer_kwargs: Any) -> Any:
    """A ``transformers.Trainer`` that trains on bucketed, token-budget or packed batches.

    ``model`` is a Hugging Face model, or a padlab encoder (anything that is not a
    ``transformers.PreTrainedModel``), which is wrapped in :class:`HFAdapter`; as with any
    Trainer, ``trainer.train()`` then trains ``model``'s weights in place.

    Its ``get_train_dataloader`` builds a :class:`BucketBatchSampler` of ``batch_size``
    (default ``args.per_device_train_batch_size``) or, with ``max_tokens``, a
    :class:`TokenBudgetBatchSampler`, seeded with ``args.seed``, with this process's rank and
    the world size from ``args``; accelerate calls its ``set_epoch`` each epoch. Batches are
    collated by ``ModelInputs(collator)`` (default ``PaddingCollator(max_length=max_length)``),
    so the model receives ``input_ids``, ``attention_mask``, ``position_ids`` and ``labels``.

    ``padding_free=True`` (a transformers causal LM only): each step's examples are concatenated
    into one unpadded row by :class:`padlab.hf.PaddingFreeCollator` (transformers' padding-free
    format, labels ``-100`` at each sequence's first token), and the model is called with
    ``use_cache=False``, without which transformers would let the sequences attend to each other.
    ``capacity`` (implies ``padding_free``): the examples are first packed (first-fit decreasing,
    :func:`padlab.packing.pack`) into packs of at most ``capacity`` tokens, and each step takes
    ``batch_size`` packs in a seeded random order (new each epoch). Either way the Trainer divides
    the summed token loss by the number of target tokens in the whole step (``num_items_in_batch``,
    gradient accumulation included), so every token weighs the same however the rows were cut.

    Evaluation keeps the Trainer's own loaders (with the same collator). ``trainer_kwargs`` go
    to ``Trainer`` (``eval_dataset``, ``callbacks``, ...). Needs ``transformers`` and ``accelerate``.
    """
    if not isinstance(model, nn.Module):
        raise fail("model", model, "be a torch.nn.Module")
    kept = sort_lengths(lengths, max_length)
    _check_dataset(train_dataset, kept)
    if batch_size is not None and max_tokens is not None:
        raise fail("max_tokens", max_tokens, "not be given together with batch_size")
    batch_size = check_int("batch_size", batch_size, min_value=1, allow_none=True)
    max_tokens = check_int("max_tokens", max_tokens, min_value=1, allow_none=True)
    if collator is not None and not callable(collator):
        raise fail("collator", collator, "be a callable collate_fn")
    if not isinstance(padding_free, bool):
        raise fail("padding_free", padding_free, "be True or False")
    capacity = check_int("capacity", capacity, min_value=1, allow_none=True)
    if capacity is not None and max_tokens is not None:
        raise fail("capacity", capacity, "not be given together with max_tokens (a step is batch_size packs)")
    padding_free = padding_free or capacity is not None
    options = dict(mega_batch=mega_batch, noise=noise)
    # Build one sampler now, so bad options fail here rather than when training starts.
    _sampler_for(kept, batch_size=batch_size or 1, max_tokens=max_tokens, seed=0, num_replicas=1, rank=0,
                 options=options)
    cls = _bucketing_trainer_class()
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        if padding_free:
            raise fail("model", type(model).__name__, "be a transformers causal LM for padding_free/capacity "
                       "(padlab's encoders take PackedCollator batches)")
        model = HFAdapter(model)
    if not padding_free:
        data_collator = ModelInputs(collator or PaddingCollator(max_length=max_length))
    else:
        from .hf import PaddingFreeCollator

        if collator is None:
            collator = PaddingFreeCollator(packed=capacity is not None, capacity=capacity, max_length=max_length,
                                           truncation=max_length is not None)
        data_collator = collator
        if capacity is not None:
            from .packing import PackedDataset, pack

            if int(kept.max()) > capacity:
                raise fail("capacity", capacity, f"be at least the longest kept example ({int(kept.max())} tokens; "
                           "lower max_length to cut examples)")
            packs = pack(kept, capacity)
            train_dataset = PackedDataset(train_dataset, packs)
            kept = packs.pack_tokens.astype(np.int64)
            options = dict(mega_batch=1, noise=0.0)  # packs come in a random order: no length grouping
    return cls(model=model, args=args, train_dataset=train_dataset, data_collator=data_collator,
               padlab_lengths=kept, padlab_batch_size=batch_size, padlab_max_tokens=max_tokens,
               padlab_options=options, padlab_padding_free=padding_free, **trainer_kwargs)


# ----------------------------------------------------------------------------- Lightning

def _lightning():
    try:
        import lightning.pytorch as pl
    except ImportError:
        import pytorch_lightning as pl  # the older package name
    return pl


@functools.lru_cache(maxsize=1)
def _datamodule_class():
    pl = _lightning()

    class BucketingDataModule(pl.LightningDataModule):
        """Training batches from a padlab sampler; validation batches fully sorted (no shuffle)."""

        def __init__(self, train_dataset: Any, lengths: np.ndarray, *, batch_size: int | None,
                     max_tokens: int | None, collator: Callable, seed: int, options: dict[str, Any],
                     val_dataset: Any, val_lengths: np.ndarray | None, val_batch_size: int,
                     num_workers: int) -> None:
            super().__init__()
            self.train_dataset, self.lengths = train_dataset, lengths
            self.batch_size, self.max_tokens = batch_size, max_tokens
            self.collator, self.seed, self.options = collator, seed, options
            self.val_dataset, self.val_lengths, self.val_batch_size = val_dataset, val_lengths, val_batch_size
            self.num_workers = num_workers
            self.sampler = None

        def _world(self) -> tuple[int | None, int | None]:
            trainer = getattr(self, "trainer", None)
            if trainer is None:
                return None, None  # torch.distributed's, where initialised
            return trainer.world_size, trainer.global_rank

        def train_dataloader(self) -> DataLoader:
            num_replicas, rank = self._world()
            self.sampler = _sampler_for(self.lengths, batch_size=self.batch_size, max_tokens=self.max_tokens,
                                        seed=self.seed, num_replicas=num_replicas, rank=rank, options=self.options)
            return DataLoader(self.train_dataset, batch_sampler=EpochForwarding(self.sampler),
                              collate_fn=self.collator, num_workers=self.num_workers)

        def val_dataloader(self) -> DataLoader | list:
            if self.val_dataset is None:
                return []
            num_replicas, rank = self._world()
            batches = sorted_inference_batches(self.val_lengths, self.val_batch_size)
            # Each rank scores every num_replicas-th batch (metrics are summed over ranks by Lightning).
            mine = [b.tolist() for b in batches[(rank or 0)::(num_replicas or 1)]]
            return DataLoader(self.val_dataset, batch_sampler=mine, collate_fn=self.collator,
                              num_workers=self.num_workers)

    return BucketingDataModule


def lightning_datamodule(train_dataset: Any, lengths: Any, *, batch_size: int | None = None,
                         max_tokens: int | None = None, max_length: int | None = None,
                         collator: Callable | None = None, mega_batch: int | None = 50, noise: float = 0.0,
                         seed: int = 0, val_dataset: Any = None, val_lengths: Any = None,
                         val_batch_size: int | None = None, num_workers: int = 0) -> Any:
    """A ``LightningDataModule`` whose training loader uses a padlab sampler.

    Give ``batch_size`` (a :class:`BucketBatchSampler`) or ``max_tokens`` (a
    :class:`TokenBudgetBatchSampler`). Rank and world size come from the attached Trainer; the
    sampler is wrapped in :class:`EpochForwarding` so that Lightning's per-epoch ``set_epoch``
    reaches it. Validation (``val_dataset`` with ``val_lengths``) runs in fully sorted batches
    of ``val_batch_size`` (default ``batch_size``, or 64). Batches are collated by
    ``ModelInputs(collator)``. Build the Trainer with ``use_distributed_sampler=False``.
    """
    kept = sort_lengths(lengths, max_length)
    _check_dataset(train_dataset, kept)
    if (batch_size is None) == (max_tokens is None):
        raise fail("batch_size", batch_size, "be given, or max_tokens instead (exactly one of the two)")
    batch_size = check_int("batch_size", batch_size, min_value=1, allow_none=True)
    max_tokens = check_int("max_tokens", max_tokens, min_value=1, allow_none=True)
    seed = check_int("seed", seed, min_value=0)
    num_workers = check_int("num_workers", num_workers, min_value=0)
    if collator is not None and not callable(collator):
        raise fail("collator", collator, "be a callable collate_fn")
    val_kept = None
    if val_dataset is not None:
        if val_lengths is None:
            raise fail("val_lengths", val_lengths, "be given with val_dataset")
        val_kept = sort_lengths(val_lengths, max_length)
        _check_dataset(val_dataset, val_kept)
    val_batch_size = check_int("val_batch_size", val_batch_size if val_batch_size is not None else (batch_size or 64),
                               min_value=1)
    options = dict(mega_batch=mega_batch, noise=noise)
    _sampler_for(kept, batch_size=batch_size, max_tokens=max_tokens, seed=seed, num_replicas=1, rank=0,
                 options=options)
    cls = _datamodule_class()
    return cls(train_dataset, kept, batch_size=batch_size, max_tokens=max_tokens,
               collator=ModelInputs(collator or PaddingCollator(max_length=max_length)), seed=seed,
               options=options, val_dataset=val_dataset, val_lengths=val_kept, val_batch_size=val_batch_size,
               num_workers=num_workers)
