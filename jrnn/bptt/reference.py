"""The readable reference: one step forward that caches what the backward needs, one step backward
that mirrors it (min-char-rnn's form), and a layer that runs them step by step.

For every cell::

    carry, y_t, cache = step_forward(cell, params, carry_tm1, x_t)
    d_x_t, d_carry_tm1, d_params_t = step_backward(cell, params, cache, d_carry)

``d_carry`` is the cotangent of the carry after the step, the output's included (``y_t`` is the
carry's ``h``, so the caller adds ``d_y_t`` into ``d_h``). ``d_params_t`` holds this step's
weight gradients summed over the batch; the layer sums them over time. The maths is the cell's
own: ``cell.forward_step`` and the ``cell.backward_step`` written beside it, line by line, in
``jrnn/cells/``; here every step also computes its own weight gradients (``cell.param_grads``
over one step's batch), where the fast form (``jrnn.scan``) does one GEMM over all steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jrnn.scan import cast_like, step_mask, tree_where, tree_zeros_like, truncation_cuts

Array = jax.Array


def step_forward(cell, params, carry_tm1, x_t):
    """``(carry, y_t, cache)``: one step of ``cell`` keeping what ``step_backward`` needs."""
    carry, residuals = cell.forward_step(params, carry_tm1, cell.project_inputs(params, x_t))
    return carry, cell.output(carry), (x_t, carry_tm1, carry, residuals)


def step_backward(cell, params, cache, d_carry):
    """``(d_x_t, d_carry_tm1, d_params_t)`` from the cache of ``step_forward`` and the carry's
    cotangent (the output's included)."""
    x_t, carry_tm1, carry, residuals = cache
    d_pre, d_carry_tm1 = cell.backward_step(params, residuals, carry_tm1, carry, d_carry)
    d_params = cell.param_grads(params, x_t, cell.output(carry_tm1), d_pre)  # this step's share
    return cell.input_grads(params, d_pre), d_carry_tm1, d_params


def layer_vjp(cell, params, xs, carry0, lengths, d_ys, d_carry_T, *, reverse=False, truncation=None):
    """The per-step reference for one layer, time-major: ``xs (T, B, D)``, ``d_ys (T, B, H)``.

    The forward scan keeps every step's cache; the backward scan walks the steps in the opposite
    order, calls ``step_backward`` and sums ``d_params`` over time in its carry. A padded step
    (``t >= lengths[b]``) left the carry unchanged and output zero, so its cotangent passes
    straight through it. ``truncation=k`` zeroes the gradient into the carry at the boundaries of
    ``jrnn.scan.truncation_cuts``. Returns ``(d_params, d_xs, d_carry0)``.
    """
    T = xs.shape[0]
    valid = step_mask(lengths, T)
    cuts = truncation_cuts(T, truncation, reverse)

    def step(carry, inputs):
        x_t, m_t = inputs
        new, _, cache = step_forward(cell, params, carry, x_t)
        if m_t is not None:
            new = tree_where(m_t[:, None], new, carry)  # a padded step keeps the carry
        return new, cache

    _, caches = jax.lax.scan(step, carry0, (xs, valid), reverse=reverse)

    def back_step(acc, inputs):
        d_carry, d_params = acc
        cache, d_y_t, m_t, cut_t = inputs
        d_new = cell.add_to_output(d_carry, d_y_t)  # y_t = h_t
        if m_t is not None:
            m = m_t[:, None]
            d_new = tree_where(m, d_new, tree_zeros_like(d_new))  # padded: no gradient into the cell
        d_x_t, d_carry_tm1, d_params_t = step_backward(cell, params, cache, d_new)
        if m_t is not None:
            d_carry_tm1 = tree_where(m, d_carry_tm1, d_carry)  # padded: carry_t = carry_tm1
        if cut_t is not None:
            d_carry_tm1 = tree_where(cut_t, tree_zeros_like(d_carry_tm1), d_carry_tm1)  # truncation
        d_params = jax.tree_util.tree_map(jnp.add, d_params, d_params_t)  # gradients summed over time
        return (d_carry_tm1, d_params), d_x_t

    acc0 = (d_carry_T, tree_zeros_like(params))
    inputs = (caches, d_ys, valid, None if cuts is None else jnp.asarray(cuts))
    (d_carry0, d_params), d_xs = jax.lax.scan(back_step, acc0, inputs, reverse=not reverse)
    return cast_like(d_params, params), d_xs, d_carry0
