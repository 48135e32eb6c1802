"""Tests for jrnn.datasets: offline loaders, windows without look-ahead, missing-extra message."""

import socket
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jrnn import datasets


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails, so a loader that reaches the network fails."""

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# ----------------------------------------------------------------------------------------------
# Loaders, offline
# ----------------------------------------------------------------------------------------------


def test_no_network_fixture_blocks_downloads(no_network):
    import urllib.request

    with pytest.raises(OSError):
        urllib.request.urlopen("https://example.com", timeout=1)


def test_sunspots_offline(no_network):
    years, values = datasets.sunspots()
    assert years.dtype == np.int64 and values.dtype == np.float32
    assert years.shape == values.shape == (309,)
    assert years[0] == 1700 and years[-1] == 2008
    np.testing.assert_array_equal(np.diff(years), 1)
    np.testing.assert_allclose(values[:3], [5.0, 11.0, 16.0])
    assert np.all(values >= 0) and values.max() > 150          # the 1957 maximum is 190.2
    assert datasets.sunspots(dtype=np.float64)[1].dtype == np.float64


def test_aapl_offline(no_network):
    series = datasets.aapl()
    dates, prices, log_returns = series
    assert isinstance(series, datasets.StockSeries)
    assert len(dates) == len(prices) == 123 and len(log_returns) == 122
    assert dates[0] == np.datetime64("2000-01-01") and dates[-1] == np.datetime64("2010-03-01")
    months = dates.astype("datetime64[M]")
    np.testing.assert_array_equal(np.diff(months).astype(int), 1)   # every month, in order
    assert prices.dtype == np.float32 and np.all(prices > 0)
    assert prices[0] == pytest.approx(25.94)
    np.testing.assert_allclose(log_returns, np.diff(np.log(prices.astype(np.float64))),
                               rtol=1e-5, atol=1e-6)


def test_stock_date_range_is_inclusive():
    dates, prices, log_returns = datasets.aapl("2005", "2006")
    assert len(dates) == 24 and len(log_returns) == 23
    assert dates[0] == np.datetime64("2005-01-01") and dates[-1] == np.datetime64("2006-12-01")
    dates, _, _ = datasets.stock("MSFT", start="2003-07", end="2003-09")
    np.testing.assert_array_equal(dates, np.array(["2003-07-01", "2003-08-01", "2003-09-01"],
                                                  dtype="datetime64[D]"))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"symbol": "TSLA"}, r"symbol must be one of \['AAPL', 'AMZN', 'GOOG', 'IBM', 'MSFT'\], "
                             r"got 'TSLA'"),
        ({"start": "2010", "end": "2000"}, r"start and end must be a range with at least 2 months"),
        ({"start": "2012", "end": "2013"}, r"start and end must be .* got '2012' to '2013' with 0"),
        ({"start": "not a date"}, r"start and end must be date strings .* got 'not a date'"),
    ],
)
def test_stock_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        datasets.stock(**kwargs)


def test_digits_offline_rows_are_time_steps(no_network):
    xs, labels = datasets.digits()
    assert xs.shape == (1797, 8, 8) and xs.dtype == np.float32
    assert labels.shape == (1797,) and labels.dtype == np.int32
    np.testing.assert_array_equal(np.unique(labels), np.arange(10))
    assert xs.min() == 0.0 and xs.max() == 1.0
    # Step t of sample i is the image's pixel row t: the flat data are row-major rows.
    from sklearn.datasets import load_digits

    flat = load_digits().data                                     # (1797, 64), 0..16
    i, t = 5, 3
    np.testing.assert_allclose(xs[i, t], flat[i, 8 * t: 8 * t + 8] / 16.0)


# ----------------------------------------------------------------------------------------------
# Missing optional packages
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loader, module, package, name",
    [
        (datasets.sunspots, "statsmodels.datasets.sunspots", "statsmodels", "sunspots()"),
        (datasets.aapl, "vega_datasets", "vega_datasets", "stock()"),
        (datasets.stock, "vega_datasets", "vega_datasets", "stock()"),
        (datasets.digits, "sklearn.datasets", "scikit-learn", "digits()"),
    ],
)
def test_missing_package_names_the_extra(monkeypatch, loader, module, package, name):
    monkeypatch.setitem(sys.modules, module, None)               # makes `import module` fail
    with pytest.raises(ImportError) as info:
        loader()
    message = str(info.value)
    assert 'pip install "jrnn[data]"' in message
    assert repr(package) in message and f"jrnn.datasets.{name}" in message


# ----------------------------------------------------------------------------------------------
# windows
# ----------------------------------------------------------------------------------------------


def test_windows_exact_values():
    series = np.arange(20, dtype=np.float32)
    (xs, targets), (xs_val, targets_val) = datasets.windows(series, 3, horizon=2,
                                                            val_fraction=0.3)
    # n_val = 6: training part 0..13, validation part 14..19.
    assert xs.shape == (14 - 3 - 2 + 1, 3, 1) and targets.shape == (10, 1)
    np.testing.assert_array_equal(xs[0, :, 0], [0, 1, 2])
    np.testing.assert_array_equal(targets[:, 0], np.arange(4, 14))
    np.testing.assert_array_equal(xs_val[:, :, 0], [[14, 15, 16], [15, 16, 17]])
    np.testing.assert_array_equal(targets_val[:, 0], [18, 19])
    assert xs.dtype == targets.dtype == np.float32


def test_windows_seed_recipe_ten_values_predict_the_next():
    series = np.sin(np.linspace(0, 10, 110))
    (xs, targets), (xs_val, _) = datasets.windows(series, 10, val_fraction=0.0)
    assert xs.shape == (100, 10, 1) and targets.shape == (100, 1)
    for i in (0, 37, 99):
        np.testing.assert_array_equal(xs[i, :, 0], series[i:i + 10])
        assert targets[i, 0] == series[i + 10]
    assert xs_val.shape == (0, 10, 1)


def test_windows_multivariate():
    rng = np.random.default_rng(0)
    series = rng.normal(size=(50, 3))
    (xs, targets), (xs_val, targets_val) = datasets.windows(series, 4, val_fraction=0.2)
    assert xs.shape == (36, 4, 3) and targets.shape == (36, 3)
    assert xs_val.shape == (6, 4, 3) and targets_val.shape == (6, 3)
    np.testing.assert_array_equal(xs[7], series[7:11])
    np.testing.assert_array_equal(targets_val[0], series[44])


@settings(max_examples=60, deadline=None)
@given(
    length=st.integers(2, 200),
    window=st.integers(1, 12),
    horizon=st.integers(1, 5),
    val_fraction=st.sampled_from([0.0, 0.1, 0.2, 0.25, 0.5, 0.9]),
)
def test_windows_never_look_ahead(length, window, horizon, val_fraction):
    # Series values are their own time indices, so every sample reveals where it came from.
    series = np.arange(length, dtype=np.int64)
    try:
        (xs, targets), (xs_val, targets_val) = datasets.windows(
            series, window, horizon=horizon, val_fraction=val_fraction)
    except ValueError as err:
        assert "window + horizon" in str(err)
        return
    n_val = round(val_fraction * length)
    n_train = length - n_val
    assert len(xs) == n_train - window - horizon + 1 >= 1
    assert len(xs_val) == max(n_val - window - horizon + 1, 0)
    # Inputs are consecutive and the target comes `horizon` steps after the last input.
    for inputs, target in ((xs, targets), (xs_val, targets_val)):
        if len(inputs):
            np.testing.assert_array_equal(np.diff(inputs[:, :, 0], axis=1), 1)
            np.testing.assert_array_equal(target[:, 0], inputs[:, -1, 0] + horizon)
    # Training uses only times before n_train; validation only times at or after it.
    assert targets.max() < n_train and xs.max() < n_train
    if len(xs_val):
        assert xs_val.min() >= n_train and targets_val.min() >= n_train
        assert not np.isin(targets_val, xs).any()
    # Every training time that can be a target is one.
    np.testing.assert_array_equal(targets[:, 0], np.arange(window + horizon - 1, n_train))


@pytest.mark.parametrize(
    "args, kwargs, error, pattern",
    [
        ((np.zeros((4, 2, 2)), 2), {}, ValueError,
         r"series must be \(N,\) or \(N, D\), got shape \(4, 2, 2\)"),
        ((np.array(["a", "b", "c"]), 1), {}, TypeError,
         r"series must be real numbers .* got dtype <U1"),
        ((np.arange(10.0) > 5, 1), {}, TypeError, r"series must be real numbers .* got dtype bool"),
        ((np.arange(10.0), 0), {}, ValueError, r"window must be a positive int, got 0"),
        ((np.arange(10.0), 2.5), {}, ValueError, r"window must be .* got 2.5"),
        ((np.arange(10.0), 2), {"horizon": 0}, ValueError, r"horizon must be a positive int, got 0"),
        ((np.arange(10.0), 2), {"val_fraction": 1.0}, ValueError,
         r"val_fraction must be a number in \[0, 1\), got 1.0"),
        ((np.arange(10.0), 2), {"val_fraction": -0.1}, ValueError, r"val_fraction must be .* -0.1"),
        ((np.arange(10.0), 9), {"val_fraction": 0.2}, ValueError,
         r"series must be long enough .* window \+ horizon = 10 values, got a training part of 8 "
         r"values"),
        ((np.arange(100.0), 9), {"val_fraction": 0.05}, ValueError,
         r"val_fraction must be 0 or large enough .* = 10 values, got 0.05 \(a validation part of "
         r"5 values\)"),
    ],
)
def test_windows_errors(args, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        datasets.windows(*args, **kwargs)
