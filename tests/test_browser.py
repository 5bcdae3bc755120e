"""The widgets as a learner meets them: JupyterLab in headless Chromium, driven by Playwright.

For every notebook that calls a ``*_widget`` function of :mod:`padlab.widgets`, the test opens the
notebook in a JupyterLab started for the test, clears the stored outputs, runs all cells, and then,
for each widget: moves every slider with the keyboard and changes every dropdown, reads the control
values back from the page, and checks that the readout the page shows is what
``padlab.widgets.READOUTS[<widget function>]`` computes in this process for those values. A widget
that shows "Error displaying widget", or never appears, fails. One screenshot per notebook goes to
``test-output/``.

Where Chromium or Playwright is missing the browser tests skip, unless ``PADLAB_REQUIRE_BROWSER=1``
(CI sets it), which makes a missing browser a failure. Playwright's own browser download is not
used: the tests drive the system Chromium (``PADLAB_CHROMIUM`` overrides its path).

JupyterLab serves a temporary copy of ``notebooks/`` with its own config, runtime, data, settings
and workspace folders, and autosave off, so the repository is never written to (except
``test-output/``).
"""
from __future__ import annotations

import ast
import html.parser
import inspect
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from padlab import widgets

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
OUTPUT = REPO / "test-output"
CHROMIUM = Path(os.environ.get("PADLAB_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
RUN_ALL_TIMEOUT_S = 240      # one notebook's cells in the browser's kernel
#: By default only the cells the widgets need run in the browser (nbval runs every cell of every
#: notebook already); PADLAB_BROWSER_RUN_ALL=1 runs all cells (Run > Run All Cells) instead.
RUN_ALL = os.environ.get("PADLAB_BROWSER_RUN_ALL") == "1"
READOUT_TIMEOUT_S = 60       # one control change -> kernel -> readout on the page


# --- which notebooks have widgets (read at collection time) ------------------------------------

def _call_name(node: ast.Call) -> str | None:
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None


def widget_calls(nb: dict) -> list[tuple[int, str, dict]]:
    """``(cell index, widget function name, literal keyword arguments)`` for every call of a
    ``*_widget`` function in the notebook's code cells, in order."""
    calls = []
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        tree = _cell_tree(cell)
        if tree is None:
            continue
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and (name := _call_name(node)) and name.endswith("_widget"):
                kwargs = {}
                for kw in node.keywords:
                    if kw.arg is not None:
                        try:
                            kwargs[kw.arg] = ast.literal_eval(kw.value)
                        except ValueError:
                            pass    # not a literal: the widget's default is assumed
                found.append((node.lineno, node.col_offset, name, kwargs))
        calls += [(i, name, kwargs) for *_, name, kwargs in sorted(found)]
    return calls


def _cell_tree(cell: dict) -> ast.Module | None:
    src = "".join(cell["source"])
    try:
        return ast.parse("\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!"))))
    except SyntaxError:
        return None


def _base_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _names(tree: ast.Module) -> tuple[set[str], set[str], set[str]]:
    """(names a cell imports, names it binds or changes, names it reads)."""
    imported, changed, read = set(), set(), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imported |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            changed.add(node.name)
        elif isinstance(node, ast.Name):
            (read if isinstance(node.ctx, ast.Load) else changed).add(node.id)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Delete)):
            # x[k] = ..., x.attr += ...: the cell changes x.
            for t in getattr(node, "targets", None) or [node.target]:
                if isinstance(t, (ast.Attribute, ast.Subscript)) and (b := _base_name(t)):
                    changed.add(b)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) \
                and isinstance(node.value.func, ast.Attribute) and (b := _base_name(node.value.func.value)):
            changed.add(b)      # x.append(...), x.update(...) as a statement: may change x
    return imported, changed, read


def cells_to_run(nb: dict) -> list[int]:
    """The code cells the notebook's widget cells need: the first two code cells (the install and
    set-up cells), the widget cells, and, transitively, every earlier cell that imports, binds or
    changes a name a needed cell reads (modules count as bound once, by their import)."""
    code = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
    info = {i: _names(t) if (t := _cell_tree(nb["cells"][i])) else (set(), set(), set()) for i in code}
    needed = set(code[:2]) | {cell for cell, _, _ in widget_calls(nb)}
    todo = sorted(needed)
    while todo:
        i = todo.pop()
        for j in code:
            if j >= i or j in needed:
                continue
            imported, changed, _ = info[j]
            modules = {n for k in code if k < i for n in info[k][0]}
            if info[i][2] & (imported | (changed - modules)):
                needed.add(j)
                todo.append(j)
    return sorted(needed)


