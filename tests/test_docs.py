"""The documentation site: it builds with warnings as errors, every page the index promises is
there and linked, and the examples of the pages and of the docstrings run.

The build is ``python -m sphinx -W --keep-going -b html docs OUT`` (the README's command) into a
fresh folder: a broken cross-reference, a dead link between pages, a public name without a
docstring or missing from the API reference fail it (``docs/conf.py``). The notebooks are rendered
from their stored outputs, never executed.

The examples are the ``pycon`` blocks (``>>>`` prompts) of the pages under ``docs/`` and any
``>>>`` example in a docstring of ``jrnn``, run with :mod:`doctest` in fresh interpreters (JAX's
defaults, not the test suite's float64) from an empty folder; the blocks of one page share one
namespace, in page order. Most of their time is XLA compiling, so two worker processes share the
pages (each claims the next unclaimed one) while the site builds. Run them by hand with
``python tests/test_docs.py [PAGE.md ...]``.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

PAGES = [
    "getting_started",
    "concepts/index",
    "concepts/cells",
    "concepts/unroll",
    "concepts/networks",
    "concepts/bptt",
    "howto/index",
    "howto/classifier",
    "howto/truncated_bptt",
    "howto/checkpoints",
    "howto/multihost",
    "howto/convert_weights",
    "howto/gradient_flow",
    "notebooks/index",
    "benchmarks",
    "api/index",
    "changelog",
]
"""The pages the index must reach (the executed notebooks and the API pages are checked apart)."""

FENCE = re.compile(r"^(?P<fence>```+)pycon[^\n]*\n(?P<body>.*?)^(?P=fence)\s*$", re.M | re.S)
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
WORKERS = 2
SUMMARY = re.compile(r"^(\d+) examples, (\d+) failed$", re.M)

# ---------------------------------------------------------------------------------------------
# The example runner (run in fresh interpreters by the tests, or by hand)
# ---------------------------------------------------------------------------------------------


def page_examples(path: Path) -> list[doctest.DocTest]:
    """The ``pycon`` blocks of a page as doctests sharing one namespace."""
    text = path.read_text()
    globs: dict = {"__name__": "__main__"}
    parser = doctest.DocTestParser()
    name = str(path.relative_to(ROOT))
    tests = []
    for match in FENCE.finditer(text):
        lineno = text.count("\n", 0, match.start("body"))
        test = parser.get_doctest(match.group("body"), {}, name, name, lineno)
        test.globs = globs  # get_doctest copies the namespace; the page's blocks share one
        tests.append(test)
    return tests


def docstring_examples() -> list[doctest.DocTest]:
    """The ``>>>`` examples in the docstrings of every module of ``jrnn``."""
    import jrnn

    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for info in [None, *pkgutil.walk_packages(jrnn.__path__, "jrnn.")]:
        module = importlib.import_module("jrnn" if info is None else info.name)
        tests.extend(finder.find(module))
    return tests


def _claim(claims: Path | None, item: str) -> bool:
    """True when this process is the first to ask for ``item`` (always, without ``claims``)."""
    if claims is None:
        return True
    try:
        os.close(os.open(claims / re.sub(r"\W", "_", item), os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False


def run_examples(pages: list[Path], claims: Path | None = None) -> int:
    """Run the examples of ``pages`` and of the docstrings (those this process claims); print a
    summary; return the failure count."""
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    for item in [*map(str, pages), "docstrings of jrnn"]:
        if not _claim(claims, item):
            continue
        tests = docstring_examples() if item == "docstrings of jrnn" else page_examples(Path(item))
        for test in tests:
            runner.run(test, clear_globs=False)
        label = item if item.startswith("docstrings") else Path(item).relative_to(ROOT)
        print(f"{sum(len(t.examples) for t in tests):4d} examples  {label}", flush=True)
    results = runner.summarize(verbose=False)
    print(f"{results.attempted} examples, {results.failed} failed")
    return results.failed


def example_pages() -> list[Path]:
    """The pages under ``docs/`` with a ``pycon`` block."""
    return sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts and FENCE.search(p.read_text()))


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """Worker processes running every example, started at once: ``[(process, log file)]``."""
    pages = example_pages()
    assert pages, "no page with examples"
    work = tmp_path_factory.mktemp("examples")
    (work / "claims").mkdir()
    workers = []
    for i in range(WORKERS):
        log = open(work / f"worker{i}.log", "w")
        process = subprocess.Popen(
            [sys.executable, __file__, "--claims", str(work / "claims"), *map(str, pages)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "MPLBACKEND": "Agg"},
        )
        workers.append((process, log))
    yield workers
    for process, log in workers:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory, examples):
    """The site built as the README says, into a fresh folder: ``(html folder, build output)``.
    (It asks for ``examples`` so that the example workers run while it builds.)"""
    missing = [m for m in ("sphinx", "myst_nb", "sphinx_book_theme") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the docs extra is not installed (missing {', '.join(missing)}): pip install -e \".[docs]\"")
    out = tmp_path_factory.mktemp("docs")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(out / "doctrees"), "docs", str(out / "html")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert result.returncode == 0, f"the docs build failed:\n{result.stdout}\n{result.stderr}"
    return out / "html", result.stdout + result.stderr


def test_site_builds_with_no_warning(site):
    html, output = site
    assert "WARNING" not in output and "ERROR" not in output, output
    assert (html / "index.html").is_file()


def test_every_page_exists_and_the_index_links_it(site):
    html, _ = site
    index = (html / "index.html").read_text()
    notebooks = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
    api = sorted(p.stem for p in (DOCS / "api").glob("*.md"))
    assert notebooks, "no executed notebook in notebooks/"
    expected = PAGES + [f"notebooks/{n}" for n in notebooks] + [f"api/{n}" for n in api]
    for page in expected:
        assert (html / f"{page}.html").is_file(), f"{page} was not built"
        assert f'href="{page}.html' in index, f"index.html does not link {page}"


def test_notebooks_are_rendered_with_their_stored_outputs(site):
    html, _ = site
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        page = (html / "notebooks" / f"{notebook.stem}.html").read_text()
        assert "cell_output" in page, f"{notebook.name}: no output rendered"
        if '"image/png"' in notebook.read_text():
            assert "<img" in page, f"{notebook.name}: its figures were not rendered"


def test_every_public_module_has_an_api_page(site):
    sys.path.insert(0, str(DOCS))
    try:
        conf = importlib.import_module("conf")
    finally:
        sys.path.remove(str(DOCS))
    pages = {p.stem for p in (DOCS / "api").glob("*.md")}
    for module in conf.public_modules():
        assert module.rsplit(".", 1)[-1] in pages, f"{module} has no page in docs/api/"


def test_examples_run(examples):
    """Every ``pycon`` example of the pages and every docstring example ran, and none failed."""
    outputs = []
    for process, log in examples:
        process.wait(timeout=900)
        log.flush()
        outputs.append(Path(log.name).read_text())
    report = "\n".join(outputs)
    summaries = [SUMMARY.search(out) for out in outputs]
    assert all(summaries) and all(p.returncode == 0 for p, _ in examples), f"examples failed:\n{report[-30000:]}"
    ran = report.count(" examples  ")
    assert ran == len(example_pages()) + 1, f"not every page ran:\n{report}"
    assert sum(int(s.group(1)) for s in summaries) > 0


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    args = sys.argv[1:]
    claims = None
    if args[:1] == ["--claims"]:
        claims, args = Path(args[1]).resolve(), args[2:]
    pages = [Path(p).resolve() for p in args] or example_pages()
    with tempfile.TemporaryDirectory() as work:
        os.chdir(work)  # examples that write files (checkpoints, logs) write them here
        sys.exit(1 if run_examples(pages, claims) else 0)
