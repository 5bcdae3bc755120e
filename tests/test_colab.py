"""Colab readiness: one repository address, a badge and an install cell in every notebook, the data
in the clone, and half precision that falls back to fp16 on a GPU without bf16 (a Colab T4)."""
from __future__ import annotations

import ast
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import padlab
from padlab import env
from padlab.data import data_dir

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
SLUG = padlab.REPO_URL.removeprefix("https://github.com/")       # "owner/name"
BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
INSTALL_CELL = f'''# Colab / fresh machine: install padlab from the repository only where it is missing.
import importlib.util, subprocess, sys
if importlib.util.find_spec("padlab") is None:
    subprocess.run(["git", "clone", "--depth", "1", "{padlab.REPO_URL}", "/content/padlab"], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/padlab"], check=True)
    sys.path.insert(0, "/content/padlab")'''

ALL = sorted(p for p in NOTEBOOKS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


def _rel(p: Path) -> str:
    return p.relative_to(NOTEBOOKS).as_posix()


def _load(p: Path) -> dict:
    return json.loads(p.read_text(encoding="utf-8"))


def _src(cell: dict) -> str:
    return "".join(cell["source"])


def _code(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_repo_url_is_a_github_address():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", padlab.REPO_URL), padlab.REPO_URL


def test_install_cell_text_uses_repo_url_once():
    assert INSTALL_CELL.count(padlab.REPO_URL) == 1 and INSTALL_CELL.count("github.com") == 1


def badge_problems(nb: dict, rel: str) -> list[str]:
    """What is wrong with a notebook's Colab badge (``rel``: its path under notebooks/)."""
    first = nb["cells"][0]
    want = f"https://colab.research.google.com/github/{SLUG}/blob/main/notebooks/{rel}"
    problems = []
    if first["cell_type"] != "markdown" or f"[![Open In Colab]({BADGE_IMAGE})]({want})" not in _src(first):
        problems.append(f"no badge linking {want} in the first (markdown) cell")
    # No other Colab link anywhere (a badge copied from another notebook opens the wrong one).
    links = {m for c in nb["cells"] for m in re.findall(r"colab\.research\.google\.com/github/[^\s)\"'>]+", _src(c))}
    problems += [f"Colab link to {link}" for link in sorted(links - {want.removeprefix("https://")})]
    return problems


def address_problems(text: str) -> list[str]:
    """Addresses of this project (a repository called padlab, any owner) other than REPO_URL's."""
    found = re.findall(r"github\.com/([\w.-]+/padlab)(?![\w-])", text)
    found += re.findall(r"colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)", text)
    return [f"{o!r} is not padlab.REPO_URL ({padlab.REPO_URL})" for o in found if o != SLUG]


@pytest.mark.parametrize("path", ALL, ids=_rel)
def test_badge_points_at_this_notebook(path):
    assert badge_problems(_load(path), _rel(path)) == []


def test_badge_and_address_checks_catch_mistakes():
    good = f"[![Open In Colab]({BADGE_IMAGE})](https://colab.research.google.com/github/{SLUG}/blob/main/notebooks/01_x.ipynb)"
    nb = {"cells": [{"cell_type": "markdown", "source": [good]}]}
    assert badge_problems(nb, "01_x.ipynb") == []
    assert len(badge_problems(nb, "02_y.ipynb")) == 2                  # copied from another notebook
    nb["cells"].append({"cell_type": "markdown", "source": [good.replace("01_x", "02_y")]})
    assert len(badge_problems(nb, "01_x.ipynb")) == 1                  # a second, stray link
    assert address_problems(INSTALL_CELL + good) == []
    assert address_problems("git clone https://github.com/someone/padlab.git") == ["'someone/padlab' is not "
                                                                               f"padlab.REPO_URL ({padlab.REPO_URL})"]
    assert address_problems("see https://github.com/huggingface/transformers") == []   # other projects are fine


@pytest.mark.parametrize("path", ALL, ids=_rel)
def test_first_code_cell_installs_from_repo_url(path):
    cells = _code(_load(path))
    assert _src(cells[0]) == INSTALL_CELL, "the first code cell must be the standard install cell (from padlab.REPO_URL)"
    assert cells[0].get("outputs", []) == [], "the install cell prints nothing where padlab is installed"
    # The set-up cell right after it takes device and half precision from padlab.env.setup.
    tree = ast.parse(_src(cells[1]))
    imports = {(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert ("padlab.env", "setup") in imports and "setup" in calls, "the second code cell must call padlab.env.setup"
    assert "info.half_dtype" in _src(cells[1]), "the set-up cell prints the half precision it picked"


@pytest.mark.parametrize("path", ALL, ids=_rel)
def test_every_repository_address_is_repo_url(path):
    assert address_problems(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("name", ["README.md", "pyproject.toml", "environment.yml", "data/README.md"])
def test_project_files_name_the_same_repository(name):
    path = REPO / name
    if not path.exists():
        pytest.skip(f"{name} does not exist")
    assert address_problems(path.read_text(encoding="utf-8")) == []


def test_install_cell_clones_then_installs_only_where_padlab_is_missing(monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append((args, kw)))
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(INSTALL_CELL, {})                                  # padlab is importable here: nothing to do
    assert calls == []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "padlab" else object())
    exec(INSTALL_CELL, {})
    assert calls == [(["git", "clone", "--depth", "1", padlab.REPO_URL, "/content/padlab"], {"check": True}),
                     ([sys.executable, "-m", "pip", "install", "-q", "-e", "/content/padlab"], {"check": True})]
    assert sys.path[0] == "/content/padlab"


def test_data_comes_with_the_clone(monkeypatch):
    # An editable install of the clone finds data/ next to the package, so Colab has the corpora.
    monkeypatch.delenv("PADLAB_DATA", raising=False)
    assert data_dir() == Path(padlab.__file__).resolve().parent.parent / "data"
    try:
        tracked = subprocess.run(["git", "ls-files", "data"], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    assert tracked, "data/ is not in the repository, so a clone would not have it"
    for name in tracked:
        head = (REPO / name).open("rb").read(64) if (REPO / name).is_file() else b""
        assert not head.startswith(b"version https://git-lfs"), f"{name} is a Git LFS pointer; a plain clone lacks it"


# --- device detection on GPUs the notebooks meet -------------------------------------------------

def _fake_gpu(monkeypatch, capability, name, bf16_supported=True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    # torch reports bf16 "supported" on a T4 too (emulated, slowly); detect_device must not trust that alone.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)


def test_colab_t4_gets_fp16(monkeypatch):
    _fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    info = env.detect_device()
    assert (info.device, info.name, info.capability) == ("cuda", "Tesla T4", "7.5")
    assert info.bf16 is False and info.fp16 is True and info.half_dtype == "fp16"


def test_ampere_and_later_get_bf16(monkeypatch):
    _fake_gpu(monkeypatch, (8, 0), "NVIDIA A100-SXM4-40GB")
    info = env.detect_device()
    assert info.bf16 is True and info.half_dtype == "bf16" and info.capability == "8.0"
    _fake_gpu(monkeypatch, (9, 0), "NVIDIA H100 80GB HBM3", bf16_supported=False)   # negative control
    assert env.detect_device().half_dtype == "fp16"


def test_no_gpu_means_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if getattr(torch.backends, "mps", None) is not None:
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    info = env.detect_device()
    assert info.device == "cpu" and info.fp16 is False and info.capability == ""
