"""What a stored notebook output may show a reader who has no running kernel.

A widget's output carries its live view (``application/vnd.jupyter.widget-view+json``) and a
``text/plain`` fallback that ipywidgets fills with the widget's repr: ``VBox(children=(HBox(...``,
which is what GitHub, nbviewer and a JupyterLab without the kernel show. ``tidy`` swaps that
fallback for one readable line; ``tests/nbval_sanitize.cfg`` maps a fresh run's repr to the same
line, so nbval still compares the output. Run it after executing notebooks::

    python tests/notebook_outputs.py notebooks/*.ipynb notebooks/solutions/*.ipynb
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

#: The text/plain a stored widget output shows instead of the widget's repr (nbval_sanitize.cfg has it too).
WIDGET_TEXT = "[interactive widget: run this notebook in Jupyter to use it]"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
#: A widget repr as ipywidgets writes it: a container or control's class name and its fields.
WIDGET_REPR = re.compile(r"^[A-Z]\w*(Box|Widget|Output|Tab|Accordion|Dropdown|Slider|Button)\w*\(")
#: A tqdm bar as text: "name:   0%|          | 0/100 [...]".
PROGRESS_BAR = re.compile(r"\d{1,3}%\|")


def _text(v) -> str:
    return "".join(v) if isinstance(v, list) else v


def tidy(nb: dict) -> int:
    """Replace the text/plain fallback of every widget output in ``nb``; return how many changed."""
    changed = 0
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW in data and _text(data.get("text/plain", "")) != WIDGET_TEXT:
                data["text/plain"] = WIDGET_TEXT
                changed += 1
    return changed


def stale_output_problems(nb: dict) -> list[str]:
    """Outputs that mean nothing without a kernel: widget reprs and progress bars."""
    problems = []
    for i, cell in enumerate(c for c in nb["cells"] if c["cell_type"] == "code"):
        for out in cell.get("outputs", []):
            texts = [_text(out["text"])] if "text" in out else []
            texts += [_text(v) for k, v in out.get("data", {}).items() if k.startswith("text/")]
            for t in texts:
                if WIDGET_REPR.match(t):
                    problems.append(f"code cell {i} stores a widget repr {t[:40]!r}... (run tests/notebook_outputs.py)")
                if PROGRESS_BAR.search(t):
                    problems.append(f"code cell {i} stores a progress bar {t.strip()[:40]!r} (pass progress=False)")
    return problems


def main(paths: list[str]) -> None:
    for p in map(Path, paths):
        nb = json.loads(p.read_text(encoding="utf-8"))
        if tidy(nb):
            p.write_text(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            print(f"tidied {p}")


if __name__ == "__main__":
    main(sys.argv[1:])
