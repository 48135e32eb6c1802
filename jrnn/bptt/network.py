"""``value_and_grad``: the loss of an ``RNN`` and its gradient, every derivative written out.

Forward: each layer (each direction) runs ``fast.forward`` keeping its per-step carries; the
bidirectional outputs are concatenated, dropout multiplies by one mask per sequence, the readout
is a per-step linear map (zero at padded steps), and the loss comes with its derivative from
``jrnn.losses`` (``mse`` / ``cross_entropy``, both closed form). Backward: the readout, then the
layers from the top down, each dropout mask and direction in turn, with ``fast.backward``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jrnn import losses
from jrnn.bptt import fast
from jrnn.bptt.common import (
    batch_sum,
    check_truncation,
    outer_sum,
    tree_cast_like,
    truncation_cuts,
    valid_steps,
)
from jrnn.network import RNN, NetworkParams, Readout
from jrnn.unroll import check_seq_lengths, check_sequence, compute_dtype

Array = jax.Array


def _cast(tree, dtype):
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), tree)


def dropout_scales(model: RNN, dropout_key, batch_size: int, dtype) -> list:
    """The multipliers ``mask / keep`` ``(B, features)`` after each layer but the last (None when
    there is no dropout): the same draws as ``RNN.apply``."""
    if dropout_key is None or model.dropout <= 0.0:
        return [None] * model.num_layers
    keys = jax.random.split(dropout_key, model.num_layers)
    keep = 1.0 - model.dropout
    scales = []
    for layer in range(model.num_layers - 1):
        mask = jax.random.bernoulli(keys[layer], keep, (batch_size, model.top_size))
        scales.append(mask.astype(dtype) / keep)
    return scales + [None]


def value_and_grad(
    model: RNN,
    params: NetworkParams,
    xs,
    targets,
    *,
    loss: str = "mse",
    seq_lengths=None,
    truncation: int | None = None,
    dropout_key=None,
    carries=None,
    remat: bool = False,
):
    """The loss of ``model.apply(params, xs, carries, seq_lengths=..., dropout_key=...)`` against
    ``targets``, and its gradient with respect to ``params``, by hand-written BPTT.

    Args:
      model: an ``RNN``.
      params: its ``NetworkParams``.
      xs: ``(B, T, D)`` inputs (batch-major).
      targets: for ``loss="mse"``, ``(B, T, O)`` to score every valid step or ``(B, O)`` to
        score the last valid step; for ``"cross_entropy"``, integer labels ``(B, T)`` or ``(B,)``
        (``O`` is the output size: ``output_size``, or the top layer's features without a
        readout). See ``jrnn.losses``.
      loss: ``"mse"`` or ``"cross_entropy"`` (``jrnn.losses.LOSSES``).
      seq_lengths: ``(B,)`` ints, as for ``apply``; padded steps are neither run nor scored.
      truncation: None, or ``k`` to cut the gradient through every layer's carry (both
        directions) between positions ``jk - 1`` and ``jk``; the state still flows forward.
      dropout_key: a ``jax.random`` key for ``model.dropout`` (the same masks as ``apply``).
      carries: initial carries as for ``apply`` (zeros when None).
      remat: keep only the per-step carries of every layer and recompute the gate activations
        chunk by chunk in the backward (``jrnn.bptt.fast``).

    Returns:
      ``(loss, grads)``, ``grads`` a ``NetworkParams`` structured like ``params``.
    """
    if not isinstance(model, RNN):
        raise TypeError(f"model must be a jrnn.RNN, got {type(model).__name__}")
    loss_and_grad = losses.get_loss(loss).value_and_grad
    truncation = check_truncation(truncation)
    input_size = model.check_params(params)
    if check_sequence(xs, input_size) != 3:
        raise ValueError(f"xs must be batched (B, T, D) for value_and_grad, got shape {tuple(xs.shape)}")
    B, T = xs.shape[:2]
    lengths = check_seq_lengths(seq_lengths, B, T)
    cell, bidirectional = model.cell, model.bidirectional
    first = params.layers[0][0] if bidirectional else params.layers[0]
    dtype = compute_dtype(xs, first)
    if carries is None:
        carries = model.initial_carries((B,), dtype)
    else:
        carries = model.check_carries(carries, (B,), dtype)
    p = _cast(params, dtype)
    scales = dropout_scales(model, dropout_key, B, dtype)
    num_dirs = model.num_directions
    cuts = [truncation_cuts(T, truncation, reverse=(d == 1)) for d in range(num_dirs)]

    # ---- forward, keeping each layer's input and per-step carries
    h = jnp.swapaxes(xs.astype(dtype), 0, 1)  # (T, B, D)
    keep = "carries" if remat else "reserve"
    layer_inputs, layer_kept = [], []
    for layer, p_l in enumerate(p.layers):
        dirs = p_l if bidirectional else (p_l,)
        c0s = carries[layer] if bidirectional else (carries[layer],)
        layer_inputs.append(h)
        kept_dirs, outs = [], []
        for d in range(num_dirs):
            _, ys, kept = fast.forward(cell, dirs[d], h, c0s[d], lengths, reverse=(d == 1), keep=keep)
            kept_dirs.append(kept)
            outs.append(ys)
        layer_kept.append(kept_dirs)
        h = jnp.concatenate(outs, axis=-1) if bidirectional else outs[0]  # (T, B, H·dirs)
        if scales[layer] is not None:
            h = h * scales[layer][None]  # dropout, one mask per sequence
    top = h
    valid = valid_steps(lengths, T)
    if p.readout is not None:
        preds = top @ p.readout.w + p.readout.b  # (T, B, O)
        if valid is not None:
            preds = jnp.where(valid[..., None], preds, jnp.zeros_like(preds))  # zero at padded steps
    else:
        preds = top

    value, d_preds = loss_and_grad(jnp.swapaxes(preds, 0, 1), targets, lengths)

    # ---- backward
    d = jnp.swapaxes(d_preds, 0, 1).astype(dtype)  # (T, B, O)
    d_readout = None
    if p.readout is not None:
        if valid is not None:
            d = jnp.where(valid[..., None], d, jnp.zeros_like(d))  # preds = where(valid, ·, 0)
        d_readout = Readout(w=outer_sum(top, d), b=batch_sum(d))  # preds = top @ w + b
        d = d @ p.readout.w.T  # preds = top @ w + b: backprop into the top layer's output
    H = cell.hidden_size
    d_layers = [None] * model.num_layers
    for layer in reversed(range(model.num_layers)):
        if scales[layer] is not None:
            d = d * scales[layer][None]  # h = h * scale
        p_l = p.layers[layer]
        dirs = p_l if bidirectional else (p_l,)
        c0s = carries[layer] if bidirectional else (carries[layer],)
        d_dirs, d_in = [], None
        for dir_ in range(num_dirs):
            d_y = d[..., dir_ * H : (dir_ + 1) * H] if bidirectional else d  # h = concat([fwd, bwd])
            zero_carry = jax.tree_util.tree_map(jnp.zeros_like, c0s[dir_])  # the final carries are not scored
            d_p, d_x, _ = fast.backward(
                cell, dirs[dir_], layer_inputs[layer], c0s[dir_], lengths, layer_kept[layer][dir_], d_y,
                zero_carry, reverse=(dir_ == 1), cuts=cuts[dir_], need_d_xs=layer > 0,
            )  # fmt: skip
            d_dirs.append(d_p)
            if d_x is not None:
                d_in = d_x if d_in is None else d_in + d_x  # both directions read the same input
        d_layers[layer] = tuple(d_dirs) if bidirectional else d_dirs[0]
        d = d_in
    grads = NetworkParams(tuple(d_layers), d_readout)
    return value, tree_cast_like(grads, params)
