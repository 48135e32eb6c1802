"""The package's shape: ``import jrnn`` gives every public submodule, no import cycle whatever is
imported first, heavy optional parts load lazily, and nothing imports upward."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SUBMODULES = ["bptt", "datasets", "diagnostics", "interop", "kernels", "losses", "nnx", "optim", "scan", "tasks", "train"]

ORDER = ["_checks", "cells", "parallel", "kernels", "scan", "unroll", "network"]
"""The dependency order of the core: each module imports only from those before it."""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_import_jrnn_gives_every_public_submodule_and_loads_nnx_lazily():
    code = (
        "import sys, jrnn\n"
        "assert 'flax.nnx' not in sys.modules and 'jrnn.nnx' not in sys.modules, 'nnx loaded eagerly'\n"
        "assert 'jrnn.interop' not in sys.modules, 'interop loaded eagerly'\n"
        f"for name in {SUBMODULES!r}:\n"
        "    getattr(jrnn, name)\n"
        "jrnn.bptt.value_and_grad; jrnn.bptt.unroll_vjp; jrnn.train.fit; jrnn.interop.from_torch; jrnn.nnx.RNN\n"
        "assert 'jrnn.nnx' in sys.modules\n"
        "print('ok')\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.mark.parametrize("first", ["jrnn.bptt", "jrnn.network", "jrnn.unroll", "jrnn.scan", "jrnn.cells",
                                   "jrnn.diagnostics", "jrnn.train", "jrnn.interop", "jrnn.losses"])
def test_no_import_cycle_whatever_comes_first(first):
    result = _run(f"import {first}; import jrnn; jrnn.bptt.value_and_grad; print('ok')")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def _jrnn_imports(path: Path) -> set[str]:
    """The ``jrnn.*`` modules a file imports at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jrnn"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("jrnn"))
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "jrnn":
        return None
    return ORDER.index(parts[1]) if parts[1] in ORDER else None


@pytest.mark.parametrize("name", ORDER)
def test_core_imports_nothing_above_it(name):
    path = ROOT / "jrnn" / name
    files = sorted(path.glob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    level = ORDER.index(name)
    for file in files:
        for module in _jrnn_imports(file):
            above = _layer(module)
            if above is None:
                assert module in ("jrnn",) or module.split(".")[1] in ORDER, f"{file.name} imports {module}"
            else:
                assert above <= level, f"{file.relative_to(ROOT)} imports {module}, above it in {ORDER}"


def test_package_rewrites_no_sys_path_or_argv():
    for file in (ROOT / "jrnn").rglob("*.py"):
        text = file.read_text()
        assert "sys.path" not in text, f"{file.relative_to(ROOT)} touches sys.path"
        assert "sys.argv =" not in text and "sys.argv[" not in text, f"{file.relative_to(ROOT)} rewrites sys.argv"
