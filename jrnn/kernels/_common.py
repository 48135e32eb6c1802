"""What the fused layers share: their checks, the compute dtype, and flipping sequences."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jrnn._checks import fail

Array = jax.Array


def on_gpu() -> bool:
    """Whether JAX's default backend is a GPU (where traced computations run by default)."""
    return jax.default_backend() == "gpu"


def check_common(name: str, cell, lengths, remat: bool, kinds: tuple[type, ...]) -> None:
    """The checks every fused layer makes, at trace time: the cell's type and options, lengths
    rather than a ``(T, B)`` mask, no ``remat``."""
    option = f"backward={name!r}"
    if not isinstance(cell, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        fail(f"the cell for {option}", f"a {names}", type(cell).__name__)
    plain = getattr(cell, "_plain", True) and not getattr(cell, "layer_norm", False)  # GRU: reset_after too
    if not plain:
        fail(f"the cell for {option}", "a cell without options (proj_size, peepholes, layer_norm, "
             "reset_after=False are not in the fused kernel)", repr(cell))  # fmt: skip
    if lengths is not None and lengths.ndim == 2:
        fail(f"mask with {option}", "None (the fused layer takes seq_lengths only)", "a (T, B) mask")
    if remat:
        fail(f"remat with {option}", "False (the fused layer keeps its own residuals)", True)


def compute_dtype(xs: Array, params) -> jnp.dtype:
    """The dtype the layer computes in: ``xs``'s promoted with every parameter's."""
    return jnp.result_type(xs.dtype, *(a.dtype for a in jax.tree_util.tree_leaves(params)))


def full_lengths(lengths, num_steps: int, batch_size: int) -> Array:
    """``(B,)`` int32 lengths, ``num_steps`` for every sequence when ``lengths`` is None."""
    if lengths is None:
        return jnp.full((batch_size,), num_steps, jnp.int32)
    return lengths.astype(jnp.int32)


def flip_within(xs: Array, lengths: Array) -> Array:
    """Each sequence of ``xs (T, B, ·)`` reversed within its own length ``lengths (B,)``: step
    ``t < n`` takes step ``n - 1 - t``; padding stays where it is. Its own inverse."""
    T = xs.shape[0]
    t = jnp.arange(T)[:, None]  # (T, 1)
    n = lengths[None, :]  # (1, B)
    idx = jnp.where(t < n, n - 1 - t, t)  # (T, B)
    return jnp.take_along_axis(xs, idx[..., None], axis=0)


def valid_steps(lengths: Array, num_steps: int) -> Array:
    """``(T, B)`` booleans: step t of sequence b runs (``t < lengths[b]``)."""
    return jnp.arange(num_steps)[:, None] < lengths[None, :]