def _notebooks() -> list[Path]:
    return sorted(p for p in NOTEBOOKS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


WIDGET_NOTEBOOKS = [p for p in _notebooks() if widget_calls(_load(p))]


def _id(path: Path) -> str:
    return path.relative_to(NOTEBOOKS).as_posix()


# --- readout text as the page shows it ---------------------------------------------------------

class _Text(html.parser.HTMLParser):
    BLOCK = {"br", "p", "div", "li", "tr", "td", "th", "table", "ul", "ol", "h1", "h2", "h3", "h4", "pre"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in self.BLOCK:
            self.parts.append(" ")

    def handle_endtag(self, tag):
        self.handle_starttag(tag, [])

    def handle_data(self, data):
        self.parts.append(data)


def html_to_text(value: str) -> str:
    """The text a browser shows for an HTML readout, whitespace collapsed (as the page is read)."""
    p = _Text()
    p.feed(value)
    p.close()
    return " ".join("".join(p.parts).split())


def parse_control(text: str):
    """A control value as the page shows it -> int, float, bool or the string itself."""
    t = text.strip()
    if re.fullmatch(r"[+-]?\d+", t):
        return int(t)
    if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?", t):
        return float(t)
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    return t


def expected_readout(name: str, controls: dict, kwargs: dict) -> str:
    """What padlab computes for the widget ``name`` at these control values, as page text."""
    fn = getattr(widgets, name)
    if name not in widgets.READOUTS:
        pytest.fail(f"padlab.widgets.READOUTS has no entry for {name}: the test cannot compute its readout",
                    pytrace=False)
    options = {k: v for k, v in kwargs.items()
               if inspect.signature(fn).parameters.get(k, None) is not None
               and inspect.signature(fn).parameters[k].kind is inspect.Parameter.KEYWORD_ONLY}
    try:
        return html_to_text(widgets.READOUTS[name](controls, **options))
    except Exception as e:
        pytest.fail(f"padlab.widgets.READOUTS[{name!r}] fails for the controls the page shows, {controls}: "
                    f"{type(e).__name__}: {e}", pytrace=False)


# --- checks that need no browser ---------------------------------------------------------------

def _widget_functions() -> list[str]:
    return sorted(n for n in dir(widgets) if n.endswith("_widget") and callable(getattr(widgets, n)))


def test_every_widget_function_has_a_readout():
    missing = [n for n in _widget_functions() if n not in widgets.READOUTS]
    assert not missing, f"add padlab.widgets.READOUTS entries for {missing} (the browser test recomputes them)"
    assert set(widgets.READOUTS) <= set(_widget_functions()), "READOUTS names a function widgets lacks"


@pytest.mark.parametrize("path", _notebooks(), ids=_id)
def test_notebook_widget_calls_are_padlab_widgets(path):
    for cell, name, _ in widget_calls(_load(path)):
        assert name in _widget_functions(), f"cell {cell} calls {name}, which padlab.widgets does not define"


def test_readout_text_helpers():
    assert html_to_text("<b>fortunes</b>, max_length 128:<br>efficiency&nbsp;32.2%") == "fortunes, max_length 128: efficiency 32.2%"
    assert html_to_text("<table><tr><td>a</td><td>1.5</td></tr></table>") == "a 1.5"
    assert [parse_control(t) for t in ("128", " -3 ", "0.50", "1e-3", "fortunes", "True", "8x")] == \
        [128, -3, 0.5, 0.001, "fortunes", True, "8x"]


def test_widget_calls_are_found_in_cell_order():
    nb = {"cells": [{"cell_type": "markdown", "source": ["fixed_padding_widget()"]},
                    {"cell_type": "code", "source": ["%matplotlib inline\n",
                                                     "w = widgets.fixed_padding_widget('fortunes', 64, batch_size=16)\n",
                                                     "dynamic_padding_widget(max_length=n)"]}]}
    assert widget_calls(nb) == [(1, "fixed_padding_widget", {"batch_size": 16}),
                                (1, "dynamic_padding_widget", {})]


def _nb(*sources: str) -> dict:
    return {"cells": [{"cell_type": "code", "source": [s]} for s in sources]}


def test_cells_to_run_is_what_the_widget_needs():
    nb = _nb("# install", "import padlab\ninfo = padlab.env.setup()",
             "import numpy as np\nfrom padlab import widgets, viz",
             "slow = np.arange(10**9).sum()",                          # not needed: nothing reads it
             "grid = list(widgets.MAX_LENGTH_GRID)",
             "grid.append(1024)",                                     # changes grid
             "grid[0] = 4",                                           # changes grid
             "np.random.seed(1); viz.plot(slow)",                     # reads np/viz, binds nothing needed
             "widgets.fixed_padding_widget('fortunes', grid[1])",
             "after = 1")
    assert cells_to_run(nb) == [0, 1, 2, 4, 5, 6, 8]
    # Negative control: read everything and every cell before the widget is needed.
    nb["cells"][8]["source"] = ["widgets.fixed_padding_widget('fortunes', grid[1] + slow + info)"]
    assert cells_to_run(nb) == [0, 1, 2, 3, 4, 5, 6, 8]


def test_expected_readout_matches_the_widget_in_process():
    # The in-process widget, set to a value, shows what expected_readout computes for that value,
    # with the call's keyword-only options passed on (the negative control drops them).
    w = widgets.dynamic_padding_widget("fortunes", 32, max_length=128)
    w.children[0].children[1].value = 64
    shown = html_to_text(w.children[1].value)
    assert shown == expected_readout("dynamic_padding_widget", {"corpus": "fortunes", "batch size": 64},
                                     {"max_length": 128, "corpus": "wordnet"})
    assert shown != expected_readout("dynamic_padding_widget", {"corpus": "fortunes", "batch size": 64}, {})


# --- JupyterLab + Chromium -----------------------------------------------------------------------

def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (it is in the 'test' extra)"
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        return "jupyterlab is not installed (it is in the 'test' extra)"
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or set PADLAB_CHROMIUM)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(folder: Path) -> None:
    # Autosave off: the notebooks are run, never saved. No windowing: every cell stays in the DOM.
    for plugin, value in {"docmanager-extension/plugin": {"autosave": False},
                          "notebook-extension/tracker": {"windowingMode": "none"},
                          "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False}}.items():
        path = folder / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))


