"""Training: the jitted train step, ``fit`` with truncated BPTT, checkpoints and data parallelism.

- ``make_train_step`` (``jrnn.train.step``): one jitted update with its metrics.
- ``fit`` and ``FitResult`` (``jrnn.train.fit``): the loop, progress bar, JSON-lines log, eval,
  orbax checkpoints with resume, non-finite skipping.
- ``jrnn.train.data``: the minibatch order and the device mesh; ``jrnn.train.checkpoint``: orbax.
"""

from jrnn.train.fit import FitResult, fit, new_history
from jrnn.train.step import METRICS, TARGET_RANKS, make_train_step

__all__ = ["FitResult", "METRICS", "TARGET_RANKS", "fit", "make_train_step", "new_history"]
