"""Sphinx configuration of the jrnn documentation site.

Build it from the root of a checkout (``pip install -e ".[docs]"`` first)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

``-W`` turns every warning into an error: a broken cross-reference (``nitpicky``), a dead link
between pages, a page outside every table of contents, a documented name without a docstring or
a public name missing from the API reference (``_check_api`` below) and a notebook that cannot be
read all fail the build. The notebooks of ``notebooks/`` are rendered from their stored outputs
and never executed here (``nb_execution_mode = "off"``).

A public name is a name in the ``__all__`` of ``jrnn`` or of one of its submodules whose name does
not start with an underscore (for a module without ``__all__``, the functions and classes it
defines). Each module has a page in ``docs/api/``; a new module needs one, listed in
``docs/api/index.md``.
"""

from __future__ import annotations

import filecmp
import importlib
import inspect
import os
import pkgutil
import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # build from a checkout even where jrnn is not installed

import jrnn  # noqa: E402

project = "jrnn"
author = "the jrnn authors"
copyright = "the jrnn authors"
release = jrnn.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",  # napoleon's Google-style parser runs from _google_style below
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_nb",
]

source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb", ".rst": "restructuredtext"}
exclude_patterns = ["_build", ".gitignore", "**.ipynb_checkpoints"]
root_doc = "index"

# ---------------------------------------------------------------------------------------------
# Markdown and notebooks
# ---------------------------------------------------------------------------------------------

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3
nb_execution_mode = "off"  # the notebooks are committed executed; render their stored outputs
nb_merge_streams = True

NOTEBOOKS = ROOT / "notebooks"
NOTEBOOK_PAGES = DOCS / "notebooks"


def _copy_notebooks() -> None:
    """Bring ``notebooks/*.ipynb`` into the source tree (``docs/notebooks/``, git-ignored), copying
    only the ones that changed so that incremental builds stay incremental; copies whose notebook
    is gone are removed."""
    NOTEBOOK_PAGES.mkdir(exist_ok=True)
    sources = {p.name: p for p in NOTEBOOKS.glob("*.ipynb")}
    for stale in NOTEBOOK_PAGES.glob("*.ipynb"):
        if stale.name not in sources:
            stale.unlink()
    for name, source in sources.items():
        target = NOTEBOOK_PAGES / name
        if target.exists() and filecmp.cmp(source, target, shallow=False):
            continue
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)


_copy_notebooks()

# ---------------------------------------------------------------------------------------------
# API reference
# ---------------------------------------------------------------------------------------------

autodoc_default_options = {"members": True, "undoc-members": True, "member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autoclass_content = "both"
# jrnn's docstrings are Google style (Args:, Returns:, Raises:, Attributes:). Napoleon's parser
# is applied to functions, classes and methods, not to constants and properties, whose one-line
# docstrings ("MSE of predicting the mean: ...") it would read as "type: description".
NAPOLEON = {"napoleon_numpy_docstring": False, "napoleon_use_rtype": False, "napoleon_use_ivar": True}

# Every cross-reference must resolve. Names of other libraries cannot (the build is offline, so no
# intersphinx inventories): they are listed here and rendered as plain names.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|numpy|np|jnp|optax|flax|nnx|orbax|chex|torch|matplotlib|argparse)(\..*)?"),
    (r"py:.*", r"(Array|ArrayLike|DTypeLike|PRNGKey|Shape|PyTree|Any|Callable|Iterable|Iterator|Sequence|Mapping)"),
    (r"py:.*", r"(typing|collections\.abc|types|pathlib|os)\..*"),
]


def _attribute_docs() -> dict[tuple[str, int], list[str]]:
    """The attribute docstrings (a string literal or ``#:`` comment after an assignment) of every
    module of jrnn, by name and ``id`` of the value, so that a constant re-exported under the same
    name by another module (say ``jrnn.bptt.ACTIVATION_SLOPES``) shows the docstring written where
    it is defined."""
    from sphinx.pycode import ModuleAnalyzer

    docs: dict[tuple[str, int], list[str]] = {}
    for info in [None, *pkgutil.walk_packages(jrnn.__path__, "jrnn.")]:
        name = "jrnn" if info is None else info.name
        try:
            module = importlib.import_module(name)
            found = ModuleAnalyzer.for_module(name).find_attr_docs()
        except Exception:  # an optional dependency missing: its page says so itself
            continue
        for (scope, attr), lines in found.items():
            if scope == "" and hasattr(module, attr) and any(line.strip() for line in lines):
                docs.setdefault((attr, id(getattr(module, attr))), list(lines))
    return docs


_ATTRIBUTE_DOCS: dict[tuple[str, int], list[str]] | None = None


