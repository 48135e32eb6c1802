"""Training: the jitted train step, ``fit`` with truncated BPTT, checkpoints and data parallelism.

- ``make_train_step`` (``jrnn.train.step``): one jitted update with its metrics.
- ``fit`` and ``FitResult`` (``jrnn.train.fit``): a short loop over the pieces below.
- ``jrnn.train.data``: the minibatch order and the device mesh; ``jrnn.train.log``: the history
  and the JSON-lines log; ``jrnn.train.evaluation``: periodic evaluation;
  ``jrnn.train.checkpoint``: orbax checkpoints and resume; ``jrnn.train.progress``: the bar.
"""

from jrnn.train.fit import FitResult, fit
from jrnn.train.log import new_history
from jrnn.train.step import METRICS, TARGET_RANKS, make_train_step

__all__ = ["FitResult", "METRICS", "TARGET_RANKS", "fit", "make_train_step", "new_history"]
