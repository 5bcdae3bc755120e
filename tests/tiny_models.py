"""Tiny seeded models and batches shared by the precision, train and introspect tests."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from padlab import precision
from padlab.models import EncoderConfig, EncoderForSequenceClassification

VOCAB = 64


def tiny_classifier(task: str = "classification", num_labels: int = 3, seed: int = 0) -> EncoderForSequenceClassification:
    torch.manual_seed(seed)
    cfg = EncoderConfig.tiny(vocab_size=VOCAB, hidden=16, heads=2, ffn=32, layers=1, num_labels=num_labels)
    return EncoderForSequenceClassification(cfg, task=task)


def tiny_batch(seed: int = 0, rows: int = 4, width: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (rows, width), generator=g)
    mask = torch.ones(rows, width, dtype=torch.long)
    mask[0, 4:] = 0
    ids[0, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (rows,), generator=g)}


def quiet_prepare(model, policy, device="cpu", factory=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", precision.PolicyWarning)
        return precision.prepare(model, factory, policy, device)


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
