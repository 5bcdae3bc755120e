"""The samplers under real torch.distributed: 2 gloo processes on the CPU.

Each rank builds its sampler with ``num_replicas``/``rank`` left to ``torch.distributed``,
runs one ``all_reduce`` per batch (a training step's gradient sync, in miniature) and
gathers its index lists; rank 0 checks coverage, repeats, drops and equal step counts.
A negative control shows what an unequal step count does: the extra collective times out.
"""
from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from padlab.batching import BucketBatchSampler, TokenBudgetBatchSampler

WORLD = 2
# 203 lengths, batch size 7: 29 batches, odd, so the remainder policy has work to do.
LENGTHS = np.random.default_rng(0).integers(1, 120, 203).tolist()
CASES = [("bucket", "pad"), ("bucket", "drop"), ("token", "pad"), ("token", "drop")]


def _make(kind: str, remainder: str, **world):
    # In the workers num_replicas and rank are left out: they must come from torch.distributed.
    if kind == "bucket":
        return BucketBatchSampler(LENGTHS, 7, mega_batch=2, seed=11, remainder=remainder, **world)
    return TokenBudgetBatchSampler(LENGTHS, 600, mega_batch=2, seed=11, remainder=remainder, **world)


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=timedelta(seconds=20))
    try:
        report = {}
        for kind, remainder in CASES:
            sampler = _make(kind, remainder)
            assert (sampler.num_replicas, sampler.rank) == (WORLD, rank)
            loader = DataLoader(list(range(len(LENGTHS))), batch_sampler=sampler)
            for epoch in range(2):
                sampler.set_epoch(epoch)
                mine, steps = [], 0
                for batch in loader:
                    # Every rank must reach this collective the same number of times.
                    t = torch.tensor([len(batch)], dtype=torch.int64)
                    dist.all_reduce(t)
                    mine.append(batch.tolist())
                    steps += 1
                gathered = [None] * WORLD
                dist.all_gather_object(gathered, {"batches": mine, "steps": steps, "len": len(sampler),
                                                  "stats": sampler.last_epoch_stats.__dict__})
                report[f"{kind}-{remainder}-{epoch}"] = gathered
        # Negative control: rank 0 takes one step more than rank 1 (what naive sharding
        # does at the end of an epoch). Its collective never completes: it times out.
        group = dist.new_group(backend="gloo", timeout=timedelta(seconds=2))
        if rank == 0:
            t0 = time.monotonic()
            try:
                dist.all_reduce(torch.ones(1), group=group)
                report["control"] = "completed"
            except RuntimeError:
                report["control"] = f"timed out after {time.monotonic() - t0:.1f} s"
        dist.barrier()
        if rank == 0:
            Path(out_dir, "report.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_samplers_under_real_gloo(tmp_path, free_port):
    ctx = mp.spawn(_worker, args=(free_port, str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 90
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("a rank hung: the DDP run did not finish in 90 s")
    finally:
        for p in ctx.processes:  # only the processes this test started
            if p.is_alive():
                p.kill()
    report = json.loads((tmp_path / "report.json").read_text())
    n = len(LENGTHS)
    for kind, remainder in CASES:
        for epoch in range(2):
            ranks = report[f"{kind}-{remainder}-{epoch}"]
            steps = {r["steps"] for r in ranks}
            assert len(steps) == 1 and steps == {r["len"] for r in ranks}  # equal, and len() is exact
            stats = ranks[0]["stats"]
            assert all(r["stats"] == stats for r in ranks)
            flat = [i for r in ranks for b in r["batches"] for i in b]
            assert stats["batches"] == WORLD * ranks[0]["steps"]
            if remainder == "pad":
                assert sorted(set(flat)) == list(range(n))  # every example at least once
                assert len(flat) - n == stats["repeated"]
            else:
                assert len(flat) == len(set(flat))  # no example twice
                assert n - len(flat) == stats["dropped"]
            # Each rank got what one process computes for that rank.
            for r in range(WORLD):
                alone = _make(kind, remainder, num_replicas=WORLD, rank=r).epoch_batches(epoch)
                assert ranks[r]["batches"] == [b.tolist() for b in alone]
    assert report["bucket-pad-0"][0]["stats"]["repeated"] > 0  # 29 batches: one was repeated
    assert report["bucket-drop-0"][0]["stats"]["dropped"] > 0
    assert report["bucket-pad-0"] != report["bucket-pad-1"]  # set_epoch reached every rank
    assert report["control"].startswith("timed out")


def test_ranks_match_a_single_process_plan():
    """What each gloo rank gets is the plan one process computes for all ranks."""
    s = BucketBatchSampler(LENGTHS, 7, mega_batch=2, seed=11, num_replicas=WORLD, rank=0)
    plan = s.global_batches(0)
    for r in range(WORLD):
        mine = BucketBatchSampler(LENGTHS, 7, mega_batch=2, seed=11, num_replicas=WORLD, rank=r).epoch_batches(0)
        assert [b.tolist() for b in mine] == [b.tolist() for b in plan[r::WORLD]]
