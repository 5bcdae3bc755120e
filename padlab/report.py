"""The audit's self-contained HTML page (``padlab audit --report PATH.html``).

The figures are :mod:`padlab.viz`'s own plot functions, fed what :func:`padlab.audit.audit`
measured (nothing is computed here): the length histogram, each strategy's efficiency, and
bucketing's efficiency and eta² against the mega-batch. They are embedded as PNG, so the page
needs no other file.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from ._validate import fail

__all__ = ["audit_figures", "write_audit_report"]


def audit_figures(result) -> dict[str, object]:
    """The report's figures for an :class:`padlab.audit.AuditResult`, by caption."""
    from . import viz

    name = Path(result.source).name
    sweep = result.mega_batch_sweep
    rec = result.recommendation
    pick = next((s for s in sweep if s["mega_batch"] == rec.settings["mega_batch"]), sweep[-1])
    return {
        "Token lengths": viz.length_histogram({name: result.lengths}, max_length=result.max_length),
        "What each strategy computes that it needs": viz.strategy_efficiency_bars(
            {name: {r["strategy"]: {"tokens": r["efficiency"], "attention": r["attention_efficiency"]}
                    for r in result.strategies}}),
        "Waste against the mega-batch (bucketed)": viz.bucketing_tradeoff(
            [s["mega_batch"] for s in sweep], {"bucketed": [s["efficiency"] for s in sweep]},
            {"bucketed": [s["eta_squared"] for s in sweep]}, corpus=name,
            current=(pick["mega_batch"], pick["efficiency"], pick["eta_squared"])),
    }


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_audit_report(result, path: str | Path) -> Path:
    """Write one HTML file with the tables and the figures embedded as PNG (no other file needed)."""
    from .audit import tokenizer_note

    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise fail("report", str(path), "end in .html")
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(r['strategy'])}</td><td>{r['batches']}</td><td>{r['real_tokens']}</td>"
        f"<td>{r['padded_tokens']}</td><td>{r['efficiency']:.1%}</td><td>{r['attention_efficiency']:.1%}</td>"
        f"<td>{r['truncated_tokens']}</td></tr>" for r in result.strategies)
    budgets = "".join(f"<tr><td>{b['max_tokens']}</td><td>{b['batches']}</td><td>{b['efficiency']:.1%}</td></tr>"
                      for b in result.max_tokens_sweep)
    pct = ", ".join(f"{k} {v}" for k, v in result.length_percentiles.items())
    rec = result.recommendation
    settings = ", ".join(f"{k}={v}" for k, v in rec.settings.items())
    skips = "".join(f"<li>{e(s)}</li>" for s in result.skip_reasons)
    figures = "".join(f'<h2>{e(caption)}</h2><img alt="{e(caption)}" src="data:image/png;base64,{_png(fig)}">'
                      for caption, fig in audit_figures(result).items())
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>padlab audit: {e(Path(result.source).name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{padding:2px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}table{{border-collapse:collapse}}tr:nth-child(even){{background:#f3f3f3}}
img{{max-width:100%}}</style>
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
<h2>Token budgets (token-budget, mega_batch {rec.settings['mega_batch'] or 'sort'})</h2>
<table><tr><th>max_tokens</th><th>batches</th><th>efficiency</th></tr>{budgets}</table>
{figures}
</body></html>
"""
    path.write_text(page, encoding="utf-8")
    return path
