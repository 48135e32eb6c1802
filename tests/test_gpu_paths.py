"""The GPU paths on a CPU: ``backward="cudnn"`` and ``backward="pallas"`` (``jrnn.kernels``).

Nothing here needs a GPU. cuDNN itself cannot run on a CPU, so these tests check what can be: the
conversion of jrnn's parameters to cuDNN's flat weight layout (against ``jax.experimental.rnn``'s
own ``unpack_lstm_weights``), jrnn against ``jax.experimental.rnn.lstm_ref`` (the reference that
``jax.experimental.rnn``'s tests hold cuDNN to) with converted weights, the whole
``backward="cudnn"`` layer with ``lstm_ref`` standing in for the cuDNN call, and the errors. The
Pallas kernels run in Pallas' interpreter: outputs equal ``unroll``'s and gradients autodiff's in
float32 and float64.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import rnn

import jrnn
from jrnn.kernels import cudnn, pallas

F64 = jnp.float64
ON_GPU = jax.default_backend() == "gpu"
cpu_only = pytest.mark.skipif(ON_GPU, reason="checks the error raised without a GPU")
real_gpu = pytest.mark.skipif(not ON_GPU, reason="runs the compiled kernels: needs a GPU")


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _assert_trees_close(a, b, tol):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(la, lb):
        assert x.shape == y.shape
        assert _rel(x, y) <= tol, _rel(x, y)


def _network(layers=2, bidirectional=True, D=3, H=5, dtype=F64, seed=0):
    model = jrnn.RNN(jrnn.LSTMCell(H), num_layers=layers, bidirectional=bidirectional)
    params = model.init(jax.random.PRNGKey(seed), D, dtype, init="torch")  # nonzero biases
    return model, params


def _pseudo_layers(model, params):
    out = []
    for p in params.layers:
        out += list(p) if model.bidirectional else [p]
    return out


# --------------------------------------------------------------------------------------------
# cuDNN's weight layout


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, False), (2, True)])
def test_packed_weights_unpack_with_jax_experimental_rnn_into_jrnn_params(layers, bidirectional):
    D, H = 3, 5
    model, params = _network(layers, bidirectional, D, H)
    flat = cudnn.pack_network(model, params)
    assert flat.shape == (rnn.get_num_params_in_lstm(D, H, layers, bidirectional),)
    W_ih, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(flat, D, H, layers, bidirectional)
    for k, p in enumerate(_pseudo_layers(model, params)):
        np.testing.assert_array_equal(W_ih[k], p.w_x.T)
        np.testing.assert_array_equal(W_hh[k], p.w_h.T)
        np.testing.assert_array_equal(b_ih[k], p.b)
        np.testing.assert_array_equal(b_hh[k], np.zeros_like(p.b))
    back = cudnn.unpack_lstm_weights(flat, D, H, layers, bidirectional)
    _assert_trees_close(back, _pseudo_layers(model, params), 0.0)


def test_unpack_then_pack_computes_the_same_lstm_as_cudnn_weights_from_init_lstm_weight():
    """A flat vector with both biases (``init_lstm_weight``) through jrnn's params and back: the
    two biases merge into jrnn's one, and ``lstm_ref`` computes the same function."""
    D, H, L, B, T = 4, 6, 2, 3, 5
    flat = rnn.init_lstm_weight(jax.random.PRNGKey(0), D, H, L, True).astype(F64)
    again = cudnn.pack_lstm_weights(cudnn.unpack_lstm_weights(flat, D, H, L, True))
    x = jax.random.normal(jax.random.PRNGKey(1), (B, T, D), F64)
    h0 = jax.random.normal(jax.random.PRNGKey(2), (2 * L, B, H), F64)
    c0 = jax.random.normal(jax.random.PRNGKey(3), (2 * L, B, H), F64)
    lengths = jnp.array([5, 2, 4], jnp.int32)
    a = cudnn.reference_lstm(x, h0, c0, flat, lengths, input_size=D, hidden_size=H, num_layers=L, bidirectional=True)
    b = cudnn.reference_lstm(x, h0, c0, again, lengths, input_size=D, hidden_size=H, num_layers=L, bidirectional=True)
    _assert_trees_close(a, b, 1e-12)