def _note_missing_docstrings(app, what, name, obj, options, lines):
    """Note a public name without a docstring; ``_check_api`` reports it if it was documented
    (autodoc also processes members that it then skips, such as imported functions)."""
    global _ATTRIBUTE_DOCS
    short = name.rsplit(".", 1)[-1]
    if what in ("data", "attribute") and _is_type_docstring(obj, lines):
        del lines[:]  # a constant without a docstring of its own shows its type's (dict, tuple)
    if any(line.strip() for line in lines) or what == "module" or short.startswith("_"):
        return
    if what in ("data", "attribute"):
        if _ATTRIBUTE_DOCS is None:
            _ATTRIBUTE_DOCS = _attribute_docs()
        found = _ATTRIBUTE_DOCS.get((short, id(obj)))
        if found is not None:
            lines.extend(found)
            return
    env = app.env
    if not hasattr(env, "jrnn_undocumented"):
        env.jrnn_undocumented = {}
    env.jrnn_undocumented.setdefault(env.docname, set()).add((what, name))


def _is_type_docstring(obj, lines) -> bool:
    from sphinx.util.docstrings import prepare_docstring

    doc = getattr(type(obj), "__doc__", None)
    if not isinstance(doc, str):
        return False
    strip = lambda ls: [line.strip() for line in ls if line.strip()]  # noqa: E731
    return strip(lines) == strip(prepare_docstring(doc))


def _purge(app, env, docname):
    getattr(env, "jrnn_undocumented", {}).pop(docname, None)


def _google_style(app, what, name, obj, options, lines):
    """Napoleon's Google-style parser, for everything but constants and properties."""
    if what in ("data", "attribute", "property", "module"):
        return
    from sphinx.ext.napoleon import Config
    from sphinx.ext.napoleon.docstring import GoogleDocstring

    lines[:] = GoogleDocstring(lines, Config(**NAPOLEON), app, what, name, obj, options).lines()


def public_modules() -> list[str]:
    """``jrnn`` and each of its submodules whose name does not start with an underscore."""
    return ["jrnn"] + [f"jrnn.{m.name}" for m in pkgutil.iter_modules(jrnn.__path__) if not m.name.startswith("_")]


def public_names(module_name: str) -> list[str]:
    """A module's ``__all__``; without one, the functions and classes it defines whose names do not
    start with an underscore."""
    module = importlib.import_module(module_name)
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return sorted(
        name for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == module_name
        and (inspect.isfunction(value) or inspect.isclass(value))
    )


def _check_api(app, env):
    """Fail the build (warnings, errors under ``-W``) for a documented name without a docstring,
    and for a public name missing from the API reference: each name of :func:`public_names` must
    be documented under its module, or under ``jrnn`` for the names that ``jrnn`` re-exports."""
    from sphinx.util import logging

    log = logging.getLogger(__name__)
    documented = set(env.get_domain("py").objects)
    for docname, missing in sorted(getattr(env, "jrnn_undocumented", {}).items()):
        for what, name in sorted(missing):
            if name in documented:
                log.warning("%s %s has no docstring", what, name, location=docname,
                            type="jrnn", subtype="docstring")
    for module_name in public_modules():
        for name in public_names(module_name):
            if f"{module_name}.{name}" not in documented and f"jrnn.{name}" not in documented:
                log.warning("public name %s.%s is not in the API reference (docs/api/; a constant "
                            "needs a docstring to be listed)", module_name, name, type="jrnn", subtype="api")


def _skip_reexports(app, what, name, obj, skip, options):
    """Document a name that ``jrnn`` re-exports once, under ``jrnn`` (``jrnn.LSTMCell``), not again
    on its module's page (``jrnn.cells``), which would describe one object twice."""
    current = getattr(getattr(app.env, "current_document", None), "autodoc_module", None)
    if what != "module" or not current or current == "jrnn" or name not in jrnn.__all__:
        return None
    return True if getattr(jrnn, name, None) is obj else None


def _reexported_constants(app, what, name, obj, options, lines):
    """List the constants a package re-exports from its modules (``jrnn.bptt.FORMS``, defined in
    ``jrnn/bptt/layer.py``): autodoc documents a module's constants only where their docstring
    sits beside the assignment in that module's own source, so it would leave these out."""
    global _ATTRIBUTE_DOCS
    if what != "module" or not hasattr(obj, "__all__"):
        return
    from sphinx.pycode import ModuleAnalyzer

    if _ATTRIBUTE_DOCS is None:
        _ATTRIBUTE_DOCS = _attribute_docs()
    own = ModuleAnalyzer.for_module(name).find_attr_docs()
    for member in obj.__all__:
        value = getattr(obj, member, None)
        if ("", member) not in own and (member, id(value)) in _ATTRIBUTE_DOCS and not (
            inspect.isclass(value) or inspect.isroutine(value) or inspect.ismodule(value)
        ):
            lines.extend(["", f".. autodata:: {name}.{member}"])


def setup(app):
    app.connect("autodoc-skip-member", _skip_reexports)
    app.connect("autodoc-process-docstring", _reexported_constants, priority=700)
    app.connect("autodoc-process-docstring", _google_style, priority=400)
    app.connect("autodoc-process-docstring", _note_missing_docstrings, priority=600)
    app.connect("env-purge-doc", _purge)
    app.connect("env-check-consistency", _check_api)


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

html_theme = "sphinx_book_theme"
html_title = f"jrnn {release}"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
}
html_static_path: list[str] = []
