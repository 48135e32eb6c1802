"""Checkpoints of a ``fit`` run with orbax-checkpoint.

A checkpoint is one directory per step under ``checkpoint_dir``, holding

- ``state``: ``{"params", "opt_state", "key"}`` (arrays; ``key`` is the raw data of the run's
  key, from which every data order and dropout key is derived);
- ``meta``: JSON ``{"step", "history", "key_impl", "format", "best_metric", "structure",
  "checksums", "run"}`` (``best_metric``: ``[name, higher_is_better]`` when the run keeps its best
  checkpoint, else null; ``structure``, ``checksums`` and ``run``: ``jrnn.train.runspec``).

orbax writes each checkpoint into a temporary directory and renames it when complete, so a run
killed at any moment leaves either a whole checkpoint or none (temporary leftovers are removed
when the directory is opened again). Saving is asynchronous: training goes on while the arrays are
written. The 3 latest checkpoints are kept. With ``best=(metric, higher_is_better)`` (``fit``'s
``keep_best``) every evaluation step also saves a checkpoint carrying the evaluation's value of
``metric`` (orbax's checkpoint metrics), and orbax keeps the best of those as well as the 3 latest
(``AnyPreservationPolicy`` of ``LatestN(3)`` and ``BestN(1)``); a value that is not finite
ranks last. ``restore(directory, params, opt_state, step="best")`` reads it back.

:func:`resume` picks a run up where its latest checkpoint left it: a :class:`RunState`, the
params, optimizer state, key, step and history of the run at that point. A checkpoint that cannot
be read back whole (truncated or deleted files, a flipped bit caught by the checksums) is
**damaged**: ``resume`` warns, naming it, and goes back to the newest intact one. A checkpoint of
another structure (model, optimizer) is refused with an error naming the first array that
differs, and one of another run (``jrnn.train.runspec``: learning rate, batch size, data, dtype,
...) with an error naming every difference, unless the caller accepts them (``fit``'s
``resume_check=False``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from typing import Any, NamedTuple

import jax
import numpy as np

from jrnn._checks import fail
from jrnn.train.runspec import checksums, describe_differences, structure, structure_difference

__all__ = ["Checkpointer", "Damaged", "RunState", "check_checkpoint_dir", "holds_checkpoint", "restore", "resume"]

FORMAT = 1

_STEP_MARKER = "_CHECKPOINT_METADATA"
"""The file orbax writes into every finished step directory."""


def check_checkpoint_dir(checkpoint_dir) -> str:
    """``checkpoint_dir`` as an absolute path (orbax requires it; a URL such as ``gs://...`` is
    kept as it is), refused (``TypeError``/``ValueError``) when it is not a
    non-empty path, is an existing file, or holds an integer-named entry that is not a checkpoint.

    orbax takes every integer-named folder of the directory for a step: it would restore a user's
    ``ck/7`` as the latest checkpoint and delete ``ck/1`` (with whatever it holds) when older steps
    are cleaned up. Such a directory is refused before anything is written or deleted."""
    if not isinstance(checkpoint_dir, (str, os.PathLike)):
        fail("checkpoint_dir", "a path (str or os.PathLike)", type(checkpoint_dir).__name__, TypeError)
    directory = os.fspath(checkpoint_dir)
    if not isinstance(directory, str) or not directory.strip():
        fail("checkpoint_dir", "a non-empty path (use \".\" for the current directory)", repr(directory))
    if "://" in directory:
        return directory
    if os.path.exists(directory) and not os.path.isdir(directory):
        fail("checkpoint_dir", "a directory (or a path to create one)", f"{directory!r}, an existing file")
    if os.path.isdir(directory):
        for name in sorted(os.listdir(directory)):
            if name.isdigit() and not _is_step(directory, name):
                fail("checkpoint_dir", "a directory whose integer-named entries are fit's checkpoints "
                     "(each step is one; older ones are deleted as training goes on)",
                     f"{directory!r} holding {name!r}, which is not a checkpoint: move it away or use "
                     "another directory")  # fmt: skip
    return os.path.abspath(directory)


def _is_step(directory: str, name: str) -> bool:
    """Whether ``directory/name`` is a finished checkpoint step (orbax's marker file is in it)."""
    return os.path.isfile(os.path.join(directory, name, _STEP_MARKER))


def holds_checkpoint(checkpoint_dir: str | os.PathLike | None) -> bool:
    """Whether ``checkpoint_dir`` (a local folder) holds a finished checkpoint that ``fit`` would
    resume."""
    if checkpoint_dir is None or not os.path.isdir(checkpoint_dir):
        return False
    directory = os.fspath(checkpoint_dir)
    return any(name.isdigit() and _is_step(directory, name) for name in os.listdir(directory))


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


@contextlib.contextmanager
def _quiet_absl(*others: str, level: int = logging.ERROR):
    """Hide absl's (orbax's) warnings, and the records below ``level`` of the ``others`` loggers,
    for the duration."""
    loggers = [logging.getLogger(name) for name in ("absl", *others)]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, levels):
            logger.setLevel(old)


