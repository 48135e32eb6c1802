"""Checkpoints of a ``fit`` run with orbax-checkpoint.

A checkpoint is one directory per step under ``checkpoint_dir``, holding

- ``state``: ``{"params", "opt_state", "key"}`` (arrays; ``key`` is the raw data of the run's
  key, from which every data order and dropout key is derived);
- ``meta``: JSON ``{"step", "history", "key_impl", "format"}``.

orbax writes each checkpoint into a temporary directory and renames it when complete, so a run
killed at any moment leaves either a whole checkpoint or none (temporary leftovers are removed
when the directory is opened again). Saving is asynchronous: training goes on while the arrays are
written.

:func:`resume` picks a run up where its latest checkpoint left it: a :class:`RunState`, the
params, optimizer state, key, step and history of the run at that point.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, NamedTuple

import jax
import numpy as np

__all__ = ["Checkpointer", "RunState", "resume"]

FORMAT = 1


def key_to_data(key) -> tuple[jax.Array, str | None]:
    """A key -> (its raw uint32 data, the name of its implementation or None for a raw key)."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key), str(jax.random.key_impl(key))
    return key, None


def key_from_data(data, impl: str | None):
    """The inverse of :func:`key_to_data`."""
    return data if impl is None else jax.random.wrap_key_data(data, impl=impl)


def same_key(a, b) -> bool:
    """Whether two keys (typed or raw) hold the same implementation and data."""
    (da, ia), (db, ib) = key_to_data(a), key_to_data(b)
    return ia == ib and np.array_equal(np.asarray(da), np.asarray(db))


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
        """The step of the latest complete checkpoint, or None."""
        return self._manager.latest_step()

    def save(self, step: int, params, opt_state, key, history: dict) -> None:
        """Start writing the checkpoint of ``step`` (asynchronously; ``wait`` or ``close`` ends it)."""
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
        """Block until the last save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for the last save to finish and release the directory."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RunState(NamedTuple):
    """Where a ``fit`` run stands: what a checkpoint holds, and what the loop carries."""

    params: Any
    opt_state: Any
    key: Any
    step: int
    history: dict


def resume(checkpointer: Checkpointer, start: RunState, *, key_given: bool, steps: int,
           stacklevel: int = 2) -> RunState:  # fmt: skip
    """The run restored from ``checkpointer``'s latest checkpoint, or ``start`` when it has none.

    The checkpoint's key wins over ``start.key`` (the data order and dropout keys derive from
    it), with a warning when a key was given explicitly and differs.

    Args:
      checkpointer: the run's checkpoint directory.
      start: a fresh run: its params and optimizer state are the templates to restore into.
      key_given: whether the caller chose ``start.key`` (rather than the default key).
      steps: the total number of steps asked for (a warning when the checkpoint is past it).
      stacklevel: for the warnings, as ``warnings.warn`` would count it in the caller (2: the
        caller's caller).

    Returns:
      The restored ``RunState``, or ``start``.

    Raises:
      ValueError: the checkpoint does not match the structure of the templates.
    """
    latest = checkpointer.latest_step()
    if latest is None:
        return start
    try:
        params, opt_state, saved_key, meta = checkpointer.restore(
            latest, start.params, start.opt_state, start.key
        )
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(
            f"checkpoint_dir {checkpointer.directory!r} holds a checkpoint (step {latest}) that does "
            f"not match these params and this optimizer's state; use another directory "
            f"or the same model and optimizer "
            f"({type(err).__name__}: {str(err).splitlines()[0][:300]})"
        ) from err
    step = int(meta["step"])
    if key_given and not same_key(saved_key, start.key):
        warnings.warn(
            f"fit: resuming from {checkpointer.directory} at step {step} with the "
            "checkpoint's key, not the key given", stacklevel=stacklevel + 1,
        )
    if step > steps:
        warnings.warn(
            f"fit: the checkpoint is at step {step}, past steps={steps}; nothing to do",
            stacklevel=stacklevel + 1,
        )
    return RunState(params, opt_state, saved_key, step, meta["history"])
