"""Optimizers as optax chains: gradient clipping, weight decay, an update rule and a schedule.

``make_optimizer`` builds, in this order,

1. :func:`clip_by_global_norm` when ``clip_norm`` is given (Pascanu et al., 2013):
   ``g <- g · min(1, clip_norm / ‖g‖₂)`` with ``‖g‖₂`` the norm of all leaves together, the
   same numbers as ``optax.clip_by_global_norm``; its state (:class:`ClipByGlobalNormState`)
   records ``‖g‖₂`` and whether it clipped, which the train step reports (:func:`clip_state`);
2. ``optax.add_decayed_weights(weight_decay)`` when ``weight_decay > 0`` and the rule is not
   ``adamw``: ``g <- g + λ p`` (an L2 penalty ``λ/2 ‖p‖²`` folded into the gradient);
3. the update rule, with its step size ``η_k`` taken from the schedule at step ``k``.

Model code never clips: clipping belongs to the optimizer, so losses return true gradients.
Transformations that need the parameters (weight decay, ``adamw``) require
``update(grads, state, params)``.

Update rules (``OPTIMIZERS``), with their keyword options and defaults:

- ``sgd``: ``p <- p - η g``.
- ``momentum``: ``m <- μ m + g``, ``p <- p - η m`` (heavy ball); ``momentum=0.9``,
  ``nesterov=False``.
- ``adagrad``: optax's Adagrad, ``n <- n + g²``, ``p <- p - η g / sqrt(n + ε)``;
  ``initial_accumulator_value=0.1``, ``eps=1e-7``. With ``classic=True``, the original form
  (Duchi et al., 2011) of :func:`classic_adagrad`: ``n`` starts at 0 and
  ``p <- p - η g / (sqrt(n) + ε)``, ``eps=1e-8``.
- ``rmsprop``: ``v <- ρ v + (1 - ρ) g²``, ``p <- p - η g / sqrt(v + ε)``; ``decay=0.9``
  (``ρ``), ``eps=1e-8``, ``centered=False``, ``momentum=None``.
- ``adam``: Kingma & Ba (2015) with bias correction; ``b1=0.9``, ``b2=0.999``, ``eps=1e-8``.
- ``adamw``: Adam with decoupled weight decay, ``p <- p - η (adam(g) + λ p)`` (Loshchilov &
  Hutter, 2019); ``weight_decay`` is its ``λ``, and the default 0 makes it Adam.

Schedules (``SCHEDULES``) of the step size ``η_k`` at step ``k``, built from
``learning_rate = η₀`` and keywords:

- ``None`` or ``"constant"``: ``η_k = η₀``.
- ``"cosine"``: ``η_k = η₀ ((1 - α) (1 + cos(π min(k, K) / K)) / 2 + α)``; ``decay_steps=K``
  (required), ``alpha=0.0`` (the final fraction of ``η₀``).
- ``"exponential"``: ``η_k = η₀ r^(k / K)`` (``r^⌊k / K⌋`` with ``staircase=True``);
  ``decay_steps=K`` and ``decay_rate=r`` (required), ``staircase=False``, ``end_value=None``
  (a floor, or a ceiling when ``r > 1``).
- ``"warmup_cosine"``: linear from ``init_value=0.0`` to ``η₀`` over ``warmup_steps=W`` steps,
  then cosine decay to ``end_value=0.0`` at step ``decay_steps=K``. ``K`` is the total length,
  warmup included (optax's convention); ``W`` and ``K`` are required, ``0 <= W < K``.

A callable ``schedule`` (step -> step size, any optax schedule) is used as it is; pass
``learning_rate=None`` with it, since the schedule alone sets the step size.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jrnn._checks import check_choice, check_float, check_int, fail

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "ClassicAdagradState",
    "ClipByGlobalNormState",
    "OptimizerName",
    "ScheduleName",
    "classic_adagrad",
    "clip_by_global_norm",
    "clip_state",
    "make_optimizer",
    "make_schedule",
    "scale_by_classic_adagrad",
]

ScalarOrSchedule = float | Callable[[jax.Array], jax.Array]

OptimizerName = Literal["sgd", "momentum", "adagrad", "rmsprop", "adam", "adamw"]
"""The update rules of ``make_optimizer`` (the keys of ``OPTIMIZERS``)."""

ScheduleName = Literal["constant", "cosine", "exponential", "warmup_cosine"]
"""The named step-size schedules (the keys of ``SCHEDULES``)."""


# ----------------------------------------------------------------------------------------------
# Global-norm clipping that records what it did
# ----------------------------------------------------------------------------------------------


class ClipByGlobalNormState(NamedTuple):
    """State of :func:`clip_by_global_norm`: its threshold and a record of the last update.

    Attributes:
      clip_norm: the threshold ``c``, a scalar (constant; kept so that the state says how it
        clips).
      grad_norm: ``‖g‖₂``, the global norm of the last updates it received, before clipping.
      clipped: bool scalar: the last updates were rescaled, ``not ‖g‖₂ < c`` (optax's rule,
        so a non-finite norm counts as clipped).
    """

    clip_norm: jax.Array
    grad_norm: jax.Array
    clipped: jax.Array


def clip_by_global_norm(clip_norm: float) -> optax.GradientTransformation:
    r"""Clip updates by their global norm, as ``optax.clip_by_global_norm``, and record it.

    .. math::

        g \leftarrow g \quad \text{if } \|g\|_2 < c, \qquad
        g \leftarrow \frac{g}{\|g\|_2}\, c \quad \text{otherwise}

    with ``‖g‖₂`` the L2 norm of all leaves together (Pascanu et al., 2013). The updates are
    bit for bit those of ``optax.clip_by_global_norm(c)``; the state
    (:class:`ClipByGlobalNormState`) also holds ``‖g‖₂`` and whether it clipped, so that a
    train step can report clipping without being told ``c`` (:func:`clip_state`).

    Args:
      clip_norm: the threshold ``c > 0``.

    Returns:
      An optax ``GradientTransformation`` with state ``ClipByGlobalNormState``.

    Raises:
      ValueError: ``clip_norm`` is not a finite number ``> 0``.
    """
    clip_norm = check_float("clip_norm", clip_norm, 0.0, low_open=True)

    def init_fn(params):
        leaves = jax.tree_util.tree_leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        if not jnp.issubdtype(dtype, jnp.floating):
            dtype = jnp.float32
        return ClipByGlobalNormState(
            clip_norm=jnp.asarray(clip_norm, dtype),
            grad_norm=jnp.zeros((), dtype),
            clipped=jnp.zeros((), jnp.bool_),
        )

    def update_fn(updates, state, params=None):
        del params
        g_norm = optax.tree.norm(updates)
        trigger = jnp.squeeze(g_norm < clip_norm)  # optax's test: keep when strictly below

        def clip_fn(t):
            return jax.lax.select(trigger, t, (t / g_norm.astype(t.dtype)) * clip_norm)

        updates = jax.tree_util.tree_map(clip_fn, updates)
        state = ClipByGlobalNormState(
            clip_norm=state.clip_norm,
            grad_norm=g_norm.astype(state.grad_norm.dtype),
            clipped=jnp.logical_not(trigger),
        )
        return updates, state

    return optax.GradientTransformation(init_fn, update_fn)


def clip_state(opt_state) -> ClipByGlobalNormState | None:
    """The (first) :class:`ClipByGlobalNormState` inside an optimizer state, however deeply
    chained or wrapped; None when the optimizer has no :func:`clip_by_global_norm` link.

    Args:
      opt_state: the state of an optax transformation (e.g. of ``make_optimizer``).

    Returns:
      The clipping link's state, or None.
    """

    def is_clip(x) -> bool:
        return isinstance(x, ClipByGlobalNormState)

    for leaf in jax.tree_util.tree_leaves(opt_state, is_leaf=is_clip):
        if is_clip(leaf):
            return leaf
    return None


# ----------------------------------------------------------------------------------------------
# Classic Adagrad, written as an optax transformation
# ----------------------------------------------------------------------------------------------


class ClassicAdagradState(NamedTuple):
    """State of :func:`scale_by_classic_adagrad`: the running sum of squared gradients."""

    sum_of_squares: optax.Updates


def scale_by_classic_adagrad(
    eps: float = 1e-8, initial_accumulator_value: float = 0.0
) -> optax.GradientTransformation:
    r"""Scale updates by the classic Adagrad rule, ``ε`` outside the square root.

    .. math::

        n_k = n_{k-1} + g_k^2, \qquad u_k = \frac{g_k}{\sqrt{n_k} + \varepsilon},
        \qquad n_0 = \text{initial\_accumulator\_value}

    element-wise. optax's ``scale_by_rss`` instead starts at 0.1 and puts ``ε`` inside the square
    root; the two differ mostly in the first steps and where gradients are tiny.

    Args:
      eps: added to ``sqrt(n)``, keeping the update finite where ``n = 0``.
      initial_accumulator_value: the starting value of ``n`` (0 in the classic form).

    Returns:
      An optax ``GradientTransformation`` with state ``ClassicAdagradState``.
    """

    def init_fn(params):
        return ClassicAdagradState(
            sum_of_squares=jax.tree.map(
                lambda p: jnp.full_like(p, initial_accumulator_value), params
            )
        )

    def update_fn(updates, state, params=None):
        del params
        sum_of_squares = jax.tree.map(lambda g, n: n + g * g, updates, state.sum_of_squares)
        updates = jax.tree.map(lambda g, n: g / (jnp.sqrt(n) + eps), updates, sum_of_squares)
        return updates, ClassicAdagradState(sum_of_squares=sum_of_squares)

    return optax.GradientTransformation(init_fn, update_fn)


def classic_adagrad(
    learning_rate: ScalarOrSchedule, eps: float = 1e-8, initial_accumulator_value: float = 0.0
) -> optax.GradientTransformation:
    r"""Classic Adagrad (Duchi et al., 2011): ``p <- p - η g / (sqrt(Σ g²) + ε)``.

    The accumulator starts at 0 and ``ε`` sits outside the square root, as in the seed's NumPy
    implementation. (min-char-rnn writes ``g / sqrt(Σ g² + 1e-8)``, ``ε`` inside; the two agree
    except where ``Σ g²`` is of the order of ``ε``.)

    Args:
      learning_rate: the step size ``η``, or an optax schedule of it.
      eps: added to ``sqrt(Σ g²)``.
      initial_accumulator_value: the starting value of ``Σ g²``.

    Returns:
      An optax ``GradientTransformation``.
    """
    return optax.chain(
        scale_by_classic_adagrad(eps=eps, initial_accumulator_value=initial_accumulator_value),
        optax.scale_by_learning_rate(learning_rate),
    )


# ----------------------------------------------------------------------------------------------
# Update rules
# ----------------------------------------------------------------------------------------------


def _with_weight_decay(weight_decay: float, rule: optax.GradientTransformation):
    """``g <- g + λ p`` before ``rule`` (nothing when ``λ = 0``)."""
    if weight_decay == 0:
        return rule
    return optax.chain(optax.add_decayed_weights(weight_decay), rule)


def _sgd(learning_rate, weight_decay):
    return _with_weight_decay(weight_decay, optax.sgd(learning_rate))


def _momentum(learning_rate, weight_decay, momentum=0.9, nesterov=False):
    return _with_weight_decay(
        weight_decay, optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov)
    )


def _adagrad(learning_rate, weight_decay, initial_accumulator_value=None, eps=None,
             classic=False):
    if classic:
        rule = classic_adagrad(
            learning_rate,
            eps=1e-8 if eps is None else eps,
            initial_accumulator_value=(
                0.0 if initial_accumulator_value is None else initial_accumulator_value
            ),
        )
    else:
        rule = optax.adagrad(
            learning_rate,
            initial_accumulator_value=(
                0.1 if initial_accumulator_value is None else initial_accumulator_value
            ),
            eps=1e-7 if eps is None else eps,
        )
    return _with_weight_decay(weight_decay, rule)


def _rmsprop(learning_rate, weight_decay, decay=0.9, eps=1e-8, centered=False, momentum=None):
    return _with_weight_decay(
        weight_decay,
        optax.rmsprop(learning_rate, decay=decay, eps=eps, centered=centered, momentum=momentum),
    )


def _adam(learning_rate, weight_decay, b1=0.9, b2=0.999, eps=1e-8):
    return _with_weight_decay(weight_decay, optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


def _adamw(learning_rate, weight_decay, b1=0.9, b2=0.999, eps=1e-8):
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {
    "sgd": _sgd,
    "momentum": _momentum,
    "adagrad": _adagrad,
    "rmsprop": _rmsprop,
    "adam": _adam,
    "adamw": _adamw,
}
"""The update rules of ``make_optimizer``: ``name -> builder(learning_rate, weight_decay, ...)``."""


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------


def _positive_float(argument: str, value) -> float:
    return check_float(argument, value, 0.0, low_open=True)


def _constant(learning_rate):
    return learning_rate


def _cosine(learning_rate, decay_steps, alpha=0.0):
    return optax.cosine_decay_schedule(
        learning_rate, check_int("decay_steps", decay_steps), alpha=alpha
    )


def _exponential(learning_rate, decay_steps, decay_rate, staircase=False, end_value=None):
    return optax.exponential_decay(
        learning_rate,
        transition_steps=check_int("decay_steps", decay_steps),
        decay_rate=_positive_float("decay_rate", decay_rate),
        staircase=staircase,
        end_value=end_value,
    )


def _warmup_cosine(learning_rate, warmup_steps, decay_steps, init_value=0.0, end_value=0.0):
    decay_steps = check_int("decay_steps", decay_steps)
    if (isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral)
            or not 0 <= warmup_steps < decay_steps):
        fail(
            "warmup_steps",
            f"an int in [0, decay_steps) = [0, {decay_steps}) (decay_steps is the total length, "
            "warmup included)",
            repr(warmup_steps),
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=init_value,
        peak_value=learning_rate,
        warmup_steps=int(warmup_steps),
        decay_steps=decay_steps,
        end_value=end_value,
    )


SCHEDULES: dict[str, Callable[..., ScalarOrSchedule]] = {
    "constant": _constant,
    "cosine": _cosine,
    "exponential": _exponential,
    "warmup_cosine": _warmup_cosine,
}
"""The learning-rate schedules of ``make_optimizer(..., schedule=name)``: ``name -> builder``."""


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------


def _lookup(argument: str, table: dict, name) -> Callable:
    return table[check_choice(argument, name, table)]


def _options(build: Callable, skip: int) -> dict[str, inspect.Parameter]:
    """The keyword options of a table entry: its parameters after the first ``skip``."""
    return dict(list(inspect.signature(build).parameters.items())[skip:])


def _step_size(learning_rate, schedule, schedule_kwargs) -> ScalarOrSchedule:
    if callable(schedule):
        if learning_rate is not None:
            fail(
                "learning_rate",
                "None when schedule is a callable (the schedule sets the step size)",
                repr(learning_rate),
            )
        return schedule
    name = "constant" if schedule is None else schedule
    build = _lookup("schedule", SCHEDULES, name)
    if callable(learning_rate):
        if name != "constant":
            fail("schedule", "None when learning_rate is a callable", repr(schedule))
        return learning_rate
    learning_rate = _positive_float("learning_rate", learning_rate)
    missing = [
        option for option, parameter in _options(build, 1).items()
        if parameter.default is inspect.Parameter.empty and option not in schedule_kwargs
    ]
    if missing:
        raise TypeError(f"schedule {name!r}: missing required keyword argument(s) {missing}")
    return build(learning_rate, **schedule_kwargs)


def _schedule_options(schedule) -> dict[str, inspect.Parameter]:
    """The keyword options that ``schedule`` takes (none for a callable)."""
    if callable(schedule):
        return {}
    return _options(_lookup("schedule", SCHEDULES, "constant" if schedule is None else schedule), 1)


def make_schedule(
    schedule: ScheduleName | Callable | None,
    learning_rate: float | None = None,
    **kwargs: Any,
) -> Callable[[jax.Array], jax.Array]:
    """The step-size schedule ``k -> η_k`` that ``make_optimizer`` would use.

    Args:
      schedule: ``None``/``"constant"``, ``"cosine"``, ``"exponential"``, ``"warmup_cosine"``
        (see the module docstring), or a callable returned as it is.
      learning_rate: the base step size ``η₀`` (``None`` with a callable schedule).
      **kwargs: the schedule's options, e.g. ``decay_steps``, ``warmup_steps``, ``decay_rate``.

    Returns:
      The schedule, a callable from the step ``k`` to ``η_k``.

    Raises:
      ValueError: an unknown schedule name or a bad option value.
      TypeError: an option the schedule does not take, or a missing required one.
    """
    options = _schedule_options(schedule)
    unknown = set(kwargs) - set(options)
    if unknown:
        raise TypeError(
            f"schedule {schedule!r}: unexpected keyword argument(s) {sorted(unknown)}; "
            f"valid ones are {sorted(options)}"
        )
    step_size = _step_size(learning_rate, schedule, kwargs)
    return step_size if callable(step_size) else optax.constant_schedule(step_size)


def make_optimizer(
    name: OptimizerName,
    learning_rate: ScalarOrSchedule | None,
    *,
    clip_norm: float | None = None,
    schedule: ScheduleName | Callable | None = None,
    weight_decay: float = 0.0,
    **kwargs: Any,
) -> optax.GradientTransformation:
    """An optax chain: optional global-norm clipping, weight decay, then the update rule ``name``.

    Args:
      name: one of ``OPTIMIZERS``: ``"sgd"``, ``"momentum"``, ``"adagrad"``, ``"rmsprop"``,
        ``"adam"``, ``"adamw"``.
      learning_rate: the base step size ``η₀ > 0``; or a callable optax schedule when
        ``schedule`` is ``None``; or ``None`` when ``schedule`` is a callable.
      clip_norm: when given (``> 0``), gradients are first rescaled so that their global norm is
        at most ``clip_norm`` (:func:`clip_by_global_norm`, whose state records whether it
        fired: ``jrnn.train`` reports that as ``clipped``). Give it here only.
      schedule: the step-size schedule, by name or as a callable (module docstring).
      weight_decay: ``λ >= 0``; ``adamw``'s decoupled decay, or ``g + λ p`` before the other
        rules.
      **kwargs: options of the schedule (``decay_steps``, ``warmup_steps``, ``decay_rate``,
        ``alpha``, ``staircase``, ``init_value``, ``end_value``) and of the rule (``momentum``,
        ``nesterov``, ``b1``, ``b2``, ``eps``, ``decay``, ``centered``,
        ``initial_accumulator_value``, ``classic``), as listed in the module docstring.

    Returns:
      An optax ``GradientTransformation``: the chain, or the bare rule without clipping and
      weight decay.

    Raises:
      ValueError: unknown ``name`` or ``schedule``; non-positive ``learning_rate`` or
        ``clip_norm``; negative ``weight_decay``.
      TypeError: a keyword argument that neither the schedule nor the rule takes, or a missing
        required schedule option.
    """
    build = _lookup("name", OPTIMIZERS, name)
    clip_norm = check_float("clip_norm", clip_norm, 0.0, low_open=True, allow_none=True)
    weight_decay = check_float("weight_decay", weight_decay, 0.0)

    rule_options = _options(build, 2)
    schedule_options = _schedule_options(schedule)
    unknown = set(kwargs) - set(rule_options) - set(schedule_options)
    if unknown:
        raise TypeError(
            f"make_optimizer: unexpected keyword argument(s) {sorted(unknown)} for "
            f"name={name!r} and schedule={schedule!r}; valid ones are "
            f"{sorted(set(rule_options) | set(schedule_options))}"
        )
    step_size = _step_size(
        learning_rate, schedule, {k: v for k, v in kwargs.items() if k in schedule_options}
    )
    rule = build(step_size, weight_decay, **{k: v for k, v in kwargs.items() if k in rule_options})
    if clip_norm is None:
        return rule
    return optax.chain(clip_by_global_norm(clip_norm), rule)