LOCK_FILE = ".jrnn-fit.lock"


def _lock(directory: str):
    """Create ``directory`` if needed and take its lock file (an open file holding an exclusive
    ``flock``, released when it is closed or the process ends, even by SIGKILL): a
    ``ValueError`` when the directory cannot be written or another process's ``fit`` holds it.
    None for a URL, in a multi-process run (every process opens the directory) and where
    ``fcntl`` does not exist."""
    if "://" in directory or jax.process_count() > 1:
        return None
    try:
        os.makedirs(directory, exist_ok=True)
        handle = open(os.path.join(directory, LOCK_FILE), "a+")
    except OSError as err:
        fail("checkpoint_dir", "a directory this process can write checkpoints to",
             f"{directory!r} ({err.strerror or err})")  # fmt: skip
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        return handle
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        fail("checkpoint_dir", "a directory no other fit is writing to",
             f"{directory!r}, in use by {holder}: wait for it to end, or use another directory")  # fmt: skip
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    return handle


class Damaged(ValueError):
    """A checkpoint that cannot be read back whole."""


def verify(step: int, arrays, meta: dict) -> None:
    """Raise :class:`Damaged` when ``arrays`` (restored) do not match ``meta``'s checksums; no
    check for a checkpoint saved without them."""
    saved = meta.get("checksums")
    if saved is None:
        return
    now = checksums(arrays)
    if len(now) != len(saved) or now != saved:
        paths = [p for p, *_ in meta.get("structure") or []]
        bad = [paths[i] if i < len(paths) else f"array {i}" for i, (a, b) in enumerate(zip(saved, now)) if a != b]
        raise Damaged(f"step {step}: the arrays read back do not match their checksums ({', '.join(bad[:3])})")


