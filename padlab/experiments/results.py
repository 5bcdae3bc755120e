"""Reading and writing the experiments' JSON, and the arithmetic over it (speed-ups, curves).

Three kinds of result: ``padlab bench`` / :func:`padlab.experiments.bench.run_benchmark` results
(:func:`load_result`, :func:`save_result`, :func:`rows_where`, :func:`best_row`,
:func:`speedups`, :func:`loss_at`, ...), ``benchmarks/amp_matrix.py`` results
(:func:`load_matrix`, :func:`summarize_matrix`, :func:`speed_table`), and
``benchmarks/h200_inference.py`` results (:func:`load_inference`, :func:`inference_verdict`,
:func:`inference_speedups`), ``benchmarks/h200_memory.py`` results (:func:`load_memory`,
:func:`memory_verdict`, :func:`memory_table`), ``benchmarks/h200_amp_tokens.py`` results
(:func:`load_amp_tokens`, :func:`amp_tokens_verdict`, with :func:`amp_references`: the figures
chapters 06 and 07 quote, read from their shipped files) and ``benchmarks/h200_decoder.py`` results
(:func:`load_decoder`, :func:`decoder_summary`).
Speed-ups and other ratios are computed here and only here: plots (:mod:`padlab.viz`) receive them as data.

**The shipped H100 files keep the names they were written with.** They came from padlab's
earlier harness, before one policy table and one strategy registry; read them knowing that:

* their ``fp16-amp`` and ``bf16-amp`` rows ran with TF32 on for the float32 matmuls autocast
  leaves (today's ``bf16-amp+tf32``; no ``fp16-amp+tf32`` policy exists), and their
  ``fp16-amp`` rows had a GradScaler (CUDA);
* their ``bucketed`` rows (pools of 50 x 328 sequences, more than the corpus) and
  ``token-budget`` rows (``mega_batch=None``) were global length sorts: today's ``sorted``
  strategy, cut by batch size or by a token budget.

The rows are left as stored (renaming them would make the published tables disagree with
their logs); a row written by the current harness says what it ran (``tf32``,
``autocast_dtype``, ``pool_size``), and :func:`is_history` tells the two apart.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._validate import check_choice, check_int, fail
from ..precision import POLICIES

__all__ = ["SHIPPED", "WORK", "load_result", "save_result", "is_history", "result_for_work", "rows_where", "best_row",
           "row_label", "speedups", "curve_seconds", "loss_at", "time_to_loss",
           "load_matrix", "summarize_matrix", "speed_table", "load_inference", "inference_verdict",
           "inference_speedups", "load_memory", "memory_verdict", "memory_table", "load_amp_tokens",
           "amp_references", "amp_tokens_verdict", "DECODER", "load_decoder", "decoder_summary", "decoder_profiles",
           "decoder_rows_compared"]

WORK = ("tokens", "sequences")

#: The shipped reference results (``data/benchmarks/``), by what they hold.
SHIPPED = {"tokens": "bench_h100_tokens.json", "extra": "bench_h100_extra.json",
           "tune": "bench_h100_tune.json", "sdpa_probe": "h100_sdpa_probe.json",
           "h200": "bench_h200.json"}


def load_result(path: Any) -> dict[str, Any]:
    """Read a benchmark JSON file (a ``padlab bench`` result or one of the reference files).

    ``path`` may also be a key of :data:`SHIPPED` (``"tokens"``, ``"extra"``, ``"tune"``,
    ``"sdpa_probe"``: the shipped H100 files, history; ``"h200"``: the H200 reference run).
    """
    from ..data import data_dir

    if isinstance(path, str) and path in SHIPPED:
        path = data_dir() / "benchmarks" / SHIPPED[path]
    p = Path(path)
    if not p.is_file():
        raise fail("path", str(path), f"name an existing benchmark JSON file or one of {tuple(SHIPPED)}")
    data = json.loads(p.read_text())
    if not isinstance(data, dict) or "device" not in data:
        raise fail("path", str(path), "hold a JSON object with a 'device' key")
    return _unjson(data)


def save_result(result: Mapping[str, Any], path: Any) -> Path:
    """Write a result as JSON (indent 1; NaN and inf as the strings "nan"/"inf"/"-inf", which
    :func:`load_matrix` reads back); returns the path."""
    if not isinstance(result, Mapping):
        raise fail("result", result, "be a mapping (a benchmark or amp-matrix result)")
    p = Path(path)
    p.write_text(json.dumps(_json_safe(result), indent=1))
    return p


def _json_safe(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def is_history(result: Mapping[str, Any]) -> bool:
    """True for a result of padlab's earlier bench harness (the shipped H100 files): its rows do not
    say what their policy meant (no ``tf32`` key), and its names mean what this module's docstring says."""
    rows = result.get("rows") if isinstance(result, Mapping) else None
    if not isinstance(rows, list):
        raise fail("result", result, "be a benchmark result with 'rows'")
    return any("tf32" not in r for r in rows if isinstance(r, Mapping) and "precision" in r)


def result_for_work(work: str) -> dict[str, Any]:
    """The shipped H100 ``padlab bench`` result in equal-``work`` mode (``"tokens"`` or ``"sequences"``)."""
    check_choice("work", work, WORK)
    return load_result("tokens") if work == "tokens" else load_result("extra")["sequences"]


