"""Notebook hygiene: what every stored notebook (solutions included) must be, checked on the files.

Each check is a small function that returns the problems it finds (an empty list when all is
well), tested on the real notebooks and, once, on a synthetic notebook that has the problem (the
negative control). nbval checks that the stored outputs are reproduced; these tests check what
nbval cannot: the stored file itself.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from notebook_outputs import WIDGET_TEXT, WIDGET_VIEW, stale_output_problems, tidy

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
ALL = sorted(p for p in NOTEBOOKS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
MAIN = [p for p in ALL if p.parent == NOTEBOOKS]
SOLUTIONS = [p for p in ALL if p.parent == NOTEBOOKS / "solutions"]

#: The most cells a notebook may exempt from nbval's comparison (NBVAL_IGNORE_OUTPUT or NBVAL_SKIP).
MAX_IGNORED_CELLS = 4
#: The longest function or class a solutions notebook may define for an exercise answer (lines).
MAX_SOLUTION_DEF_LINES = 20
MARKERS = ("NBVAL_IGNORE_OUTPUT", "NBVAL_RAISES_EXCEPTION", "NBVAL_SKIP", "NBVAL_CHECK_OUTPUT")
MACHINE_PATH = re.compile(r"(?<![\w.~-])(/work/|/tmp/|/root/|/home/|/Users/|/private/var/|[A-Za-z]:\\\\?Users\\)")
DOWNLOADS = re.compile(
    r"\b(from_pretrained|load_dataset|urlretrieve|urlopen|hf_hub\w*|huggingface_hub|snapshot_download|"
    r"torch\.hub|requests\.(get|post|Session)|wget|curl|pip install|git clone|tfds\.load|"
    r"download_url|gdown)\b|https?://")
BINARY_MIME = ("image/png", "image/jpeg", "image/gif", "application/pdf")


def _rel(p: Path) -> str:
    return p.relative_to(NOTEBOOKS).as_posix()


def _load(p: Path) -> dict:
    return json.loads(p.read_text(encoding="utf-8"))


def _src(cell: dict) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def _text(v) -> str:
    return "".join(v) if isinstance(v, list) else v if isinstance(v, str) else json.dumps(v)


def _code(nb: dict) -> list[tuple[int, dict]]:
    return [(i, c) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]


def _is_install_cell(cell: dict) -> bool:
    return 'find_spec("padlab") is None' in _src(cell)


def _markers(cell: dict) -> set[str]:
    """The nbval markers a cell carries (nbval honours only a comment line that is exactly one)."""
    return {line.strip()[2:] for line in _src(cell).splitlines() if line.strip() in {f"# {m}" for m in MARKERS}}


def _tree(cell: dict) -> ast.Module | None:
    lines = [l for l in _src(cell).splitlines() if not l.lstrip().startswith(("%", "!"))]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


# --- the checks ---------------------------------------------------------------------------------

def execution_problems(nb: dict) -> list[str]:
    """Executed top to bottom in one fresh kernel: counts 1, 2, 3, ... in cell order."""
    cells = [(i, c) for i, c in _code(nb) if _src(c).strip()]
    counts = [c.get("execution_count") for _, c in cells]
    problems = [f"cell {i} has no execution count (not run)" for i, c in cells if c.get("execution_count") is None]
    if not problems and counts != list(range(1, len(counts) + 1)):
        problems.append(f"execution counts {counts} are not 1..{len(counts)} in order (not run top to bottom "
                        "in a fresh kernel)")
    return problems


def _prints_at_top_level(tree: ast.Module) -> bool:
    stmts = list(tree.body)
    while stmts:
        s = stmts.pop()
        if isinstance(s, (ast.For, ast.With)):
            stmts += s.body
        elif isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and \
                isinstance(s.value.func, ast.Name) and s.value.func.id == "print":
            return True
    return False


def output_problems(nb: dict) -> list[str]:
    """Stored with outputs (not stripped) and without errors, except in cells marked to raise."""
    problems = []
    if not any(c.get("outputs") for _, c in _code(nb)):
        problems.append("no cell has outputs (stored stripped or never run)")
    for i, c in _code(nb):
        tree = _tree(c)
        if tree is not None and _prints_at_top_level(tree) and not c.get("outputs"):
            problems.append(f"cell {i} prints but has no stored output")
        for o in c.get("outputs", []):
            if o["output_type"] == "error" and "NBVAL_RAISES_EXCEPTION" not in _markers(c):
                problems.append(f"cell {i} stores an error: {o.get('ename')}: {o.get('evalue', '')[:200]}")
    return problems


def widget_state_problems(nb: dict) -> list[str]:
    """Either no widget state in the metadata, or state for every widget the outputs show (and every
    widget those reference); GitHub refuses to render a notebook with partial state."""
    views = [o["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
             for _, c in _code(nb) for o in c.get("outputs", [])
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    meta = nb.get("metadata", {})
    if "widgets" not in meta:
        return []
    state = meta["widgets"].get("application/vnd.jupyter.widget-state+json", {}).get("state")
    if not isinstance(state, dict):
        return ["metadata.widgets holds no application/vnd.jupyter.widget-state+json state"]
    problems = [f"no saved state for the widget {m} that an output shows" for m in views if m not in state]
    refs = set(re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(state)))
    problems += [f"saved widget state references the missing model {m}" for m in sorted(refs - set(state))]
    return problems


def _output_strings(nb: dict):
    for i, c in _code(nb):
        for o in c.get("outputs", []):
            if "text" in o:
                yield i, _text(o["text"])
            for mime, v in o.get("data", {}).items():
                if mime not in BINARY_MIME:
                    yield i, _text(v)
            if o["output_type"] == "error":
                yield i, "\n".join(o.get("traceback", []))
    for model in nb.get("metadata", {}).get("widgets", {}).get(
            "application/vnd.jupyter.widget-state+json", {}).get("state", {}).values():
        yield "widget state", json.dumps(model.get("state", {}))


def path_problems(nb: dict) -> list[str]:
    """No output (or code) shows a path of the machine that made it."""
    problems = [f"cell {i} output shows {m.group(0)!r}: ...{s[max(m.start() - 40, 0):m.end() + 40]!r}..."
                for i, s in _output_strings(nb) for m in [MACHINE_PATH.search(s)] if m]
    problems += [f"cell {i} code names {m.group(0)!r}" for i, c in _code(nb)
                 for m in [MACHINE_PATH.search(_src(c))] if m]
    return problems


def download_problems(nb: dict) -> list[str]:
    """Nothing fetches data, weights or packages at run time (the Colab install cell excepted)."""
    return [f"cell {i} downloads: {m.group(0)!r}" for i, c in _code(nb) if not _is_install_cell(c)
            for m in [DOWNLOADS.search(_src(c))] if m]


def section_problems(nb: dict, *, solutions: bool) -> list[str]:
    """A chapter ends with "## Summary" and "## Exercises" (its solutions notebook needs neither)."""
    if solutions:
        return []
    md = "\n".join(_src(c) for c in nb["cells"] if c["cell_type"] == "markdown")
    return [f'no "## {h}" heading' for h in ("Summary", "Exercises")
            if not re.search(rf"^##\s+{h}\s*$", md, re.MULTILINE)]


#: The first line of a code cell that may define a mechanism from scratch, for teaching (issue 12).
FROM_SCRATCH = "# From scratch:"


def _is_from_scratch(cell: dict) -> bool:
    lines = [l for l in _src(cell).splitlines() if l.strip()]
    return bool(lines) and lines[0].strip().startswith(FROM_SCRATCH)


def _padlab_names(nb: dict) -> set[str]:
    """Names a notebook binds to padlab: ``import padlab[.x] [as y]`` and ``from padlab[.x] import ...``."""
    names = set()
    for _, c in _code(nb):
        tree = _tree(c)
        for node in ast.walk(tree) if tree is not None else ():
            if isinstance(node, ast.Import):
                names |= {(a.asname or a.name.split(".")[0]) for a in node.names
                          if a.name == "padlab" or a.name.startswith("padlab.")}
            elif isinstance(node, ast.ImportFrom) and node.module and \
                    (node.module == "padlab" or node.module.startswith("padlab.")):
                names |= {a.asname or a.name for a in node.names}
    return names


def _called_roots(tree: ast.Module) -> set[str]:
    """The root name of every call in a cell: ``f(x)`` -> f, ``viz.plot(x)`` -> viz, ``a.b.c()`` -> a."""
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            while isinstance(f, ast.Attribute):
                f = f.value
            if isinstance(f, ast.Name):
                roots.add(f.id)
    return roots


def mechanism_problems(nb: dict, *, solutions: bool) -> list[str]:
    """Notebooks define no mechanism, except from scratch for teaching: a ``def`` or ``class`` is
    allowed in a code cell whose first line starts with ``# From scratch:``, and only if a later
    code cell calls both that name and a name imported from padlab (the cell that checks the
    from-scratch version against padlab's tested one). A solution may define a small one."""
    problems = []
    padlab = _padlab_names(nb)
    cells = _code(nb)
    trees = {i: _tree(c) for i, c in cells}
    for i, c in cells:
        tree = trees[i]
        if tree is None:
            problems.append(f"cell {i} is not valid Python")
            continue
        scratch = _is_from_scratch(c) and not solutions
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                kind = "class" if isinstance(node, ast.ClassDef) else "def"
                size = node.end_lineno - node.lineno + 1
                if scratch:
                    if id(node) not in top:
                        continue                    # a helper inside a from-scratch definition
                    checked = any(node.name in roots and roots & padlab for j, t in trees.items()
                                  if j > i and t is not None for roots in [_called_roots(t)])
                    if not checked:
                        problems.append(f"cell {i} defines {kind} {node.name} from scratch, but no later cell "
                                        f"calls both {node.name} and padlab (check it against padlab's version)")
                elif not solutions:
                    problems.append(f"cell {i} defines {kind} {node.name} (mechanisms belong in padlab; a "
                                    f"teaching version goes in a cell starting {FROM_SCRATCH!r})")
                elif size > MAX_SOLUTION_DEF_LINES:
                    problems.append(f"cell {i} defines {kind} {node.name} of {size} lines "
                                    f"(an exercise answer is at most {MAX_SOLUTION_DEF_LINES})")
    return problems


def marker_problems(nb: dict) -> list[str]:
    """nbval markers on a line of their own; NBVAL_IGNORE_OUTPUT first, a "# Why:" line after it;
    few cells exempt from comparison."""
    problems, ignored = [], 0
    for i, c in _code(nb):
        lines = _src(c).splitlines()
        for n, line in enumerate(lines):
            if "NBVAL_" in line and line.strip() not in {f"# {m}" for m in MARKERS}:
                problems.append(f"cell {i} line {n + 1} {line.strip()!r}: nbval honours only an exact "
                                f"'# NBVAL_...' line (put the reason on the next line as '# Why: ...')")
        marks = _markers(c)
        tags = [t for t in c.get("metadata", {}).get("tags", []) if t.startswith(("nbval", "raises-exception"))]
        if tags:    # a tag hides the exemption from readers and skips the reason
            problems.append(f"cell {i} has nbval tags {tags} in its metadata; use the '# NBVAL_...' comment line")
        if "NBVAL_IGNORE_OUTPUT" in marks:
            if lines[0].strip() != "# NBVAL_IGNORE_OUTPUT":
                problems.append(f"cell {i}: # NBVAL_IGNORE_OUTPUT is not the first line")
            k = [l.strip() for l in lines].index("# NBVAL_IGNORE_OUTPUT")
            if k + 1 >= len(lines) or not lines[k + 1].strip().startswith("# Why:"):
                problems.append(f"cell {i}: # NBVAL_IGNORE_OUTPUT is not followed by a '# Why: ...' line")
        ignored += bool(marks & {"NBVAL_IGNORE_OUTPUT", "NBVAL_SKIP"})
    if ignored > MAX_IGNORED_CELLS:
        problems.append(f"{ignored} cells are exempt from nbval's comparison (at most {MAX_IGNORED_CELLS})")
    return problems


def kernel_problems(nb: dict) -> list[str]:
    ks = nb.get("metadata", {}).get("kernelspec", {})
    return [] if (ks.get("name"), ks.get("display_name")) == ("python3", "Python 3") else \
        [f"kernelspec {ks} is not python3 / 'Python 3'"]


# --- on the real notebooks -------------------------------------------------------------------------

@pytest.mark.parametrize("path", ALL, ids=_rel)
@pytest.mark.parametrize("check", [execution_problems, output_problems, widget_state_problems, path_problems,
                                   download_problems, marker_problems, kernel_problems, stale_output_problems],
                         ids=lambda f: f.__name__.removesuffix("_problems"))
def test_notebook(check, path):
    assert check(_load(path)) == []


@pytest.mark.parametrize("path", ALL, ids=_rel)
@pytest.mark.parametrize("check", [section_problems, mechanism_problems],
                         ids=lambda f: f.__name__.removesuffix("_problems"))
def test_chapter_or_solutions(check, path):
    assert check(_load(path), solutions=path in SOLUTIONS) == []


@pytest.mark.parametrize("path", MAIN, ids=_rel)
def test_every_chapter_has_its_solutions(path):
    assert (NOTEBOOKS / "solutions" / path.name).exists(), f"notebooks/solutions/{path.name} is missing"


@pytest.mark.parametrize("path", SOLUTIONS, ids=_rel)
def test_every_solutions_notebook_has_its_chapter(path):
    assert (NOTEBOOKS / path.name).exists(), f"notebooks/{path.name} is missing"


# --- negative controls: each check finds the problem it is for ----------------------------------

def _cell(src: str, count=None, outputs=(), kind="code") -> dict:
    c = {"cell_type": kind, "metadata": {}, "source": src}
    if kind == "code":
        c |= {"execution_count": count, "outputs": list(outputs)}
    return c


def _stream(text: str) -> dict:
    return {"output_type": "stream", "name": "stdout", "text": text}


def _nb(*cells, metadata=None) -> dict:
    return {"cells": list(cells), "metadata": metadata or {"kernelspec": {"name": "python3", "display_name": "Python 3"}}}


def test_checks_pass_a_clean_notebook():
    nb = _nb(_cell("# T", kind="markdown"), _cell("x = 1\nprint(x)", 1, [_stream("1\n")]),
             _cell("# NBVAL_IGNORE_OUTPUT\n# Why: timings.\nprint(2)", 2, [_stream("2\n")]),
             _cell("## Summary\n- a\n\n## Exercises\n1. b", kind="markdown"))
    for check in (execution_problems, output_problems, widget_state_problems, path_problems,
                  download_problems, marker_problems, kernel_problems):
        assert check(nb) == [], check.__name__
    assert section_problems(nb, solutions=False) == mechanism_problems(nb, solutions=False) == []


def test_execution_check():
    assert execution_problems(_nb(_cell("a", 1), _cell("b", None))) == ["cell 1 has no execution count (not run)"]
    assert "not 1..2 in order" in execution_problems(_nb(_cell("a", 2), _cell("b", 1)))[0]
    assert "not 1..2 in order" in execution_problems(_nb(_cell("a", 1), _cell("b", 3)))[0]   # a cell run twice
    assert execution_problems(_nb(_cell("a", 1), _cell("", None), _cell("b", 2))) == []     # empty cells aside


def test_output_check():
    err = {"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": []}
    assert output_problems(_nb(_cell("print(1)", 1))) == ["no cell has outputs (stored stripped or never run)",
                                                          "cell 0 prints but has no stored output"]
    assert output_problems(_nb(_cell("f()", 1, [err]))) == ["cell 0 stores an error: ValueError: bad"]
    assert output_problems(_nb(_cell("# NBVAL_RAISES_EXCEPTION\nf()", 1, [err]))) == []


def test_widget_state_check():
    view = {"output_type": "display_data", "data": {
        "application/vnd.jupyter.widget-view+json": {"model_id": "aa11", "version_major": 2, "version_minor": 0}}}
    nb = _nb(_cell("w", 1, [view]))
    assert widget_state_problems(nb) == []                                  # no state at all: fine
    state = {"aa11": {"state": {"children": ["IPY_MODEL_bb22"]}}, "bb22": {"state": {}}}
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": state}}
    assert widget_state_problems(nb) == []                                  # complete
    del state["bb22"]
    assert widget_state_problems(nb) == ["saved widget state references the missing model bb22"]
    nb["metadata"]["widgets"]["application/vnd.jupyter.widget-state+json"]["state"] = {}
    assert widget_state_problems(nb) == ["no saved state for the widget aa11 that an output shows"]


def test_path_check():
    nb = _nb(_cell("print(p)", 1, [_stream("saved to /tmp/run/x.json\n")]),
             _cell("open('/work/main/data/x')", 2),
             _cell("w", 3, [{"output_type": "error", "ename": "E", "evalue": "",
                             "traceback": ["File /home/me/padlab/x.py, line 3"]}]))
    assert [p.split(" ")[:4] for p in path_problems(nb)] == [
        ["cell", "0", "output", "shows"], ["cell", "2", "output", "shows"], ["cell", "1", "code", "names"]]
    assert path_problems(_nb(_cell("print(p)", 1, [_stream("data/corpora/x, ~/tmp/ and a/tmp/b\n")]))) == []


def test_download_check():
    install = _cell('import importlib.util\nif importlib.util.find_spec("padlab") is None:\n'
                    '    subprocess.run(["git", "clone", "https://github.com/x/padlab"])', 1)
    assert download_problems(_nb(install)) == []
    for src in ("m = AutoModel.from_pretrained('bert-base-uncased')", "ds = load_dataset('imdb')",
                "urllib.request.urlretrieve(u, f)", "r = requests.get(u)", "!wget http://x/y",
                "from huggingface_hub import hf_hub_download", "torch.hub.load('x', 'y')"):
        assert download_problems(_nb(_cell(src, 1))), src


def test_section_check():
    nb = _nb(_cell("## Summary\nx", kind="markdown"), _cell("### Exercises", kind="markdown"))
    assert section_problems(nb, solutions=False) == ['no "## Exercises" heading']
    assert section_problems(nb, solutions=True) == []


def test_mechanism_check():
    nb = _nb(_cell("def collate(batch):\n    return batch", 1), _cell("f = lambda x: x + 1\nclass P: pass", 2))
    assert [p.split(" (")[0] for p in mechanism_problems(nb, solutions=False)] == [
        "cell 0 defines def collate", "cell 1 defines class P"]
    assert "mechanisms belong in padlab" in mechanism_problems(nb, solutions=False)[0]
    assert mechanism_problems(nb, solutions=True) == []
    long = "def answer():\n" + "    x = 1\n" * MAX_SOLUTION_DEF_LINES
    assert "lines" in mechanism_problems(_nb(_cell(long, 1)), solutions=True)[0]


_SCRATCH = "# From scratch: dynamic padding in a dozen lines\ndef pad(rows):\n    def width(r):\n        return len(r)\n" \
           "    return [r + [0] * (max(map(width, rows)) - len(r)) for r in rows]"


def test_from_scratch_def_checked_against_padlab_passes():
    nb = _nb(_cell("from padlab.padding import pad_batch\nimport padlab.viz as viz", 1), _cell(_SCRATCH, 2),
             _cell("rows = [[1, 2], [3]]\nprint(pad(rows) == pad_batch(rows).tolist())", 3))
    assert mechanism_problems(nb, solutions=False) == []
    # the padlab call may be an attribute of an imported padlab module
    nb["cells"][2] = _cell("print(pad([[1]]), viz.tokens_figure([[1]]))", 3)
    assert mechanism_problems(nb, solutions=False) == []


def test_from_scratch_def_never_checked_is_flagged():
    unchecked = _nb(_cell("from padlab.padding import pad_batch", 1), _cell(_SCRATCH, 2), _cell("print(pad([[1]]))", 3))
    assert mechanism_problems(unchecked, solutions=False) == [
        "cell 1 defines def pad from scratch, but no later cell calls both pad and padlab "
        "(check it against padlab's version)"]
    # a check in an EARLIER cell does not count, nor a padlab call in another cell than the from-scratch call
    earlier = _nb(_cell("from padlab.padding import pad_batch\npad_batch([[1]])", 1), _cell(_SCRATCH, 2),
                  _cell("pad([[1]])", 3), _cell("pad_batch([[1]])", 4))
    assert len(mechanism_problems(earlier, solutions=False)) == 1
    # a name that only shadows padlab's is not padlab
    fake = _nb(_cell("pad_batch = list", 1), _cell(_SCRATCH, 2), _cell("pad([[1]]) == pad_batch([[1]])", 3))
    assert len(mechanism_problems(fake, solutions=False)) == 1


def test_def_outside_a_from_scratch_cell_is_flagged_even_when_checked():
    body = _SCRATCH.split("\n", 1)[1]
    for src in (body, "# from scratch too late\n" + body, body + "\n# From scratch: not the first line"):
        nb = _nb(_cell("from padlab.padding import pad_batch", 1), _cell(src, 2),
                 _cell("pad([[1]]) == pad_batch([[1]])", 3))
        assert mechanism_problems(nb, solutions=False) == [
            f"cell 1 defines def {name} (mechanisms belong in padlab; a teaching version goes in a cell starting "
            f"{FROM_SCRATCH!r})" for name in ("pad", "width")]


def test_marker_check():
    assert marker_problems(_nb(_cell("# NBVAL_IGNORE_OUTPUT: timings differ\nprint(1)", 1)))[0].startswith(
        "cell 0 line 1 '# NBVAL_IGNORE_OUTPUT: timings differ': nbval honours only")
    assert marker_problems(_nb(_cell("x = 1\n# NBVAL_IGNORE_OUTPUT\n# Why: t", 1))) == [
        "cell 0: # NBVAL_IGNORE_OUTPUT is not the first line"]
    assert marker_problems(_nb(_cell("# NBVAL_IGNORE_OUTPUT\nprint(1)", 1))) == [
        "cell 0: # NBVAL_IGNORE_OUTPUT is not followed by a '# Why: ...' line"]
    tagged = _cell("# NBVAL_IGNORE_OUTPUT\n# Why: t", 1)
    tagged["metadata"]["tags"] = ["nbval-ignore-output"]
    assert marker_problems(_nb(tagged)) == ["cell 0 has nbval tags ['nbval-ignore-output'] in its metadata; "
                                            "use the '# NBVAL_...' comment line"]
    many = [_cell("# NBVAL_IGNORE_OUTPUT\n# Why: t", i) for i in range(1, MAX_IGNORED_CELLS + 2)]
    assert marker_problems(_nb(*many)) == [f"{MAX_IGNORED_CELLS + 1} cells are exempt from nbval's comparison "
                                           f"(at most {MAX_IGNORED_CELLS})"]


def test_stale_output_check():
    widget = {"output_type": "display_data", "data": {
        WIDGET_VIEW: {"model_id": "aa11", "version_major": 2, "version_minor": 0},
        "text/plain": "VBox(children=(HBox(children=(Dropdown(description='corpus', options=('a', 'b'), value='a…"}}
    nb = _nb(_cell("w", 1, [widget]), _cell("train()", 2, [_stream("fp32:   0%|          | 0/100 [00:00<?, ?it/s]")]))
    problems = stale_output_problems(nb)
    assert len(problems) == 2 and "widget repr" in problems[0] and "progress bar" in problems[1], problems
    assert tidy(nb) == 1 and widget["data"]["text/plain"] == WIDGET_TEXT and tidy(nb) == 0
    assert stale_output_problems(nb) == [problems[1]]
    assert stale_output_problems(_nb(_cell("print(x)", 1, [_stream("efficiency 45.0% | 78.1%\n")]))) == []


def test_sanitize_maps_a_fresh_widget_repr_to_the_stored_text():
    cfg = (REPO / "tests" / "nbval_sanitize.cfg").read_text(encoding="utf-8")
    rules = re.findall(r"^regex: (.*)$\n^replace: (.*)$", cfg, flags=re.MULTILINE)    # as nbval reads it
    fresh = "VBox(children=(HBox(children=(Dropdown(description='corpus', index=1, options=('w',\n 'f'), value='…"
    for regex, replace in rules:
        fresh = re.sub(regex, replace, fresh)
    assert fresh == WIDGET_TEXT


def test_kernel_check():
    assert kernel_problems(_nb(metadata={"kernelspec": {"name": "venv", "display_name": "venv"}}))


# --- environment.yml mirrors pyproject.toml ------------------------------------------------------

CONDA_TO_PYPI = {"pytorch": "torch"}


def _effective(specs: set[str]) -> set[str]:
    """A pin (==v) that satisfies every other specifier is all that matters."""
    pins = [s for s in specs if s.startswith("==")]
    if len(pins) == 1 and all(Requirement(f"x{s}").specifier.contains(pins[0][2:], prereleases=True) for s in specs):
        return set(pins)
    return specs


def _collect(lines: list[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in lines:
        req = Requirement(re.sub(r"(?<![=<>!~])=(?!=)", "==", line))     # conda's "name=1.2" is a pin
        name = canonicalize_name(CONDA_TO_PYPI.get(req.name, req.name))
        out.setdefault(name, set()).update(str(s) for s in req.specifier)
    return {k: _effective(v) for k, v in sorted(out.items())}


def environment_yml(text: str) -> tuple[list[str], list[str]]:
    """(conda dependencies, pip dependencies) of an environment.yml (no YAML library needed)."""
    conda, pip, in_deps, in_pip = [], [], False, False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            in_deps, in_pip = line.startswith("dependencies:"), False
            continue
        item = line.strip().removeprefix("- ").strip()
        if not in_deps:
            continue
        if item == "pip:":
            in_pip, pip_indent = True, indent
        elif in_pip and indent > pip_indent:
            pip.append(item)
        else:
            in_pip = False
            conda.append(item)
    return conda, pip


def test_environment_yml_parser():
    conda, pip = environment_yml("name: x\nchannels:\n  - conda-forge\ndependencies:\n  - python>=3.10\n"
                                 "  # tests\n  - pytorch=2.13.0  # pinned\n  - pip\n  - pip:\n      - -e .\n")
    assert conda == ["python>=3.10", "pytorch=2.13.0", "pip"] and pip == ["-e ."]
    assert _collect(["pytorch=2.13.0"]) == _collect(["torch>=2.4", "torch==2.13.0"]) == {"torch": {"==2.13.0"}}
    assert _collect(["torch>=2.4"]) != _collect(["torch>=2.4", "torch==2.13.0"])


def test_environment_yml_lists_what_pyproject_lists():
    try:
        import tomllib
    except ModuleNotFoundError:     # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    want = _collect(project["dependencies"] + extras["notebooks"] + extras["test"])
    conda, pip = environment_yml((REPO / "environment.yml").read_text(encoding="utf-8"))
    assert pip == ["-e ."], "environment.yml ends with pip: [-e .] (padlab itself, editable)"
    python = [c for c in conda if Requirement(c).name == "python"]
    assert [str(Requirement(c).specifier) for c in python] == [project["requires-python"]]
    have = _collect([c for c in conda if Requirement(re.sub(r"(?<![=<>!~])=(?!=)", "==", c)).name not in ("python", "pip")])
    diff = {n: (want.get(n), have.get(n)) for n in sorted(set(want) | set(have)) if want.get(n) != have.get(n)}
    assert not diff, f"pyproject.toml (core + notebooks + test) against environment.yml: {diff}"
