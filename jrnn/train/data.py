"""Training data for ``fit``: validation, the minibatch order, and placement on a device mesh.

``data`` is either a tuple of arrays ``(xs, targets[, seq_lengths])`` with ``N`` examples, or a
callable ``(key) -> batch`` returning such a tuple. Every random choice is a function of the run's
key and the step number only, so a resumed run sees exactly the batches an uninterrupted one would:

- a tuple is cut into minibatches of ``batch_size`` (``None``: the whole set every step). Epoch
  ``e`` visits the examples in the order ``jax.random.permutation(fold_in(key, e), N)``, in
  ``N // batch_size`` consecutive batches (the last ``N mod batch_size`` of that order are left
  out of the epoch); step ``s`` takes batch ``s mod (N // batch_size)`` of epoch
  ``s // (N // batch_size)``.
- a callable is called with ``fold_in(key, s)`` at step ``s``.

The batch is sharded over the leading (batch) axis of a 1-D mesh ``Mesh(devices, ("data",))``;
parameters and optimizer state are replicated. ``jax.make_array_from_callback`` builds each shard
from the host copy of the batch, so with several processes (``jax.distributed``) every process
computes the same global batch and uploads only its own devices' rows.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jrnn._checks import check_optional_int, fail, shape_of
from jrnn.train.step import every_step_targets

__all__ = ["DataParallel", "Minibatches", "check_batch_tuple"]


def check_batch_tuple(
    batch: Any, loss: str, input_size: int, output_size: int, argument: str = "data"
) -> tuple:
    """Validate a batch of examples for a model with ``input_size`` features in, ``output_size`` out.

    Args:
      batch: ``(xs (N, T, D), targets[, seq_lengths (N,)])``.
      loss: ``"mse"`` or ``"cross_entropy"`` (which targets are valid).
      input_size: ``D``.
      output_size: the model's ``out_size`` (``O``, or the number of classes).
      argument: the name of ``batch`` in error messages.

    Returns:
      ``(xs, targets, seq_lengths)`` as host NumPy arrays, ``seq_lengths`` possibly None.

    Raises:
      TypeError: not a tuple of 2 or 3, arrays of the wrong kind. ValueError: wrong shapes or
        values.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        got = type(batch).__name__
        if isinstance(batch, (tuple, list)):
            got = f"a {got} of length {len(batch)}"
        fail(argument, "a tuple (xs, targets[, seq_lengths])", got, TypeError)
    xs, targets = batch[0], batch[1]
    seq_lengths = batch[2] if len(batch) == 3 else None
    xs_shape = shape_of(xs)
    if xs_shape is None or len(xs_shape) != 3:
        fail(f"xs of {argument}", "(N, T, D)", f"shape {xs_shape}")
    if xs_shape[0] == 0 or xs_shape[1] == 0:
        fail(f"xs of {argument}", "at least one sequence of one step", f"shape {xs_shape}")
    if xs_shape[2] != input_size:
        fail(f"xs of {argument}", f"(N, T, D) with D = {input_size} (the model's input size)",
             f"shape {xs_shape}")  # fmt: skip
    xs = np.asarray(xs)
    if not np.issubdtype(xs.dtype, np.floating):
        fail(f"xs of {argument}", "floating point", f"dtype {xs.dtype}", TypeError)
    if shape_of(targets) is None:
        fail(f"targets of {argument}", "an array", type(targets).__name__, TypeError)
    targets = np.asarray(targets)
    every_step_targets(loss, xs_shape, targets, output_size, argument=f"targets of {argument}")
    if seq_lengths is not None:
        seq_lengths = _check_lengths(seq_lengths, xs_shape, f"seq_lengths of {argument}")
    if loss == "cross_entropy" and targets.size:
        # labels at unscored (padded) steps may hold anything, so the lower bound is only
        # checked when every step is scored
        low = 0 if seq_lengths is None else -np.inf
        if targets.max() >= output_size or targets.min() < low:
            fail(
                f"labels of {argument}",
                f"class indices in [0, {output_size}) (the model's out_size)",
                f"values in [{targets.min()}, {targets.max()}]",
            )
    return xs, targets, seq_lengths


def _check_lengths(seq_lengths, xs_shape: tuple, argument: str) -> np.ndarray:
    """``(N,)`` integers in ``[0, T]``, as a host array of their own dtype."""
    if shape_of(seq_lengths) != xs_shape[:1]:
        fail(argument, f"of shape ({xs_shape[0]},)", shape_of(seq_lengths))
    seq_lengths = np.asarray(seq_lengths)
    if not np.issubdtype(seq_lengths.dtype, np.integer):
        fail(argument, "integers", f"dtype {seq_lengths.dtype}", TypeError)
    if seq_lengths.min() < 0 or seq_lengths.max() > xs_shape[1]:
        fail(argument, f"in [0, {xs_shape[1]}]", f"values in [{seq_lengths.min()}, {seq_lengths.max()}]")
    return seq_lengths


