"""padlab.viz as a package: one palette in style.py, chapter modules that take data and compute nothing.

Checks the palette (one colour per policy, strategy and format; distinct colours), the
re-exports (``viz.<name>`` for every plot function), and, on the source, that no viz module
imports the experiments/benchmark code, a ``_`` name of another module, or grows past 800 lines.
"""
from __future__ import annotations

import ast
import importlib
import itertools
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex, to_rgb

from padlab import viz
from padlab.viz import style

VIZ = Path(viz.__file__).parent
MODULES = sorted(VIZ.glob("*.py"))
CHAPTER_MODULES = ["memory", "padding", "bucketing", "packing", "floats", "precision", "bench", "schematics"]

#: Written out here, not read from padlab: the names the palette must cover.
POLICIES = ["fp32", "tf32", "fp16-amp", "bf16-amp", "bf16-amp+tf32", "fp16-pure", "bf16-pure"]
STRATEGIES = ["fixed", "dynamic", "dynamic-multiple", "sorted", "bucketed", "token-budget", "packed",
              "packed-varlen", "packed-flex"]
FORMATS = ["fp64", "fp32", "tf32", "fp16", "bf16", "fp8-e4m3fn", "fp8-e5m2", "fp4-e2m1"]
#: The smallest Euclidean distance in RGB (0..1 per channel) two palette colours may have. The
#: chapter-06 pair that looked alike, fp32 #4c72b0 and bf16-amp #8172b2, is 0.21 apart.
MIN_DISTANCE = 0.25


def _distance(a, b) -> float:
    return float(np.linalg.norm(np.subtract(to_rgb(a), to_rgb(b))))


# --- the palette ---------------------------------------------------------------------------------

@pytest.mark.parametrize("table, names", [(style.POLICY_COLOURS, POLICIES), (style.STRATEGY_COLOURS, STRATEGIES),
                                          (style.FORMAT_COLOURS, FORMATS)], ids=["policy", "strategy", "format"])
def test_one_distinct_colour_per_name(table, names):
    assert sorted(table) == sorted(names)
    for (a, ca), (b, cb) in itertools.combinations(table.items(), 2):
        assert _distance(ca, cb) >= MIN_DISTANCE, (a, ca, b, cb)


def test_sequence_and_series_colours_are_distinct():
    for palette in (style.SEQUENCE_COLOURS, style.SERIES_COLOURS):
        for a, b in itertools.combinations(palette, 2):
            assert _distance(a, b) >= MIN_DISTANCE, (a, b)


def test_the_negative_control_fails_the_distance_rule():
    # The two chapter-06 loss curves of the old palette: the rule above would have caught them.
    assert _distance("#4c72b0", "#8172b2") < MIN_DISTANCE


def test_a_policy_named_format_shares_its_colour():
    assert style.FORMAT_COLOURS["fp16"] == style.POLICY_COLOURS["fp16-amp"]
    assert style.FORMAT_COLOURS["bf16"] == style.POLICY_COLOURS["bf16-amp"]


def test_colour_for_names_labels_and_row_labels():
    assert style.colour_for("bf16-amp") == "#2ca02c"
    assert style.colour_for("fixed (128)") == style.STRATEGY_COLOURS["fixed"]
    assert style.colour_for("packed-varlen*/bf16-amp") == style.POLICY_COLOURS["bf16-amp"]
    assert style.colour_for("noise 0.10") is None


def test_colours_for_keeps_palette_names_and_never_repeats():
    labels = ["dynamic", "noise 0.00", "fixed (512)", "noise 0.10", "dynamic"]
    colours = style.colours_for(labels)
    assert colours[0] == style.STRATEGY_COLOURS["dynamic"] and colours[2] == style.STRATEGY_COLOURS["fixed"]
    assert len(set(colours)) == len(labels)
    # More labels than colours: no error, the series cycle again.
    assert len(style.colours_for([f"s{i}" for i in range(25)])) == 25


def test_new_figure_is_constrained():
    fig, axes = style.new_figure(figsize=(4, 2), ncols=2)
    assert fig.get_layout_engine().__class__.__name__ == "ConstrainedLayoutEngine" and len(axes) == 2
    assert tuple(fig.get_size_inches()) == (4, 2)


# --- the package -----------------------------------------------------------------------------------

def test_every_chapter_module_exists_and_is_re_exported():
    assert sorted(p.stem for p in MODULES) == sorted(CHAPTER_MODULES + ["__init__", "style"])
    for name in CHAPTER_MODULES:
        module = importlib.import_module(f"padlab.viz.{name}")
        assert module.__all__, name
        for fn in module.__all__:
            assert getattr(viz, fn) is getattr(module, fn) and fn in viz.__all__, (name, fn)
    assert len(set(viz.__all__)) == len(viz.__all__)


def test_no_module_over_800_lines():
    for path in MODULES + [VIZ.parent / "widgets.py"]:
        assert len(path.read_text().splitlines()) <= 800, path.name


def _imports(path: Path) -> list[tuple[str, str, int]]:
    """(module as written with leading dots, imported name or '', level) for each import in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, "", 0) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out += [(node.module or "", a.name, node.level) for a in node.names]
    return out


def _absolute(module: str, level: int) -> str:
    """An import's module as an absolute padlab.* name (from inside padlab/viz/)."""
    if level == 0:
        return module
    base = ["padlab", "viz"][: 2 - (level - 1)]
    return ".".join(base + ([module] if module else []))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_viz_imports_no_experiment_code(path):
    # Plots take numbers as data: nothing in padlab/viz reaches for the benchmark harness or its
    # readers (padlab.bench, padlab.amp, padlab.experiments.*), nor for widgets (no cycle).
    forbidden = ("padlab.bench", "padlab.amp", "padlab.experiments", "padlab.widgets", "padlab.strategies",
                 "padlab.metrics", "padlab.waste", "padlab.cost", "torch")
    for module, name, level in _imports(path):
        full = _absolute(module, level)
        target = f"{full}.{name}" if name else full
        assert not any(target == f or target.startswith(f + ".") for f in forbidden), (path.name, target)


def test_import_check_sees_a_forbidden_import(tmp_path):
    # Negative control: the walker above resolves relative imports to the names it forbids.
    bad = tmp_path / "bad.py"
    bad.write_text("from ..experiments.results import speedups\nfrom .. import bench\nimport torch\n")
    found = {(_absolute(m, lv) + ("." + n if n else "")) for m, n, lv in _imports(bad)}
    assert found == {"padlab.experiments.results.speedups", "padlab.bench", "torch"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_private_name_crosses_a_module(path):
    tree = ast.parse(path.read_text())
    private = [f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               for a in n.names if a.name.startswith("_") and a.name != "annotations"]
    reached = [f"{n.value.id}.{n.attr}" for n in ast.walk(tree) if isinstance(n, ast.Attribute)
               and isinstance(n.value, ast.Name) and n.attr.startswith("_") and not n.attr.startswith("__")
               and n.value.id not in ("self", "cls")]
    assert not private and not reached, (private, reached)


def test_loss_curves_of_chapter_06_are_far_apart():
    # The issue: fp32 and the half-precision policy drawn side by side looked the same.
    fig = viz.policy_curves({"fp32": np.linspace(2, 1, 20), "bf16-amp": np.linspace(2, 1.1, 20)})
    a, b = (ln.get_color() for ln in fig.axes[0].get_lines())
    assert _distance(a, b) >= MIN_DISTANCE
    assert (to_hex(a), to_hex(b)) == (style.POLICY_COLOURS["fp32"], style.POLICY_COLOURS["bf16-amp"])