def _rows(result_or_rows: Any) -> list[dict[str, Any]]:
    rows = result_or_rows.get("rows") if isinstance(result_or_rows, dict) else result_or_rows
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, dict) for r in rows):
        raise fail("result", result_or_rows, "be a benchmark result with 'rows' or a list of row dicts")
    return list(rows)


def rows_where(result_or_rows: Any, **equal: Any) -> list[dict[str, Any]]:
    """The rows whose keys equal the given values (``compiled=False`` also matches rows without the key)."""
    out = []
    for r in _rows(result_or_rows):
        if all(r.get(k, False if k == "compiled" else None) == v for k, v in equal.items()):
            out.append(r)
    return out


def best_row(result_or_rows: Any, *, precision: str | None = None, compiled: bool | None = None) -> dict[str, Any] | None:
    """The row with the most real tokens per second (of ``precision`` / ``compiled`` if given); ``None`` if none."""
    if precision is not None:
        check_choice("precision", precision, tuple(POLICIES))
    if compiled is not None and not isinstance(compiled, bool):
        raise fail("compiled", compiled, "be True, False or None")
    rows = [r for r in _rows(result_or_rows)
            if (precision is None or r["precision"] == precision)
            and (compiled is None or bool(r.get("compiled")) == compiled)]
    return max(rows, key=lambda r: r["real_tokens_per_s"]) if rows else None


def row_label(row: dict[str, Any]) -> str:
    """``strategy/precision``, with ``*`` for a compiled row."""
    return f"{row['strategy']}{'*' if row.get('compiled') else ''}/{row['precision']}"


def speedups(result_or_rows: Any, *, precision: str | None = None) -> dict[str, float]:
    """Real tokens per second of each row over the uncompiled ``fixed``/``fp32`` row, best first.

    Keys are :func:`row_label`; ``precision`` keeps only that policy's rows (the baseline is
    always fixed/fp32).
    """
    rows = _rows(result_or_rows)
    base = rows_where(rows, strategy="fixed", precision="fp32", compiled=False)
    if not base:
        raise fail("result", "rows without fixed/fp32", "hold an uncompiled fixed/fp32 row (the baseline)")
    if precision is not None:
        check_choice("precision", precision, tuple(POLICIES))
    b = base[0]["real_tokens_per_s"]
    chosen = [r for r in rows if precision is None or r["precision"] == precision]
    chosen.sort(key=lambda r: -r["real_tokens_per_s"])
    return {row_label(r): r["real_tokens_per_s"] / b for r in chosen}


def curve_seconds(curve: dict[str, Any]) -> np.ndarray:
    """Seconds at the end of each step of a loss curve: its own step times (``step_ms``) summed
    where it has them, else its ``wall_s`` spread evenly (older results)."""
    n = len(curve.get("loss", ()))
    if curve.get("step_ms") is not None and len(curve["step_ms"]) == n and n:
        return np.cumsum(np.asarray(curve["step_ms"], dtype=np.float64)) / 1e3
    if n == 0 or not isinstance(curve.get("wall_s"), (int, float)) or curve["wall_s"] <= 0:
        raise fail("curve", {k: curve.get(k) for k in ("strategy", "wall_s")}, "have a non-empty 'loss' and wall_s > 0")
    return curve["wall_s"] * np.arange(1, n + 1) / n


def loss_at(curve: dict[str, Any], *, examples: int | None = None, seconds: float | None = None,
            window: int = 10) -> float:
    """Mean loss over the ``window`` steps up to the first step that reached ``examples`` examples
    seen or ``seconds`` of wall-clock time (the curve's last step if it never did)."""
    if (examples is None) == (seconds is None):
        raise fail("examples", examples, "be given, or seconds, but not both")
    window = check_int("window", window, min_value=1)
    loss = np.asarray(curve["loss"], dtype=np.float64)
    x = np.asarray(curve["examples_seen"]) if examples is not None else curve_seconds(curve)
    at = examples if examples is not None else seconds
    if not at > 0:
        raise fail("examples" if examples is not None else "seconds", at, "be > 0")
    i = min(int(np.searchsorted(x, at)), len(loss) - 1)
    return float(loss[max(0, i - window + 1):i + 1].mean())


def time_to_loss(baseline: dict[str, Any], best: dict[str, Any], *, window: int = 5) -> dict[str, Any]:
    """Seconds for each of two loss curves over the same number of steps to reach the baseline's
    final loss: the mean of its last ``window`` losses; a curve reaches it at the first step whose
    ``window``-step running mean is at or below it. ``seconds`` counts every step trained so far
    (compilation, in a compiled curve's first step, included); ``seconds_after_first_step``
    leaves the first step out. ``ratio``: baseline seconds over best seconds (``None`` where the
    best never got there)."""
    window = check_int("window", window, min_value=1)
    if len(baseline.get("loss", ())) != len(best.get("loss", ())) or len(baseline["loss"]) < window:
        raise fail("best", len(best.get("loss", ())), f"have as many steps as the baseline ({len(baseline.get('loss', ()))}), "
                   f"at least window={window}")
    target = float(np.mean(baseline["loss"][-window:]))

    def reach(curve: dict[str, Any]) -> dict[str, Any]:
        loss = np.asarray(curve["loss"], dtype=np.float64)
        run = np.convolve(loss, np.ones(window), "full")[:len(loss)] / np.minimum(np.arange(1, len(loss) + 1), window)
        sec = curve_seconds(curve)
        hit = np.flatnonzero(run <= target)
        i = int(hit[0]) if hit.size else None
        return {"strategy": curve.get("strategy"), "precision": curve.get("precision"), "compiled": curve.get("compiled"),
                "step": i, "seconds": float(sec[i]) if i is not None else None,
                "seconds_after_first_step": float(sec[i] - sec[0]) if i is not None else None}

    out: dict[str, Any] = {"target_loss": target, "window": window, "steps": len(baseline["loss"]),
                           "baseline": reach(baseline), "best": reach(best)}
    for key, field in (("ratio", "seconds"), ("ratio_after_first_step", "seconds_after_first_step")):
        b, t = out["baseline"][field], out["best"][field]
        out[key] = b / t if b and t else None
    return out


