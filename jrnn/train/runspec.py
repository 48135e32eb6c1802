"""What a checkpoint records about the run that wrote it, so that a resume continues that run.

``fit`` promises a bit-for-bit resume; that holds only when the resumed call is the same run. A
checkpoint therefore stores, besides the arrays:

- the **structure** of its state: every leaf of ``params`` and ``opt_state`` with its path, shape
  and dtype. A checkpoint of another structure (another model or optimizer) is refused, naming
  the first leaf that differs; another dtype of the same structure (float32 saved, bfloat16 now)
  is a difference of the run (below), since restoring would cast silently.
- **checksums** of every leaf (a position-weighted sum of its bit patterns, modulo 2³²): a
  checkpoint whose files were truncated or had a bit flipped is told apart from one of another
  run, and ``fit`` resumes from the newest intact one (``jrnn.train.checkpoint``).
- the run's **specification** (:func:`run_spec`): the model (or the loss function's name), the
  loss and backward, the optimizer (by its first update on a fixed probe gradient, which differs
  when the optimizer, its learning rate, clipping or schedule differ), batch size, shuffling,
  truncation and a fingerprint of the data set. A resume whose specification differs is refused
  with an error naming every difference, unless ``fit(..., resume_check=False)``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["checksums", "describe_differences", "run_spec", "structure", "structure_difference"]


def structure(state) -> list[list]:
    """``[path, shape, dtype]`` of every leaf of ``state`` (JSON-friendly)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(state)
    return [[jax.tree_util.keystr(path), list(np.shape(leaf)), str(jnp.result_type(leaf))] for path, leaf in flat]


def _words(leaf: jax.Array) -> jax.Array:
    """The bit patterns of ``leaf`` as a flat uint32 vector (8-byte values give two words each,
    1- and 2-byte values one word each)."""
    dtype = jnp.dtype(leaf.dtype)
    if dtype == jnp.bool_:
        leaf = leaf.astype(jnp.uint8)
        dtype = jnp.dtype(jnp.uint8)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[dtype.itemsize]
    words = jax.lax.bitcast_convert_type(leaf, unsigned)
    return words.reshape(-1).astype(jnp.uint32)


@jax.jit
def _leaf_sums(leaves: list) -> jax.Array:
    sums = []
    for leaf in leaves:
        words = _words(leaf)
        # weights 2i+1 (odd, so a flipped bit always changes the sum) make the sum depend on
        # where each word is, not only on which words there are
        weights = jnp.arange(words.shape[0], dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
        sums.append(jnp.sum(words * weights, dtype=jnp.uint32))
    return jnp.stack(sums) if sums else jnp.zeros((0,), jnp.uint32)


def checksums(state) -> list[int]:
    """One checksum per leaf of ``state`` (``structure``'s order)."""
    leaves = [jnp.asarray(leaf) for leaf in jax.tree_util.tree_leaves(state)]
    return [int(v) for v in np.asarray(jax.device_get(_leaf_sums(leaves)))]


# ----------------------------------------------------------------------------------------------
# The run's specification
# ----------------------------------------------------------------------------------------------


def _probe_tree(params, scale: float):
    """Deterministic, non-trivial values of ``params``' shapes and dtypes (host arrays)."""
    out = []
    for i, leaf in enumerate(jax.tree_util.tree_leaves(params)):
        shape, dtype = np.shape(leaf), jnp.result_type(leaf)
        n = int(np.prod(shape, dtype=np.int64))
        values = scale * (((np.arange(n) * 7 + 3 * i) % 11) - 5 + 0.5) / 5.0
        out.append(jnp.asarray(values.reshape(shape), dtype))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), out)


