"""Training data for ``fit``: validation, the minibatch order, and placement on a device mesh.

``data`` is either a data set with ``N`` examples (for a ``jrnn.RNN``: a tuple ``(xs, targets[,
seq_lengths])``; for a loss function: any pytree of arrays sharing the leading axis ``N``), or a
callable that returns one batch of that kind per step: ``data(key)``, or ``data(key, step)`` when
it has a parameter named ``step`` (it then receives the step number, counting from 0, and can
replay any order of its own). Every choice is a function of the run's key and the step number
only, so a resumed run sees exactly the batches an uninterrupted one would:

- a data set is cut into minibatches of ``batch_size`` (``None``: the whole set every step).
  With ``shuffle=True`` (the default), epoch ``e`` visits the examples in the order
  ``jax.random.permutation(fold_in(key, e), N)``, in ``N // batch_size`` consecutive batches (the
  last ``N mod batch_size`` of that order are left out of the epoch); step ``s`` takes batch
  ``s mod (N // batch_size)`` of epoch ``s // (N // batch_size)``. With ``shuffle=False`` the
  examples are taken in their stored order, wrapping around the end: step ``s`` takes rows
  ``(s·batch_size + i) mod N`` for ``i < batch_size``, so no example is ever left out.
- a callable is called with ``fold_in(key, s)`` at step ``s`` (and ``step=s`` when it asks).

The batch is sharded over the leading (batch) axis of a 1-D mesh ``Mesh(devices, ("data",))``;
parameters and optimizer state are replicated. With several processes (``jax.distributed``)
``jax.make_array_from_callback`` builds each shard from the host copy of the batch, so every
process computes the same global batch and uploads only its own devices' rows; in one process
the batch is placed with one ``jax.device_put``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jrnn._checks import check_bool, check_optional_int, fail
from jrnn.train.objective import slice_rows

__all__ = ["DataParallel", "Minibatches", "takes_step"]


def takes_step(fn) -> bool:
    """Whether a data callable has a parameter named ``step``."""
    try:
        return "step" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


@functools.partial(jax.jit, static_argnums=2)
def _epoch_order(key, epoch, n: int):
    """``jax.random.permutation(fold_in(key, epoch), n)`` in one dispatch."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), n)


class Minibatches:
    """``batch(step) -> host batch``: the minibatch of ``step`` (module docstring).

    Args:
      data: a data set or a callable (module docstring).
      batch_size: rows per step for a data set (None: all of them); None for a callable.
      key: the data key (``set_key`` replaces it once the run's key is known).
      objective: what is trained (``jrnn.train.objective``); it validates every batch.
      input_size: the model's input size (None for a loss function).
      shuffle: a new random order every epoch (True) or the stored order, wrapping (False).
    """

    def __init__(self, data: Any, batch_size: int | None, key, *, objective, input_size: int | None = None,
                 shuffle: bool = True):  # fmt: skip
        self.key = key
        self.objective = objective
        self.input_size = input_size
        self.shuffle = check_bool("shuffle", shuffle)
        if callable(data) and not isinstance(data, (tuple, list)):
            if batch_size is not None:
                fail("batch_size", "None when data is a callable (it returns whole batches)",
                     repr(batch_size))  # fmt: skip
            self._call = data
            self._with_step = takes_step(data)
            self.arrays = None
            return
        self._call = None
        self.arrays = objective.check_data(data, input_size)
        n = int(jax.tree_util.tree_leaves(self.arrays)[0].shape[0])
        batch_size = check_optional_int("batch_size", batch_size)
        if batch_size is not None and batch_size > n:
            fail("batch_size", f"at most the number of examples in data ({n})", batch_size)
        self.num_examples = n
        self.batch_size = batch_size
        self._epoch = None
        self._order = None
        self._next = None

    def set_key(self, key) -> None:
        """Use ``key`` for the order from now on (``fit`` sets the run's data key once known)."""
        self.key = key
        self._epoch = None
        self._order = None
        self._next = None

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
        if not self.shuffle:
            return (step * self.batch_size + np.arange(self.batch_size)) % self.num_examples
        per_epoch = self.batches_per_epoch
        epoch, i = divmod(step, per_epoch)
        if epoch != self._epoch:
            self._order = np.asarray(self._permutation(epoch))
            self._epoch = epoch
            # dispatch the next epoch's order now: it is ready when needed, and reading it then
            # does not wait for the training steps queued on the device in between
            self._next = (epoch + 1, self._permutation(epoch + 1))
        return self._order[i * self.batch_size:(i + 1) * self.batch_size]

    def _permutation(self, epoch: int):
        if self._next is not None and self._next[0] == epoch:
            return self._next[1]
        return _epoch_order(self.key, epoch, self.num_examples)

    def batch(self, step: int):
        """The host arrays of ``step`` (for a model ``(xs, targets, seq_lengths)``, the lengths
        possibly None)."""
        if self._call is not None:
            key = jax.random.fold_in(self.key, step)
            batch = self._call(key, step=step) if self._with_step else self._call(key)
            return self.objective.check_data(batch, self.input_size, argument=f"data(key) at step {step}")
        idx = self.indices(step)
        if idx is None:
            return self.arrays
        return slice_rows(self.arrays, idx)


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
        self._local_single = len(devices) == 1 and jax.process_count() == 1

    @property
    def size(self) -> int:
        return len(self.devices)

    def replicate(self, tree):
        return jax.device_put(tree, self.replicated)

    def _put(self, tree, sharding):
        if jax.process_count() == 1:
            return jax.device_put(tree, sharding)
        return jax.tree_util.tree_map(
            lambda a: jax.make_array_from_callback(a.shape, sharding, lambda index: a[index]), tree
        )

    def check_divides(self, rows: int, argument: str = "batch_size", note: str = "") -> None:
        """``rows`` (a batch size) splits evenly over the devices; ``ValueError`` otherwise."""
        if rows % self.size:
            fail(argument, f"divisible by the number of devices ({self.size}) to shard each batch "
                 "over them", f"{rows}{note}")  # fmt: skip

    @staticmethod
    def rows(batch) -> int:
        """The leading (example) axis of a batch's first leaf."""
        return int(jax.tree_util.tree_leaves(batch)[0].shape[0])

    def feed(self, batch):
        """A training batch as the jitted step takes it: the host arrays themselves on one device
        in one process (the step's call places them, the cheapest way), sharded global arrays
        otherwise."""
        if self._local_single:
            return batch
        return self.shard_batch(batch)

    def shard_batch(self, batch, argument: str = "batch_size"):
        """Host arrays (any pytree) -> global arrays sharded over the batch axis."""
        self.check_divides(self.rows(batch), argument, " (the rows of this batch)")
        return self._put(batch, self.sharded)

    def put(self, batch):
        """Shard when the batch divides evenly over the devices, replicate otherwise (eval data)."""
        if self.rows(batch) % self.size == 0:
            return self.shard_batch(batch)
        return self._put(batch, self.replicated)

    def fetch(self, tree):
        """Replicated device values -> host NumPy (reads the local copy, so it works multi-host)."""
        return jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0)), tree)

    def fetch_all(self, tree):
        """Device values (sharded or replicated) -> whole host NumPy arrays."""
        if jax.process_count() == 1:
            return jax.tree_util.tree_map(lambda a: np.asarray(jax.device_get(a)), tree)
        from jax.experimental import multihost_utils

        return jax.tree_util.tree_map(lambda a: np.asarray(multihost_utils.process_allgather(a, tiled=True)), tree)
