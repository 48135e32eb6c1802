"""Real data bundled inside PyPI packages, loaded with no network access, and a windowing helper.

The loaders need the optional ``data`` extra (statsmodels, vega_datasets, scikit-learn)::

    pip install "jrnn[data]"

and raise an ``ImportError`` naming it when a package is missing. They return NumPy arrays; values
are float32 by default (``dtype=`` changes it) to match JAX's default precision.

- ``sunspots``: yearly mean sunspot numbers 1700-2008 (309 values), from
  ``statsmodels.datasets.sunspots``;
- ``stock`` / ``aapl``: monthly closing prices of AAPL, AMZN, GOOG, IBM and MSFT from 2000-01
  to 2010-03, from the ``stocks.csv`` bundled in vega_datasets;
- ``digits``: scikit-learn's 1797 handwritten 8x8 digits, read row by row as sequences.

:func:`windows` turns a series into train/validation ``(xs, targets)`` pairs for next-value
prediction, with the validation part strictly later in time than everything used for training.
"""

from __future__ import annotations

import importlib
from typing import Literal, NamedTuple

import numpy as np

from jrnn._checks import check_array_dtype, check_choice, check_float, check_int, check_ndim, fail

__all__ = [
    "STOCK_SYMBOLS",
    "StockSeries",
    "StockSymbol",
    "aapl",
    "digits",
    "stock",
    "sunspots",
    "windows",
]

_INSTALL_HINT = 'pip install "jrnn[data]"'

StockSymbol = Literal["AAPL", "AMZN", "GOOG", "IBM", "MSFT"]
"""A symbol in vega_datasets' bundled ``stocks.csv``."""

STOCK_SYMBOLS: tuple[StockSymbol, ...] = ("AAPL", "AMZN", "GOOG", "IBM", "MSFT")
"""The symbols in vega_datasets' bundled ``stocks.csv``."""


def _require(module: str, package: str, loader: str):
    """Import ``module`` from the optional ``data`` extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"jrnn.datasets.{loader}() needs the optional package {package!r}, which could not "
            f"be imported ({err}). Install the data extra with: {_INSTALL_HINT}"
        ) from err


# ----------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------


def sunspots(*, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Yearly mean sunspot numbers from 1700 to 2008 (statsmodels' ``sunspots`` data set).

    Args:
      dtype: dtype of ``values``.

    Returns:
      ``(years, values)``: int64 ``(309,)`` years 1700, 1701, ..., 2008 and ``(309,)`` sunspot
      activity in ``dtype``.
    """
    data = _require("statsmodels.datasets.sunspots", "statsmodels", "sunspots").load_pandas().data
    years = data["YEAR"].to_numpy().astype(np.int64)
    values = data["SUNACTIVITY"].to_numpy().astype(dtype)
    return years, values


class StockSeries(NamedTuple):
    """Monthly closing prices of one stock and their log returns.

    ``log_returns[i] = ln(prices[i + 1] / prices[i])`` is the return over the month that ends at
    ``dates[i + 1]``, so it has one entry fewer than ``prices``.
    """

    dates: np.ndarray          # datetime64[D], (n,), first day of each month
    prices: np.ndarray         # (n,)
    log_returns: np.ndarray    # (n - 1,)


def stock(symbol: StockSymbol = "AAPL", start: str = "2000", end: str = "2010", *,
          dtype=np.float32) -> StockSeries:
    """Monthly prices of ``symbol`` between ``start`` and ``end`` from vega_datasets' ``stocks``.

    The data are read from the CSV file bundled in the vega_datasets package
    (``vega_datasets.local_data.stocks``), never from the network. ``start`` and ``end`` are
    date strings and inclusive at the resolution they are written in: ``end="2010"`` keeps every
    month of 2010 (the data stop at 2010-03), ``end="2005-06"`` keeps June 2005.

    Args:
      symbol: one of :data:`STOCK_SYMBOLS`.
      start: first date kept, e.g. ``"2000"`` or ``"2003-07"``.
      end: last date kept.
      dtype: dtype of ``prices`` and ``log_returns``.

    Returns:
      A :class:`StockSeries` ``(dates, prices, log_returns)``.
    """
    check_choice("symbol", symbol, STOCK_SYMBOLS)
    vega = _require("vega_datasets", "vega_datasets", "stock")
    frame = vega.local_data.stocks()
    frame = frame[frame["symbol"] == symbol].set_index("date").sort_index()
    bad_dates = None
    try:
        frame = frame.loc[start:end]
    except (ValueError, TypeError, KeyError) as err:
        bad_dates = f"{start!r} and {end!r} ({err})"
    if bad_dates is not None:
        fail("start and end", "date strings such as '2000' or '2003-07'", bad_dates)
    if len(frame) < 2:
        fail(
            "start and end", f"a range with at least 2 months of {symbol} data (available "
            f"2000-01 to 2010-03)", f"{start!r} to {end!r} with {len(frame)} months",
        )  # fmt: skip
    dates = frame.index.to_numpy().astype("datetime64[D]")
    prices = frame["price"].to_numpy().astype(np.float64)
    log_returns = np.diff(np.log(prices))
    return StockSeries(dates, prices.astype(dtype), log_returns.astype(dtype))


