"""The transformers recipe as a peer: its samplers and collators feeding padlab's model.

* ``hf-length-grouped``: ``LengthGroupedSampler`` (mega-batches of 50, sorted inside) with
  ``DataCollatorForLanguageModeling`` (dynamic padding + its own 15% masking; the MLM form of
  ``DataCollatorWithPadding``);
* ``hf-flattening``: ``DataCollatorWithFlattening`` (padding-free: one row, position ids that
  restart per sequence), which padlab's encoder runs through the same varlen kernel as
  ``packed-varlen``, with cu_seqlens read off the position ids.

Same model, same initial weights, same corpus and token budget as ``padlab bench``; the rows
also report how fast the collators themselves run on the CPU.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from padlab.experiments import bench
from padlab.data import data_dir
from padlab.models import IGNORE_INDEX


def _step(inputs, attention_mask, labels):
    lab = labels.reshape(-1)
    pos = torch.nonzero(lab != IGNORE_INDEX).squeeze(1)
    inputs["masked_positions"] = pos
    inputs["mlm_labels"] = lab[pos]
    seq_lengths = attention_mask.sum(1).numpy() if attention_mask is not None else None
    return inputs, seq_lengths


def peer_rows(cfg, mc, mcfg, init, dev):
    from transformers import DataCollatorForLanguageModeling, DataCollatorWithFlattening, PreTrainedTokenizerFast
    from transformers.trainer_pt_utils import LengthGroupedSampler

    tok = PreTrainedTokenizerFast(tokenizer_file=str(data_dir() / "tokenizer.json"), pad_token="[PAD]",
                                  mask_token="[MASK]", cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]")
    lens = mc.lengths
    n_steps = cfg.timed_steps
    # The same batch size padlab's bucketed row uses at this token budget.
    bs = int(np.median([len(b) for b in bench.step_plan("bucketed", lens, cfg).batches]))
    rows = []
    peak = bench.matmul_peak_tflops(dev) if dev.type == "cuda" else 0.0

    # (a) length-grouped sampler + MLM padding collator
    order, epoch = [], 0
    while len(order) < bs * n_steps:  # one epoch may hold fewer than n_steps batches: go on to the next
        order += list(LengthGroupedSampler(batch_size=bs, lengths=lens.tolist(),
                                           generator=torch.Generator().manual_seed(cfg.seed + epoch)))
        epoch += 1
    batches = [order[i:i + bs] for i in range(0, bs * n_steps, bs)]
    coll = DataCollatorForLanguageModeling(tok, mlm=True, mlm_probability=cfg.mlm_prob, return_tensors="pt")
    orig = mc.corpus
    t0 = time.perf_counter()
    raw = [coll([{"input_ids": orig.ids(i)[:cfg.max_length].tolist()} for i in b]) for b in batches]
    t_coll = time.perf_counter() - t0
    steps = []
    for b, idx in zip(raw, batches):
        am = b.get("attention_mask", (b["input_ids"] != 0).long())
        inputs, sl = _step({"input_ids": b["input_ids"], "attention_mask": am}, am, b["labels"])
        steps.append({"inputs": inputs, "real_tokens": int(am.sum()), "slots": int(am.numel()),
                      "masked_tokens": int(inputs["mlm_labels"].numel()), "seq_lengths": sl, "sequences": len(idx)})
    r = bench.run_row("hf-length-grouped", "bf16-amp", steps, init, mcfg, cfg, dev, peak)
    r["collate_batches_per_s"] = len(raw) / t_coll
    r["batch_size"] = bs
    rows.append(r)

    # (b) flattening collator (padding-free) on random batches of about the same token count
    per = max(1, int(cfg.max_tokens / float(np.mean(lens))))
    reps = -(-per * n_steps // len(lens))
    perm = np.concatenate([np.random.default_rng((cfg.seed, e)).permutation(len(lens)) for e in range(reps)])
    batches = [perm[i:i + per] for i in range(0, per * n_steps, per)]
    flat = DataCollatorWithFlattening(return_position_ids=True)
    t0 = time.perf_counter()
    raw = [flat([mc.example(int(i)) for i in b]) for b in batches]
    t_coll = time.perf_counter() - t0
    steps = []
    for b, idx in zip(raw, batches):
        ids = b["input_ids"].reshape(-1)
        pos_ids = b["position_ids"].reshape(-1)
        starts = torch.nonzero(pos_ids == 0).squeeze(1)
        cu = torch.cat([starts, torch.tensor([ids.numel()])]).to(torch.int32)
        # Its labels put -100 on each sequence's first token (for causal shift): keep as given.
        inputs, _ = _step({"input_ids": ids, "position_ids": pos_ids, "cu_seqlens": cu, "max_seqlen": cfg.max_length},
                          None, b["labels"])
        sl = np.diff(cu.numpy())
        steps.append({"inputs": inputs, "real_tokens": int(ids.numel()), "slots": int(ids.numel()),
                      "masked_tokens": int(inputs["mlm_labels"].numel()), "seq_lengths": sl, "sequences": len(idx)})
    r = bench.run_row("hf-flattening", "bf16-amp", steps, init, mcfg, cfg, dev, peak)
    r["collate_batches_per_s"] = len(raw) / t_coll
    r["batch_size"] = per
    rows.append(r)

    # padlab's own collators on the same batches, for the collator-speed comparison
    for strategy in ("bucketed", "packed-varlen"):
        rows.append({"strategy": f"padlab-{strategy}-collate-only", **bench.loader_rate(strategy, mc, cfg, steps=n_steps)})
    return rows