# --------------------------------------------------------------------------- amp matrix results

def _unjson(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _unjson(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_unjson(x) for x in v]
    if v in ("nan", "inf", "-inf"):
        return float(v)
    return v


def load_matrix(path: Any) -> dict[str, Any]:
    """Read a ``benchmarks/amp_matrix.py`` JSON file; the strings "nan"/"inf"/"-inf" become floats."""
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise fail("path", str(path), "name an existing amp_matrix JSON file")
    data = json.loads(p.read_text())
    if not isinstance(data, dict) or "rows" not in data:
        raise fail("path", str(path), "hold an object with 'rows'")
    return _unjson(data)


def summarize_matrix(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (task, policy) of the train rows: the metric over seeds and what the runs did.

    ``metric`` is ``accuracy`` (classification) or ``mae`` (regression, in the task's unit);
    ``values`` lists it per seed, NaN for a run that diverged (NaN final loss or non-finite
    predictions: a NaN model's "accuracy" is an artefact of argmax); ``mean``/``std`` are over
    the other seeds and ``diverged`` counts the diverged ones. ``exact`` is the mean
    ``exact_fraction`` (regression); ``skipped`` the mean number of skipped steps per run;
    ``underflow`` / ``underflow_unscaled`` the mean per-step underflow fractions.
    """
    rows = [r for r in result.get("rows", []) if r.get("kind_of_row") == "train"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["policy"]), []).append(r)
    out = []
    for (task, policy), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        metric = "accuracy" if rs[0]["kind"] == "classification" else "mae"
        vals = [float(r[metric]) for r in rs]
        bad = [not math.isfinite(v) or not math.isfinite(float(r["final_loss"])) for v, r in zip(vals, rs)]
        ok = [v for v, b in zip(vals, bad) if not b]
        vals = [math.nan if b else v for v, b in zip(vals, bad)]
        row = {
            "task": task, "policy": policy, "kind": rs[0]["kind"], "unit": rs[0].get("unit", ""),
            "metric": metric, "values": vals, "seeds": len(rs),
            "mean": float(np.mean(ok)) if ok else math.nan,
            "std": float(np.std(ok)) if len(ok) > 1 else 0.0 if ok else math.nan,
            "diverged": int(sum(bad)),
            "skipped": float(np.mean([len(r["skipped_steps"]) for r in rs])),
            "underflow": float(np.nanmean([float(r["underflow_mean"]) for r in rs])),
            "underflow_unscaled": float(np.nanmean([float(r["underflow_unscaled_mean"]) for r in rs])),
        }
        if metric == "mae":
            ex = [float(r["exact_fraction"]) for r, b in zip(rs, bad) if not b]
            row["exact"] = float(np.mean(ex)) if ex else math.nan
        out.append(row)
    return out


def speed_table(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, policy) of the speed rows, with step time and peak memory relative to fp32."""
    rows = [r for r in result.get("rows", []) if r.get("kind_of_row") == "speed"]
    base = {r["model"]: r for r in rows if r["policy"] == "fp32"}
    out = []
    for r in rows:
        b = base.get(r["model"])
        mem = r.get("peak_memory_bytes")
        out.append({
            "model": r["model"], "policy": r["policy"], "batch_size": r["batch_size"], "length": r["length"],
            "step_ms": float(r["step_ms_median"]),
            "time_vs_fp32": float(r["step_ms_median"]) / float(b["step_ms_median"]) if b else math.nan,
            "peak_mib": mem / 2**20 if mem else math.nan,
            "memory_vs_fp32": mem / b["peak_memory_bytes"] if (mem and b and b.get("peak_memory_bytes")) else math.nan,
        })
    return out


# --------------------------------------------------------------------------- inference results

def _load_shipped(path: Any, shipped: str, keys: tuple[str, ...], what: str) -> dict[str, Any]:
    """One reader for the H200 result files: ``path``, or ``"h200"`` for the shipped ``shipped``;
    ``"nan"``/``"inf"`` strings become floats; an object holding ``keys`` or a clear error."""
    from ..data import data_dir

    if path == "h200":
        path = data_dir() / "benchmarks" / shipped
    if not isinstance(path, (str, os.PathLike)) or not Path(path).is_file():
        raise fail("path", str(path) if isinstance(path, os.PathLike) else path,
                   f"name an existing {what} JSON file or 'h200'")
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or not all(k in data for k in keys):
        raise fail("path", str(path), f"hold an object with {', '.join(map(repr, keys))}")
    return _unjson(data)


def load_inference(path: Any) -> dict[str, Any]:
    """Read a ``benchmarks/h200_inference.py`` JSON file (``"nan"``/``"inf"`` strings become floats).

    ``path`` may also be ``"h200"``: the shipped ``data/benchmarks/h200_inference.json``.
    """
    return _load_shipped(path, "h200_inference.json", ("accuracy_rows", "speed_rows"), "inference")


def _ok(r: Mapping[str, Any]) -> bool:
    return not r.get("skipped") and not r.get("error")


def inference_verdict(result: Mapping[str, Any], *, accuracy_tolerance: float = 0.01,
                      mae_tolerance: float = 0.1) -> dict[str, Any]:
    """The verdict of an inference result, computed from its rows.

    ``tasks``: per task, the fp32 value of its metric, each precision's change against it
    (``changes``), the largest absolute change among the half precisions (rows with ``half``:
    fp16, bf16, fp8) and which one, the lowest ``agreement`` (classification) or largest
    ``max_abs_diff`` (regression), and ``within_tolerance`` per half precision: the accuracy
    moved by at most ``accuracy_tolerance`` (absolute) or the MAE by at most ``mae_tolerance``
    times fp32's MAE. ``speed``: per model and batch size, fp32's real tokens per second, each
    precision's speed-up over it, and the best half precision with its speed-up.
    """
    if not isinstance(result, Mapping) or "accuracy_rows" not in result or "speed_rows" not in result:
        raise fail("result", type(result).__name__, "be an inference result with 'accuracy_rows' and 'speed_rows'")
    tasks: dict[str, Any] = {}
    for r in result["accuracy_rows"]:
        if not _ok(r) or "value" not in r:
            continue
        t = tasks.setdefault(r["task"], {"metric": r["metric"], "unit": r.get("unit", ""), "changes": {},
                                         "within_tolerance": {}})
        t["changes"][r["precision"]] = r["change_vs_fp32"]
        if r["precision"] == "fp32":
            t["fp32_value"] = r["value"]
        if r.get("half"):
            change = abs(r["change_vs_fp32"]) if math.isfinite(r["change_vs_fp32"]) else math.inf
            if change > t.get("largest_half_change", -1.0):  # ties: the first in table order
                t["largest_half_change"], t["largest_half_change_precision"] = change, r["precision"]
            if r["metric"] == "accuracy":
                t["lowest_agreement"] = min(t.get("lowest_agreement", 1.0), r["agreement"])
                ok = change <= accuracy_tolerance
            else:
                t["largest_max_abs_diff"] = max(t.get("largest_max_abs_diff", 0.0), r["max_abs_diff"])
                ok = change <= mae_tolerance * abs(r["fp32_value"])
            t["within_tolerance"][r["precision"]] = bool(ok)
    speed: dict[str, Any] = {}
    rows = [r for r in result["speed_rows"] if _ok(r) and "real_tokens_per_s" in r]
    for r in rows:
        speed.setdefault(r["model"], {}).setdefault(str(r["batch_size"]), {})[r["precision"]] = r
    out_speed: dict[str, Any] = {}
    for model, by_bs in speed.items():
        for bs, by_p in by_bs.items():
            base = by_p.get("fp32")
            if base is None:
                continue
            ups = {p: r["real_tokens_per_s"] / base["real_tokens_per_s"] for p, r in by_p.items()}
            half = {p: v for p, v in ups.items() if by_p[p].get("half")}
            best = max(half, key=half.get) if half else None
            out_speed.setdefault(model, {})[bs] = {
                "fp32_real_tokens_per_s": base["real_tokens_per_s"], "fp32_ms_median": base["ms_median"],
                "speedup": ups, "best_half": best, "best_half_speedup": half[best] if best else None}
    return {"accuracy_tolerance": accuracy_tolerance, "mae_tolerance": mae_tolerance, "tasks": tasks,
            "speed": out_speed}


def inference_speedups(verdict: Mapping[str, Any]) -> dict[str, dict[str, dict[int, float]]]:
    """An :func:`inference_verdict`'s speed-ups regrouped for a plot: ``{model: {precision:
    {batch_size: speed-up over fp32}}}``, batch sizes ascending (fp32 itself, always 1, left out)."""
    if not isinstance(verdict, Mapping) or not isinstance(verdict.get("speed"), Mapping):
        raise fail("verdict", type(verdict).__name__, "be an inference_verdict result (with 'speed')")
    out: dict[str, dict[str, dict[int, float]]] = {}
    for model, by_bs in verdict["speed"].items():
        curves: dict[str, dict[int, float]] = {}
        for bs in sorted(by_bs, key=int):
            for p, x in by_bs[bs]["speedup"].items():
                if p != "fp32":
                    curves.setdefault(p, {})[int(bs)] = x
        out[model] = curves
    return out


# --------------------------------------------------------------------------- memory budget results

def load_memory(path: Any) -> dict[str, Any]:
    """Read a ``benchmarks/h200_memory.py`` JSON file; ``"h200"``: the shipped ``h200_memory.json``."""
    return _load_shipped(path, "h200_memory.json", ("rows", "config"), "memory budget")


def _verified(v: Any) -> str:
    """What the capped-fraction check of one budget says: 'fits', 'failed', 'not run: ...'."""
    if not isinstance(v, Mapping):
        return "not run"
    if v.get("error"):
        return f"not run: {v['error']}"
    if v.get("skipped"):
        return f"skipped: {v['skipped']}"
    fit = v.get("at_prediction", {})
    if isinstance(fit, Mapping) and "fits" in fit:
        return "fits" if fit["fits"] and v.get("cap_enforced", True) else "failed"
    return "not run"


def memory_verdict(result: Mapping[str, Any]) -> dict[str, Any]:
    """The verdict of a memory-budget result, computed from its rows.

    ``rows``: one per (model, recipe, checkpointing, budget): the policy the budget runs it in
    (bf16 recipes in fp16-amp on the 16 GB T4), padlab's ``estimated`` largest tokens per step,
    the ``fitted`` one (the linear fit of the measured peaks), ``ratio`` = estimated / fitted,
    ``real_tokens`` at the estimated maximum, ``chapter00`` (chapter 00's estimate where the file
    has one, else None), ``trains``: at least one sequence of ``max_length`` tokens fits, and
    ``verified``: what the capped check says. ``points``: per (model, recipe, checkpointing)
    the smallest and largest estimate / measured peak over its measured sizes (``chapter00``
    likewise, where present). ``budgets``: per budget and model, whether any recipe trains it,
    the one that fits the most real tokens a step (``best``) and the best without checkpointing. ``verified_ran``: whether any capped check ran
    at all; ``verification_errors``: the distinct errors of those that did not.
    """
    if not isinstance(result, Mapping) or not isinstance(result.get("rows"), list) or "config" not in result:
        raise fail("result", type(result).__name__, "be a memory-budget result with 'rows' and 'config'")
    max_length = int(result["config"].get("max_length", 512))
    rows, points, errors = [], [], []
    for r in result["rows"]:
        if r.get("error") or "budgets" not in r:
            continue
        key = {"model": r["model"], "recipe": r["recipe"], "checkpointing": bool(r["checkpointing"])}
        over = [p["estimate_over_measured"] for p in r.get("points", [])]
        c00 = [p["chapter00_over_measured"] for p in r.get("points", []) if p.get("chapter00_over_measured")]
        points.append({**key, "estimate_over_measured": (min(over), max(over)) if over else None,
                       "chapter00_over_measured": (min(c00), max(c00)) if c00 else None})
        for budget, b in r["budgets"].items():
            est, fitted = int(b["estimated_max_tokens"]), int(b["measured_fit_max_tokens"])
            verified = _verified(b.get("verified"))
            if verified.startswith("not run: "):
                errors.append(verified[len("not run: "):])
            rows.append({**key, "budget": budget, "precision": b["precision"], "estimated": est, "fitted": fitted,
                         "ratio": est / fitted if fitted else math.nan,
                         "real_tokens": int(b.get("real_tokens_at_estimated_max", 0)),
                         "chapter00": b.get("chapter00_max_tokens"), "trains": est >= max_length,
                         "verified": verified})
    budgets: dict[str, Any] = {}
    for row in rows:
        m = budgets.setdefault(row["budget"], {}).setdefault(
            row["model"], {"trains": False, "best": None, "best_without_checkpointing": None})
        m["trains"] = m["trains"] or row["trains"]
        for key in ("best", "best_without_checkpointing"):
            if key == "best_without_checkpointing" and row["checkpointing"]:
                continue
            if row["trains"] and (m[key] is None or row["real_tokens"] > m[key]["real_tokens"]):
                m[key] = {k: row[k] for k in ("recipe", "checkpointing", "precision", "estimated", "real_tokens")}
    return {"max_length": max_length, "rows": rows, "points": points, "budgets": budgets,
            "verified_ran": any(not r["verified"].startswith(("not run", "skipped")) for r in rows),
            "verification_errors": sorted(set(errors))}


def memory_table(verdict: Mapping[str, Any], *, what: str = "estimated") -> dict[str, dict[str, dict[str, int]]]:
    """A :func:`memory_verdict`'s largest tokens per step regrouped for a plot: ``{model:
    {"recipe" or "recipe + ckpt": {budget: tokens}}}``; ``what``: ``"estimated"``, ``"fitted"`` or
    ``"real_tokens"``."""
    check_choice("what", what, ("estimated", "fitted", "real_tokens"))
    if not isinstance(verdict, Mapping) or not isinstance(verdict.get("rows"), list):
        raise fail("verdict", type(verdict).__name__, "be a memory_verdict result (with 'rows')")
    out: dict[str, dict[str, dict[str, int]]] = {}
    for r in verdict["rows"]:
        label = r["recipe"] + (" + ckpt" if r["checkpointing"] else "")
        out.setdefault(r["model"], {}).setdefault(label, {})[r["budget"]] = r[what]
    return out


# --------------------------------------------------------------------------- AMP against tokens per step

def load_amp_tokens(path: Any) -> dict[str, Any]:
    """Read a ``benchmarks/h200_amp_tokens.py`` JSON file; ``"h200"``: the shipped ``h200_amp_tokens.json``."""
    return _load_shipped(path, "h200_amp_tokens.json", ("rows", "profiles"), "AMP tokens-per-step")


def amp_references() -> list[dict[str, Any]]:
    """The AMP speed-ups chapters 06 and 07 quote, computed from the shipped files (not retyped):
    chapter 06's ``amp_matrix_h100.json`` speed rows (fp32 step time over the policy's) and chapter
    07's fixed-strategy rows of ``bench_h200.json`` (H200) and ``bench_h100_tokens.json`` (H100
    history; its ``bf16-amp`` ran with TF32 on, and its tokens/s is a median step's: a ratio of two
    of its rows still holds). One dict per figure: chapter, model, device,
    precision, tokens_per_step, speedup, layout (``"32x128 tokens"``, ``"fixed, 65,536 slots"``), source."""
    from ..data import data_dir

    out: list[dict[str, Any]] = []
    matrix = load_matrix(data_dir() / "benchmarks" / "amp_matrix_h100.json")
    for r in speed_table(matrix):
        if r["policy"] in ("bf16-amp", "tf32") and math.isfinite(r["time_vs_fp32"]):
            out.append({"chapter": "06", "model": r["model"], "device": "H100", "precision": r["policy"],
                        "tokens_per_step": int(r["batch_size"] * r["length"]), "speedup": 1 / r["time_vs_fp32"],
                        "layout": f"{r['batch_size']}x{r['length']} tokens", "source": "amp_matrix_h100.json"})
    for key, device in (("h200", "H200"), ("tokens", "H100 history")):
        res = load_result(key)
        base = rows_where(res, strategy="fixed", precision="fp32")
        for p in ("tf32", "bf16-amp"):
            amp = rows_where(res, strategy="fixed", precision=p)
            if base and amp:
                slots = base[0].get("slots_per_step") or res.get("config", {}).get("budget")
                out.append({"chapter": "07", "model": "bert-base", "device": device, "precision": p,
                            "tokens_per_step": int(slots), "speedup": amp[0]["real_tokens_per_s"] / base[0]["real_tokens_per_s"],
                            "layout": f"fixed, {slots:,.0f} slots", "source": SHIPPED[key]})
    return out


def amp_tokens_verdict(result: Mapping[str, Any], *, references: list[Mapping[str, Any]] | None = None,
                       threshold: float = 4.0, busy_below: float = 0.5, amp: str = "bf16-amp",
                       base: str = "fp32") -> dict[str, Any]:
    """The verdict of an AMP tokens-per-step sweep, computed from its rows and profiles.

    Per model: ``speedup[precision][tokens]``, each policy's real tokens/s over ``base``'s at the
    same size (rows with an error left out; ``skipped`` lists them as (tokens, precision, why));
    ``median_step_speedup[precision][tokens]``: ``base``'s median step over the policy's (where both
    rows have one); ``mfu[precision][tokens]``; for ``amp``: ``max_speedup``, ``crosses_threshold_at_tokens`` (the
    smallest size reaching ``threshold``, None if none); ``profiles[tokens][precision]``: GPU-busy
    fraction (kernel time / unprofiled step), kernels per step, kernel ms per step;
    ``launch_bound[tokens]``: the ``amp`` step busy below ``busy_below``; ``extra_kernels[tokens]``:
    kernels per ``amp`` step minus per ``base`` step (autocast's casts). ``references``: each of
    :func:`amp_references`'s figures beside this sweep's speed-up for the same model, precision and
    size (None where the sweep has no such row) and its largest measured one for that precision.
    """
    if not isinstance(result, Mapping) or not isinstance(result.get("rows"), list):
        raise fail("result", type(result).__name__, "be an AMP tokens-per-step result with 'rows'")
    models: dict[str, Any] = {}
    for r in result["rows"]:
        m = models.setdefault(r["model"], {"speedup": {}, "median_step_speedup": {}, "mfu": {}, "skipped": [],
                                           "profiles": {}, "launch_bound": {}, "extra_kernels": {}})
        if r.get("error"):
            m["skipped"].append((int(r["tokens_per_step"]), r["precision"], r["error"]))
    for model, m in models.items():
        ok = {(r["tokens_per_step"], r["precision"]): r for r in result["rows"]
              if r["model"] == model and not r.get("error")}
        for (t, p), r in sorted(ok.items()):
            if r.get("mfu") is not None:
                m["mfu"].setdefault(p, {})[int(t)] = r["mfu"]
            b = ok.get((t, base))
            if p != base and b is not None:
                m["speedup"].setdefault(p, {})[int(t)] = r["real_tokens_per_s"] / b["real_tokens_per_s"]
                if r.get("median_step_ms") and b.get("median_step_ms"):
                    m["median_step_speedup"].setdefault(p, {})[int(t)] = b["median_step_ms"] / r["median_step_ms"]
        curve = m["speedup"].get(amp, {})
        m["max_speedup"] = max(curve.values(), default=None)
        m["crosses_threshold_at_tokens"] = next((t for t, x in sorted(curve.items()) if x >= threshold), None)
        for pr in result.get("profiles", []):
            if pr.get("model") != model or pr.get("error"):
                continue
            m["profiles"].setdefault(int(pr["tokens_per_step"]), {})[pr["precision"]] = {
                "gpu_busy_fraction": pr.get("gpu_busy_fraction"), "kernels_per_step": pr.get("kernels_per_step"),
                "kernel_ms_per_step": pr.get("kernel_ms_per_step")}
        for t, by_p in sorted(m["profiles"].items()):
            a = by_p.get(amp)
            if a and a["gpu_busy_fraction"] is not None:
                m["launch_bound"][t] = a["gpu_busy_fraction"] < busy_below
            if a and base in by_p and a["kernels_per_step"] is not None and by_p[base]["kernels_per_step"] is not None:
                m["extra_kernels"][t] = a["kernels_per_step"] - by_p[base]["kernels_per_step"]
    refs = []
    for ref in references or ():
        m = models.get(ref["model"], {"speedup": {}})
        curve = m["speedup"].get(ref["precision"], {})
        best = max(curve.items(), key=lambda kv: kv[1]) if curve else None
        refs.append({**ref, "sweep": curve.get(int(ref["tokens_per_step"])),
                     "sweep_best": {"tokens_per_step": best[0], "speedup": best[1]} if best else None})
    return {"threshold": threshold, "busy_below": busy_below, "amp": amp, "base": base, "models": models,
            "references": refs}


# --------------------------------------------------------------------------- decoder (SFT) results

#: The shipped decoder runs of ``benchmarks/h200_decoder.py`` (``data/benchmarks/``).
#: ``"h200"``: every row eager and compiled, in one run; ``"h200-nocudnn"``: the eager rows again, with
#: ``sdpa`` kept off cuDNN's attention (``--cudnn-attention off``); ``"h200-compiled"``: seven rows eager and
#: compiled off cuDNN, every compiled figure steady, with kernel profiles; ``"h200-flattening"``:
#: transformers' ``DataCollatorWithFlattening`` eager and compiled after the oracle passed compiled.
DECODER = {"h200": "h200_decoder.json", "h200-nocudnn": "h200_decoder_nocudnn.json",
           "h200-compiled": "h200_decoder_compiled.json", "h200-flattening": "h200_decoder_flattening.json"}


def load_decoder(path: Any = "h200") -> dict[str, Any]:
    """Read a ``benchmarks/h200_decoder.py`` JSON file and add :func:`decoder_summary`'s keys to it.

    ``path`` may be a key of :data:`DECODER` (``"h200"``, ``"h200-nocudnn"``, ``"h200-compiled"``,
    ``"h200-flattening"``: the shipped runs in ``data/benchmarks/``). The stored keys are returned as written; ``table``, ``comparison``,
    ``by_compile`` and ``generation_by_order`` are computed from the rows.
    """
    key = path if isinstance(path, str) and path in DECODER else None
    data = _load_shipped("h200" if key else path, DECODER[key or "h200"], ("rows", "config"), "decoder")
    if not isinstance(data["rows"], list):
        raise fail("path", str(path), "hold a decoder result (its 'rows' a list)")
    return {**data, **decoder_summary(data)}


def _label(r: Mapping[str, Any]) -> str:
    return r["strategy"] + (" [compiled]" if r.get("compiled") else "")


def decoder_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """What a decoder result says, computed from its rows.

    ``table``: one dict per row in run order: ``strategy`` (`` [compiled]`` appended for compiled rows),
    ``side`` (``"transformers"`` for rows whose strategy starts with ``hf-``, else ``"padlab"``),
    ``real_tokens_per_s``, ``padded_fraction``, ``mfu_measured_peak``, ``mfu_datasheet_peak``,
    ``peak_gib``, ``loss_last``, ``seconds_to_target_loss`` (``None`` if not reached),
    ``target_at_first_point`` (the target was already met at the first logged point, so the seconds
    measure one step, not learning), ``attention_flop_share`` (the share of the row's model FLOPs
    that is attention: what is left after ``6 * parameters * real tokens``), ``speedup_over_fixed``
    (real tokens/s over the uncompiled ``fixed`` row's; ``None`` without one), ``error``.
    ``compiled``, and ``compiled_in_timing``: the row compiled a graph during its timed steps (a shape its
    warm-up had not met), so its time holds compiling and is not its steady speed.
    ``comparison``: the best row of each side by real tokens/s (rows without an error), and the ratio
    ``padlab_over_best_hf``. ``by_compile``: ``{"eager"|"compiled": comparison}`` over the rows of that
    setting that did not compile in their timing, each with ``left_out``, the labels of those that did.
    ``generation_by_order``: ``{order: {batch_size: tokens_per_s}}``.
    """
    if not isinstance(result, Mapping) or not isinstance(result.get("rows"), list):
        raise fail("result", type(result).__name__, "be a decoder result with 'rows'")
    params = (result.get("config") or {}).get("parameters")
    table = []
    for r in result["rows"]:
        if not isinstance(r, Mapping) or "strategy" not in r:
            raise fail("result", r, "hold rows with a 'strategy'")
        err = r.get("error")
        row: dict[str, Any] = {"strategy": _label(r), "side": "transformers" if r["strategy"].startswith("hf-") else "padlab",
                               "compiled": bool(r.get("compiled")), "error": err,
                               "compiled_in_timing": bool(r.get("graphs_compiled_in_timed_steps"))}
        if not err:
            mem = r.get("peak_memory_bytes")
            curve = r.get("loss_curve") or []
            reach = r.get("seconds_to_target_loss")
            flops = r["model_tflops"] * 1e12 * r["seconds"]
            row.update(real_tokens_per_s=r["real_tokens_per_s"], padded_fraction=r["padded_fraction"],
                       mfu_measured_peak=r.get("mfu_measured_peak"), mfu_datasheet_peak=r.get("mfu_datasheet_peak"),
                       peak_gib=mem / 2 ** 30 if mem else None, loss_last=r["loss_last"],
                       seconds_to_target_loss=reach,
                       target_at_first_point=bool(reach is not None and curve and reach == curve[0][0]),
                       attention_flop_share=(1 - 6.0 * params * r["real_tokens_per_step"] * r["steps"] / flops
                                             if params and flops > 0 else None))
        table.append(row)
    fixed = next((t for t in table if t["strategy"] == "fixed" and not t["error"]), None)
    for t in table:
        if not t["error"]:
            t["speedup_over_fixed"] = t["real_tokens_per_s"] / fixed["real_tokens_per_s"] if fixed else None
    ok = [t for t in table if not t["error"]]
    by_compile = {}
    for mode, flag in (("eager", False), ("compiled", True)):
        rows = [t for t in ok if t["compiled"] == flag]
        if rows:
            by_compile[mode] = {**_best_of(t for t in rows if not t["compiled_in_timing"]),
                                "left_out": [t["strategy"] for t in rows if t["compiled_in_timing"]]}
    gen: dict[str, dict[int, float]] = {}
    for g in result.get("generation") or []:
        if not g.get("error"):
            gen.setdefault(g["order"], {})[int(g["batch_size"])] = g["tokens_per_s"]
    return {"table": table, "comparison": _best_of(ok), "by_compile": by_compile, "generation_by_order": gen}


def _best_of(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The best row of each side of a decoder table by real tokens/s, and the ratio of the two."""
    best: dict[str, Any] = {"padlab": None, "transformers": None}
    for t in rows:
        if best[t["side"]] is None or t["real_tokens_per_s"] > best[t["side"]]["real_tokens_per_s"]:
            best[t["side"]] = t
    p, h = best["padlab"], best["transformers"]
    return {"best_padlab": p["strategy"] if p else None, "best_hf": h["strategy"] if h else None,
            "padlab_over_best_hf": p["real_tokens_per_s"] / h["real_tokens_per_s"] if p and h else None}


def decoder_profiles(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The kernel profiles a decoder run holds (``benchmarks/h200_decoder.py --profile``), one dict per
    profiled row in run order.

    Over the row's timed steps: ``strategy`` (`` [compiled]`` appended), ``step_ms`` (timed seconds over
    timed steps), ``padded_fraction`` and ``step_ns_per_token`` (per real token). Over the few profiled
    steps (the first timed ones again, under torch.profiler): ``kernel_ms`` (GPU kernel time a step),
    ``family_ms`` (``attention``, ``matmul``, ``optimizer``, ``other``), ``kernels_per_step``,
    ``busy_under_profiler`` (kernel time over the profiled steps' wall time, the profiler's overhead
    included), ``busy`` (kernel time over the same steps timed without the profiler, where the run timed
    them), and, where the profile records the profiled steps' tokens, ``profiled_real_tokens_per_step``,
    ``profiled_padded_fraction`` and ``kernel_ns_per_token``. A row whose batches vary (length-grouped) can
    hold other tokens in its first steps than on average, so kernel time is divided by the profiled
    steps' own tokens, never by the run's average (``None`` where those are unknown). Kernel fields are
    ``None`` for a profile taken without a GPU."""
    if not isinstance(result, Mapping) or not isinstance(result.get("rows"), list):
        raise fail("result", type(result).__name__, "be a decoder result with 'rows'")
    out = []
    for r in result["rows"]:
        p = r.get("profile") if isinstance(r, Mapping) and not r.get("error") else None
        if not p:
            continue
        missing = [k for k in ("seconds", "steps", "real_tokens_per_step", "padded_fraction") if k not in r]
        if missing or not isinstance(p, Mapping) or "steps" not in p:
            raise fail("result", r.get("strategy"), f"hold profiled rows with {missing or ['a profile with steps']}")
        step_ms = r["seconds"] * 1e3 / r["steps"]
        kernel = p.get("kernel_ms_per_step")
        real = p["real_tokens"] / p["steps"] if p.get("real_tokens") else None
        out.append({"strategy": _label(r), "step_ms": step_ms, "padded_fraction": r["padded_fraction"],
                    "step_ns_per_token": step_ms * 1e6 / r["real_tokens_per_step"],
                    "kernel_ms": kernel,
                    "family_ms": dict(p.get("family_ms_per_step") or {}) if kernel is not None else None,
                    "kernels_per_step": p.get("kernels_per_step"),
                    "busy_under_profiler": p.get("gpu_busy_fraction_under_profiler"),
                    "busy": (kernel / p["profiled_steps_ms_per_step"]
                             if kernel is not None and p.get("profiled_steps_ms_per_step") else None),
                    "profiled_real_tokens_per_step": real,
                    "profiled_padded_fraction": 1 - p["real_tokens"] / p["slots"] if real else None,
                    "kernel_ns_per_token": kernel * 1e6 / real if kernel is not None and real else None})
    return out


def decoder_rows_compared(base: Mapping[str, Any], other: Mapping[str, Any], *, compiled: bool = False
                          ) -> list[dict[str, Any]]:
    """The rows two decoder runs share (same strategy, same compile setting, no error in either), in
    ``base``'s order: ``strategy``, ``base`` and ``other`` real tokens/s, ``other_over_base``, and
    ``padded_fraction`` (``base``'s). For a control run that changes one setting (``"h200-nocudnn"``
    against ``"h200"``): which rows the setting moves."""
    runs = {}
    for name, run in (("base", base), ("other", other)):
        if not isinstance(run, Mapping) or not isinstance(run.get("rows"), list):
            raise fail(name, type(run).__name__, "be a decoder result with 'rows'")
        runs[name] = {r["strategy"]: r for r in run["rows"] if isinstance(r, Mapping) and "strategy" in r
                      and not r.get("error") and bool(r.get("compiled")) == compiled}
    out = []
    for name, b in runs["base"].items():
        o = runs["other"].get(name)
        if o is not None:
            out.append({"strategy": name, "base": b["real_tokens_per_s"], "other": o["real_tokens_per_s"],
                        "other_over_base": o["real_tokens_per_s"] / b["real_tokens_per_s"],
                        "padded_fraction": b["padded_fraction"]})
    return out
