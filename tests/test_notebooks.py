"""Every notebook in ``notebooks/`` runs top to bottom at small size.

Each notebook is stored as a jupytext percent-format ``.py`` file (paired with its executed
``.ipynb``). The test reads the ``.py``, turns it into a notebook and executes it in a fresh
kernel with ``JRNN_NOTEBOOK_SMALL=1`` (fewer steps, smaller sizes) and ``MPLBACKEND=Agg``.

The kernel is a ``python3`` kernelspec written into a temporary directory that points at the
interpreter running the tests, and put first on ``JUPYTER_PATH``, so the notebooks run in the
same environment as the tests even when no kernel was ever installed (a fresh virtual
environment) or when the user's ``python3`` kernel points somewhere else.

A second, fast check makes sure each committed ``.ipynb`` has the same cells as its ``.py`` and
was executed without errors, so that what a reader sees on the code host matches the source.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT_S = 300


@pytest.fixture(scope="session")
def kernel_dir(tmp_path_factory) -> pathlib.Path:
    """A JUPYTER_PATH entry holding a ``python3`` kernelspec for ``sys.executable``."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (ipykernel)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return root


def test_notebooks_found():
    assert NOTEBOOKS, f"no notebooks found in {NOTEBOOK_DIR}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_paired(path):
    """The committed .ipynb holds the same cells as the .py and has been executed."""
    nbformat = pytest.importorskip("nbformat")
    executed = path.with_suffix(".ipynb")
    assert executed.exists(), f"{executed.name} is missing: run python notebooks/execute.py {path.stem[:2]}"
    source = [(c.cell_type, c.source) for c in jupytext.read(path).cells]
    stored = nbformat.read(executed, as_version=4)
    assert [(c.cell_type, c.source) for c in stored.cells] == source, (
        f"{executed.name} is out of sync with {path.name}: run jupytext --sync {path} "
        "(Markdown only) or python notebooks/execute.py (code changed)"
    )
    code = [c for c in stored.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), f"{executed.name} has unexecuted code cells"
    assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, kernel_dir, monkeypatch):
    monkeypatch.setenv("JRNN_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JUPYTER_PATH", str(kernel_dir))
    notebook = jupytext.read(path)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    start = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - start
    print(f"{path.name}: {elapsed:.1f} s")
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors, errors