@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)])
def test_jrnn_equals_jax_experimental_rnn_lstm_ref_with_converted_weights(layers, bidirectional):
    """jrnn's network (``lax.scan``) and ``jax.experimental.rnn.lstm_ref`` on the packed weights:
    outputs, final h and c, ragged lengths and nonzero initial carries included."""
    D, H, B, T = 3, 5, 4, 7
    model, params = _network(layers, bidirectional, D, H)
    dirs = 2 if bidirectional else 1
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D), F64)
    h0 = jax.random.normal(jax.random.PRNGKey(2), (dirs * layers, B, H), F64)
    c0 = jax.random.normal(jax.random.PRNGKey(3), (dirs * layers, B, H), F64)
    lengths = jnp.array([7, 3, 1, 5], jnp.int32)
    carries = []
    for layer in range(layers):
        per = [jrnn.LSTMCarry(h0[dirs * layer + d], c0[dirs * layer + d]) for d in range(dirs)]
        carries.append(tuple(per) if bidirectional else per[0])
    ys, finals = model.apply(params, xs, tuple(carries), seq_lengths=lengths)
    y_ref, h_n, c_n = cudnn.reference_lstm(
        xs, h0, c0, cudnn.pack_network(model, params), lengths,
        input_size=D, hidden_size=H, num_layers=layers, bidirectional=bidirectional,
    )  # fmt: skip
    _assert_trees_close(ys, y_ref, 1e-12)
    flat = [c for layer in finals for c in (layer if bidirectional else (layer,))]
    _assert_trees_close(jnp.stack([c.h for c in flat]), h_n, 1e-12)
    _assert_trees_close(jnp.stack([c.c for c in flat]), c_n, 1e-12)


# --------------------------------------------------------------------------------------------
# backward="cudnn": the layer around the cuDNN call, with lstm_ref standing in for it


@pytest.fixture
def cudnn_on_cpu(monkeypatch):
    """``backward="cudnn"`` with ``lstm_ref`` in place of cuDNN, so it runs on a CPU."""
    monkeypatch.setitem(cudnn.IMPLEMENTATION, "lstm", cudnn.reference_lstm)
    monkeypatch.setitem(cudnn.IMPLEMENTATION, "needs_gpu", False)
    jax.clear_caches()  # no layer traced with the other implementation is reused
    yield
    jax.clear_caches()


def _loss(cell, backward, lengths, reverse):
    def loss(params, xs, carry):
        c, ys = jrnn.unroll(cell, params, xs, carry, seq_lengths=lengths, reverse=reverse, backward=backward)
        weights = jnp.sin(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape)
        return jnp.sum(ys * weights) + sum(jnp.sum(jnp.cos(a)) for a in jax.tree_util.tree_leaves(c))

    return jax.value_and_grad(loss, argnums=(0, 1, 2))


def _layer_problem(cell, dtype, B=4, T=7, D=3, seed=0):
    k_p, k_x, k_c = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = cell.init(k_p, D, dtype, init="torch")
    xs = jax.random.normal(k_x, (B, T, D), dtype)
    leaves, treedef = jax.tree_util.tree_flatten(cell.initial_carry((B,), dtype))
    keys = jax.random.split(k_c, len(leaves))
    carry = jax.tree_util.tree_unflatten(treedef, [jax.random.normal(k, a.shape, dtype) for k, a in zip(keys, leaves)])
    return params, xs, carry


@pytest.mark.parametrize("lengths,reverse", [(None, False), ((7, 3, 0, 5), True), ((7, 3, 0, 5), False)])
def test_cudnn_layer_values_and_gradients_equal_autodiff(cudnn_on_cpu, reverse, lengths):
    cell = jrnn.LSTMCell(5)
    params, xs, carry = _layer_problem(cell, jnp.float32)
    lengths = None if lengths is None else jnp.array(lengths)
    want = _loss(cell, "autodiff", lengths, reverse)(params, xs, carry)
    got = _loss(cell, "cudnn", lengths, reverse)(params, xs, carry)
    _assert_trees_close(got, want, 1e-5)