class Checkpointer:
    """Save and restore ``fit``'s state in ``directory`` (keeping the ``max_to_keep`` latest)."""

    def __init__(self, directory: str | os.PathLike, max_to_keep: int = 3,
                 best: tuple[str, bool] | None = None, run: dict | None = None):  # fmt: skip
        import orbax.checkpoint as ocp  # imported here: a third of a second, needed only to checkpoint

        self._ocp = ocp
        self.directory = check_checkpoint_dir(directory)
        self.best = best
        self.run = run
        self._lock = _lock(self.directory)
        if best is None:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True
            )
        else:
            name, higher = best
            worst = -math.inf if higher else math.inf

            def rank(metrics) -> float:
                value = metrics.get(name) if isinstance(metrics, dict) else None
                return value if value is not None and math.isfinite(value) else worst

            policies = ocp.checkpoint_managers
            options = ocp.CheckpointManagerOptions(
                create=True,
                cleanup_tmp_directories=True,
                best_fn=rank,
                best_mode="max" if higher else "min",
                preservation_policy=policies.AnyPreservationPolicy([
                    policies.LatestN(n=max_to_keep),
                    policies.BestN(get_metric_fn=rank, reverse=not higher, n=1,
                                   keep_checkpoints_without_metrics=False),
                ]),
            )  # fmt: skip
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The step of the latest complete checkpoint, or None."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step of the best checkpoint by the ``best`` metric (None without one)."""
        if self.best is None:
            return None
        with_metrics = [s for s in self._manager.all_steps() if self._manager.metrics(s) is not None]
        return self._manager.best_step() if with_metrics else None

    def save(self, step: int, params, opt_state, key, history: dict, metrics: dict | None = None) -> None:
        """Start writing the checkpoint of ``step`` (asynchronously; ``wait`` or ``close`` ends it);
        ``metrics`` (an evaluation's values) rank it when the checkpointer keeps the best."""
        key_data, key_impl = key_to_data(key)
        # the key as a host NumPy array: it is the same on every process, so any host can write it
        state = {"params": params, "opt_state": opt_state, "key": np.asarray(key_data)}
        history = {part: {name: list(col) for name, col in cols.items()} for part, cols in history.items()}
        arrays = {"params": params, "opt_state": opt_state}
        meta = {"step": int(step), "history": history, "key_impl": key_impl, "format": FORMAT,
                "best_metric": None if self.best is None else list(self.best),
                "structure": structure(arrays), "checksums": checksums(arrays), "run": self.run}
        ocp = self._ocp
        if self.best is not None and metrics is not None:
            metrics = {k: (float(v) if v is not None and math.isfinite(v) else None) for k, v in metrics.items()}
        else:
            metrics = None
        # a checkpoint between evaluations has no metrics: orbax, tracking the best, warns of it
        quiet = self.best is not None and metrics is None
        with _quiet_absl() if quiet else contextlib.nullcontext():
            self._manager.save(
                int(step),
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
                metrics=metrics,
                force=True,
            )

    def all_steps(self) -> list[int]:
        """The steps of the complete checkpoints, newest first."""
        return sorted(self._manager.all_steps(), reverse=True)

    def set_aside(self, step: int) -> str:
        """Move the damaged checkpoint of ``step`` out of the way (to ``<step>.damaged``, where
        orbax no longer sees it and it can still be inspected; deleted for a URL) so that the
        run can save that step again; returns where it went."""
        source = os.path.join(self.directory, str(step))
        if "://" in self.directory:
            self._manager.delete(int(step))
            gone = "deleted"
        else:
            target, n = source + ".damaged", 1
            while os.path.exists(target):
                n += 1
                target = f"{source}.damaged{n}"
            os.replace(source, target)
            gone = target
        self._manager.reload()
        return gone

    def meta(self, step: int) -> dict:
        """The JSON ``meta`` of ``step`` alone (no arrays read)."""
        ocp = self._ocp
        return self._manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, step: int, params, opt_state, key) -> tuple[Any, Any, Any, dict]:
        """Restore ``step`` into the structure, dtypes and shardings of the given templates.

        Returns ``(params, opt_state, key, meta)``.

        Raises:
          Damaged: the arrays read back do not match the checksums saved with them.
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
        verify(step, {"params": state["params"], "opt_state": state["opt_state"]}, meta)
        key = key_from_data(jax.numpy.asarray(state["key"]), meta.get("key_impl"))
        return state["params"], state["opt_state"], key, meta

    def wait(self) -> None:
        """Block until the last save is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Wait for the last save to finish and release the directory."""
        try:
            self._manager.wait_until_finished()
            self._manager.close()
        finally:
            if self._lock is not None:
                self._lock.close()  # releases the lock
                self._lock = None

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


def _short(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"


def _check_same_run(checkpointer: Checkpointer, step: int, meta: dict, like: dict, check_run: bool,
                    stacklevel: int) -> None:  # fmt: skip
    """Refuse a checkpoint of another structure; refuse (``check_run``) or warn of one of
    another run (``jrnn.train.runspec``)."""
    now = structure(like)
    saved = meta.get("structure")
    if saved is not None:
        difference = structure_difference(saved, now)
        if difference is not None:
            raise ValueError(
                f"checkpoint_dir {checkpointer.directory!r} holds a checkpoint (step {step}) of "
                f"another model or optimizer: {difference}; use another directory or the same "
                "model and optimizer"
            )
    differences = describe_differences(meta.get("run"), checkpointer.run or {}, saved, now)
    if not differences:
        return
    listed = "; ".join(differences)
    if check_run:
        raise ValueError(
            f"checkpoint_dir {checkpointer.directory!r} holds a checkpoint (step {step}) of another "
            f"run, and resuming it would not continue that run: {listed}. Use another directory, "
            "the same settings, or resume_check=False to resume with these anyway"
        )
    warnings.warn(f"fit: resuming step {step} of {checkpointer.directory} with {listed}", stacklevel=stacklevel + 1)


def resume(checkpointer: Checkpointer, start: RunState, *, key_given: bool, steps: int,
           check_run: bool = True, stacklevel: int = 2) -> RunState:  # fmt: skip
    """The run restored from ``checkpointer``'s newest intact checkpoint, or ``start`` when it
    has none.

    A damaged checkpoint (module docstring) is skipped with a warning naming it; the newest intact
    one is restored. The checkpoint's key wins over ``start.key`` (the data order and dropout keys
    derive from it), with a warning when a key was given explicitly and differs.

    Args:
      checkpointer: the run's checkpoint directory (its ``run``: this run's specification).
      start: a fresh run: its params and optimizer state are the templates to restore into.
      key_given: whether the caller chose ``start.key`` (rather than the default key).
      steps: the total number of steps asked for (a warning when the checkpoint is past it).
      check_run: refuse a checkpoint of another run (True), or warn and resume it (False).
      stacklevel: for the warnings, as ``warnings.warn`` would count it in the caller (2: the
        caller's caller).

    Returns:
      The restored ``RunState``, or ``start``.

    Raises:
      ValueError: the checkpoint is of another structure, of another run (``check_run``), or
        every checkpoint in the directory is damaged.
    """
    found = checkpointer.all_steps()
    if not found:
        return start
    like = {"params": start.params, "opt_state": start.opt_state}
    damaged: list[str] = []
    restored = None
    for step in found:
        try:
            meta = checkpointer.meta(step)
        except Exception as err:  # noqa: BLE001 - unreadable JSON or files: damaged
            damaged.append(f"step {step} ({_short(err)})")
            continue
        _check_same_run(checkpointer, step, meta, like, check_run, stacklevel + 1)
        try:
            # a damaged step makes orbax's reading tasks log their failures: the warning below says it
            with _quiet_absl("asyncio", level=logging.CRITICAL):
                restored = checkpointer.restore(step, start.params, start.opt_state, start.key)
        except Damaged as err:
            damaged.append(f"step {step} ({err})")
            continue
        except Exception as err:  # noqa: BLE001 - classified below
            if meta.get("structure") is None:  # an older checkpoint: damage and mismatch look alike
                raise ValueError(
                    f"checkpoint_dir {checkpointer.directory!r} holds a checkpoint (step {step}) that "
                    "cannot be restored into these params and this optimizer's state (another model "
                    f"or optimizer, or damaged files); use another directory ({_short(err)})"
                ) from err
            damaged.append(f"step {step} ({_short(err)})")
            continue
        break
    if restored is None:
        raise ValueError(
            f"checkpoint_dir {checkpointer.directory!r}: every checkpoint is damaged and none can be "
            f"resumed: {'; '.join(damaged)}. Use another directory, or delete the damaged steps "
            "to start over"
        )
    params, opt_state, saved_key, meta = restored
    step = int(meta["step"])
    if damaged:
        moved = [checkpointer.set_aside(s) for s in found if s > step]
        warnings.warn(
            f"fit: damaged checkpoint in {checkpointer.directory}: {'; '.join(damaged)}; resuming "
            f"from step {step}, the newest intact one (the damaged steps were moved to "
            f"{', '.join(moved)})", stacklevel=stacklevel + 1,
        )  # fmt: skip
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


def restore(checkpoint_dir: str | os.PathLike, params, opt_state, step: int | str = "latest") -> tuple[Any, Any, int]:
    """Read a checkpoint of a ``fit`` run back.

    Args:
      checkpoint_dir: the run's ``checkpoint_dir``.
      params, opt_state: templates of the same structure (the model's ``init`` and the
        optimizer's ``init`` of them), whose dtypes and shardings the arrays take.
      step: ``"latest"``, ``"best"`` (the best checkpoint kept by ``fit(..., keep_best=...)``),
        or a step number.

    Returns:
      ``(params, opt_state, step)``.

    Raises:
      ValueError: no such checkpoint (``"best"`` without ``keep_best``, a step not kept).
      Damaged: (a ``ValueError``) the arrays read back do not match the checksums saved with them,
        or their stored bytes cannot be read (the storage layer detected the damage).
    """
    import orbax.checkpoint as ocp

    directory = check_checkpoint_dir(checkpoint_dir)
    if not os.path.isdir(directory) and "://" not in directory:
        raise ValueError(f"checkpoint_dir must be a directory holding checkpoints, got {directory!r}")
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
    try:
        steps = list(manager.all_steps())
        if step == "latest":
            chosen = manager.latest_step()
        elif step == "best":
            ranked = [(s, manager.metrics(s)) for s in steps]
            ranked = [(s, m) for s, m in ranked if m]
            chosen = None
            if ranked:
                meta = manager.restore(ranked[0][0], args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                name, higher = meta.get("best_metric") or (None, None)
                if name is not None:
                    worst = -math.inf if higher else math.inf
                    value = lambda m: m.get(name) if m.get(name) is not None else worst  # noqa: E731
                    chosen = (max if higher else min)(ranked, key=lambda sm: (value(sm[1]), -sm[0]))[0]
        else:
            chosen = step if step in steps else None
        if chosen is None:
            raise ValueError(
                f"step must be 'latest', 'best' (for a run with keep_best) or one of the steps kept "
                f"in {directory} {steps}, got {step!r}"
            )
        key_like = np.zeros((2,), np.uint32)
        like = {"params": params, "opt_state": opt_state, "key": key_like}
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
        try:
            restored = manager.restore(int(chosen), args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))  # fmt: skip
        except (ValueError, TypeError):
            raise  # orbax's own message: another structure, unreadable metadata
        except Exception as err:  # noqa: BLE001 - orbax wraps a failed read of the stored bytes in a bare Exception
            reason = _short(err.__cause__ or err)
            raise Damaged(f"step {chosen}: the stored arrays cannot be read back ({reason})") from err
    finally:
        manager.close()
    state = restored["state"]
    verify(int(chosen), {"params": state["params"], "opt_state": state["opt_state"]}, restored["meta"])
    return state["params"], state["opt_state"], int(chosen)