class Lab:
    """A JupyterLab server on 127.0.0.1 serving a temporary copy of the notebooks."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "root"
        shutil.copytree(NOTEBOOKS, self.root / "notebooks",
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        (self.root / "data").symlink_to(REPO / "data", target_is_directory=True)
        dirs = {k: tmp / k for k in ("config", "runtime", "data", "settings", "workspaces", "ipython")}
        for d in dirs.values():
            d.mkdir()
        _settings(dirs["settings"])
        self.port, self.token = _free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(dirs["config"]), JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
                   JUPYTER_DATA_DIR=str(dirs["data"]), JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
                   JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]), IPYTHONDIR=str(dirs["ipython"]),
                   JUPYTER_PLATFORM_DIRS="1")
        OUTPUT.mkdir(exist_ok=True)
        self.log = open(OUTPUT / "jupyterlab.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
             f"--port={self.port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={self.root}", "--LabApp.extension_manager=readonly"],
            cwd=self.root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}; see test-output/jupyterlab.log")
            try:
                self.api("GET", "/api/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError("JupyterLab did not answer within 90 s; see test-output/jupyterlab.log")
                time.sleep(0.3)

    def api(self, method: str, path: str):
        req = urllib.request.Request(self.url + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        for s in self.api("GET", "/api/sessions"):
            self.api("DELETE", f"/api/sessions/{s['id']}")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """(JupyterLab, a Chromium browser context), or a skip/fail where no browser is installed."""
    missing = _missing_browser()
    if missing:
        if os.environ.get("PADLAB_REQUIRE_BROWSER") == "1":
            pytest.fail(f"PADLAB_REQUIRE_BROWSER=1 but {missing}", pytrace=False)
        pytest.skip(f"browser tests need Chromium and Playwright: {missing}")
    from playwright.sync_api import sync_playwright

    lab = Lab(tmp_path_factory.mktemp("jupyterlab"))
    try:
        with sync_playwright() as pw:
            chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            context = chromium.new_context(viewport={"width": 1400, "height": 1000})
            try:
                yield lab, context
            finally:
                context.close()
                chromium.close()
    finally:
        lab.close()


# JavaScript run in the page. Controls are keyed by their description (the label the page shows).
_JS_ROOTS = """() => {
  const roots = [...document.querySelectorAll('.jp-NotebookPanel .jp-Notebook-cell')][CELL]
      .querySelectorAll('.jp-OutputArea-output .jupyter-widgets');
  return [...roots].filter(e => !e.parentElement.closest('.jupyter-widgets')).length;
}"""

_JS_STATE = """([cell, k]) => {
  const out = [...document.querySelectorAll('.jp-NotebookPanel .jp-Notebook-cell')][cell];
  const root = [...out.querySelectorAll('.jp-OutputArea-output .jupyter-widgets')]
      .filter(e => !e.parentElement.closest('.jupyter-widgets'))[k];
  const label = e => (e.querySelector(':scope > .widget-label') || {}).textContent || '';
  const controls = {};
  for (const e of root.querySelectorAll('.widget-slider')) {
    controls[label(e)] = e.querySelector('.widget-readout').textContent; }
  for (const e of root.querySelectorAll('.widget-dropdown')) {
    const s = e.querySelector('select'); controls[label(e)] = s.selectedIndex < 0 ? '' : s.options[s.selectedIndex].text; }
  for (const e of root.querySelectorAll('.widget-toggle-buttons')) {
    const b = e.querySelector('button.mod-active'); controls[label(e)] = b ? b.textContent : ''; }
  for (const e of root.querySelectorAll('.widget-radio-box')) {
    const b = e.querySelector('input:checked'); controls[label(e.parentElement)] = b ? b.parentElement.textContent : ''; }
  for (const e of root.querySelectorAll('.widget-checkbox')) {
    controls[(e.querySelector('.widget-label-basic') || e).textContent.trim()] = String(e.querySelector('input').checked); }
  for (const e of root.querySelectorAll('.widget-text, .widget-inline-hbox:has(> input[type=number])')) {
    if (e.closest('.widget-slider')) continue;
    const i = e.querySelector('input'); if (i) controls[label(e)] = i.value; }
  // ipywidgets draws spaces in option labels as no-break spaces; the labels themselves have spaces.
  for (const d in controls) controls[d] = controls[d].replace(/\u00a0/g, ' ');
  const r = root.querySelector('.padlab-readout');
  const text = r ? (r.querySelector('.widget-html-content') || r).innerText.replace(/\\s+/g, ' ').trim() : null;
  return {controls, readout: text, sliders: root.querySelectorAll('.widget-slider').length,
          dropdowns: root.querySelectorAll('.widget-dropdown select').length};
}"""

_JS_PROGRESS = """(run) => {
  const errors = [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')];
  if (errors.length) return 'error: ' + errors[0].innerText.slice(0, 3000);
  const cells = [...document.querySelectorAll('.jp-NotebookPanel .jp-Notebook-cell')];
  const prompts = (run ? run.map(i => cells[i]) : cells.filter(c => c.classList.contains('jp-CodeCell')))
      .map(c => c.querySelector('.jp-InputPrompt').textContent.trim());
  const status = (document.querySelector('.jp-Notebook-ExecutionIndicator') || {dataset: {}}).dataset.status;
  if (status === 'dead' || status === 'terminating') return 'error: the kernel died';
  const done = prompts.length && prompts.every(t => /^\\[\\d+\\]:$/.test(t)) && status === 'idle';
  return (done ? 'done' : 'running') + `: kernel ${status}, prompts ${prompts.join(' ')}`;
}"""


def _menu(page, menu: str, command: str) -> None:
    page.locator(".lm-MenuBar-item", has=page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(f"^{menu}$"))).click()
    page.locator(f'.lm-Menu-item[data-command="{command}"]').click()


def _run_cell(page, i: int) -> None:
    """Select cell ``i`` (click its prompt) and run it with Ctrl+Enter."""
    page.locator(".jp-NotebookPanel .jp-Notebook-cell").nth(i).locator(".jp-InputPrompt").first.click()
    page.keyboard.press("Control+Enter")


def _wait_readout(page, cell: int, k: int, expected: str, what: str) -> None:
    """Wait until the widget's readout shows ``expected``; fail with what it shows instead."""
    try:
        page.wait_for_function(
            f"([cell, k, want]) => ({_JS_STATE})([cell, k]).readout === want",
            arg=[cell, k, expected], timeout=READOUT_TIMEOUT_S * 1000, polling=200)
    except Exception:
        shown = page.evaluate(_JS_STATE, [cell, k])
        pytest.fail(f"{what}: the readout shows {shown['readout']!r} for controls {shown['controls']}, "
                    f"padlab computes {expected!r}", pytrace=False)


@pytest.mark.browser
@pytest.mark.timeout(RUN_ALL_TIMEOUT_S + 180)
@pytest.mark.parametrize("path", WIDGET_NOTEBOOKS, ids=_id)
def test_widgets_in_the_browser(browser, path):
    lab, context = browser
    rel = path.relative_to(NOTEBOOKS).as_posix()
    nb = _load(path)
    calls = widget_calls(nb)
    page = context.new_page()
    console_errors: list[str] = []
    page.on("pageerror", lambda e: console_errors.append(str(e)))
    shot = OUTPUT / (rel.removesuffix(".ipynb").replace("/", "__") + ".png")
    try:
        # A workspace of its own, so that JupyterLab does not reopen the notebooks of earlier tests.
        workspace = "t" + secrets.token_hex(4)
        page.goto(f"{lab.url}/lab/workspaces/{workspace}/tree/notebooks/{rel}?reset&token={lab.token}")
        page.wait_for_selector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=120_000)
        try:   # cells are attached a few at a time
            page.wait_for_function(f"() => document.querySelectorAll('.jp-NotebookPanel .jp-Notebook-cell').length"
                                   f" >= {len(nb['cells'])}", timeout=60_000)
        except Exception:
            pass
        assert page.locator(".jp-NotebookPanel .jp-Notebook-cell").count() == len(nb["cells"]), "cells missing from the page"
        # Clear the stored outputs first, so everything checked below comes from this run.
        _menu(page, "Edit", "editmenu:clear-all")
        page.wait_for_function("() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]"
                               ".every(e => !/\\d/.test(e.textContent))", timeout=10_000)
        t0 = time.monotonic()
        code = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
        # A request sent while a new kernel is still connecting can be lost: run the first code cell
        # (the install cell, a no-op here) until it shows an execution count.
        for _ in range(6):
            _run_cell(page, code[0])
            try:
                page.wait_for_function(
                    f"() => /\\d/.test([...document.querySelectorAll('.jp-NotebookPanel .jp-Notebook-cell')][{code[0]}]"
                    f".querySelector('.jp-InputPrompt').textContent)", timeout=20_000)
                break
            except Exception:
                continue
        if RUN_ALL:
            run = None
            _menu(page, "Run", "runmenu:run-all")
        else:    # the cells the widgets need, each selected and run as a learner would (Ctrl+Enter)
            run = cells_to_run(nb)
            for i in run[1:] if run[0] == code[0] else run:
                _run_cell(page, i)
        try:
            status = page.wait_for_function(
                f"(run) => !({_JS_PROGRESS})(run).startsWith('running') && ({_JS_PROGRESS})(run)",
                arg=run, timeout=RUN_ALL_TIMEOUT_S * 1000, polling=500).json_value()
        except Exception:
            status = f"not finished after {RUN_ALL_TIMEOUT_S} s; " + page.evaluate(_JS_PROGRESS, run)
        assert status.startswith("done"), f"running {'all' if RUN_ALL else 'the'} cells of {rel} failed: {status}"
        run_s = time.monotonic() - t0

        per_cell: dict[int, int] = {}
        for cell, name, kwargs in calls:
            k = per_cell.get(cell, 0)
            per_cell[cell] = k + 1
            what = f"{rel}, cell {cell}, {name}"
            try:
                page.wait_for_function(f"() => ({_JS_ROOTS.replace('CELL', str(cell))})() > {k}", timeout=30_000)
            except Exception:
                text = page.locator(".jp-NotebookPanel .jp-Notebook-cell").nth(cell).locator(".jp-OutputArea").inner_text()
                pytest.fail(f"{what}: no widget appeared; the cell shows {text[:500]!r}", pytrace=False)
            cell_text = page.locator(".jp-NotebookPanel .jp-Notebook-cell").nth(cell).locator(".jp-OutputArea").inner_text()
            assert "Error displaying widget" not in cell_text, f"{what}: {cell_text[:500]}"
            root = page.locator(".jp-NotebookPanel .jp-Notebook-cell").nth(cell).locator(
                ".jp-OutputArea-output .jupyter-widgets:not(.jupyter-widgets .jupyter-widgets)").nth(k)
            root.scroll_into_view_if_needed()
            state = page.evaluate(_JS_STATE, [cell, k])
            assert state["readout"] is not None, f"{what}: no element with class padlab-readout"
            assert state["sliders"] + state["dropdowns"] > 0, f"{what}: no slider or dropdown to move"

            def check(step: str) -> dict:
                st = page.evaluate(_JS_STATE, [cell, k])
                controls = {d: parse_control(v) for d, v in st["controls"].items()}
                _wait_readout(page, cell, k, expected_readout(name, controls, kwargs), f"{what}, {step}")
                return st

            before = check("as first shown")
            sliders = root.locator(".widget-slider")
            for i in range(sliders.count()):
                desc = sliders.nth(i).locator(".widget-label").first.inner_text()
                for key in ("ArrowRight", "End"):
                    old = page.evaluate(_JS_STATE, [cell, k])["controls"][desc]
                    handle_ = sliders.nth(i).locator(".noUi-handle").first
                    handle_.focus()
                    handle_.press(key)
                    if key == "ArrowRight":
                        try:
                            page.wait_for_function(
                                f"([c, k, d, old]) => ({_JS_STATE})([c, k]).controls[d] !== old",
                                arg=[cell, k, desc, old], timeout=3_000)
                        except Exception:       # already at the right end: step left instead
                            handle_.press("ArrowLeft")
                    after = page.evaluate(_JS_STATE, [cell, k])["controls"][desc]
                    assert after != old or key == "End", f"{what}: slider {desc!r} did not move from {old!r} ({key})"
                    check(f"slider {desc!r} {old} -> {after} ({key})")
            selects = root.locator(".widget-dropdown select")
            for i in range(selects.count()):
                sel = selects.nth(i)
                options = sel.locator("option").all_inner_texts()
                current = sel.evaluate("s => s.selectedIndex")
                if len(options) < 2:
                    continue
                target = options[(current + 1) % len(options)].replace("\xa0", " ")
                sel.select_option(index=(current + 1) % len(options))
                desc = sel.evaluate("s => (s.parentElement.querySelector('.widget-label') || {}).textContent || ''")
                assert page.evaluate(_JS_STATE, [cell, k])["controls"][desc] == target
                check(f"dropdown {desc!r} -> {target!r}")
            toggles = root.locator(".widget-toggle-buttons")
            for i in range(toggles.count()):
                idle = toggles.nth(i).locator("button:not(.mod-active)")
                if idle.count():
                    target = idle.first.inner_text().replace("\xa0", " ").strip()
                    idle.first.click()
                    check(f"toggle buttons -> {target!r}")
            after = page.evaluate(_JS_STATE, [cell, k])
            assert after["readout"] != before["readout"], f"{what}: the readout never changed"
        assert not console_errors, f"errors in the page: {console_errors[:3]}"
        print(f"{rel}: {'all' if RUN_ALL else len(run)} cells ran in {run_s:.0f} s in the browser")
    finally:
        try:
            try:   # let the last redraw land before the picture is taken
                page.wait_for_selector('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator[data-status="idle"]',
                                       timeout=30_000)
                page.wait_for_timeout(500)
            except Exception:
                pass
            page.screenshot(path=str(shot))
        finally:
            page.close()
            lab.shutdown_kernels()
