"""Optimizers as optax chains: gradient clipping, weight decay, an update rule and a schedule.

``make_optimizer`` builds, in this order,

1. ``optax.clip_by_global_norm(clip_norm)`` when ``clip_norm`` is given (Pascanu et al., 2013):
   ``g <- g · min(1, clip_norm / ‖g‖₂)`` with ``‖g‖₂`` the norm of all leaves together;
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
import math
import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "ClassicAdagradState",
    "classic_adagrad",
    "make_optimizer",
    "make_schedule",
    "scale_by_classic_adagrad",
]

ScalarOrSchedule = float | Callable[[jax.Array], jax.Array]


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


# ----------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def _positive_float(name: str, value) -> float:
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


def _constant(learning_rate):
    return learning_rate


def _cosine(learning_rate, decay_steps, alpha=0.0):
    return optax.cosine_decay_schedule(
        learning_rate, _positive_int("decay_steps", decay_steps), alpha=alpha
    )


def _exponential(learning_rate, decay_steps, decay_rate, staircase=False, end_value=None):
    return optax.exponential_decay(
        learning_rate,
        transition_steps=_positive_int("decay_steps", decay_steps),
        decay_rate=_positive_float("decay_rate", decay_rate),
        staircase=staircase,
        end_value=end_value,
    )


def _warmup_cosine(learning_rate, warmup_steps, decay_steps, init_value=0.0, end_value=0.0):
    decay_steps = _positive_int("decay_steps", decay_steps)
    if (isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral)
            or not 0 <= warmup_steps < decay_steps):
        raise ValueError(
            f"warmup_steps: expected an integer in [0, decay_steps) = [0, {decay_steps}) "
            f"(decay_steps is the total length, warmup included), got {warmup_steps!r}"
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


# ----------------------------------------------------------------------------------------------
# Builders
# ----------------------------------------------------------------------------------------------


def _lookup(argument: str, table: dict, name) -> Callable:
    try:
        return table[name]
    except (KeyError, TypeError):
        raise ValueError(f"{argument}: expected one of {sorted(table)}, got {name!r}") from None


def _options(build: Callable, skip: int) -> dict[str, inspect.Parameter]:
    """The keyword options of a table entry: its parameters after the first ``skip``."""
    return dict(list(inspect.signature(build).parameters.items())[skip:])


def _step_size(learning_rate, schedule, schedule_kwargs) -> ScalarOrSchedule:
    if callable(schedule):
        if learning_rate is not None:
            raise ValueError(
                "learning_rate: expected None when schedule is a callable (the schedule sets "
                f"the step size), got {learning_rate!r}"
            )
        return schedule
    name = "constant" if schedule is None else schedule
    build = _lookup("schedule", SCHEDULES, name)
    if callable(learning_rate):
        if name != "constant":
            raise ValueError(
                f"schedule: expected None when learning_rate is a callable, got {schedule!r}"
            )
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


def make_schedule(schedule, learning_rate=None, **kwargs) -> Callable[[jax.Array], jax.Array]:
    """The step-size schedule ``k -> η_k`` that ``make_optimizer`` would use.

    Args:
      schedule: ``None``/``"constant"``, ``"cosine"``, ``"exponential"``, ``"warmup_cosine"``
        (see the module docstring), or a callable returned as it is.
      learning_rate: the base step size ``η₀`` (``None`` with a callable schedule).
      **kwargs: the schedule's options, e.g. ``decay_steps``, ``warmup_steps``, ``decay_rate``.
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
    name: str,
    learning_rate: ScalarOrSchedule | None,
    *,
    clip_norm: float | None = None,
    schedule: str | Callable | None = None,
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
        at most ``clip_norm``.
      schedule: the step-size schedule, by name or as a callable (module docstring).
      weight_decay: ``λ >= 0``; ``adamw``'s decoupled decay, or ``g + λ p`` before the other
        rules.
      **kwargs: options of the schedule (``decay_steps``, ``warmup_steps``, ``decay_rate``,
        ``alpha``, ``staircase``, ``init_value``, ``end_value``) and of the rule (``momentum``,
        ``nesterov``, ``b1``, ``b2``, ``eps``, ``decay``, ``centered``,
        ``initial_accumulator_value``, ``classic``), as listed in the module docstring.

    Raises:
      ValueError: unknown ``name`` or ``schedule``; non-positive ``learning_rate`` or
        ``clip_norm``; negative ``weight_decay``.
      TypeError: a keyword argument that neither the schedule nor the rule takes, or a missing
        required schedule option.
    """
    build = _lookup("name", OPTIMIZERS, name)
    if clip_norm is not None:
        clip_norm = _positive_float("clip_norm", clip_norm)
    if (isinstance(weight_decay, bool) or not isinstance(weight_decay, numbers.Real)
            or not math.isfinite(weight_decay) or weight_decay < 0):
        raise ValueError(f"weight_decay: expected a finite number >= 0, got {weight_decay!r}")

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
    rule = build(step_size, float(weight_decay),
                 **{k: v for k, v in kwargs.items() if k in rule_options})
    if clip_norm is None:
        return rule
    return optax.chain(optax.clip_by_global_norm(clip_norm), rule)
