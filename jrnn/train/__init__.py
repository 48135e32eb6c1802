"""Training: the jitted train step, ``fit`` with truncated BPTT, evaluation, checkpoints and data
parallelism, for a ``jrnn.RNN`` with a loss name or any loss function over any params pytree.

- ``make_train_step`` (``jrnn.train.step``): one jitted update with its metrics.
- ``fit``, ``FitResult`` and ``FitInterrupted`` (``jrnn.train.fit``): a short loop over the
  pieces below.
- ``evaluate`` and ``predict`` (``jrnn.train.evaluation``): the loss and ``jrnn.metrics`` over a
  data set, and outputs over a data set, batched.
- ``EarlyStopping`` (``jrnn.train.stopping``): patience on an evaluation metric.
- ``jrnn.train.objective``: a model with a loss name or a loss function, and what ``aux`` holds;
  ``jrnn.train.data``: the minibatch order and the device mesh; ``jrnn.train.log``: the history
  and the JSON-lines log; ``jrnn.train.checkpoint``: orbax checkpoints, resume, ``restore`` and ``Damaged``;
  ``jrnn.train.runspec``: what a checkpoint records of its run;
  ``jrnn.train.progress``: the bar.
"""

from jrnn.train.checkpoint import Damaged, restore
from jrnn.train.evaluation import evaluate, predict
from jrnn.train.fit import FitInterrupted, FitResult, fit
from jrnn.train.log import new_history
from jrnn.train.objective import TARGET_RANKS
from jrnn.train.step import METRICS, make_train_step
from jrnn.train.stopping import EarlyStopping

__all__ = [
    "METRICS",
    "TARGET_RANKS",
    "Damaged",
    "EarlyStopping",
    "FitInterrupted",
    "FitResult",
    "evaluate",
    "fit",
    "make_train_step",
    "new_history",
    "predict",
    "restore",
]