def test_cudnn_network_equals_autodiff(cudnn_on_cpu):
    model, params = _network(1, True, 3, 5, jnp.float32)
    xs = jax.random.normal(jax.random.PRNGKey(1), (4, 6, 3), jnp.float32)
    lengths = jnp.array([6, 2, 0, 4])

    def loss(params, backward):
        ys, _ = model.apply(params, xs, seq_lengths=lengths, backward=backward)
        return jnp.sum(ys * jnp.sin(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape))

    want = jax.value_and_grad(loss)(params, "autodiff")
    got = jax.value_and_grad(loss)(params, "cudnn")
    _assert_trees_close(got, want, 1e-5)


@cpu_only
def test_cudnn_on_cpu_is_a_clear_error():
    jax.clear_caches()
    cell = jrnn.LSTMCell(4)
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
    with pytest.raises(ValueError, match=r"backward='cudnn' must be run on a CUDA GPU \(cuDNN needs a GPU\)"):
        jrnn.unroll(cell, params, xs, backward="cudnn")
    model = jrnn.RNN(cell, num_layers=2)
    with pytest.raises(ValueError, match="cuDNN needs a GPU"):
        model.apply(model.init(jax.random.PRNGKey(0), 3), xs, backward="cudnn")


@pytest.mark.parametrize(
    "cell,match",
    [
        (jrnn.GRUCell(4), "the cell for backward='cudnn' must be a LSTMCell"),
        (jrnn.VanillaCell(4), "the cell for backward='cudnn' must be a LSTMCell"),
        (jrnn.LSTMCell(4, peepholes=True), "a cell without options"),
        (jrnn.LSTMCell(4, layer_norm=True), "a cell without options"),
        (jrnn.LSTMCell(4, proj_size=2), "a cell without options"),
    ],
)
def test_cudnn_refuses_cells_it_cannot_run(cell, match):
    params = cell.init(jax.random.PRNGKey(0), 3)
    with pytest.raises(ValueError, match=match):
        jrnn.unroll(cell, params, jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3)), backward="cudnn")


@pytest.mark.parametrize("backward", ["cudnn", "pallas"])
def test_fused_layers_refuse_options_they_cannot_run(backward):
    cell = jrnn.LSTMCell(4)
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3))
    mask = jnp.array([[True, False, True, True, True], [True] * 5])
    with pytest.raises(ValueError, match=f"mask with backward='{backward}' must be None"):
        jrnn.unroll(cell, params, xs, mask=mask, backward=backward)
    with pytest.raises(ValueError, match=f"remat with backward='{backward}' must be False"):
        jrnn.unroll(cell, params, xs, remat=True, backward=backward)
    with pytest.raises(ValueError, match=f"method with backward='{backward}' must be 'sequential'"):
        jrnn.unroll(cell, params, xs, method="newton", backward=backward)


def test_cudnn_refuses_other_dtypes_than_float32(cudnn_on_cpu):
    cell = jrnn.LSTMCell(4)
    params = cell.init(jax.random.PRNGKey(0), 3, F64)
    with pytest.raises(ValueError, match="the dtype for backward='cudnn' must be float32"):
        jrnn.unroll(cell, params, jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3), F64), backward="cudnn")


# --------------------------------------------------------------------------------------------
# backward="pallas" in Pallas' interpreter


@pytest.fixture
def pallas_interpreted(monkeypatch):
    monkeypatch.setenv(pallas.INTERPRET_ENV, "1")
    jax.clear_caches()
    yield
    jax.clear_caches()


CELLS = [jrnn.LSTMCell(5), jrnn.GRUCell(5), jrnn.VanillaCell(5), jrnn.VanillaCell(5, activation="relu")]


TOLERANCES = {"float32": 2e-5, "float64": 1e-12}