def aapl(start: str = "2000", end: str = "2010", *, dtype=np.float32) -> StockSeries:
    """Apple's monthly prices and log returns: ``stock("AAPL", start, end)``.

    With the defaults, the 123 months from 2000-01 to 2010-03.

    Args:
      start: first date kept, e.g. ``"2000"`` or ``"2003-07"``.
      end: last date kept.
      dtype: dtype of ``prices`` and ``log_returns``.

    Returns:
      A :class:`StockSeries` ``(dates, prices, log_returns)``.
    """
    return stock("AAPL", start, end, dtype=dtype)


def digits(*, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 handwritten digits as sequences of pixel rows.

    Each 8x8 image is read top to bottom, one row of 8 pixels per time step, with intensities
    scaled from 0..16 to [0, 1]: a sequence classification task with 10 classes, scored at the
    last step.

    Args:
      dtype: dtype of ``xs``.

    Returns:
      ``xs`` ``(1797, 8, 8)`` = ``(B, T, D)`` in ``dtype`` and ``labels`` int32 ``(1797,)``.
    """
    bunch = _require("sklearn.datasets", "scikit-learn", "digits").load_digits()
    xs = (np.asarray(bunch.images, np.float64) / 16.0).astype(dtype)
    return xs, np.asarray(bunch.target, np.int32)


# ----------------------------------------------------------------------------------------------
# Windows
# ----------------------------------------------------------------------------------------------


def _sliding(part: np.ndarray, window: int, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``(part[i : i + window], part[i + window + horizon - 1])`` pairs inside ``part``."""
    count = len(part) - window - horizon + 1
    if count <= 0:
        return (np.zeros((0, window) + part.shape[1:], part.dtype),
                np.zeros((0,) + part.shape[1:], part.dtype))
    xs = np.lib.stride_tricks.sliding_window_view(part, window, axis=0)[:count]   # (n, D, W)
    xs = np.ascontiguousarray(xs.transpose(0, 2, 1))                               # (n, W, D)
    targets = part[window + horizon - 1:][:count]                                   # (n, D)
    return xs, np.ascontiguousarray(targets)


def windows(series, window: int, *, horizon: int = 1, val_fraction: float = 0.2):
    r"""Cut a series into train and validation windows for next-value prediction.

    With ``s`` of length ``N``, the last ``n_val = round(val_fraction · N)`` values form the
    validation part and the first ``n_train = N - n_val`` the training part. Each part is
    windowed on its own: a sample is

    .. math::

        x = (s_i, \dots, s_{i+W-1}), \qquad y = s_{i+W+h-1}

    for every ``i`` with all of ``i .. i+W+h-1`` inside the part (``W = window``,
    ``h = horizon``). Hence no look-ahead: every training input and target lies before
    ``n_train``, every validation input and target at or after it, so validation windows come
    strictly after all training data in time, and no validation value is ever a training input
    or target. A part yields ``len(part) - W - h + 1`` samples.

    Args:
      series: ``(N,)`` or ``(N, D)`` array-like.
      window: ``W >= 1``, the number of input steps.
      horizon: ``h >= 1``, how far past the window's last value the target is (1: the next value).
      val_fraction: fraction of the series, in ``[0, 1)``, held out at its end (0: no
        validation samples).

    Returns:
      ``((xs_train, targets_train), (xs_val, targets_val))`` as NumPy arrays in the series'
      dtype, ``xs`` ``(n, W, D)`` and ``targets`` ``(n, D)`` (``D = 1`` for a 1-D series), ready
      for a last-step loss.
    """
    series = np.asarray(series)
    check_ndim("series", series, (1, 2), "(N,) or (N, D)")
    check_array_dtype("series", series, "real")
    window = check_int("window", window)
    horizon = check_int("horizon", horizon)
    check_float("val_fraction", val_fraction, 0.0, 1.0, high_open=True)
    if series.ndim == 1:
        series = series[:, None]
    length = series.shape[0]
    n_val = round(val_fraction * length)
    n_train = length - n_val
    span = window + horizon
    if n_train < span:
        fail(
            "series", f"long enough that its training part holds one sample, window + horizon = "
            f"{span} values", f"a training part of {n_train} values (length {length}, "
            f"val_fraction={val_fraction})",
        )  # fmt: skip
    if n_val and n_val < span:
        fail(
            "val_fraction", f"0 or large enough that the validation part holds one sample, "
            f"window + horizon = {span} values", f"{val_fraction} (a validation part of {n_val} "
            f"values)",
        )  # fmt: skip
    return (_sliding(series[:n_train], window, horizon),
            _sliding(series[n_train:], window, horizon))
