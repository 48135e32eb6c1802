"""What training and evaluation work on: a ``jrnn.RNN`` with a loss name, or a loss function.

``fit``, ``make_train_step``, ``evaluate`` take ``model_or_loss_fn``:

- a ``jrnn.RNN`` with ``loss="mse"`` or ``"cross_entropy"`` (``jrnn.losses``): the data are
  ``(xs (N, T, D), targets[, seq_lengths (N,)])``; the targets' rank picks every-step or last-step
  scoring; a model that pools each sequence into one output (``RNN(pool=...)``) takes
  sequence-level targets ``(N, O)`` or labels ``(N,)``. A 2-D ``xs (N, T)`` is an error that
  suggests ``xs[..., None]`` (one feature per step), never an unbatched reading.
- a **loss function** ``loss_fn(params, batch, key) -> loss`` or ``-> (loss, aux)`` over any
  params pytree (a Flax, Equinox or NNX head on jrnn layers, say). ``batch`` is what the data give:
  any pytree of arrays sharing a leading example axis (a tuple ``(xs, targets[, seq_lengths])``,
  a dict, ...). ``key`` is a fresh ``jax.random`` key at every training step (for dropout) and
  ``None`` in ``evaluate`` (no dropout). ``loss`` is a scalar; ``aux``, a dict, may hold:

  - ``"preds"``: predictions, from which the named ``jrnn.metrics`` are computed against the
    batch's ``targets`` and ``seq_lengths`` (the batch must then be ``(xs, targets[,
    seq_lengths])``);
  - a metric's name: a scalar the function computed itself for the batch (it wins over
    ``"preds"``; averaged over batches weighted by their rows, over chunks by their steps);
  - ``"carry"``: the state reached, for truncated BPTT (below).

  **Truncated BPTT** with a loss function needs it to expose its carry: a parameter named
  ``carry`` (``loss_fn(params, batch, key, carry)``, ``None`` at the first chunk of every batch)
  and ``aux["carry"]`` returned; anything else raises a ``TypeError`` naming what is missing.
  The batch is then ``(xs, targets[, seq_lengths])``: ``xs (B, T, ...)`` is cut along time into
  chunks of ``k`` steps (the last one shorter when ``k`` does not divide ``T``), ``targets`` too
  when their first two axes are ``(B, T)`` (otherwise each chunk gets them whole: what a chunk
  scores is the function's choice), and ``seq_lengths`` becomes each chunk's local lengths
  ``clip(L - c·k, 0, size)``. A function that does not take ``carry`` gets none.

Weights. A model's loss is a mean over its scored elements, so a batch weighs its number of
scored steps (the loss over several batches or chunks is then the loss over all of them); a loss
function's batch weighs its number of rows in ``evaluate`` and a chunk its number of steps in
truncated training.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jrnn._checks import check_choice, fail, is_concrete, shape_of
from jrnn.losses import get_loss
from jrnn.metrics import Metric, get_metric
from jrnn.network import RNN
from jrnn.unroll import BACKWARDS

__all__ = [
    "FunctionObjective",
    "ModelObjective",
    "TARGET_RANKS",
    "as_objective",
    "check_metrics",
    "output_loss",
]

Array = jax.Array

TARGET_RANKS: dict[str, int] = {"mse": 3, "cross_entropy": 2}
"""Rank of every-step targets per loss; one less means last-step targets (see jrnn.losses)."""

RESERVED = ("loss", "grad_norm", "clipped", "finite", "num_updates", "num_clipped", "num_nonfinite", "step")
"""Names a requested metric may not take (the train step's own metrics, and ``step``)."""


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------


def check_metrics(metrics: Any) -> tuple[Metric, ...]:
    """``metrics``: a name, a ``jrnn.metrics.Metric``, or a sequence of them -> unique ``Metric``s.

    Raises:
      TypeError: not a name, a Metric or a sequence. ValueError: an unknown, repeated or
        reserved name (``loss`` is always reported).
    """
    if isinstance(metrics, (str, Metric)):
        metrics = (metrics,)
    if not isinstance(metrics, (tuple, list)):
        fail("metrics", "a sequence of metric names (jrnn.metrics.METRICS) or jrnn.metrics.Metric",
             type(metrics).__name__, TypeError)  # fmt: skip
    out = tuple(get_metric(m) for m in metrics)
    names = [m.name for m in out]
    for name in names:
        if name in RESERVED:
            fail("metrics", f"names other than {list(RESERVED)} (the loss is always reported)", repr(name))
    if len(set(names)) != len(names):
        fail("metrics", "distinct names", names)
    return out


def _takes_carry(fn: Callable) -> bool:
    try:
        return "carry" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a callable without a signature
        return False


def as_objective(model_or_loss_fn: Any, loss: str | None, backward: str | None):
    """A ``ModelObjective`` or a ``FunctionObjective`` (module docstring).

    Args:
      model_or_loss_fn: a ``jrnn.RNN`` or a loss function.
      loss: for a model, ``"mse"`` (None) or ``"cross_entropy"``; must be None for a function.
      backward: for a model, ``"bptt"`` (None) or ``"autodiff"``; must be None for a function.

    Raises:
      TypeError: neither a ``jrnn.RNN`` nor a callable; ``loss`` or ``backward`` given with a
        loss function. ValueError: an unknown ``loss`` or ``backward``.
    """
    if isinstance(model_or_loss_fn, RNN):
        loss = "mse" if loss is None else loss
        backward = "bptt" if backward is None else backward
        check_choice("loss", loss, TARGET_RANKS)
        check_choice("backward", backward, BACKWARDS)
        return ModelObjective(model_or_loss_fn, loss, backward)
    if not callable(model_or_loss_fn):
        fail("model_or_loss_fn", "a jrnn.RNN or a loss function loss_fn(params, batch, key)",
             type(model_or_loss_fn).__name__, TypeError)  # fmt: skip
    for name, value in (("loss", loss), ("backward", backward)):
        if value is not None:
            fail(name, "left out with a loss function (it belongs to a jrnn.RNN; the function "
                 "computes its own loss and gradient path)", repr(value), TypeError)  # fmt: skip
    return FunctionObjective(model_or_loss_fn, _takes_carry(model_or_loss_fn))


def _first_rows(tree) -> int:
    return int(shape_of(jax.tree_util.tree_leaves(tree)[0])[0])


def slice_rows(batch, index):
    """Every leaf of a host batch indexed along its leading axis (None stays None)."""
    if type(batch) is tuple:  # the common case, without the pytree machinery
        return tuple(None if a is None else a[index] for a in batch)
    return jax.tree_util.tree_map(lambda a: a[index], batch)


# ----------------------------------------------------------------------------------------------
# A model and a loss name
# ----------------------------------------------------------------------------------------------


def output_loss(loss_fn: Callable, ys: Array, targets: Array, lengths: Array | None) -> Array:
    """``loss_fn`` of ``jrnn.losses`` on a model's outputs: per step ``(B, T, ·)`` as they are; one
    output per sequence ``(B, ·)`` (a pooled model) as a sequence of one step, scored when its
    length is above 0."""
    if ys.ndim == 2:
        return loss_fn(ys[:, None], targets, None if lengths is None else jnp.minimum(lengths, 1))
    return loss_fn(ys, targets, lengths)


def num_scored(every: bool, lengths: Array | None, batch: int, steps: int) -> Array:
    """The number of scored steps (``N`` of ``jrnn.losses``), as an int32 scalar."""
    if lengths is None:
        return jnp.asarray(batch * steps if every else batch, jnp.int32)
    return jnp.sum(lengths) if every else jnp.sum((lengths > 0).astype(jnp.int32))


def target_shapes(loss: str, batch: int, steps: int, output_size: int, pooled: bool) -> dict:
    """``{shape: (every_step, layout name)}`` of the valid targets."""
    if loss == "cross_entropy":
        every, last, names = (batch, steps), (batch,), ("labels (B, T)", "labels (B,)")
    else:
        every, last, names = (batch, steps, output_size), (batch, output_size), ("(B, T, O)", "(B, O)")
    if pooled:
        return {last: (False, names[1])}
    return {every: (True, names[0]), last: (False, names[1])}


@dataclasses.dataclass(frozen=True)
class ModelObjective:
    """A ``jrnn.RNN`` trained on a loss of ``jrnn.losses`` (module docstring). Hashable."""

    model: RNN
    loss: str
    backward: str

    @property
    def pooled(self) -> bool:
        """Whether the model gives one output per sequence (``RNN(pool=...)``)."""
        return getattr(self.model, "pool", None) is not None

    @property
    def uses_key(self) -> bool:
        """Whether a step needs a dropout key."""
        return any(getattr(self.model, name, 0.0) > 0 for name in ("dropout", "input_dropout", "recurrent_dropout"))

    @property
    def loss_fn(self) -> Callable:
        return get_loss(self.loss).loss

    def check_params(self, params) -> int:
        """The model's check; returns the input size."""
        return self.model.check_params(params)

    def every_step(self, xs_shape, targets, argument: str = "targets") -> bool:
        """Whether ``targets`` score every step (True) or the last one, or the sequence (False).

        Raises:
          ValueError: another shape. TypeError: non-integer labels for cross-entropy.
        """
        B, T = xs_shape[:2]
        shapes = target_shapes(self.loss, B, T, self.model.out_size, self.pooled)
        shape = tuple(jnp.shape(targets))
        if shape not in shapes:
            valid = " or ".join(f"{name} = {s}" for s, (_, name) in shapes.items())
            what = " (the model pools each sequence into one output)" if self.pooled else ""
            fail(
                f"{argument} for loss={self.loss!r}",
                f"{valid} for xs of shape {tuple(xs_shape)} and a model with out_size "
                f"{self.model.out_size}{what}",
                f"shape {shape}",
            )
        dtype = getattr(targets, "dtype", None)
        if self.loss == "cross_entropy" and not jnp.issubdtype(dtype, jnp.integer):
            fail(f"{argument} for loss='cross_entropy'", "integer class labels", f"dtype {dtype}", TypeError)
        return shapes[shape][0]

    def check_data(self, batch: Any, input_size: int, argument: str = "data") -> tuple:
        """Validate ``(xs (N, T, D), targets[, seq_lengths (N,)])``; return host NumPy arrays
        ``(xs, targets, seq_lengths or None)``.

        Raises:
          TypeError: not a tuple of 2 or 3, arrays of the wrong kind. ValueError: wrong shapes
            or values (a 2-D ``xs`` with a hint to add the feature axis).
        """
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            got = type(batch).__name__
            if isinstance(batch, (tuple, list)):
                got = f"a {got} of length {len(batch)}"
            fail(argument, "a tuple (xs, targets[, seq_lengths])", got, TypeError)
        xs, targets = batch[0], batch[1]
        seq_lengths = batch[2] if len(batch) == 3 else None
        xs_shape = shape_of(xs)
        if xs_shape is not None and len(xs_shape) == 2:
            fail(f"xs of {argument}", f"(N, T, D): N sequences of T steps of D features (a 2-D "
                 f"array is not read as one unbatched sequence here; for a univariate series "
                 f"pass xs[..., None], of shape {(*xs_shape, 1)})", f"shape {xs_shape}")  # fmt: skip
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
        self.every_step(xs_shape, targets, argument=f"targets of {argument}")
        if seq_lengths is not None:
            seq_lengths = _check_lengths(seq_lengths, xs_shape, f"seq_lengths of {argument}")
        self._check_labels(targets, seq_lengths, f"labels of {argument}")
        return xs, targets, seq_lengths

    def _check_labels(self, targets: np.ndarray, seq_lengths, argument: str) -> None:
        """For cross-entropy, class indices below the model's ``out_size`` (and not negative
        when every step is scored: labels at padded steps may hold anything)."""
        if self.loss != "cross_entropy" or not targets.size:
            return
        low = 0 if seq_lengths is None else -np.inf
        out = self.model.out_size
        if targets.max() >= out or targets.min() < low:
            fail(argument, f"class indices in [0, {out}) (the model's out_size)",
                 f"values in [{targets.min()}, {targets.max()}]")  # fmt: skip

    def check_values(self, xs, targets, seq_lengths) -> None:
        """The value checks of ``check_data`` that a jitted step cannot make (``seq_lengths`` in
        ``[0, T]``, labels in range), on concrete arguments only; reads only the lengths and the
        labels to the host, never ``xs``. Shapes are checked in the step's trace."""
        xs_shape = shape_of(xs)
        if xs_shape is None or len(xs_shape) != 3:
            return  # the trace reports it
        if seq_lengths is not None and is_concrete(seq_lengths) and shape_of(seq_lengths) is not None:
            seq_lengths = _check_lengths(seq_lengths, xs_shape, "seq_lengths")
        elif seq_lengths is not None and shape_of(seq_lengths) is None:
            return  # not an array: the trace reports it
        if self.loss == "cross_entropy" and shape_of(targets) is not None and is_concrete(targets):
            labels = np.asarray(targets)
            if np.issubdtype(labels.dtype, np.integer):
                self._check_labels(labels, seq_lengths, "targets")

    def check_metrics(self, metrics: tuple[Metric, ...]) -> None:
        """Classification metrics (``accuracy``, top-k) go with ``cross_entropy``, regression
        metrics (``mse``, ``mae``, ``rmse``) with ``mse``; ``ValueError`` otherwise."""
        for m in metrics:
            if m.labels != (self.loss == "cross_entropy"):
                kind = "classification" if m.labels else "regression"
                fail("metrics", f"metrics that fit loss={self.loss!r} ({m.name!r} is a {kind} metric, "
                     f"for loss={'cross_entropy' if m.labels else 'mse'!r})", repr(m.name))  # fmt: skip

    def outputs(self, params, xs, seq_lengths=None) -> Array:
        """The model's outputs, no dropout (traced)."""
        return self.model.apply(params, xs, seq_lengths=seq_lengths, backward=self.backward)[0]

    def scores(self, params, batch: tuple, metrics: tuple[Metric, ...]):
        """``(loss, weight, {name: (total, count)})`` of one batch, no dropout (traced)."""
        xs, targets, lengths = batch
        ys = self.outputs(params, xs, lengths)
        every = self.every_step(xs.shape, targets)
        weight = num_scored(every, None if lengths is None else jnp.asarray(lengths, jnp.int32),
                            xs.shape[0], xs.shape[1])  # fmt: skip
        value = output_loss(self.loss_fn, ys, targets, lengths)
        return value, weight, {m.name: m.parts(ys, targets, lengths) for m in metrics}


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


# ----------------------------------------------------------------------------------------------
# A loss function
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FunctionObjective:
    """A loss function ``loss_fn(params, batch, key[, carry])`` (module docstring). Hashable (by
    the function's identity)."""

    loss_fn: Callable
    takes_carry: bool

    pooled = False
    uses_key = True

    def check_params(self, params) -> None:
        """Any pytree with at least one array leaf."""
        leaves = jax.tree_util.tree_leaves(params)
        if not leaves or not all(shape_of(a) is not None for a in leaves):
            fail("params", "a pytree of arrays (the loss function's parameters)",
                 f"{type(params).__name__} with leaves {[type(a).__name__ for a in leaves][:5]}", TypeError)  # fmt: skip

    def check_data(self, batch: Any, input_size=None, argument: str = "data"):
        """Any pytree of arrays with one leading (example) axis shared by every leaf; returns it
        with host NumPy leaves."""
        leaves = jax.tree_util.tree_leaves(batch)
        shapes = [shape_of(a) for a in leaves]
        if not leaves or any(s is None or len(s) == 0 for s in shapes):
            fail(argument, "a pytree of arrays with a leading example axis (a tuple (xs, targets), "
                 "a dict, ...)", f"leaves of shapes {shapes[:5]}", TypeError)  # fmt: skip
        rows = {s[0] for s in shapes}
        if len(rows) != 1 or 0 in rows:
            fail(argument, "arrays with one shared, non-zero number of rows (their leading axis)",
                 f"leaves of shapes {shapes[:5]}")  # fmt: skip
        return jax.tree_util.tree_map(np.asarray, batch)

    def call(self, params, batch, key, carry=None) -> tuple[Array, dict]:
        """``loss_fn`` as ``(loss, aux dict)``, validated (traced)."""
        out = self.loss_fn(params, batch, key, carry=carry) if self.takes_carry else self.loss_fn(params, batch, key)
        if isinstance(out, tuple) and len(out) == 2:
            value, aux = out
        else:
            value, aux = out, {}
        if aux is None:
            aux = {}
        if not isinstance(aux, dict):
            fail("the aux that loss_fn returns", "a dict (e.g. {'preds': ..., 'carry': ...})",
                 type(aux).__name__, TypeError)  # fmt: skip
        if shape_of(value) != () or not jnp.issubdtype(jnp.result_type(value), jnp.floating):
            fail("the loss that loss_fn returns", "a floating scalar (or a (loss, aux) pair)",
                 f"{type(value).__name__} of shape {shape_of(value)}", TypeError)  # fmt: skip
        return value, aux

    def check_metrics(self, metrics: tuple[Metric, ...]) -> None:
        """Any metric: the function's ``aux`` provides it (checked when it first runs)."""

    def metric_parts(self, aux: dict, batch, metrics: tuple[Metric, ...], weight) -> dict:
        """``{name: (total, count)}`` from ``aux`` (module docstring)."""
        out = {}
        for m in metrics:
            if m.name in aux:
                value = jnp.asarray(aux[m.name])
                if value.shape != ():
                    fail(f"aux[{m.name!r}] of loss_fn", "a scalar", f"shape {value.shape}")
                w = jnp.asarray(weight, value.dtype)
                out[m.name] = (value * w, w)
            elif "preds" in aux:
                if not (isinstance(batch, (tuple, list)) and len(batch) in (2, 3)):
                    fail(f"the batch for metric {m.name!r}", "a tuple (xs, targets[, seq_lengths]) "
                         "to score aux['preds'] against", type(batch).__name__, TypeError)  # fmt: skip
                lengths = batch[2] if len(batch) == 3 else None
                out[m.name] = m.parts(aux["preds"], batch[1], lengths)
            else:
                fail(f"the aux of loss_fn for metric {m.name!r}", f"a dict holding 'preds' (to score) "
                     f"or {m.name!r} (a value)", sorted(aux), TypeError)  # fmt: skip
        return out

    def scores(self, params, batch, metrics: tuple[Metric, ...]):
        """``(loss, weight, {name: (total, count)})`` of one batch with ``key=None`` (traced)."""
        value, aux = self.call(params, batch, None)
        rows = jnp.asarray(_first_rows(batch), jnp.int32)
        return value, rows, self.metric_parts(aux, batch, metrics, rows)
