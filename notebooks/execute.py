"""Execute the notebooks from their jupytext ``.py`` sources and write the paired ``.ipynb``.

    python notebooks/execute.py                      # every NN_*.py in this folder, full size
    python notebooks/execute.py 02 04                # only those whose name starts with 02 or 04
    JRNN_NOTEBOOK_SMALL=1 python notebooks/execute.py --no-write   # a quick check, nothing saved

Each notebook runs top to bottom in a fresh ``python3`` kernel, with this folder as the working
directory and ``MPLBACKEND`` unset so that figures are embedded inline. After editing only the
Markdown of a ``.py`` file, ``jupytext --sync notebooks/NN_name.py`` updates the ``.ipynb`` and
keeps its outputs.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

import jupytext
import nbclient

HERE = pathlib.Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefixes", nargs="*", help="run only notebooks whose name starts with one of these")
    parser.add_argument("--no-write", action="store_true", help="execute without saving the .ipynb")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds allowed per cell")
    args = parser.parse_args()

    os.environ.pop("MPLBACKEND", None)  # the inline backend embeds the figures
    sources = sorted(HERE.glob("[0-9][0-9]_*.py"))
    if args.prefixes:
        sources = [p for p in sources if any(p.name.startswith(prefix) for prefix in args.prefixes)]
    for source in sources:
        notebook = jupytext.read(source)
        client = nbclient.NotebookClient(
            notebook, kernel_name="python3", timeout=args.timeout,
            resources={"metadata": {"path": str(HERE)}},
        )
        start = time.perf_counter()
        client.execute()
        elapsed = time.perf_counter() - start
        if not args.no_write:
            jupytext.write(notebook, source.with_suffix(".ipynb"))
        print(f"{source.name}: {elapsed:.0f} s", flush=True)


if __name__ == "__main__":
    main()