@pytest.mark.parametrize(
    "cell,dtype,reverse",
    [(cell, "float64", reverse) for cell in CELLS for reverse in (False, True)]
    + [(CELLS[0], "float32", True), (CELLS[1], "float32", False)],
    ids=lambda v: f"{type(v).__name__}-{getattr(v, 'activation', '')}" if isinstance(v, jrnn.Cell) else str(v),
)
def test_pallas_layer_values_and_gradients_equal_autodiff(pallas_interpreted, cell, dtype, reverse):
    """Ragged lengths (one of them zero), a random initial carry, gradients of the outputs and
    of the final carry with respect to the params, the inputs and the initial carry."""
    params, xs, carry = _layer_problem(cell, jnp.dtype(dtype), seed=3)
    lengths = jnp.array([7, 3, 0, 5])
    want = _loss(cell, "autodiff", lengths, reverse)(params, xs, carry)
    got = _loss(cell, "pallas", lengths, reverse)(params, xs, carry)
    _assert_trees_close(got, want, TOLERANCES[dtype])


def test_pallas_grid_over_batch_blocks_equals_autodiff(pallas_interpreted, monkeypatch):
    """Batch blocks of 2 rows: three kernel instances, each with its own lengths and carries."""
    monkeypatch.setattr(pallas, "BATCH_BLOCK", 2)
    cell = jrnn.LSTMCell(5)
    params, xs, carry = _layer_problem(cell, F64, B=6, seed=9)
    lengths = jnp.array([7, 3, 0, 5, 1, 6])
    for reverse in (False, True):
        want = _loss(cell, "autodiff", lengths, reverse)(params, xs, carry)
        got = _loss(cell, "pallas", lengths, reverse)(params, xs, carry)
        _assert_trees_close(got, want, 1e-12)


def test_pallas_forward_equals_unroll_on_full_sequences(pallas_interpreted):
    cell = jrnn.LSTMCell(6)
    params, xs, carry = _layer_problem(cell, jnp.float32, B=2, T=9, D=4, seed=5)
    want = jrnn.unroll(cell, params, xs, carry)
    got = jrnn.unroll(cell, params, xs, carry, backward="pallas")
    _assert_trees_close(got, want, 2e-6)


def test_pallas_gradients_equal_the_hand_written_bptt_in_a_stacked_bidirectional_network(pallas_interpreted):
    model = jrnn.RNN(jrnn.GRUCell(4), num_layers=2, bidirectional=True, output_size=2)
    params = model.init(jax.random.PRNGKey(0), 3, F64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 6, 3), F64)
    lengths = jnp.array([6, 1, 4])

    def loss(params, backward):
        ys, _ = model.apply(params, xs, seq_lengths=lengths, backward=backward)
        return jnp.sum(jnp.tanh(ys) * jnp.cos(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape))

    want = jax.value_and_grad(loss)(params, "bptt")
    got = jax.value_and_grad(loss)(params, "pallas")
    _assert_trees_close(got, want, 1e-12)


@cpu_only
def test_pallas_without_a_gpu_or_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(pallas.INTERPRET_ENV, raising=False)
    jax.clear_caches()
    cell = jrnn.LSTMCell(4)
    params = cell.init(jax.random.PRNGKey(0), 3)
    with pytest.raises(ValueError, match=r"backward='pallas' must be run on a GPU .*JRNN_PALLAS_INTERPRET=1"):
        jrnn.unroll(cell, params, jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3)), backward="pallas")


@pytest.mark.parametrize("cell", [jrnn.LSTMCell(4, peepholes=True), jrnn.GRUCell(4, reset_after=False),
                                  jrnn.GRUCell(4, layer_norm=True), jrnn.MinGRUCell(4)], ids=repr)  # fmt: skip
def test_pallas_refuses_cells_it_cannot_run(pallas_interpreted, cell):
    params = cell.init(jax.random.PRNGKey(0), 3)
    with pytest.raises(ValueError, match="the cell for backward='pallas' must be"):
        jrnn.unroll(cell, params, jax.random.normal(jax.random.PRNGKey(1), (2, 5, 3)), backward="pallas")


