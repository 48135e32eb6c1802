"""Checkpoints of a ``fit`` run with orbax-checkpoint.

A checkpoint is one directory per step under ``checkpoint_dir``, holding

- ``state``: ``{"params", "opt_state", "key"}`` (arrays; ``key`` is the raw data of the run's
  key, from which every data order and dropout key is derived);
- ``meta``: JSON ``{"step", "history", "key_impl", "format"}``.

orbax writes each checkpoint into a temporary directory and renames it when complete, so a run
killed at any moment leaves either a whole checkpoint or none (temporary leftovers are removed
when the directory is opened again). Saving is asynchronous: training goes on while the arrays are
written.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

__all__ = ["Checkpointer"]

FORMAT = 1


def key_to_data(key) -> tuple[jax.Array, str | None]:
    """A key -> (its raw uint32 data, the name of its implementation or None for a raw key)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key), str(jax.random.key_impl(key))
    return key, None


def key_from_data(data, impl: str | None):
    return data if impl is None else jax.random.wrap_key_data(data, impl=impl)


class Checkpointer:
    """Save and restore ``fit``'s state in ``directory`` (keeping the ``max_to_keep`` latest)."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3):
        import orbax.checkpoint as ocp  # imported here: a third of a second, needed only to checkpoint

        self._ocp = ocp
        directory = os.fspath(directory)
        # a local path is made absolute (orbax requires it); a URL such as gs://... is kept
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
            ),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, params, opt_state, key, history: dict) -> None:
        key_data, key_impl = key_to_data(key)
        # the key as a host NumPy array: it is the same on every process, so any host can write it
        state = {"params": params, "opt_state": opt_state, "key": np.asarray(key_data)}
        history = {part: {name: list(col) for name, col in cols.items()} for part, cols in history.items()}
        meta = {"step": int(step), "history": history, "key_impl": key_impl, "format": FORMAT}
        ocp = self._ocp
        self._manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=True,
        )

    def restore(self, step: int, params, opt_state, key) -> tuple[Any, Any, Any, dict]:
        """Restore ``step`` into the structure, dtypes and shardings of the given templates.

        Returns ``(params, opt_state, key, meta)``.
        """
        ocp = self._ocp
        key_data, _ = key_to_data(key)
        like = {"params": params, "opt_state": opt_state, "key": np.asarray(key_data)}
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        restored = self._manager.restore(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()),
        )
        state, meta = restored["state"], restored["meta"]
        key = key_from_data(jax.numpy.asarray(state["key"]), meta.get("key_impl"))
        return state["params"], state["opt_state"], key, meta

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
