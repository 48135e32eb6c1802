"""Packaging: ``python -m build`` makes an sdist and a wheel, and the wheel works from a clean install.

The build runs on a copy of the checkout (the files git tracks or would track: a clean clone of
the working tree), so it never writes into the checkout. ``--no-isolation`` builds with this
environment's setuptools instead of downloading one, and builds the wheel from the sdist, so a
file missing from the sdist fails here too.

The wheel is installed with ``pip --no-deps`` into a fresh virtual environment. Its dependencies
(JAX, optax, Flax, orbax...) are not downloaded again: a ``.pth`` file in the new environment adds
this environment's ``site-packages`` after the new one's. A directory added by a ``.pth`` line
does not have its own ``.pth`` files run, so the editable install of the checkout (a ``.pth`` hook
in that ``site-packages``) stays out, and the test checks that ``jrnn`` is imported from the
wheel's files, not from the checkout. The commands then run from an empty folder without
``PYTHONPATH``: ``import jrnn``, ``jrnn --help``, a short ``jrnn demo`` and ``jrnn bench``, which
must say that the benchmark suite needs a source checkout (the wheel ships the library only).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow

LEFT_OUT = ("benchmarks/", "notebooks/", "docs/", "tests/", "examples/")
"""What the wheel must not hold (nor need): it is the library and its command only."""


def _version() -> str:
    text = (ROOT / "jrnn" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def _copy_checkout(dest: Path) -> None:
    """The files of a clean clone of the working tree: tracked or untracked-but-not-ignored."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, check=True, timeout=60,
        ).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: copy all but the usual
        ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "_build")
        shutil.copytree(ROOT, dest, ignore=ignore)
        return
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():  # listed but deleted in the working tree: left out, as a clone would
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> tuple[Path, Path]:
    """``(wheel, sdist)`` built by ``python -m build`` from a copy of the checkout."""
    if importlib.util.find_spec("build") is None:
        pytest.skip('the "build" package is not installed (it is in the test extra): pip install build')
    work = tmp_path_factory.mktemp("build")
    src = work / "src"
    _copy_checkout(src)
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(work / "dist"), str(src)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"python -m build failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
    wheels = sorted((work / "dist").glob("*.whl"))
    sdists = sorted((work / "dist").glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in (work / "dist").iterdir())
    return wheels[0], sdists[0]


def test_wheel_and_sdist_hold_the_package_at_the_one_version(dists):
    wheel, sdist = dists
    version = _version()
    assert wheel.name.startswith(f"jrnn-{version}-") and sdist.name == f"jrnn-{version}.tar.gz"
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(f"jrnn-{version}.dist-info/METADATA").decode()
        entry_points = z.read(f"jrnn-{version}.dist-info/entry_points.txt").decode()
    assert f"Version: {version}\n" in metadata
    assert "jrnn = jrnn.cli:main" in entry_points
    for needed in ("jrnn/__init__.py", "jrnn/py.typed", "jrnn/cli.py", "jrnn/cells/lstm.py", "jrnn/bptt/__init__.py",
                   "jrnn/train/fit.py"):
        assert needed in names, f"{needed} is missing from the wheel"
    stray = [n for n in names if n.startswith(LEFT_OUT)]
    assert not stray, f"the wheel holds files that are not the library: {stray[:5]}"
    with tarfile.open(sdist) as t:
        members = {m.name.split("/", 1)[1] for m in t.getmembers() if "/" in m.name}
    for needed in ("pyproject.toml", "setup.py", "README.md", "jrnn/__init__.py", "jrnn/py.typed",
                   "jrnn/kernels/native/lstm.cc"):
        assert needed in members, f"{needed} is missing from the sdist"
    if _builds_native():  # the native loops, compiled from the sdist
        assert "jrnn/kernels/native/liblstm_cpu.so.1" in names, "the wheel has no native library"


def _builds_native() -> bool:
    from tests.test_native import _builds_here

    return _builds_here()


def _site_packages() -> list[str]:
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


@pytest.fixture(scope="module")
def venv(dists, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed (``bin/`` of it)."""
    wheel, _ = dists
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--no-warn-script-location", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"pip install of the wheel failed:\n{result.stdout}\n{result.stderr}"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    # The dependencies: this environment's site-packages, after the new one's (see the docstring).
    (Path(site) / "_jrnn_test_dependencies.pth").write_text("\n".join(_site_packages()) + "\n")
    return env_dir / "bin"


def _run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", MPLBACKEND="Agg", PYTHONNOUSERSITE="1")
    return subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_import_jrnn_from_the_installed_wheel(venv, tmp_path):
    code = (
        "import importlib.metadata, json, pathlib, jrnn\n"
        "print(json.dumps({'file': jrnn.__file__, 'version': jrnn.__version__,\n"
        "                  'metadata': importlib.metadata.version('jrnn'),\n"
        "                  'typed': (pathlib.Path(jrnn.__file__).parent / 'py.typed').is_file(),\n"
        "                  'submodules': [m for m in ('bptt', 'train', 'interop', 'nnx') if getattr(jrnn, m)],\n"
        "                  'native': __import__('jrnn.kernels.native').kernels.native.available()}))\n"
    )
    result = _run(venv, "python", "-c", code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    installed = Path(got["file"]).resolve()
    assert venv.parent.resolve() in installed.parents, f"jrnn came from {installed}, not from the wheel"
    assert ROOT not in installed.parents, f"jrnn came from the checkout: {installed}"
    assert got["version"] == got["metadata"] == _version()
    assert got["typed"], "py.typed is not installed"
    assert got["submodules"] == ["bptt", "train", "interop", "nnx"]
    assert got["native"] == _builds_native(), "the wheel's native loops do not load"


def test_jrnn_help(venv, tmp_path):
    result = _run(venv, "jrnn", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("demo", "train", "bench"):
        assert command in result.stdout


def test_a_short_demo(venv, tmp_path):
    out = tmp_path / "demo"
    result = _run(venv, "jrnn", "demo", "--steps", "5", "--hidden", "4", "--series-length", "300", "--no-progress",
                  "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert "validation MSE" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 5
    assert (out / "loss_curve.png").is_file() and (out / "predictions.png").is_file()


def test_bench_says_it_needs_a_source_checkout(venv, tmp_path):
    result = _run(venv, "jrnn", "bench", "--quick", cwd=tmp_path)
    assert result.returncode == 2
    assert "source checkout" in result.stderr and "python -m benchmarks" in result.stderr
