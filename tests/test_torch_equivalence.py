"""jrnn vs PyTorch's nn.RNN / nn.LSTM / nn.GRU with converted weights, in float64.

Forward outputs, final states (packed variable-length sequences included) and gradients with
respect to inputs, initial states and every weight, to 1e-9 in max absolute error.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import jrnn  # noqa: E402
from jrnn import interop  # noqa: E402

TOL = 1e-9
B, T, D, H = 3, 5, 4, 3
KINDS = ("tanh", "relu", "lstm", "gru")


def make_module(kind, num_layers=1, bidirectional=False, batch_first=True, bias=True, **kwargs):
    torch.manual_seed(hash((kind, num_layers, bidirectional, batch_first, bias)) % 2**31)
    common = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    if kind in ("tanh", "relu"):
        m = torch.nn.RNN(D, H, nonlinearity=kind, **common, **kwargs)
    elif kind == "lstm":
        m = torch.nn.LSTM(D, H, **common, **kwargs)
    else:
        m = torch.nn.GRU(D, H, **common, **kwargs)
    m = m.double()
    with torch.no_grad():  # weights larger than PyTorch's ±1/sqrt(H) so the gates leave their linear range
        for p in m.parameters():
            p.copy_(0.6 * torch.randn_like(p))
    return m


def random_state(module, batch=B):
    L = module.num_layers * (2 if module.bidirectional else 1)
    h = torch.randn(L, batch, H, dtype=torch.float64)
    if isinstance(module, torch.nn.LSTM):
        return h, torch.randn(L, batch, H, dtype=torch.float64)
    return h


def random_lengths(rng):
    lengths = rng.integers(1, T + 1, size=B)
    lengths[rng.integers(B)] = T  # pad_packed_sequence pads to the longest
    lengths[(np.argmax(lengths) + 1) % B] = 1
    return lengths


def run_torch(module, x, h0, lengths):
    """``module`` on ``x`` (its own layout), packed when ``lengths`` is given."""
    if lengths is None:
        return module(x, h0)
    packed = pack_padded_sequence(x, torch.as_tensor(lengths), batch_first=module.batch_first, enforce_sorted=False)
    out, h_n = module(packed, h0)
    y, _ = pad_packed_sequence(out, batch_first=module.batch_first, total_length=T)
    return y, h_n


def to_np(t):
    if isinstance(t, (tuple, list)):
        return tuple(to_np(a) for a in t)
    return t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def max_err(a, b):
    a, b = to_np(a), to_np(b)
    if isinstance(a, tuple):
        return max(max_err(x, y) for x, y in zip(a, b))
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


@functools.partial(jax.jit, static_argnames=("model", "time_major"))
def apply(model, params, xs, carries, seq_lengths, time_major=False):
    """``model.apply`` compiled once per case (cheaper than eager dispatch of the scans)."""
    return model.apply(params, xs, carries, seq_lengths=seq_lengths, time_major=time_major)


def run_jrnn(model, params, module, x, h0, lengths):
    carries = None if h0 is None else interop.carries_from_torch(model, h0)
    seq_lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    return apply(model, params, jnp.asarray(to_np(x)), carries, seq_lengths, time_major=not module.batch_first)


# --------------------------------------------------------------------------------------------
# Forward equivalence


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_forward_matches_torch(kind, num_layers, bidirectional):
    rng = np.random.default_rng(7)
    cases = [(True, False, False), (True, True, True), (False, False, True), (False, True, True)]
    for batch_first, packed, with_h0 in cases:
        module = make_module(kind, num_layers, bidirectional, batch_first)
        model, params = interop.from_torch(module)
        x = torch.randn(B, T, D, dtype=torch.float64)
        if not batch_first:
            x = x.transpose(0, 1).contiguous()
        h0 = random_state(module) if with_h0 else None
        lengths = random_lengths(rng) if packed else None

        y_t, h_t = run_torch(module, x, h0, lengths)
        ys, carries = run_jrnn(model, params, module, x, h0, lengths)

        case = f"batch_first={batch_first} packed={packed} h0={with_h0}"
        assert max_err(ys, y_t) < TOL, case
        assert max_err(interop.carries_to_torch(model, carries), h_t) < TOL, case
        if packed:  # padded steps are zero on both sides
            ys_bt = to_np(ys) if batch_first else np.swapaxes(to_np(ys), 0, 1)
            for b, n in enumerate(lengths):
                assert np.all(ys_bt[b, n:] == 0.0), case
            assert np.any(ys_bt != 0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_and_streaming(kind):
    """Unbatched ``(T, D)`` inputs, and carrying the state across two chunks as PyTorch does."""
    module = make_module(kind, 2, True)
    model, params = interop.from_torch(module)
    x = torch.randn(T, D, dtype=torch.float64)
    h0 = random_state(module)
    h0 = tuple(a[:, 0] for a in h0) if isinstance(h0, tuple) else h0[:, 0]
    y_t, h_t = module(x, h0)
    ys, carries = model.apply(params, jnp.asarray(to_np(x)), interop.carries_from_torch(model, h0))
    assert max_err(ys, y_t) < TOL
    assert max_err(interop.carries_to_torch(model, carries), h_t) < TOL

    x = torch.randn(B, 2 * T, D, dtype=torch.float64)
    module = make_module(kind, 2, False)
    model, params = interop.from_torch(module)
    y_t, h_t = module(x)
    xs = jnp.asarray(to_np(x))
    y1, c1 = model.apply(params, xs[:, :T])
    y2, c2 = model.apply(params, xs[:, T:], c1)
    assert max_err(jnp.concatenate([y1, y2], axis=1), y_t) < TOL
    assert max_err(interop.carries_to_torch(model, c2), h_t) < TOL


# --------------------------------------------------------------------------------------------
# Gradients: torch autograd vs jax.grad through the converted model


def _torch_loss(module, x, h0, lengths, w_y, w_h):
    y, h_n = run_torch(module, x, h0, lengths)
    h_n = h_n if isinstance(h_n, tuple) else (h_n,)
    return (y * w_y).sum() + sum((h * w).sum() for h, w in zip(h_n, w_h))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("packed", [False, True])
def test_gradients_match_torch(kind, packed):
    rng = np.random.default_rng(3)
    module = make_module(kind, 2, True, batch_first=True)
    model, params = interop.from_torch(module)
    x = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    h0 = random_state(module)
    h0 = tuple(a.requires_grad_() for a in h0) if isinstance(h0, tuple) else h0.requires_grad_()
    lengths = random_lengths(rng) if packed else None
    w_y = torch.randn(B, T, 2 * H, dtype=torch.float64)
    n_states = 2 if kind == "lstm" else 1
    w_h = [torch.randn(4, B, H, dtype=torch.float64) for _ in range(n_states)]

    module.zero_grad()
    _torch_loss(module, x, h0, lengths, w_y, w_h).backward()
    torch_grads = {name: p.grad for name, p in module.named_parameters()}

    seq_lengths = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    w_y_j = jnp.asarray(to_np(w_y))
    w_h_j = interop.carries_from_torch(model, tuple(w_h) if kind == "lstm" else w_h[0])

    def loss(params, xs, carries):
        ys, carries_T = apply(model, params, xs, carries, seq_lengths)
        terms = jax.tree_util.tree_map(lambda c, w: jnp.sum(c * w), carries_T, w_h_j)
        return jnp.sum(ys * w_y_j) + sum(jax.tree_util.tree_leaves(terms))

    carries0 = interop.carries_from_torch(model, h0)
    d_params, d_xs, d_carries = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, jnp.asarray(to_np(x)), carries0)

    assert max_err(d_xs, x.grad) < TOL
    h0_grad = tuple(a.grad for a in h0) if kind == "lstm" else h0.grad
    assert max_err(interop.carries_to_torch(model, d_carries), h0_grad) < TOL
    ours = interop.torch_state_dict(model, d_params)
    assert set(ours) == set(torch_grads)
    for name, g in torch_grads.items():
        if kind != "gru" and name.startswith("bias_hh"):
            # b = bias_ih + bias_hh, so both torch biases get d_b, which the state dict puts in bias_ih
            g_ours = ours[name.replace("bias_hh", "bias_ih")]
        else:
            g_ours = ours[name]
        assert max_err(g_ours, g) < TOL, name


# --------------------------------------------------------------------------------------------
# Round trips, options, dtypes


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip(kind):
    module = make_module(kind, 2, True, batch_first=False)
    model, params = interop.from_torch(module)
    back = interop.to_torch(model, params, batch_first=False)
    assert type(back) is type(module)
    assert (back.num_layers, back.bidirectional, back.batch_first, back.hidden_size, back.input_size) == (
        2,
        True,
        False,
        H,
        D,
    )
    if kind in ("tanh", "relu"):
        assert back.nonlinearity == kind
    x = torch.randn(T, B, D, dtype=torch.float64)
    h0 = random_state(module)
    assert max_err(back(x, h0)[0], module(x, h0)[0]) < TOL
    assert max_err(back(x, h0)[1], module(x, h0)[1]) < TOL
    # and the other way: from_torch(to_torch(...)) gives the same params
    _, params2 = interop.from_torch(back)
    assert max_err(jax.tree_util.tree_leaves(params2), jax.tree_util.tree_leaves(params)) == 0.0
    # the default layout is batch_first=True
    assert interop.to_torch(model, params).batch_first is True


def test_to_torch_from_jrnn_init():
    """A model made in jrnn (its own initializers) runs identically in PyTorch."""
    for cell in (
        jrnn.VanillaCell(H, activation="relu", recurrent_init="normal"),
        jrnn.LSTMCell(H, recurrent_init="normal"),
        jrnn.GRUCell(H, recurrent_init="normal"),
    ):
        model = jrnn.RNN(cell, num_layers=2, bidirectional=True)
        params = model.init(jax.random.key(0), D, jnp.float64)
        module = interop.to_torch(model, params)
        assert next(module.parameters()).dtype == torch.float64
        x = torch.randn(B, T, D, dtype=torch.float64)
        ys, _ = model.apply(params, jnp.asarray(to_np(x)))
        assert max_err(ys, module(x)[0]) < TOL


@pytest.mark.parametrize("kind", KINDS)
def test_bias_false(kind):
    module = make_module(kind, 2, False, bias=False)
    model, params = interop.from_torch(module)
    for p in params.layers:
        biases = (p.b_x, p.b_h) if kind == "gru" else (p.b,)
        assert all(np.all(np.asarray(b) == 0.0) for b in biases)
    x = torch.randn(B, T, D, dtype=torch.float64)
    assert max_err(model.apply(params, jnp.asarray(to_np(x)))[0], module(x)[0]) < TOL

    with_bias = interop.to_torch(model, params)  # bias=True with zero biases
    assert with_bias.bias is True
    assert all(torch.all(p == 0) for n, p in with_bias.named_parameters() if n.startswith("bias"))
    without = interop.to_torch(model, params, bias=False)
    assert without.bias is False
    for m in (with_bias, without):
        assert max_err(m(x)[0], module(x)[0]) < TOL

    model2, params2 = interop.from_torch(make_module(kind, 2, False))  # non-zero biases
    with pytest.raises(ValueError, match=r"must be zero for bias=False"):
        interop.to_torch(model2, params2, bias=False)


def test_dtypes_and_dropout():
    m32 = torch.nn.LSTM(D, H, num_layers=2, dropout=0.25)
    model, params = interop.from_torch(m32)
    assert model.dropout == 0.25
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(params))
    back = interop.to_torch(model, params)
    assert next(back.parameters()).dtype == torch.float32
    assert back.dropout == 0.25
    model64, params64 = interop.from_torch(make_module("gru"))
    assert all(a.dtype == jnp.float64 for a in jax.tree_util.tree_leaves(params64))
    assert next(interop.to_torch(model64, params64, dtype=torch.float32).parameters()).dtype == torch.float32
    assert next(interop.to_torch(model64, params64, dtype=jnp.float32).parameters()).dtype == torch.float32


# --------------------------------------------------------------------------------------------
# Errors


def test_errors():
    for bad in (torch.nn.Linear(D, H), torch.nn.LSTMCell(D, H), "lstm"):
        with pytest.raises(TypeError, match="module must be a torch.nn.RNN"):
            interop.from_torch(bad)

    model = jrnn.RNN(jrnn.LSTMCell(H), output_size=2)
    params = model.init(jax.random.key(0), D)
    with pytest.raises(ValueError, match="output_size must be None"):
        interop.to_torch(model, params)
    model = jrnn.RNN(jrnn.VanillaCell(H, activation="sigmoid"))
    with pytest.raises(ValueError, match="activation must be 'tanh' or 'relu'"):
        interop.to_torch(model, model.init(jax.random.key(0), D))
    with pytest.raises(TypeError, match="model must be a jrnn.RNN"):
        interop.to_torch(jrnn.LSTMCell(H), None)

    model, params = interop.from_torch(make_module("lstm", 2, True))
    with pytest.raises(ValueError, match=r"h_0\[0\] \(h_0\) must be \(num_layers·directions=4, B, hidden_size=3\)"):
        interop.carries_from_torch(model, (torch.zeros(2, B, H), torch.zeros(2, B, H)))
    with pytest.raises(TypeError, match=r"\(h_0, c_0\) tuple"):
        interop.carries_from_torch(model, torch.zeros(4, B, H))
    with pytest.raises(TypeError, match="carries must be a tuple with num_layers=2"):
        interop.carries_to_torch(model, (None,))
    gru, _ = interop.from_torch(make_module("gru"))
    with pytest.raises(TypeError, match="must be one tensor"):
        interop.carries_from_torch(gru, (torch.zeros(1, B, H), torch.zeros(1, B, H)))
