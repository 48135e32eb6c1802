"""Every validator of jrnn, in one message dialect: ``{argument} must be {expected}, got {given}``.

Validation happens at the edge, once, on static shapes and (when they are concrete) values, so
that bad input raises a ``ValueError`` or ``TypeError`` naming the argument before XLA sees it.
Internal invariants are ``assert``s. This module imports nothing from jrnn.

Shape legend used across the package: ``B`` batch, ``T`` time steps, ``D`` input features,
``H`` hidden units, ``G`` gate width (``num_blocks · H``), ``O`` readout outputs.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def fail(argument: str, expected: str, given: Any, error: type = ValueError):
    """Raise ``error("{argument} must be {expected}, got {given}")``."""
    raise error(f"{argument} must be {expected}, got {given}")


def shape_of(x) -> tuple[int, ...] | None:
    """``tuple(x.shape)``, or None for objects without a shape."""
    return tuple(x.shape) if hasattr(x, "shape") else None


def is_concrete(x) -> bool:
    """False for values traced under ``jit``/``grad`` (their values cannot be checked)."""
    return not isinstance(x, jax.core.Tracer)


def _is_int(value) -> bool:
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Integral)


# --------------------------------------------------------------------------------------------
# Scalars and names


def check_int(argument: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """An int in ``[minimum, maximum]`` (no bools); returns it as a Python int."""
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        if maximum is not None:
            expected = f"an int in [{minimum}, {maximum}]"
        elif minimum == 1:
            expected = "a positive int"
        else:
            expected = f"an int >= {minimum}"
        fail(argument, expected, repr(value))
    return int(value)


def check_optional_int(argument: str, value: Any, minimum: int = 1) -> int | None:
    """None, or an int ``>= minimum``."""
    if value is None:
        return None
    if not _is_int(value) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        fail(argument, f"None or {what}", repr(value))
    return int(value)


def check_float(
    argument: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
    low_open: bool = False, high_open: bool = False, allow_none: bool = False,
) -> float | None:  # fmt: skip
    """A finite real number in the interval ``[low, high]`` (``(`` / ``)`` where open)."""
    if value is None and allow_none:
        return None
    ok = (
        isinstance(value, numbers.Real)
        and not isinstance(value, (bool, np.bool_))
        and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high)
    )
    if not ok:
        if low == -math.inf and high == math.inf:
            interval = "a finite number"
        elif high == math.inf:
            interval = f"a finite number {'>' if low_open else '>='} {low:g}"
        else:
            interval = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        fail(argument, ("None or " if allow_none else "") + interval, repr(value))
    return float(value)


def check_probability(argument: str, value: Any) -> float:
    """A dropout rate: a number in ``[0, 1)``."""
    return check_float(argument, value, 0.0, 1.0, high_open=True)


def check_bool(argument: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        fail(argument, "a bool", repr(value), TypeError)
    return bool(value)


def check_choice(argument: str, value: Any, choices: Iterable[str]) -> str:
    """One of the names in ``choices`` (a dict's keys, a tuple, ...)."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        fail(argument, f"one of {sorted(choices)}", repr(value))
    return value


def check_dtype(argument: str, dtype) -> jnp.dtype:
    """A floating dtype (anything ``jnp.dtype`` understands)."""
    try:
        dtype = jnp.dtype(dtype)
    except TypeError:
        fail(argument, "a floating dtype", repr(dtype), TypeError)
    if not jnp.issubdtype(dtype, jnp.floating):
        fail(argument, "a floating dtype", dtype, TypeError)
    return dtype


def check_key(argument: str, key: Any, *, allow_none: bool = False):
    """A ``jax.random`` key: typed (``jax.random.key``) or raw ``uint32 (2,)`` (``PRNGKey``)."""
    if key is None and allow_none:
        return None
    typed = isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    raw = isinstance(key, jax.Array) and key.shape == (2,) and key.dtype == jnp.uint32
    if not (typed and key.shape == ()) and not raw:
        given = f"{type(key).__name__} {shape_of(key) or ''}".strip()
        fail(argument, ("None or " if allow_none else "") + "a jax.random key", given, TypeError)
    return key


# --------------------------------------------------------------------------------------------
# Sequences


class Layout(NamedTuple):
    """How a sequence argument is laid out, and the moves to and from the time-major ``(T, B, ·)``
    form that ``lax.scan`` runs over. ``B = 1`` for an unbatched ``(T, D)`` sequence."""

    batched: bool
    time_major: bool
    batch_size: int
    num_steps: int

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The batch shape of carries: ``(B,)``, or ``()`` unbatched."""
        return (self.batch_size,) if self.batched else ()

    def shape(self, features: int) -> tuple[int, ...]:
        """The shape of a sequence of ``features`` per step in this layout."""
        if not self.batched:
            return (self.num_steps, features)
        B, T = self.batch_size, self.num_steps
        return (T, B, features) if self.time_major else (B, T, features)

    def to_scan(self, xs: Array) -> Array:
        """``(B, T, ·)`` / ``(T, B, ·)`` / ``(T, ·)`` -> ``(T, B, ·)``."""
        if not self.batched:
            return xs[:, None]
        return xs if self.time_major else jnp.swapaxes(xs, 0, 1)

    def from_scan(self, ys: Array) -> Array:
        """The inverse of ``to_scan``."""
        if not self.batched:
            return ys[:, 0]
        return ys if self.time_major else jnp.swapaxes(ys, 0, 1)

    def carry_to_scan(self, tree):
        """Give every leaf of a carry-shaped tree the batch axis (unbatched: ``(H,) -> (1, H)``)."""
        return tree if self.batched else jax.tree_util.tree_map(lambda a: a[None], tree)

    def carry_from_scan(self, tree):
        return tree if self.batched else jax.tree_util.tree_map(lambda a: a[0], tree)


def check_sequence(xs: Any, input_size: int | None, argument: str = "xs", *, time_major: bool = False,
                   batched_only: bool = False) -> Layout:  # fmt: skip
    """Validate a floating sequence ``(B, T, D)`` (``(T, B, D)`` time-major) or unbatched ``(T, D)``
    with ``D = input_size`` (None: any) and at least one step; return its ``Layout``."""
    shape = shape_of(xs)
    layout = "(T, B, D)" if time_major else "(B, T, D)"
    ndims = (3,) if batched_only else (2, 3)
    if shape is None or len(shape) not in ndims:
        fail(argument, layout if batched_only else f"{layout} or unbatched (T, D)", f"shape {shape}")
    if input_size is not None and shape[-1] != input_size:
        fail(argument, f"an array with input_size {input_size} in its last axis", f"shape {shape}")
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        fail(argument, "floating point", f"dtype {xs.dtype}", TypeError)
    batched = len(shape) == 3
    if not batched:
        B, T = 1, shape[0]
    else:
        T, B = (shape[0], shape[1]) if time_major else (shape[1], shape[0])
    if T == 0:
        fail(argument, "a sequence of at least one time step", f"shape {shape}")
    return Layout(batched, bool(time_major), B, T)


def check_seq_lengths(seq_lengths: Any, batch_size: int | None, num_steps: int) -> Array | None:
    """``seq_lengths``: ``(B,)`` ints in ``[0, T]`` (a scalar when unbatched, ``batch_size=None``).

    Returns them as a flat ``int32`` array (``(B,)``, or ``(1,)`` unbatched), or None.
    """
    if seq_lengths is None:
        return None
    expected = () if batch_size is None else (batch_size,)
    if shape_of(seq_lengths) is None:
        seq_lengths = np.asarray(seq_lengths)
    if shape_of(seq_lengths) != expected:
        fail("seq_lengths", f"of shape {expected} (one length per sequence)", shape_of(seq_lengths))
    if not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
        fail("seq_lengths", "integers", f"dtype {seq_lengths.dtype}", TypeError)
    if is_concrete(seq_lengths):
        values = np.asarray(seq_lengths)
        if values.size and (values.min() < 0 or values.max() > num_steps):
            fail(
                "seq_lengths", f"in [0, {num_steps}] (the number of time steps)",
                f"values in [{values.min()}, {values.max()}]",
            )  # fmt: skip
    return jnp.asarray(seq_lengths, jnp.int32).reshape(-1)


def check_truncation(truncation: Any) -> int | None:
    """None (full BPTT) or a positive int ``k`` (steps per chunk)."""
    if truncation is None:
        return None
    if not _is_int(truncation) or truncation < 1:
        fail("truncation", "None or a positive int (steps per chunk)", repr(truncation))
    return int(truncation)


def check_unroll(unroll: Any) -> int:
    return check_int("unroll", unroll)


# --------------------------------------------------------------------------------------------
# Arrays


def check_ndim(argument: str, x: Any, ndims: int | tuple[int, ...], layout: str) -> tuple[int, ...]:
    """An array with ``ndims`` axes (one of them, for a tuple); ``layout`` names the expected
    shape in the message, e.g. ``"(B, T, O)"``. Returns the shape."""
    shape = shape_of(x)
    if shape is None or len(shape) not in ((ndims,) if isinstance(ndims, int) else ndims):
        fail(argument, layout, f"shape {shape}")
    return shape


ArrayKind = Literal["floating", "integer", "real"]

_ARRAY_KINDS: dict[str, tuple[str, tuple[type, ...]]] = {
    "floating": ("floating point", (jnp.floating,)),
    "integer": ("integers", (jnp.integer,)),
    "real": ("real numbers (integer or floating point)", (jnp.integer, jnp.floating)),
}


def check_array_dtype(argument: str, x: Any, kind: ArrayKind, what: str = "") -> None:
    """An array whose dtype is of ``kind`` (bools are neither integer nor real); ``TypeError``
    otherwise. ``what`` is appended to the expectation, e.g. ``"(class indices)"``."""
    expected, bases = _ARRAY_KINDS[kind]
    dtype = getattr(x, "dtype", None)
    if dtype is None or not any(jnp.issubdtype(dtype, base) for base in bases):
        fail(argument, f"{expected} {what}".strip(), f"dtype {dtype}", TypeError)


def check_mask(mask: Any, layout: Layout) -> Array | None:
    """``mask``: booleans laid out like the sequence without its feature axis (``(B, T)``,
    ``(T, B)`` time-major, ``(T,)`` unbatched), True where a step is run. Returns it time-major
    ``(T, B)``, or None."""
    if mask is None:
        return None
    expected = layout.shape(1)[:-1]
    if shape_of(mask) is None:
        mask = np.asarray(mask)
    if shape_of(mask) != expected:
        fail("mask", f"of shape {expected} (one boolean per step, laid out like xs)", shape_of(mask))
    if not jnp.issubdtype(mask.dtype, jnp.bool_):
        fail("mask", "booleans", f"dtype {mask.dtype}", TypeError)
    mask = jnp.asarray(mask)
    if not layout.batched:
        return mask[:, None]
    return mask if layout.time_major else mask.T


def run_steps(lengths: Array | None, mask: Array | None, num_steps: int) -> Array | None:
    """What the scans take as ``steps``: lengths ``(B,)`` (the fast path) when there is no mask,
    else the ``(T, B)`` mask, restricted to ``t < lengths[b]`` when both are given."""
    if mask is None:
        return lengths
    if lengths is None:
        return mask
    return mask & (jnp.arange(num_steps)[:, None] < lengths[None, :])
