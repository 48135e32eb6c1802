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

import numbers
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jrnn.train.step import every_step_targets

__all__ = ["DataParallel", "Minibatches", "check_batch_tuple"]


def _shape(a) -> tuple | None:
    shape = getattr(a, "shape", None)
    return None if shape is None else tuple(shape)


def check_batch_tuple(
    batch: Any, loss: str, input_size: int, output_size: int, argument: str = "data"
) -> tuple:
    """Validate ``(xs, targets[, seq_lengths])`` for a model with ``input_size`` features in and
    ``output_size`` out; return it as host NumPy arrays (3 entries, ``seq_lengths`` possibly None)."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        got = type(batch).__name__
        if isinstance(batch, (tuple, list)):
            got = f"a {got} of length {len(batch)}"
        raise TypeError(f"{argument} must be a tuple (xs, targets[, seq_lengths]), got {got}")
    xs, targets = batch[0], batch[1]
    seq_lengths = batch[2] if len(batch) == 3 else None
    xs_shape = _shape(xs)
    if xs_shape is None or len(xs_shape) != 3:
        raise ValueError(f"{argument}: xs must be (N, T, D), got shape {xs_shape}")
    if xs_shape[0] == 0 or xs_shape[1] == 0:
        raise ValueError(f"{argument}: xs must hold at least one sequence of one step, got shape {xs_shape}")
    if xs_shape[2] != input_size:
        raise ValueError(
            f"{argument}: xs must have D = {input_size} features (the model's input size), "
            f"got shape {xs_shape}"
        )
    xs = np.asarray(xs)
    if not np.issubdtype(xs.dtype, np.floating):
        raise TypeError(f"{argument}: xs must be floating point, got dtype {xs.dtype}")
    if _shape(targets) is None:
        raise TypeError(f"{argument}: targets must be an array, got {type(targets).__name__}")
    targets = np.asarray(targets)
    every_step_targets(loss, xs_shape, targets, output_size, argument=f"{argument}: targets")
    if seq_lengths is not None:
        l_shape = _shape(seq_lengths)
        if l_shape != xs_shape[:1]:
            raise ValueError(f"{argument}: seq_lengths must have shape ({xs_shape[0]},), got {l_shape}")
        seq_lengths = np.asarray(seq_lengths)
        if not np.issubdtype(seq_lengths.dtype, np.integer):
            raise TypeError(f"{argument}: seq_lengths must be integers, got dtype {seq_lengths.dtype}")
        if seq_lengths.min() < 0 or seq_lengths.max() > xs_shape[1]:
            raise ValueError(
                f"{argument}: seq_lengths must lie in [0, {xs_shape[1]}], "
                f"got values in [{seq_lengths.min()}, {seq_lengths.max()}]"
            )
    if loss == "cross_entropy" and targets.size:
        # labels at unscored (padded) steps may hold anything, so the lower bound is only
        # checked when every step is scored
        low = 0 if seq_lengths is None else -np.inf
        if targets.max() >= output_size or targets.min() < low:
            raise ValueError(
                f"{argument}: labels must be class indices in [0, {output_size}) (the model's "
                f"out_size), got values in [{targets.min()}, {targets.max()}]"
            )
    return xs, targets, seq_lengths


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
                raise ValueError(
                    "batch_size must be None when data is a callable (it returns whole batches), "
                    f"got {batch_size!r}"
                )
            self._call = data
            self.arrays = None
            return
        self._call = None
        self.arrays = check_batch_tuple(data, loss, input_size, output_size)
        n = self.arrays[0].shape[0]
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
                raise ValueError(f"batch_size must be None or a positive int, got {batch_size!r}")
            if batch_size > n:
                raise ValueError(
                    f"batch_size must be at most the number of examples in data ({n}), got {batch_size}"
                )
            batch_size = int(batch_size)
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
            raise TypeError(f"devices must be None or a non-empty sequence of jax.Device, got {devices!r}")
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

    def shard_batch(self, batch: tuple, argument: str = "batch_size"):
        """Host arrays -> global arrays sharded over the batch axis (None stays None)."""
        b = batch[0].shape[0]
        if b % self.size:
            raise ValueError(
                f"{argument} must be divisible by the number of devices ({self.size}) to shard the "
                f"batch over them, got a batch of {b}"
            )
        return tuple(None if a is None else self._put(a, self.sharded) for a in batch)

    def put(self, batch: tuple):
        """Shard when the batch divides evenly over the devices, replicate otherwise (eval data)."""
        if batch[0].shape[0] % self.size == 0:
            return self.shard_batch(batch)
        return tuple(None if a is None else self._put(a, self.replicated) for a in batch)

    def fetch(self, tree):
        """Replicated device values -> host NumPy (reads the local copy, so it works multi-host)."""
        return jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0)), tree)

