"""``value_and_grad``: the loss of an ``RNN`` and its gradient, every derivative written out.

Forward: the network's own stacking driver (``jrnn.network.stack``) with each direction of each
layer run by ``jrnn.scan.forward``, keeping its residuals; the pooling of a sequence-level head
(``jrnn.network.pool``), the readout and the loss, which comes with its derivative from
``jrnn.losses`` (``mse`` / ``cross_entropy``, both closed form). Backward: the readout, the
pooling (``jrnn.network.pool_vjp``), then the layers from the top down, each dropout mask and
direction in turn, with ``jrnn.scan.backward`` (which applies the layer's ``input_dropout`` and
``recurrent_dropout`` masks itself, as ``jrnn.scan.forward`` did).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jrnn import losses, scan
from jrnn._checks import check_sequence, check_seq_lengths, check_truncation, fail
from jrnn.cells.base import batch_sum, outer_sum
from jrnn.network import (
    RNN,
    NetworkParams,
    Readout,
    directions,
    dropout_scales,
    layer_dropout_scales,
    merge_vjp,
    pool,
    pool_vjp,
    readout,
    stack,
    warn_last_step_bidirectional,
)
from jrnn.scan import cast_like, cast_tree, compute_dtype, step_mask, truncation_cuts

Array = jax.Array


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
      dropout_key: a ``jax.random`` key for ``model.dropout``, ``input_dropout`` and
        ``recurrent_dropout`` (the same masks as ``apply``).
      carries: initial carries as for ``apply`` (zeros when None).
      remat: keep only the per-step carries of every layer and recompute the gate activations
        chunk by chunk in the backward (``jrnn.scan``).

    Returns:
      ``(loss, grads)``, ``grads`` a ``NetworkParams`` structured like ``params``.
    """
    if not isinstance(model, RNN):
        fail("model", "a jrnn.RNN", type(model).__name__, TypeError)
    loss_and_grad = losses.get_loss(loss).value_and_grad
    truncation = check_truncation(truncation)
    layout = check_sequence(xs, model.check_params(params), batched_only=True)
    B, T = layout.batch_size, layout.num_steps
    lengths = check_seq_lengths(seq_lengths, B, T)
    dtype = compute_dtype(xs, model.first_cell_params(params))
    carries = model.initial_carries((B,), dtype) if carries is None else model.check_carries(carries, (B,), dtype)
    p = cast_tree(params, dtype)
    scales = dropout_scales(model, dropout_key, B, dtype)
    drops = layer_dropout_scales(model, dropout_key, B, xs.shape[-1], dtype)
    cell = model.cell

    # ---- forward, keeping each layer's input and each direction's residuals
    keep = "carries" if remat else "reserve"

    def run_layer(layer, direction, p_d, h, carry, reverse):
        return scan.forward(cell, p_d, h, carry, lengths, reverse=reverse, keep=keep, dropout=drops[layer][direction])

    xs_t = scan.zero_skipped(layout.to_scan(xs.astype(dtype)), lengths)  # padding is never read
    top, finals, kept, inputs = stack(model, p, xs_t, carries, run_layer, scales)
    valid = step_mask(lengths, T)
    if model.pool is None:
        warn_last_step_bidirectional(model, jnp.ndim(targets) == (3 if loss == "mse" else 2))
        features = top  # the readout reads every step: (T, B, F)
        preds = readout(p, top, valid)  # (T, B, O)
        value, d_preds = loss_and_grad(layout.from_scan(preds), targets, lengths)
        d = layout.to_scan(d_preds).astype(dtype)  # (T, B, O)
        if valid is not None:
            d = jnp.where(valid[..., None], d, jnp.zeros_like(d))  # preds = where(valid, ·, 0)
    else:
        warn_last_step_bidirectional(model, False)
        features = pool(model, top, finals, lengths)  # (B, P)
        preds = readout(p, features, None)  # (B, O), scored as one step
        value, d_preds = loss_and_grad(preds[:, None], targets, None)
        d = d_preds[:, 0].astype(dtype)

    # ---- backward
    d_readout = None
    if p.readout is not None:
        d_readout = Readout(w=outer_sum(features, d), b=batch_sum(d))  # preds = features @ w + b
        d = d @ p.readout.w.T  # preds = features @ w + b: backprop into the features
    d_finals = None
    if model.pool is not None:
        d, d_finals = pool_vjp(model, d, top, finals, lengths)  # backprop through the pooling
    d_layers = [None] * model.num_layers
    for layer in reversed(range(model.num_layers)):
        if scales[layer] is not None:
            d = d * scales[layer][None]  # h = h * scale
        c0s = directions(model, carries[layer])
        outs = [cell.output(kept_k.states) for kept_k in kept[layer]]
        d_ys = merge_vjp(model, d, outs)  # h = merge([fwd, bwd])
        d_dirs, d_in = [], None
        for k, p_d in enumerate(directions(model, p.layers[layer])):
            d_y = d_ys[k]
            d_final = scan.tree_zeros_like(c0s[k])  # the final carries are not scored ...
            if d_finals is not None and layer == model.num_layers - 1:
                d_final = cell.add_to_output(d_final, d_finals[k])  # ... unless pooled
            d_p, d_x, _ = scan.backward(
                cell, p_d, inputs[layer], c0s[k], lengths, kept[layer][k], d_y, d_final,
                reverse=(k == 1), cuts=truncation_cuts(T, truncation, reverse=(k == 1)), need_d_xs=layer > 0,
                dropout=drops[layer][k],
            )  # fmt: skip
            d_dirs.append(d_p)
            if d_x is not None:
                d_in = d_x if d_in is None else d_in + d_x  # both directions read the same input
        d_layers[layer] = tuple(d_dirs) if model.bidirectional else d_dirs[0]
        d = d_in
    return value, cast_like(NetworkParams(tuple(d_layers), d_readout), params)
