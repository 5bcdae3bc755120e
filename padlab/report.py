"""The audit's pictures and its self-contained HTML page (``padlab audit --report PATH.html``).

Plot functions take an :class:`padlab.audit.AuditResult` and return a Figure; they compute no
waste (the audit did). When the ``viz`` package lands these two functions belong in
``padlab/viz/audit.py``; the page writer stays here.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from ._validate import fail

__all__ = ["length_histogram", "setting_curves", "write_audit_report"]


def length_histogram(result):
    """Histogram of the documents' token counts (log-spaced bins), with ``max_length`` and the percentiles."""
    import matplotlib.pyplot as plt

    lengths = result.lengths
    fig, ax = plt.subplots(figsize=(7, 3.2), layout="constrained")
    hi = max(int(lengths.max()), 2)
    bins = np.unique(np.geomspace(1, hi + 1, 60).astype(int))
    ax.hist(lengths, bins=bins, color="#4C72B0")
    ax.set_xscale("log")
    ax.axvline(result.max_length, color="#C44E52", ls="--", label=f"max_length {result.max_length}")
    for k in ("p50", "p99"):
        v = result.length_percentiles[k]
        ax.axvline(v, color="0.4", ls=":", lw=1)
        ax.text(v, ax.get_ylim()[1] * 0.95, f" {k}={v}", fontsize=8, va="top")
    ax.set_xlabel("tokens per document (log scale)")
    ax.set_ylabel("documents")
    ax.set_title(f"{result.documents} documents, {result.tokens + result.truncated_tokens} tokens")
    ax.legend(loc="upper right", fontsize=8)
    return fig


def setting_curves(result):
    """Waste against the setting: bucketing efficiency and eta² by mega-batch; token-budget efficiency by budget."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
    sweep = result.mega_batch_sweep
    labels = [str(s["mega_batch"]) if s["mega_batch"] else "sort" for s in sweep]
    x = np.arange(len(sweep))
    a.plot(x, [s["efficiency"] for s in sweep], "o-", label="token efficiency")
    a.plot(x, [s["attention_efficiency"] for s in sweep], "s-", label="attention efficiency")
    a.plot(x, [s["eta_squared"] for s in sweep], "^--", color="0.35", label="eta² (length explains batch)")
    a.axhline(result.recommendation.target_efficiency, color="#C44E52", lw=0.8, ls=":")
    a.set_xticks(x, labels)
    a.set_xlabel("mega_batch (pool = mega_batch x batch_size)")
    a.set_ylim(0, 1.02)
    a.set_title(f"bucketed, batch_size {result.batch_size}")
    a.legend(fontsize=8, loc="lower right")
    budgets = result.max_tokens_sweep
    b.plot([r["max_tokens"] for r in budgets], [r["efficiency"] for r in budgets], "o-", color="#55A868")
    b.set_xscale("log")
    b.set_xticks([r["max_tokens"] for r in budgets], [str(r["max_tokens"]) for r in budgets])
    b.minorticks_off()
    b.set_xlabel("max_tokens (token budget per batch)")
    b.set_ylabel("token efficiency")
    b.set_ylim(0, 1.02)
    b.set_title("token-budget")
    for r in result.strategies:
        if r["strategy"] in ("fixed", "dynamic", "packed"):
            b.axhline(r["efficiency"], lw=0.8, ls="--", color="0.5")
            b.text(b.get_xlim()[0], r["efficiency"], f" {r['strategy']}", fontsize=8, va="bottom", color="0.3")
    return fig


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_audit_report(result, path: str | Path) -> Path:
    """Write one HTML file with the tables and both figures embedded as PNG (no other file needed)."""
    from .audit import tokenizer_note

    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise fail("report", str(path), "end in .html")
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(r['strategy'])}</td><td>{r['batches']}</td><td>{r['real_tokens']}</td>"
        f"<td>{r['padded_tokens']}</td><td>{r['efficiency']:.1%}</td><td>{r['attention_efficiency']:.1%}</td>"
        f"<td>{r['truncated_tokens']}</td></tr>" for r in result.strategies)
    pct = ", ".join(f"{k} {v}" for k, v in result.length_percentiles.items())
    rec = result.recommendation
    settings = ", ".join(f"{k}={v}" for k, v in rec.settings.items())
    skips = "".join(f"<li>{e(s)}</li>" for s in result.skip_reasons)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>padlab audit: {e(Path(result.source).name)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}td,th{{padding:2px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}</style>
</head><body>
<h1>padlab audit: {e(result.source)}</h1>
<p>{result.documents} documents read, {result.skipped} skipped; {result.tokens} tokens kept at max_length
{result.max_length}, {result.truncated_tokens} truncated. {e(tokenizer_note(result))}</p>
{f"<ul>{skips}</ul>" if skips else ""}
<p>Lengths: {e(pct)}</p>
<h2>Recommendation: {e(rec.strategy)} ({rec.efficiency:.1%} expected token efficiency)</h2>
<p>{e(rec.why)}</p><p>Settings: {e(settings)}</p>
<h2>Strategies (batch_size {result.batch_size}, max_length {result.max_length})</h2>
<table><tr><th>strategy</th><th>batches</th><th>real</th><th>padded</th><th>efficiency</th><th>attn eff</th>
<th>truncated</th></tr>{rows}</table>
<h2>Lengths</h2><img alt="length histogram" src="data:image/png;base64,{_png(length_histogram(result))}">
<h2>Waste against the setting</h2><img alt="waste vs setting" src="data:image/png;base64,{_png(setting_curves(result))}">
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path
