"""Fused layers behind ``backward="cudnn"`` and ``backward="pallas"``: one recurrent layer run
(forward and backward) by a GPU kernel instead of ``lax.scan``.

- ``backward="cudnn"`` (``jrnn.kernels.cudnn``): cuDNN's LSTM through ``jax.experimental.rnn``,
  with jrnn's parameters converted to cuDNN's flat weight layout inside. LSTM only, float32,
  CUDA GPU only. Not yet run on a GPU (its layout and the layer around it are tested on a CPU).
- ``backward="pallas"`` (``jrnn.kernels.pallas``): jrnn's own fused recurrent loop written with
  ``jax.experimental.pallas``: one kernel launch runs every step of a sequence with the recurrent
  weights loaded once, and a hand-written backward kernel runs the reverse loop. Vanilla and
  LSTM cells without options on a GPU (Pallas' Triton backend; power-of-2 batch and hidden
  sizes); those and the GRU in Pallas' interpreter on any backend (``JRNN_PALLAS_INTERPRET=1``).
  Not yet run on a GPU.

``jrnn.kernels.native`` is of another kind: not a ``backward`` of its own but the plain LSTM's
and GRU's two loops of ``backward="bptt"`` written in C++ for a CPU (XLA FFI handlers built by
``pip install``), which ``jrnn.scan`` runs in place of its ``lax.scan`` loops where they apply.

The two fused layers take the arguments of ``jrnn.scan``'s scans (time-major ``xs (T, B, D)``,
lengths or None) and return ``(carry_T, ys)`` with ``unroll``'s semantics (padded steps keep the carry and output
zeros; ``reverse`` reads each sequence backwards from its own last valid step). Options a kernel
cannot run (a cell option, a ``(T, B)`` mask, ``remat``, another dtype, no GPU) raise a
``ValueError`` that names them when the layer is traced.
"""

from __future__ import annotations

from jrnn.kernels.cudnn import scan_cudnn
from jrnn.kernels.pallas import scan_pallas

KERNELS = {"cudnn": scan_cudnn, "pallas": scan_pallas}
"""``backward -> scan`` for the fused layers (the same signature as ``jrnn.scan.SCANS``)."""

__all__ = ["KERNELS", "scan_cudnn", "scan_pallas"]