def test_unknown_backward_still_lists_every_choice():
    cell = jrnn.LSTMCell(4)
    with pytest.raises(ValueError, match=r"\['autodiff', 'bptt', 'cudnn', 'pallas'\]"):
        jrnn.unroll(cell, cell.init(jax.random.PRNGKey(0), 3), jnp.zeros((2, 5, 3)), backward="magic")


# --------------------------------------------------------------------------------------------
# The Pallas kernels as a GPU would compile them: lowered for CUDA (Triton) on this CPU


def _lower_for_cuda(cell, B, T=16, D=8, dtype=jnp.float32):
    """Lower ``unroll(..., backward="pallas")`` and its gradient for CUDA without a GPU
    (``jax.export``), as Pallas' Triton backend would compile them."""
    from jax import export

    params = cell.init(jax.random.PRNGKey(0), D, dtype)
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D), dtype)
    lengths = jnp.full((B,), T)

    def loss(params, xs):
        return jnp.sum(jrnn.unroll(cell, params, xs, seq_lengths=lengths, backward="pallas")[1])

    allow = [export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    fn = jax.jit(jax.value_and_grad(loss))
    return export.export(fn, platforms=["cuda"], disabled_checks=allow)(params, xs).mlir_module()


@pytest.fixture
def as_if_on_gpu(monkeypatch):
    monkeypatch.delenv(pallas.INTERPRET_ENV, raising=False)
    monkeypatch.setattr(pallas, "on_gpu", lambda: True)
    jax.clear_caches()
    yield
    jax.clear_caches()


@pytest.mark.parametrize("cell,B", [(jrnn.LSTMCell(32), 4), (jrnn.LSTMCell(128), 1), (jrnn.VanillaCell(64), 2),
                                    (jrnn.LSTMCell(16), 64)],
                         ids=["lstm-H32-B4", "lstm-H128-B1", "vanilla-H64-B2", "lstm-H16-B64"])  # fmt: skip
def test_pallas_kernels_lower_to_triton_for_cuda(as_if_on_gpu, cell, B):
    """Both kernels (forward, and the backward of the gradient) pass Pallas' Triton lowering: no
    operation that Triton cannot take (wide concatenations, non-power-of-2 arrays); a batch of
    64 runs as a grid of 4 instances."""
    module = _lower_for_cuda(cell, B)
    assert module.count("__gpu$xla.gpu.triton") == 2
    assert module.count(f"grid_x = {max(1, B // pallas.BATCH_BLOCK)} : i32") == 2


@pytest.mark.parametrize("cell,B,match", [
    (jrnn.GRUCell(32), 4, "a GRU's gate width 3H is never a power of 2"),
    (jrnn.LSTMCell(48), 4, "the hidden_size for backward='pallas' on a GPU must be a power of 2"),
    (jrnn.VanillaCell(32), 3, "the batch size for backward='pallas' on a GPU must be a power of 2"),
    (jrnn.VanillaCell(32), 4, "the batch size for backward='pallas' on a GPU in float64 must be at least 16"),
])  # fmt: skip
def test_pallas_on_a_gpu_refuses_what_triton_cannot_compile(as_if_on_gpu, cell, B, match):
    dtype = F64 if "float64" in match else jnp.float32
    with pytest.raises(ValueError, match=match):
        _lower_for_cuda(cell, B, dtype=dtype)


def test_a_train_step_with_backward_pallas_equals_one_with_the_hand_bptt(pallas_interpreted):
    import optax

    from jrnn.train import make_train_step

    model = jrnn.RNN(jrnn.LSTMCell(8), num_layers=2, output_size=1)
    params = model.init(jax.random.PRNGKey(0), 3)
    xs = jax.random.normal(jax.random.PRNGKey(1), (4, 10, 3), jnp.float32)
    targets = jax.random.normal(jax.random.PRNGKey(2), (4, 10, 1), jnp.float32)
    lengths = jnp.array([10, 7, 1, 4])
    opt = optax.adam(1e-2)
    runs = [make_train_step(model, opt, loss="mse", backward=b)(params, opt.init(params), xs, targets, lengths)
            for b in ("bptt", "pallas")]  # fmt: skip
    _assert_trees_close(runs[1][0], runs[0][0], 1e-5)


# --------------------------------------------------------------------------------------------
# On a GPU (skipped elsewhere): the compiled paths against unroll, in float32 at full precision.
# benchmarks/gpu_run.sh runs these first (pytest -k real_gpu).


@real_gpu
@pytest.mark.parametrize("backward,cell", [("cudnn", jrnn.LSTMCell(32)), ("pallas", jrnn.LSTMCell(32)),
                                           ("pallas", jrnn.VanillaCell(64))], ids=["cudnn-lstm", "pallas-lstm",
                                                                                 "pallas-vanilla"])  # fmt: skip
@pytest.mark.parametrize("reverse", [False, True])
def test_on_a_real_gpu_fused_layers_equal_autodiff(monkeypatch, backward, cell, reverse):
    monkeypatch.delenv(pallas.INTERPRET_ENV, raising=False)
    jax.clear_caches()
    params, xs, carry = _layer_problem(cell, jnp.float32, B=4, T=50, D=16, seed=7)
    lengths = jnp.array([50, 17, 0, 33])
    with jax.default_matmul_precision("highest"):  # no TF32 in either (cuDNN reads the same setting)
        want = _loss(cell, "autodiff", lengths, reverse)(params, xs, carry)
        got = _loss(cell, backward, lengths, reverse)(params, xs, carry)
    _assert_trees_close(got, want, 1e-4)


@real_gpu
def test_on_a_real_gpu_a_stacked_bidirectional_lstm_through_cudnn_equals_autodiff():
    jax.clear_caches()
    model, params = _network(2, True, 16, 32, jnp.float32)
    xs = jax.random.normal(jax.random.PRNGKey(1), (8, 40, 16), jnp.float32)
    lengths = jnp.array([40, 3, 17, 0, 40, 39, 1, 25])

    def loss(params, backward):
        ys, _ = model.apply(params, xs, seq_lengths=lengths, backward=backward)
        return jnp.sum(ys * jnp.sin(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape))

    with jax.default_matmul_precision("highest"):
        want = jax.value_and_grad(loss)(params, "autodiff")
        got = jax.value_and_grad(loss)(params, "cudnn")
    _assert_trees_close(got, want, 1e-4)


def test_fused_layers_take_input_dropout_and_refuse_recurrent_dropout(pallas_interpreted, cudnn_on_cpu):
    """Input dropout scales the inputs before the fused layer (the same masks as the scans);
    recurrent dropout needs the mask inside the step, which the fused layers do not have."""
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 3), jnp.float32)
    lengths = jnp.array([5, 2, 4])
    key = jax.random.PRNGKey(7)
    for backward in ("pallas", "cudnn"):
        model = jrnn.RNN(jrnn.LSTMCell(4), num_layers=2, input_dropout=0.4, dropout=0.2)
        params = model.init(jax.random.PRNGKey(0), 3, jnp.float32)

        def loss(params, backward):
            ys, _ = model.apply(params, xs, seq_lengths=lengths, dropout_key=key, backward=backward)
            return jnp.sum(ys * jnp.sin(jnp.arange(ys.size, dtype=ys.dtype)).reshape(ys.shape))

        _assert_trees_close(jax.value_and_grad(loss)(params, backward), jax.value_and_grad(loss)(params, "autodiff"), 1e-5)
        plain = jnp.sum(model.apply(params, xs, seq_lengths=lengths, backward=backward)[0])
        dropped = jnp.sum(model.apply(params, xs, seq_lengths=lengths, dropout_key=key, backward=backward)[0])
        assert not np.isclose(float(plain), float(dropped))  # the masks took effect
        recurrent = jrnn.RNN(jrnn.LSTMCell(4), recurrent_dropout=0.3)
        with pytest.raises(ValueError, match=rf"recurrent_dropout with backward='{backward}' must be 0"):
            recurrent.apply(recurrent.init(jax.random.PRNGKey(0), 3, jnp.float32), xs, dropout_key=key, backward=backward)
