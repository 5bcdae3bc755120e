"""Figures of an H200 reference result (``benchmarks/h200_flex.py --part main``), drawn by padlab.viz.

Writes ``<result>.png`` (speed-ups over fixed/fp32 at the same token slots per step, throughput
against padding efficiency, peak memory) and ``<result>_profile.png`` (the compiled best row's GPU
time by kernel family, beside its share of model FLOPs where known).

Run: ``PYTHONPATH=. python benchmarks/h200_figures.py data/benchmarks/bench_h200.json``.
"""
from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")

from padlab import viz  # noqa: E402
from padlab.experiments import results  # noqa: E402


def main(path: str) -> None:
    res = results.load_result(path)
    # the run computed each row's ratio over its own fixed/fp32 row at the same slots; viz only draws it
    rows = [dict(r, speedup_vs_fixed_fp32=r.get("speedup_vs_fixed_fp32_same_slots"))
            for r in res["rows"] if "error" not in r]
    viz.bench_summary(rows, device=res["device"]).savefig(path.replace(".json", ".png"), dpi=110, bbox_inches="tight")
    prof = res.get("profile")
    if prof:
        kernel = prof["kernel_ms_per_step"]
        fractions = {k: v / kernel for k, v in prof["families_ms_per_step"].items() if v > 0}
        viz.profile_families(fractions, title=f"Compiled {prof['name']}: GPU kernel time by family "
                                              f"({kernel:.0f} ms of a {prof['step_ms_under_profiler']:.0f} ms "
                                              "profiled step)").savefig(
            path.replace(".json", "_profile.png"), dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main(sys.argv[1])
