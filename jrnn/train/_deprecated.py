"""The deprecated ``clip_norm`` keyword of ``make_train_step`` and ``fit``.

Clipping is given once, to ``jrnn.optim.make_optimizer(..., clip_norm=c)``, whose clipping link
records in its state whether it fired; the train step reads ``clipped`` from there. Old callers
also passed ``clip_norm=c`` to the step or to ``fit``: that is still accepted, with a
``DeprecationWarning``, as long as it agrees with the optimizer (a ``ValueError`` otherwise). It
changes nothing else: an optimizer without a ``jrnn.optim.clip_by_global_norm`` link reports
``clipped`` False whatever ``clip_norm`` says.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import numpy as np

from jrnn._checks import check_float, fail, is_concrete
from jrnn.optim import clip_state

__all__ = ["NOT_GIVEN", "check_clip_norm_agrees", "pop_clip_norm", "warn_clip_norm"]

NOT_GIVEN: Any = type("NotGiven", (), {"__repr__": lambda self: "NOT_GIVEN"})()
"""Stands for a keyword that was not passed at all (``clip_norm=None`` is a value)."""


def pop_clip_norm(deprecated: dict, where: str) -> float | None:
    """The deprecated ``clip_norm`` out of a function's ``**deprecated`` keywords.

    Args:
      deprecated: the keywords the function did not name.
      where: the function's name, for messages.

    Returns:
      ``NOT_GIVEN``, or the given ``clip_norm`` (None or a positive float).

    Raises:
      TypeError: any other keyword (Python's own message for an unexpected keyword).
      ValueError: ``clip_norm`` is neither None nor a finite number ``> 0``.
    """
    unknown = sorted(set(deprecated) - {"clip_norm"})
    if unknown:
        raise TypeError(f"{where}() got an unexpected keyword argument {unknown[0]!r}")
    if "clip_norm" not in deprecated:
        return NOT_GIVEN
    return check_float("clip_norm", deprecated["clip_norm"], 0.0, low_open=True, allow_none=True)


def warn_clip_norm(where: str, stacklevel: int = 2) -> None:
    """Say that ``where(clip_norm=...)`` is deprecated (``stacklevel`` as ``warnings.warn`` would
    count it in ``where``: 2 points at the code that called ``where``)."""
    warnings.warn(
        f"{where}(clip_norm=...) is deprecated: give clip_norm to jrnn.optim.make_optimizer only. "
        "The train step reads whether clipping fired from the state of the optimizer's clipping "
        "link (an optimizer without a jrnn.optim.clip_by_global_norm link reports clipped=False).",
        DeprecationWarning,
        stacklevel=stacklevel + 1,
    )


def _host(a) -> np.ndarray:
    """A replicated scalar as NumPy, read from the local copy (so it works multi-host)."""
    return np.asarray(a.addressable_data(0) if isinstance(a, jax.Array) else a)


def check_clip_norm_agrees(clip_norm: float | None, opt_state) -> bool:
    """Check the deprecated ``clip_norm`` against the threshold that ``opt_state`` records.

    Args:
      clip_norm: what the caller passed (None: "the optimizer does not clip").
      opt_state: the optimizer's state.

    Returns:
      True when checked; False when the threshold is traced (under ``jit``) and cannot be read.

    Raises:
      ValueError: the optimizer's clipping link records another threshold, or it clips while
        ``clip_norm`` is None.
    """
    state = clip_state(opt_state)
    if state is None:
        return True  # nothing to compare: clipped is reported False
    if not is_concrete(state.clip_norm):
        return False
    recorded = _host(state.clip_norm)
    if clip_norm is None or recorded != np.asarray(clip_norm, recorded.dtype):
        fail(
            "clip_norm",
            f"left out, or the optimizer's own clipping threshold {recorded.item()!r} (it is "
            "deprecated here: jrnn.optim.make_optimizer(..., clip_norm=...) sets the threshold, "
            "and the train step reads whether clipping fired from the optimizer's state)",
            repr(clip_norm),
        )
    return True
