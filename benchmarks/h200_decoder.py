"""Fine-tuning a decoder (issue 14 item 5): padlab's batches against the transformers recipe, one run.

Every row trains the same Llama (built from a config, random weights, the shipped tokenizer's
vocabulary) from the same initial weights on the WordNet prompt/response pairs
(``padlab.data.load_instructions``, completion-only labels), under the same precision policy,
optimizer (AdamW, fused) and compile setting, with about ``--max-tokens`` real tokens a step:

* ``fixed``, ``dynamic``, ``bucketed``, ``token-budget``: padlab's strategies
  (:func:`padlab.strategies.plan`) through :class:`padlab.padding.PaddingCollator`;
* ``packed (<attn>)``: padlab's FFD packs through :class:`padlab.hf.PaddingFreeCollator` (one row,
  restarted positions, ``use_cache=False``) under each attention implementation that passed the oracle;
  ``packed-mask (sdpa)``: :class:`padlab.packing.PackedCollator` ``(causal=True)`` rows with their
  causal document mask as an additive 4-D mask;
* ``packed-flex (flex_attention)``: the same packs in rows of exactly ``--max-length``, exactly as many
  rows every step (all-padding rows appended where a step has fewer packs), under the causal document
  ``BlockMask`` (:func:`padlab.attention.document_block_mask` ``(seq_ids, causal=True)``: rows x every
  head x ``--max-length`` x ``--max-length``), built from the collator's ``seq_ids`` on the device at
  each step. One shape for the whole run, so FlexAttention compiles once (the padding-free rows change
  their length every step and recompile). Only with ``flex_attention`` in ``--attn`` and its oracle
  passed; ``--max-length`` a multiple of 128 (the mask's tile);
* ``hf-length-grouped``: transformers' ``LengthGroupedSampler`` with ``DataCollatorForSeq2Seq``
  (dynamic padding of ids and labels);
* ``hf-flattening (<attn>)``: ``DataCollatorWithFlattening`` (padding-free) with ``use_cache=False``
  under ``sdpa`` and ``flex_attention``, each only after :func:`padlab.hf.check_packing` passed on
  this model under that implementation (the oracle's result is stored with the run); with
  ``--oracle-compiled`` the oracle also runs through ``torch.compile``'s wrapper, and the compiled
  padding-free rows run only where that passed.

Each row reports real (prompt + response) and target (response) tokens per second, the padded
fraction of computed slots, model TFLOP/s and MFU against two denominators (a measured bf16 matmul
peak, :func:`padlab.experiments.bench.matmul_peak_tflops`, and ``--peak-tflops``, the datasheet
figure), the loss curve and the seconds to ``--target-loss``, and peak memory (use ``--target-loss 6.6``
for the 110m model: on the H200 its rows' first logged losses were 7.0-7.3 and their last 6.1-6.6, so
7.5 is met at the first point). Then batched greedy generation (:func:`padlab.generate.greedy_generate`,
KV cache) at a few batch sizes, prompts sorted by length against the caller's order. The JSON holds
the device, torch and transformers versions, the date and the command. Model FLOPs per step: ``6 * params * real tokens`` plus causal attention,
``6 * layers * hidden * sum(len^2)`` (``sum(len^2)`` over the attention spans each row computes).

    bash benchmarks/h200_decoder_warm.sh /tmp/warm      # compile caches first (CPU-bound, rows in parallel)
    python benchmarks/h200_decoder.py --compile both --peak-tflops 989.4 --target-loss 6.6 \
        --out data/benchmarks/h200_decoder.json --png data/benchmarks/h200_decoder.png \
        2>&1 | tee data/benchmarks/h200_decoder.log                                  # on the H200, same machine
    # (with TORCHINDUCTOR_CACHE_DIR=$PWD/.compile-cache/inductor TRITON_CACHE_DIR=$PWD/.compile-cache/triton)
    python benchmarks/h200_decoder.py --quick                                         # CPU, seconds
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from padlab import data, strategies
from padlab.attention import document_block_mask
from padlab.env import resolve_device
from padlab.experiments.bench import matmul_peak_tflops, sync
from padlab.experiments import results
from padlab.experiments.profiling import kernel_profile
from padlab.experiments.results import save_result
from padlab.generate import greedy_generate
from padlab.hf import PaddingFreeCollator, additive_mask, check_packing
from padlab.packing import PackedCollator
from padlab.padding import PaddingCollator
from padlab.precision import prepare
from padlab.train import causal_lm_loss, count_targets, train_step

MODELS = {
    # ~100M parameters with the 8,192-token vocabulary (the issue's ~110M probe size).
    "110m": dict(hidden_size=768, intermediate_size=2304, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=12),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
}


_T0 = time.perf_counter()


def log(*a) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s]", *a, file=sys.stderr, flush=True)


def build_model(size: str, max_length: int, seed: int, attn: str):
    import transformers
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=data.vocab_size(), max_position_embeddings=max(512, max_length),
                                   pad_token_id=data.PAD_ID,
                                   bos_token_id=data.CLS_ID, eos_token_id=data.END_OF_RESPONSE_ID,
                                   attn_implementation=attn, **MODELS[size])
    return transformers.LlamaForCausalLM(cfg)


def hf_tokenizer():
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_file=str(data.data_dir() / "tokenizer.json"), pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", unk_token="[UNK]", mask_token="[MASK]")


# The packed-flex row's BlockMask tiles: torch's default kernel tiles (128) need no kernel_options.
FLEX_BLOCK = 128


def flex_batch(batch: dict, rows: int, pad_id: int = data.PAD_ID, ignore_index: int = -100) -> dict:
    """A ``PackedCollator(causal=True)`` batch as the packed-flex row trains on it: ``input_ids``, ``labels``,
    ``position_ids`` and ``seq_ids``, with all-padding rows appended up to ``rows`` (labels ``ignore_index``,
    ``seq_ids`` -1: they add no target and attend to themselves only), so every step has one shape."""
    out = {k: batch[k] for k in ("input_ids", "labels", "position_ids", "seq_ids")}
    extra = rows - out["input_ids"].shape[0]
    if extra > 0:
        fill = {"input_ids": pad_id, "labels": ignore_index, "position_ids": 0, "seq_ids": -1}
        out = {k: torch.cat([v, v.new_full((extra, v.shape[1]), fill[k])]) for k, v in out.items()}
    return out


def packed_batches(collator: PackedCollator, packs: list, rows: int) -> tuple[dict, dict]:
    """One step's packs as the ``packed-mask (sdpa)`` batch (the causal document mask additive, 4-D) and as
    the ``packed-flex (flex_attention)`` batch (:func:`flex_batch`: ``seq_ids``, ``rows`` rows)."""
    b = collator(packs)
    mask_b = {"input_ids": b["input_ids"], "labels": b["labels"], "position_ids": b["position_ids"],
              "attention_mask": additive_mask(b["block_mask"])}
    return mask_b, flex_batch(b, rows, collator.pad_id, collator.ignore_index)


def flex_loss(model, batch, *, num_items_in_batch=None):
    """:func:`padlab.train.causal_lm_loss` under the causal document ``BlockMask`` of ``batch["seq_ids"]``.

    Built here, on the batch's device, at every step (a few small kernels, no host sync; inside the
    row's timing): a ``BlockMask``'s ``mask_mod`` reads ``seq_ids`` from its closure, which
    ``BlockMask.to(device)`` does not move, so a mask built on the CPU cannot be shipped to the GPU."""
    mask = document_block_mask(batch["seq_ids"], FLEX_BLOCK, causal=True)
    return causal_lm_loss(model, {**batch, "attention_mask": mask}, num_items_in_batch=num_items_in_batch)


def _graphs() -> int:
    """Graphs dynamo has compiled in this process so far (its ``unique_graphs`` counter)."""
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def model_flops(n_params: int, cfg, real_tokens: int, sum_sq: int) -> float:
    return 6.0 * n_params * real_tokens + 6.0 * cfg.num_hidden_layers * cfg.hidden_size * sum_sq


def row_names(impls) -> list[str]:
    """The rows :func:`plan_rows` plans, in its order, when the oracle passed for ``impls``."""
    return (["fixed", "dynamic", "bucketed", "token-budget"] + [f"packed ({i})" for i in impls]
            + ["packed-mask (sdpa)"] + (["packed-flex (flex_attention)"] if "flex_attention" in impls else [])
            + ["hf-length-grouped"] + [f"hf-flattening ({i})" for i in impls])


def plan_rows(pairs, args, impls):
    """(name, list of (batch, real tokens, computed slots, sum of squared spans)) per row, built before timing."""
    # Rows draw from the same examples: all pairs, or a seeded sample of --examples of them.
    pool = (np.arange(len(pairs)) if args.examples is None
            else np.sort(np.random.default_rng(args.seed).choice(len(pairs), args.examples, replace=False)))
    lengths = pairs.lengths[pool]
    n = args.warmup + args.steps
    bs = max(1, round(args.max_tokens / float(lengths.mean())))
    rows = []

    def examples(idx):
        return [pairs[int(pool[i])] for i in idx]

    def padded(b):
        # Model FLOPs count the real sequences' attention (sum of len^2), the same work whatever the layout.
        seq = b["attention_mask"].sum(1).long()
        return ({k: b[k] for k in ("input_ids", "attention_mask", "position_ids", "labels") if k in b},
                int(seq.sum()), b["input_ids"].numel(), int((seq ** 2).sum()))

    for name, opts in (("fixed", {}), ("dynamic", {}), ("bucketed", {"mega_batch": 50}),
                       ("token-budget", {"max_tokens": args.max_tokens, "mega_batch": 50})):
        p = strategies.plan(name, lengths, batch_size=bs, max_length=args.max_length, seed=args.seed, **opts)
        coll = PaddingCollator(padding="max_length" if name == "fixed" else "longest", max_length=args.max_length)
        rows.append((name, [padded(coll(examples(idx))) for idx in p.batches[:n]]))

    pack_rows = max(1, args.max_tokens // args.max_length)
    p = strategies.plan("packed", lengths, batch_size=bs, max_length=args.max_length, seed=args.seed,
                        rows=pack_rows)
    packs = p.batches[:n]
    flat = PaddingFreeCollator(packed=True, capacity=args.max_length)
    flat_steps = []
    for step in packs:
        b = flat([examples(idx) for idx in step])
        lens = lengths[np.concatenate(step)]
        flat_steps.append((b, int(lens.sum()), int(lens.sum()), int((lens.astype(np.int64) ** 2).sum())))
    for impl in impls:
        rows.append((f"packed ({impl})", flat_steps))
    mask_coll = PackedCollator(args.max_length, causal=True)
    mask_steps, flex_steps = [], []
    for step in packs:
        mask_b, flex_b = packed_batches(mask_coll, [examples(idx) for idx in step], pack_rows)
        lens = lengths[np.concatenate(step)]
        real, sq = int(lens.sum()), int((lens.astype(np.int64) ** 2).sum())
        mask_steps.append((mask_b, real, mask_b["input_ids"].numel(), sq))
        flex_steps.append((flex_b, real, flex_b["input_ids"].numel(), sq))
    rows.append(("packed-mask (sdpa)", mask_steps))
    if "flex_attention" in impls:
        rows.append(("packed-flex (flex_attention)", flex_steps))

    # The transformers recipe: its length-grouped sampler and collators, same batch size.
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening
    from transformers.trainer_pt_utils import LengthGroupedSampler
    order = list(LengthGroupedSampler(batch_size=bs, lengths=lengths.tolist(),
                                      generator=torch.Generator().manual_seed(args.seed)))
    seq2seq = DataCollatorForSeq2Seq(hf_tokenizer(), padding="longest", label_pad_token_id=-100, return_tensors="pt")
    hf_steps = []
    for s in range(n):
        idx = order[s * bs:(s + 1) * bs]
        hf_steps.append(padded(dict(seq2seq(examples(idx)))))   # ids, attention_mask, labels: the recipe's batch
    rows.append(("hf-length-grouped", hf_steps))
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(pool))
    flattening = DataCollatorWithFlattening(return_flash_attn_kwargs=True, return_position_ids=True)
    fl_steps = []
    for s in range(n):
        idx = perm[s * bs:(s + 1) * bs]
        lens = lengths[idx]
        fl_steps.append((flattening(examples(idx)), int(lens.sum()), int(lens.sum()),
                         int((lens.astype(np.int64) ** 2).sum())))
    for impl in impls:
        rows.append((f"hf-flattening ({impl})", fl_steps))
    assert [name for name, _ in rows] == row_names(impls)
    return rows, bs


def row_impl(name: str) -> str | None:
    """The attention implementation a row names (``"packed (sdpa)"`` -> ``"sdpa"``), None if it names none."""
    return name.split("(")[1].rstrip(")") if "(" in name else None


def replan(path: str) -> dict:
    """Add the profiled steps' real tokens and slots to a run's profiles, from its plan made again."""
    result = json.loads(Path(path).read_text())
    cfg = result["config"]
    pairs = data.load_instructions("wordnet-define")
    ns = argparse.Namespace(examples=None if cfg["examples"] >= len(pairs) else cfg["examples"], seed=cfg["seed"],
                            warmup=cfg["warmup"], steps=cfg["steps"], max_tokens=cfg["max_tokens"],
                            max_length=cfg["max_length"])
    impls = sorted({row_impl(r["strategy"]) for r in result["rows"]} - {None} | {"sdpa"})
    plan = dict(plan_rows(pairs, ns, impls)[0])
    for r in result["rows"]:
        if r.get("error"):
            continue
        timed = plan[r["strategy"]][ns.warmup:]
        mean = sum(s[1] for s in timed) / len(timed)
        if len(timed) != r["steps"] or abs(mean - r["real_tokens_per_step"]) > 1e-6:
            raise SystemExit(f"--replan {path}: row {r['strategy']!r} planned again holds {mean} real tokens a "
                             f"step over {len(timed)} steps, the run recorded {r['real_tokens_per_step']} over "
                             f"{r['steps']}: not the run's batches")
        if r.get("profile"):
            prof = timed[:r["profile"]["steps"]]
            r["profile"].update(real_tokens=sum(s[1] for s in prof), slots=sum(s[2] for s in prof),
                                tokens_from="replanned")
    save_result(result, path)
    log(f"{path}: every row's timed steps planned again hold its recorded real tokens; profiles updated")
    return result


def run_row(name, steps, init, args, dev, peaks, compiled):
    impl = row_impl(name) or "sdpa"
    model = copy.deepcopy(init)
    model.set_attn_implementation(impl)
    factory = (lambda ps: torch.optim.AdamW(ps, lr=args.lr, fused=True))
    prep = prepare(model, factory, args.policy, dev)
    # torch's default (dynamic=None): a row of one shape compiles once, static; a row whose shapes change
    # recompiles once with those sizes symbolic. The same setting for every row.
    m = torch.compile(prep.model) if compiled else prep.model
    loss_fn = flex_loss if name.startswith("packed-flex") else causal_lm_loss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    losses = []
    graphs0 = _graphs()
    w0 = time.perf_counter()
    for i, (b, *_rest) in enumerate(steps[:args.warmup]):
        train_step(m, b, prep.optimizer, prep.policy, prep.scaler, loss_fn, measure=False, step=i)
    sync(dev)
    warmup_seconds = time.perf_counter() - w0
    graphs_warm = _graphs()
    timed = steps[args.warmup:]

    def timed_pass(record: list | None) -> tuple[float, list, int]:
        g0 = _graphs()
        t0 = time.perf_counter()
        stamps = []
        for i, (b, *_rest) in enumerate(timed):
            rec = train_step(m, b, prep.optimizer, prep.policy, prep.scaler, loss_fn, measure=False, step=i)
            if record is not None:
                record.append(rec.loss_tensor)
            if args.curve_every and i % args.curve_every == 0:
                sync(dev)
                stamps.append((i, time.perf_counter() - t0))
        sync(dev)
        # A graph compiled during the timed steps (a shape the warm-up did not meet) is inside this time.
        return time.perf_counter() - t0, stamps, _graphs() - g0

    seconds, stamps, graphs_timed = timed_pass(losses)
    first_pass = None
    if compiled and graphs_timed and args.retime_recompiled:
        # Its figure would time a compile, not a step: the same batches again, every graph now compiled. The
        # losses stay the first pass's (the training run); its time to a loss is the steady pass's time to the
        # step at which the first pass reached it.
        first_pass = {"seconds": seconds, "graphs_compiled": graphs_timed}
        log(f"{name} [compiled]: compiled {graphs_timed} graph(s) in its timed steps ({seconds:.0f} s); timing "
            "the same batches again")
        seconds, stamps, graphs_timed = timed_pass(None)
    profile = None
    if name in args.profile:
        # After the timed steps, on the same (compiled) model: where a step's GPU time goes, by kernel family.
        prof_steps = timed[:args.profile_steps]

        def run_profiled() -> None:
            for i, (b, *_rest) in enumerate(prof_steps):
                train_step(m, b, prep.optimizer, prep.policy, prep.scaler, loss_fn, measure=False, step=i)

        # The same steps timed without the profiler first: the busy fraction of exactly the steps profiled.
        sync(dev)
        t_prof = time.perf_counter()
        run_profiled()
        sync(dev)
        t_prof = time.perf_counter() - t_prof
        profile = kernel_profile(run_profiled, len(prof_steps), dev, sync=lambda: sync(dev))
        profile["profiled_steps_ms_per_step"] = t_prof * 1e3 / len(prof_steps)
        # The profiled steps' own tokens: a row whose batches vary is not its average over these few steps.
        profile["real_tokens"] = sum(s[1] for s in prof_steps)
        profile["slots"] = sum(s[2] for s in prof_steps)
        profile["unprofiled_ms_per_step"] = seconds * 1e3 / len(timed)
        if profile["kernel_ms_per_step"] is not None:
            profile["gpu_busy_fraction"] = profile["kernel_ms_per_step"] / profile["unprofiled_ms_per_step"]
    real = sum(s[1] for s in timed)
    slots = sum(s[2] for s in timed)
    targets = sum(count_targets(s[0]) for s in timed)
    loss = [float(x) for x in losses]
    flops = sum(model_flops(args.n_params, init.config, s[1], s[3]) for s in timed)
    tflops = flops / seconds / 1e12
    reach = next((t for i, t in stamps if loss[i] <= args.target_loss), None) if args.target_loss else None
    row = {
        "strategy": name, "attn_implementation": impl, "compiled": compiled, "steps": len(timed), "seconds": seconds,
        "real_tokens_per_s": real / seconds, "target_tokens_per_s": targets / seconds,
        "padded_fraction": 1 - real / slots, "model_tflops": tflops,
        "mfu_measured_peak": tflops / peaks["measured"] if peaks["measured"] else None,
        "mfu_datasheet_peak": tflops / peaks["datasheet"] if peaks["datasheet"] else None,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None,
        "loss_first": loss[0], "loss_last": float(np.mean(loss[-5:])),
        "loss_curve": [(t, loss[i]) for i, t in stamps], "seconds_to_target_loss": reach,
        "real_tokens_per_step": real / len(timed),
        # The warm-up's seconds include compiling (torch.compile, and FlexAttention's own compile eager too),
        # from the run's compile caches where an earlier process on the machine filled them.
        "warmup_seconds": warmup_seconds, "graphs_compiled_in_warmup": graphs_warm - graphs0,
        "graphs_compiled_in_timed_steps": graphs_timed,
    }
    if first_pass is not None:
        row["first_timed_pass"] = first_pass
    if profile is not None:
        row["profile"] = profile
        if profile["family_ms_per_step"]:
            fam = ", ".join(f"{k} {v:.1f}" for k, v in profile["family_ms_per_step"].items())
            log(f"  profile: {profile['kernel_ms_per_step']:.1f} ms of kernels a step ({fam}); "
                f"GPU busy {profile['gpu_busy_fraction']:.0%} of the unprofiled step")
    log(f"{name + (' [compiled]' if compiled else ''):<37}{row['real_tokens_per_s']:>12,.0f} real tok/s  padded {row['padded_fraction']:6.1%}  "
        f"loss {row['loss_first']:.3f} -> {row['loss_last']:.3f}  warm-up {warmup_seconds:.0f} s, "
        f"{graphs_warm - graphs0} graphs (+{graphs_timed} timed)"
        + (f", timed again after compiling {first_pass['graphs_compiled']} in its first pass" if first_pass else ""))
    return row


def draw(result: dict, path: str) -> None:
    """Real tokens/s of every row over the eager fixed-padding row (one bar per row, log scale)."""
    import matplotlib
    matplotlib.use("Agg")
    from padlab import viz
    rows = [r for r in result["rows"] if "error" not in r]
    if not rows:
        return
    # Fixed padding, eager, is the reference; a run cut short before it falls back to its slowest row.
    base = next((r for r in rows if r["strategy"] == "fixed" and not r["compiled"]),
                min(rows, key=lambda r: r["real_tokens_per_s"]))["real_tokens_per_s"]
    ratios = {r["strategy"] + (" [compiled]" if r["compiled"] else ""): r["real_tokens_per_s"] / base for r in rows}
    fig = viz.speedup_bars(ratios, highlight=result["best_padlab"],
                           title=f"Decoder SFT on {result['device']}: real tokens/s over fixed padding "
                                 f"({result['config']['model']}, {result['config']['policy']})")
    fig.axes[0].set_xlabel("real tokens/s relative to fixed padding (log scale)")
    fig.savefig(path, dpi=110, bbox_inches="tight")


def generation_rows(init, pairs, args, dev):
    model = copy.deepcopy(init).to(dev)
    if dev.type == "cuda" and "bf16" in args.policy:
        model = model.to(torch.bfloat16)
    rng = np.random.default_rng(args.seed + 1)
    idx = rng.choice(len(pairs), args.gen_prompts, replace=False)
    prompts = [pairs.ids(int(i))[:int(pairs.prompt_lengths[i])].tolist() for i in idx]
    greedy_generate(model, prompts[:8], max_new_tokens=2)      # warm-up
    out = []
    for bs in args.gen_batch_sizes:
        # Each batch size's first call meets new shapes (kernel choice, allocator): warm it up untimed, or the
        # order timed first pays for it.
        greedy_generate(model, prompts[:bs], max_new_tokens=2, batch_size=bs, sort=False, eos_id=None)
        for order in (("sorted",) if bs == 1 else ("sorted", "random")):   # batches of one hold no pads
            # Timed twice, the second kept: the first pass meets every new cache length (cuDNN builds an
            # attention plan per shape on the H200), which made whichever order ran first look slow.
            cold, r = (greedy_generate(model, prompts, max_new_tokens=args.gen_new_tokens, batch_size=bs,
                                       sort=order == "sorted", eos_id=None) for _ in range(2))
            out.append({"batch_size": bs, "order": order, "new_tokens": r.new_tokens, "seconds": r.seconds,
                        "tokens_per_s": r.tokens_per_second, "cold_tokens_per_s": cold.tokens_per_second,
                        "prefill_pad_fraction": r.prompt_pad_fraction, "kv_cache": True})
            log(f"generate batch {bs:>4} {order:<7}{r.tokens_per_second:>10,.0f} tok/s  pads {r.prompt_pad_fraction:.1%}")
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny model on the CPU, a few steps: checks every row runs")
    ap.add_argument("--device", default=None, help="auto, cpu, cuda, ... (default: auto; cpu with --quick)")
    ap.add_argument("--model", choices=sorted(MODELS), default=None, help="default 110m (tiny with --quick)")
    ap.add_argument("--policy", default=None, help="precision policy (default bf16-amp; fp32 with --quick)")
    ap.add_argument("--max-tokens", type=int, default=None, help="real tokens a step (default 16384; 256 quick)")
    ap.add_argument("--max-length", type=int, default=256, help="row width and pack capacity (pairs are <= 182)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps a row (default 60; 2 quick)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 10; 1 quick)")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--compile", choices=("off", "on", "both"), default="off",
                    help="torch.compile every row's model: off, on, or both (every row eager, then compiled)")
    ap.add_argument("--attn", default=None, help="comma-separated attention implementations for the padding-free "
                                                 "rows (default sdpa,flex_attention; sdpa with --quick)")
    ap.add_argument("--target-loss", type=float, default=None,
                    help="report the seconds each row takes to reach it; 6.6 for the 110m model (its rows' first "
                         "logged losses are 7.0-7.3 on the H200: 7.5 is met at once); default none")
    ap.add_argument("--curve-every", type=int, default=5, help="loss-curve point every N timed steps (a sync)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="datasheet dense bf16 peak for the second MFU (H200 SXM: 989.4); none by default")
    ap.add_argument("--gen-prompts", type=int, default=None, help="prompts generated for (default 128; 16 quick)")
    ap.add_argument("--gen-new-tokens", type=int, default=None, help="new tokens a prompt (default 32; 4 quick)")
    ap.add_argument("--gen-batch-sizes", default=None, help="comma-separated (default 1,16,64,128; 1,8 quick); "
                                                            "'none': no generation rows")
    ap.add_argument("--examples", type=int, default=None, help="sample this many pairs (default all; 2000 quick)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--oracle-earlier", default=None,
                    help="IMPL=LOG: implementations whose oracle already passed on this model and device in an earlier "
                         "run of this command (its log named), recorded as such and not repeated (the flex_attention "
                         "oracle spends minutes compiling on a GPU)")
    ap.add_argument("--oracle-compiled", action="store_true",
                    help="with --compile on/both: also run the oracle on the compiled model (the path the compiled rows "
                         "take); compiled padding-free rows run only where it passed (costs compiling on a GPU)")
    ap.add_argument("--time-limit", type=float, default=None,
                    help="seconds after which the remaining training rows are recorded as skipped (the run still "
                         "writes its JSON and PNG); default none")
    ap.add_argument("--rows", default=None,
                    help="comma-separated row names to run, in this order (eager and compiled), as the table "
                         "names them, e.g. 'packed-mask (sdpa),hf-length-grouped,packed-flex (flex_attention)' "
                         "(default: every row, eager in the table's order, compiled likely-fastest first)")
    ap.add_argument("--cudnn-attention", choices=("on", "off"), default="on",
                    help="off: sdpa may not pick cuDNN's attention (it builds a plan per new shape, which rows whose "
                         "shapes change every step pay inside their timing); default on, torch's choice")
    ap.add_argument("--retime-recompiled", action="store_true",
                    help="time a compiled row again, on the same batches, when it compiled a graph during its timed "
                         "steps (the first pass stays in the row as first_timed_pass)")
    ap.add_argument("--profile", default="",
                    help="comma-separated row names (as --rows names them) to profile after their timed steps, eager "
                         "and compiled: kernel time per step by family (attention, matmul, optimizer, other), the "
                         "GPU-busy fraction, the heaviest kernels")
    ap.add_argument("--profile-steps", type=int, default=5, help="steps a profile covers (default 5)")
    ap.add_argument("--out", default=None, help="write the JSON here (default: print it)")
    ap.add_argument("--png", default=None, help="draw real tokens/s relative to fixed padding, per row, here")
    ap.add_argument("--replan", default=None, metavar="JSON",
                    help="no run: plan a finished run's batches again from its config, on the CPU, check that every "
                         "row's timed steps hold the real tokens it recorded, and add its profiled steps' real "
                         "tokens and slots to its profiles (for runs made before the profiles recorded them)")
    args = ap.parse_args(argv)
    if args.replan:
        return replan(args.replan)
    q = args.quick
    args.device = args.device or ("cpu" if q else "auto")
    args.model = args.model or ("tiny" if q else "110m")
    args.policy = args.policy or ("fp32" if q else "bf16-amp")
    args.max_tokens = args.max_tokens or (256 if q else 16384)
    args.steps = args.steps or (2 if q else 60)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 10)
    args.gen_prompts = args.gen_prompts or (16 if q else 128)
    args.gen_new_tokens = args.gen_new_tokens or (4 if q else 32)
    gbs = args.gen_batch_sizes or ("1,8" if q else "1,16,64,128")
    args.gen_batch_sizes = [] if gbs == "none" else [int(x) for x in gbs.split(",")]
    args.curve_every = 1 if q else args.curve_every
    args.examples = args.examples or (2000 if q else None)
    impls_wanted = (args.attn or ("sdpa" if q else "sdpa,flex_attention")).split(",")
    wanted = [r.strip() for r in args.rows.split(",")] if args.rows else None
    args.profile = [r.strip() for r in args.profile.split(",") if r.strip()]
    if set(args.profile) - set(row_names(impls_wanted)):
        ap.error(f"--profile {sorted(set(args.profile) - set(row_names(impls_wanted)))} are not rows of this run; "
                 f"its rows: {row_names(impls_wanted)}")
    if wanted and set(wanted) - set(row_names(impls_wanted)):
        ap.error(f"--rows {sorted(set(wanted) - set(row_names(impls_wanted)))} are not rows of this run; "
                 f"its rows: {row_names(impls_wanted)}")
    dev = resolve_device(args.device)
    if args.cudnn_attention == "off":
        torch.backends.cuda.enable_cudnn_sdp(False)
    import transformers
    transformers.logging.set_verbosity_error()

    pairs = data.load_instructions("wordnet-define")
    init = build_model(args.model, args.max_length, args.seed, "sdpa")
    args.n_params = sum(p.numel() for p in init.parameters())
    log(f"model {args.model}: {args.n_params / 1e6:.1f}M parameters; device {dev}; policy {args.policy}")

    # The oracle first, on this model (on the device, in the policy's weight dtype is not needed: fp32 logits).
    oracle, impls = [], []
    probe = [pairs.ids(i).tolist() for i in (3, 4_000, 50_000, 90_000)]
    gate = init.to(dev)
    earlier = dict(kv.split("=", 1) for kv in args.oracle_earlier.split(",")) if args.oracle_earlier else {}
    for impl in impls_wanted:
        if impl in earlier:
            oracle.append({"attn_implementation": impl, "ok": True, "negative_control_ok": False,
                           "passed_in_earlier_run": earlier[impl]})
            log(f"oracle {impl}: passed on this model and device in an earlier run ({earlier[impl]}); not repeated")
            impls.append(impl)
            continue
        try:
            c = check_packing(gate, probe, attn_implementation=impl)
            control = check_packing(gate, probe, attn_implementation=impl, negative_control=True)
            oracle.append(c.as_dict() | {"negative_control_ok": control.ok,
                                         "negative_control_logits_diff": control.logits_diff})
            ok = c.ok and not control.ok
        except Exception as e:     # an implementation this installation cannot run: recorded, its rows left out
            oracle.append({"attn_implementation": impl, "ok": False, "error": f"{type(e).__name__}: {str(e)[:200]}"})
            ok = False
        log(f"oracle {impl}: {'passed' if ok else 'FAILED: its padding-free rows are left out'}")
        if ok:
            impls.append(impl)
    compiled_ok = set()
    if args.oracle_compiled and args.compile != "off":
        # The compiled rows take another code path (torch.compile's wrapper hides the model's keywords): their
        # oracle runs through the same wrapper. Only for the implementations of the padding-free rows this run
        # times (a compiled FlexAttention oracle on changing lengths compiles for minutes).
        gated = {row_impl(n) for n in (wanted or row_names(impls)) if n.startswith(("packed (", "hf-flattening ("))}
        for impl in [i for i in impls if i in gated]:
            try:
                c = check_packing(torch.compile(gate), probe, attn_implementation=impl)
                control = check_packing(torch.compile(gate), probe, attn_implementation=impl, negative_control=True)
                oracle.append(c.as_dict() | {"compiled": True, "negative_control_ok": control.ok,
                                             "negative_control_logits_diff": control.logits_diff})
                ok = c.ok and not control.ok
            except Exception as e:
                oracle.append({"attn_implementation": impl, "compiled": True, "ok": False,
                               "error": f"{type(e).__name__}: {str(e)[:200]}"})
                ok = False
            log(f"oracle {impl}, compiled: {'passed' if ok else 'FAILED: its compiled padding-free rows are left out'}")
            if ok:
                compiled_ok.add(impl)
    init = init.cpu()

    peaks = {"measured": matmul_peak_tflops(dev) if dev.type == "cuda" else None, "datasheet": args.peak_tflops}
    rows_plan, bs = plan_rows(pairs, args, impls)
    unplanned = [name for name in wanted if name not in {n for n, _ in rows_plan}] if wanted else []
    if wanted:    # in --rows' order, eager and compiled alike
        rows_plan = sorted((r for r in rows_plan if r[0] in wanted), key=lambda r: wanted.index(r[0]))
    log(f"planned and collated {len(rows_plan)} rows, {args.warmup + args.steps} steps each, batch size {bs}")
    result = {
        "name": "decoder", "work": "decoder-sft",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.machine()})",
        "torch": torch.__version__, "transformers": transformers.__version__,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python"] + sys.argv) if argv is None else "h200_decoder.main(" + repr(argv) + ")",
        "config": {"model": args.model, "parameters": args.n_params, "policy": args.policy, "optimizer": "AdamW(fused)",
                   "compile": args.compile, "cudnn_attention": args.cudnn_attention, "rows": wanted,
                   "profile": args.profile, "profile_steps": args.profile_steps,
                   "retime_recompiled": args.retime_recompiled,
                   "oracle_compiled": args.oracle_compiled, "max_tokens": args.max_tokens,
                   "max_length": args.max_length,
                   "batch_size": bs, "examples": args.examples or len(pairs), "steps": args.steps,
                   "warmup": args.warmup, "lr": args.lr, "seed": args.seed,
                   "data": "wordnet-define (completion-only labels)", "use_cache": False,
                   "peak_tflops_measured": peaks["measured"], "peak_tflops_datasheet": peaks["datasheet"]},
        "oracle": oracle, "rows": [], "generation": [], "complete": False,
    }
    modes = {"off": (False,), "on": (True,), "both": (False, True)}[args.compile]
    if True in modes:
        # Every compiled row compiles the same model code again (a new model, another batch layout): past
        # dynamo's default of 8 entries per function it would run those functions eagerly, unseen.
        torch._dynamo.config.recompile_limit = 64
        # Why a row compiled again (which guard failed), in the log: a compile inside a row's timed steps is
        # recorded as a count in its JSON row, and its reason here.
        torch._logging.set_logs(recompiles=True)
    for name in unplanned:     # asked for by --rows, left out by its oracle
        log(f"{name}: not run (the oracle of its attention implementation failed here)")
        result["rows"] += [{"strategy": name, "compiled": c, "error": "not run: its attention implementation's "
                            "oracle failed on this model and device"} for c in modes]
    # Generation first: it is short, and a run cut by --time-limit still reports it.
    result["generation"] = generation_rows(init, pairs, args, dev) if args.gen_batch_sizes else []
    # One untimed row first: the process's one-time costs (allocator, kernels' first launch) land on no row.
    log("warm-up row (not recorded):")
    run_row(rows_plan[0][0], rows_plan[0][1][:args.warmup + 1], init, args, dev, peaks, False)
    # Compiled rows spend their warm-up compiling: the likely fastest go first, so that a --time-limit cuts the
    # slow padded rows, not the comparison's two sides.
    first = ("packed-flex (flex_attention)", "packed (flex_attention)", "hf-flattening (flex_attention)",
             "packed-mask (sdpa)", "token-budget",
             "hf-length-grouped", "packed (sdpa)", "hf-flattening (sdpa)", "bucketed", "dynamic", "fixed")
    for compiled in modes:
        order = (sorted(rows_plan, key=lambda r: first.index(r[0]) if r[0] in first else len(first))
                 if compiled and not wanted else rows_plan)
        for name, steps in order:
            if args.time_limit is not None and time.perf_counter() - _T0 > args.time_limit:
                log(f"{name}{' [compiled]' if compiled else ''}: skipped (--time-limit {args.time_limit:g} s reached)")
                result["rows"].append({"strategy": name, "compiled": compiled,
                                       "error": f"skipped: --time-limit {args.time_limit:g} s reached"})
                continue
            if (compiled and args.oracle_compiled and name.startswith(("packed (", "hf-flattening ("))
                    and row_impl(name) not in compiled_ok):
                log(f"{name} [compiled]: not run (its compiled oracle did not pass)")
                result["rows"].append({"strategy": name, "compiled": True,
                                       "error": "not run: its oracle did not pass on the compiled model"})
                continue
            try:
                result["rows"].append(run_row(name, steps, init, args, dev, peaks, compiled))
            except Exception as e:    # one failing row (out of memory, a kernel missing) must not lose the others
                log(f"{name}: FAILED {type(e).__name__}: {str(e)[:300]}")
                result["rows"].append({"strategy": name, "compiled": compiled,
                                       "error": f"{type(e).__name__}: {str(e)[:300]}"})
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            if args.out:
                save_result(result, args.out)      # partial results survive a crash later in the run
    # The comparison is padlab.experiments.results' (what notebook 08 reads back): over every row, and per
    # compile setting over the rows that did not compile inside their timed steps.
    summary = results.decoder_summary(result)
    result.update(summary["comparison"], by_compile=summary["by_compile"], complete=True)
    for mode, c in [("all rows", summary["comparison"])] + list(summary["by_compile"].items()):
        ratio = c["padlab_over_best_hf"]
        log(f"{mode}: best padlab {c['best_padlab']} / best transformers {c['best_hf']}: "
            + (f"{ratio:.2f}x real tokens/s" if ratio else "no ratio (a side has no row)")
            + (f"; left out, compiled in their timed steps: {c['left_out']}" if c.get("left_out") else ""))
    if args.out:
        save_result(result, args.out)
        log(f"wrote {args.out}")
    if args.png:
        draw(result, args.png)
        log(f"wrote {args.png}")
    else:
        print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "generation", "oracle")}, indent=1,
                         default=str))
    return result


if __name__ == "__main__":
    main()