def _optimizer_fingerprint(optimizer, params) -> str | None:
    """A digest of the optimizer's first two updates on fixed probe params and gradients, or None
    when it cannot be computed (an optimizer that needs extra arguments)."""
    try:
        probe = _probe_tree(params, 0.5)
        grads = _probe_tree(params, 1.0)
        state = optimizer.init(probe)
        digest = hashlib.blake2b(digest_size=12)
        for _ in range(2):
            updates, state = optimizer.update(grads, state, probe)
            for leaf in jax.tree_util.tree_leaves(updates):
                # 6 significant digits: equal for the same optimizer on any machine
                digest.update(np.format_float_scientific(float(np.sum(np.abs(np.asarray(leaf, np.float64)))),
                                                         precision=5).encode())  # fmt: skip
        return digest.hexdigest()
    except Exception:  # noqa: BLE001 - an optimizer this probe cannot drive is not compared
        return None


def _data_fingerprint(arrays) -> str:
    """A digest of a data set's shapes, dtypes and bytes."""
    digest = hashlib.blake2b(digest_size=12)
    for leaf in jax.tree_util.tree_leaves(arrays):
        a = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{a.shape}{a.dtype}".encode())
        digest.update(a.view(np.uint8).reshape(-1).data if a.size else b"")
    return digest.hexdigest()


def _name(fn) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def run_spec(objective, optimizer, params, batches, truncation: int | None) -> dict[str, Any]:
    """The specification of a ``fit`` run (module docstring); JSON-friendly."""
    model = getattr(objective, "model", None)
    return {
        "model": repr(model) if model is not None else _name(objective.loss_fn),
        "loss": getattr(objective, "loss", None),
        "backward": getattr(objective, "backward", None),
        "optimizer": _optimizer_fingerprint(optimizer, params),
        "batch_size": getattr(batches, "batch_size", None),
        "shuffle": batches.shuffle,
        "truncation": truncation,
        "data": _data_fingerprint(batches.arrays) if batches.arrays is not None else _name(batches._call),
    }


_WHAT = {
    "model": "the model",
    "loss": "the loss",
    "backward": "backward",
    "optimizer": "the optimizer (its first updates on a probe gradient differ: another optimizer, "
    "learning rate, clipping or schedule)",
    "batch_size": "batch_size",
    "shuffle": "shuffle",
    "truncation": "truncation",
    "data": "the data (another data set, or another data function)",
}


def describe_differences(saved: dict | None, now: dict, saved_structure: list | None,
                         now_structure: list) -> list[str]:  # fmt: skip
    """What differs between a checkpoint's run and this one, one phrase each (empty: the same
    run). Only fields recorded in both are compared (older checkpoints record none)."""
    out = []
    for field, what in _WHAT.items():
        if saved is None or field not in saved or field not in now:
            continue
        if field == "optimizer" and (saved[field] is None or now[field] is None):
            continue  # an optimizer the probe could not drive
        if saved[field] != now[field]:
            if field in ("optimizer", "data"):
                out.append(what)
            else:
                out.append(f"{what}: {saved[field]!r} in the checkpoint, {now[field]!r} now")
    if saved_structure is not None:
        dtypes = [(a[0], a[2], b[2]) for a, b in zip(saved_structure, now_structure) if a[2] != b[2]]
        if dtypes:
            path, was, is_ = dtypes[0]
            more = f" (and {len(dtypes) - 1} more)" if len(dtypes) > 1 else ""
            out.append(f"dtype: {was} in the checkpoint, {is_} now at {path}{more}")
    return out


def structure_difference(saved_structure: list, now_structure: list) -> str | None:
    """The first difference of paths or shapes between two structures (dtypes aside), or None."""
    if len(saved_structure) != len(now_structure):
        saved_paths = {a[0] for a in saved_structure}
        now_paths = {b[0] for b in now_structure}
        missing = sorted(now_paths - saved_paths)[:1]
        extra = sorted(saved_paths - now_paths)[:1]
        detail = (f"{missing[0]} is not in the checkpoint" if missing
                  else f"the checkpoint has {extra[0]}" if extra else "")  # fmt: skip
        return f"{len(saved_structure)} arrays in the checkpoint, {len(now_structure)} now ({detail})"
    for a, b in zip(saved_structure, now_structure):
        if a[0] != b[0]:
            return f"{a[0]} in the checkpoint where {b[0]} is now"
        if list(a[1]) != list(b[1]):
            return f"{a[0]} has shape {tuple(a[1])} in the checkpoint, {tuple(b[1])} now"
    return None
