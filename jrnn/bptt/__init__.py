"""The hand-written backpropagation through time (BPTT): its public face.

Every derivative is written out: cells, masking, truncation, dropout, readout and losses. JAX's
automatic differentiation is never asked for one; the only JAX hook is ``jax.custom_vjp``, whose
backward rule is the hand-written one, so that ``backward="bptt"`` in ``jrnn.unroll`` and
``RNN.apply`` makes JAX use it.

Each cell writes its step forward and the step backward that mirrors it in its own file
(``jrnn/cells/``). Two drivers run them over a sequence and give the same numbers:

- the *reference* (``jrnn.bptt.reference``): ``step_forward`` caches what the backward needs and
  ``step_backward`` returns ``d_x, d_carry_tm1, d_params`` per step, summed over time by a
  per-step layer loop (the form of min-char-rnn);
- the *fast* form (``jrnn.scan.forward`` / ``backward``): input projections of all steps as one
  GEMM, a reverse loop that carries ``d_carry`` and writes each step's pre-activation gradients,
  and the weight and input gradients as single GEMMs over time after the loop. Between forward
  and backward it keeps the residuals (written in place over the input projection) and the
  per-step carries; with ``remat`` only the carries, recomputing the residuals chunk by chunk.

Public entry points::

    d_params, d_xs, d_carry0 = unroll_vjp(cell, params, xs, carry, d_ys, d_carry_T, *,
                                          seq_lengths=None, reverse=False, truncation=None,
                                          time_major=False, form="fast", remat=False)
    loss, grads = value_and_grad(model, params, xs, targets, *, loss="mse", seq_lengths=None,
                                 truncation=None, dropout_key=None, carries=None, remat=False)
    carry_T, ys = scan_layer(cell, params, xs, carry, lengths, *, reverse, unroll, remat)
        # time-major; what jrnn.unroll and RNN.apply call with backward="bptt"

``truncation=k`` cuts the gradient through every layer's carry between positions ``jk - 1`` and
``jk`` (``truncation_cuts``), in forward and reverse layers alike.
"""

from jrnn.bptt.layer import FORMS, unroll_vjp
from jrnn.bptt.network import value_and_grad
from jrnn.bptt.reference import step_backward, step_forward
from jrnn.cells.vanilla import ACTIVATION_SLOPES
from jrnn.scan import Residuals, truncation_cuts
from jrnn.scan import scan_bptt as scan_layer

__all__ = [
    "ACTIVATION_SLOPES",
    "FORMS",
    "Residuals",
    "scan_layer",
    "step_backward",
    "step_forward",
    "truncation_cuts",
    "unroll_vjp",
    "value_and_grad",
]
