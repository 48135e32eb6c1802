"""Shared test helpers: random (non-trivial) parameters and inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jrnn

KINDS = {"vanilla": jrnn.VanillaCell, "lstm": jrnn.LSTMCell, "gru": jrnn.GRUCell}


def make(kind, hidden, activation="tanh", **kwargs):
    if kind == "vanilla":
        return jrnn.VanillaCell(hidden, activation=activation, **kwargs)
    return KINDS[kind](hidden, **kwargs)


def randomize(tree, key, scale=0.5, dtype=jnp.float64):
    """Replace every leaf by N(0, scale²) values of the same shape (biases included)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, len(leaves))
    new = [scale * jax.random.normal(k, jnp.shape(a), dtype) for k, a in zip(keys, leaves)]
    return jax.tree_util.tree_unflatten(treedef, new)


def random_lengths(rng: np.random.Generator, B: int, T: int, *, allow_zero=True):
    lo = 0 if allow_zero else 1
    lengths = rng.integers(lo, T + 1, size=B)
    lengths[0] = T  # at least one full sequence
    return jnp.asarray(lengths, jnp.int32)