class Minibatches:
    """``batch(step) -> (xs, targets, seq_lengths)``: the minibatch of ``step`` (module docstring)."""

    def __init__(
        self, data: Any, batch_size: int | None, key, *, loss: str, input_size: int, output_size: int
    ):
        self.key = key
        self.loss = loss
        self.input_size = input_size
        self.output_size = output_size
        if callable(data) and not isinstance(data, (tuple, list)):
            if batch_size is not None:
                fail("batch_size", "None when data is a callable (it returns whole batches)",
                     repr(batch_size))  # fmt: skip
            self._call = data
            self.arrays = None
            return
        self._call = None
        self.arrays = check_batch_tuple(data, loss, input_size, output_size)
        n = self.arrays[0].shape[0]
        batch_size = check_optional_int("batch_size", batch_size)
        if batch_size is not None and batch_size > n:
            fail("batch_size", f"at most the number of examples in data ({n})", batch_size)
        self.num_examples = n
        self.batch_size = batch_size
        self._epoch = None
        self._order = None

    def set_key(self, key) -> None:
        """Use ``key`` for the order from now on (``fit`` sets the run's data key once known)."""
        self.key = key
        self._epoch = None
        self._order = None

    @property
    def rows(self) -> int | None:
        """The number of examples in each batch (None for callable data: known per batch)."""
        if self.arrays is None:
            return None
        return self.num_examples if self.batch_size is None else self.batch_size

    @property
    def batches_per_epoch(self) -> int | None:
        if self.arrays is None or self.batch_size is None:
            return None
        return self.num_examples // self.batch_size

    def indices(self, step: int) -> np.ndarray | None:
        """The example indices of ``step`` (None: the whole set, in its stored order)."""
        if self.batch_size is None:
            return None
        per_epoch = self.batches_per_epoch
        epoch, i = divmod(step, per_epoch)
        if epoch != self._epoch:
            k_epoch = jax.random.fold_in(self.key, epoch)
            self._order = np.asarray(jax.random.permutation(k_epoch, self.num_examples))
            self._epoch = epoch
        return self._order[i * self.batch_size:(i + 1) * self.batch_size]

    def batch(self, step: int) -> tuple:
        """The host arrays ``(xs, targets, seq_lengths)`` of ``step`` (``seq_lengths`` may be None)."""
        if self._call is not None:
            batch = self._call(jax.random.fold_in(self.key, step))
            return check_batch_tuple(
                batch, self.loss, self.input_size, self.output_size, argument=f"data(key) at step {step}"
            )
        idx = self.indices(step)
        if idx is None:
            return self.arrays
        return tuple(None if a is None else a[idx] for a in self.arrays)


class DataParallel:
    """A 1-D mesh ``("data",)`` over ``devices``: batches sharded on axis 0, the rest replicated."""

    def __init__(self, devices: Sequence[jax.Device] | None = None):
        if devices is None:
            devices = jax.local_devices()
        devices = list(devices)
        if not devices or not all(isinstance(d, jax.Device) for d in devices):
            fail("devices", "None or a non-empty sequence of jax.Device", repr(devices), TypeError)
        self.devices = devices
        self.mesh = Mesh(np.array(devices), ("data",))
        self.sharded = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    @property
    def size(self) -> int:
        return len(self.devices)

    def replicate(self, tree):
        return jax.device_put(tree, self.replicated)

    def _put(self, a: np.ndarray, sharding):
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    def check_divides(self, rows: int, argument: str = "batch_size", note: str = "") -> None:
        """``rows`` (a batch size) splits evenly over the devices; ``ValueError`` otherwise."""
        if rows % self.size:
            fail(argument, f"divisible by the number of devices ({self.size}) to shard each batch "
                 "over them", f"{rows}{note}")  # fmt: skip

    def shard_batch(self, batch: tuple, argument: str = "batch_size"):
        """Host arrays -> global arrays sharded over the batch axis (None stays None)."""
        self.check_divides(batch[0].shape[0], argument, " (the rows of this batch)")
        return tuple(None if a is None else self._put(a, self.sharded) for a in batch)

    def put(self, batch: tuple):
        """Shard when the batch divides evenly over the devices, replicate otherwise (eval data)."""
        if batch[0].shape[0] % self.size == 0:
            return self.shard_batch(batch)
        return tuple(None if a is None else self._put(a, self.replicated) for a in batch)

    def fetch(self, tree):
        """Replicated device values -> host NumPy (reads the local copy, so it works multi-host)."""
        return jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0)), tree)

