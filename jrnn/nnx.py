"""Flax NNX modules wrapping jrnn's functional network.

::

    from flax import nnx
    import jrnn, jrnn.nnx

    rnn = jrnn.nnx.RNN(jrnn.LSTMCell(64), input_size=8, num_layers=2, dropout=0.1,
                       rngs=nnx.Rngs(0, dropout=1))
    ys, carries = rnn(xs)                         # xs (B, T, 8) -> ys (B, T, 64)
    rnn.eval(); rnn.train()                       # dropout off / on, as for nnx.Dropout

    # inside any NNX model, trained the NNX way:
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    loss, grads = nnx.value_and_grad(loss_fn)(model, xs, targets)
    optimizer.update(model, grads)

The parameters are ``nnx.Param`` leaves in the very structure of ``jrnn.NetworkParams``: the
attribute ``layers`` mirrors ``NetworkParams.layers`` (cell params NamedTuples, ``(fwd, bwd)``
tuples when bidirectional) and ``readout`` mirrors ``NetworkParams.readout``, so ``nnx.state``
paths read ``layers/0/w_x`` (``layers/0/1/w_x``: layer 0's backward direction), ``readout/w``. ``rnn.params`` (or ``rnn.network_params()``) gives
the plain ``NetworkParams``, ``RNN.from_params(model, params)`` wraps existing ones, and
``rnn.spec`` is the ``jrnn.RNN`` that computes the forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jrnn.cells import Cell
from jrnn.network import RNN as _RNNSpec
from jrnn.network import NetworkParams

Array = jax.Array

__all__ = ["RNN"]


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def _as_params(tree):
    """Wrap every array leaf of a params pytree (NamedTuples, tuples) into an ``nnx.Param``."""
    return jax.tree_util.tree_map(nnx.Param, tree)


def _values(tree):
    """The arrays held by the ``nnx.Param`` leaves of ``tree``."""
    return jax.tree_util.tree_map(lambda v: v[...], tree, is_leaf=_is_variable)


class RNN(nnx.Module):
    """A stacked, optionally bidirectional recurrent network (``jrnn.RNN``) as an NNX module.

    Args:
      cell: a jrnn cell (``VanillaCell``, ``LSTMCell`` or ``GRUCell``).
      input_size: features of the inputs.
      num_layers, bidirectional, output_size, dropout, input_dropout, recurrent_dropout: as for
        ``jrnn.RNN``. Each dropout uses one mask per sequence (variational), drawn from the
        ``rng_collection`` stream.
      pool, num_steps, merge: as for ``jrnn.RNN``; ``pool`` makes the module a sequence-level
        head (``ys (B, P)``, or ``(B, output_size)`` through the readout).
      param_dtype: dtype of the initial parameters.
      deterministic: ``False`` (NNX's default for ``nnx.Dropout``): dropout is on; ``True``: off.
        ``module.train()`` / ``module.eval()`` / ``nnx.view(module, deterministic=...)`` set it, and
        ``__call__(..., deterministic=...)`` overrides it.
      rng_collection: the ``nnx.Rngs`` stream that dropout masks come from (``"dropout"``).
      params: existing ``NetworkParams`` to hold instead of fresh ones (see ``from_params``).
      rngs: ``nnx.Rngs``; ``rngs.params()`` initializes the weights, and the ``rng_collection``
        stream is forked for dropout (needed only when a dropout rate is positive).
    """

    def __init__(
        self,
        cell: Cell,
        input_size: int,
        *,
        num_layers: int = 1,
        bidirectional: bool = False,
        output_size: int | None = None,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        pool: str | None = None,
        num_steps: int | None = None,
        merge: str = "concat",
        param_dtype=jnp.float32,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        params: NetworkParams | None = None,
        rngs: nnx.Rngs | None = None,
    ):
        spec = _RNNSpec(
            cell=cell,
            num_layers=num_layers,
            bidirectional=bidirectional,
            output_size=output_size,
            dropout=dropout,
            input_dropout=input_dropout,
            recurrent_dropout=recurrent_dropout,
            pool=pool,
            num_steps=num_steps,
            merge=merge,
        )
        if rngs is not None and not isinstance(rngs, nnx.Rngs):
            raise TypeError(f"rngs must be an nnx.Rngs, got {type(rngs).__name__}")
        if params is None:
            if rngs is None:
                raise TypeError("rngs must be an nnx.Rngs to initialize the parameters (or pass params=), got None")
            params = spec.init(rngs.params(), input_size, param_dtype)
        else:
            got = spec.check_params(params)
            if got != input_size:
                raise ValueError(f"input_size must be {got} (what params expect), got {input_size!r}")
        self.spec = spec
        self.input_size = int(input_size)
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        self.layers = nnx.data(_as_params(tuple(params.layers)))
        self.readout = nnx.data(None if params.readout is None else _as_params(params.readout))
        if spec.has_dropout and rngs is not None:
            self.rngs = rngs[rng_collection].fork()
        else:
            self.rngs = nnx.data(None)

    @classmethod
    def from_params(
        cls,
        model: _RNNSpec,
        params: NetworkParams,
        *,
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: nnx.Rngs | None = None,
    ) -> "RNN":
        """Wrap a ``jrnn.RNN`` and its ``NetworkParams`` (e.g. from ``jrnn.interop.from_torch``).

        ``rngs`` is only needed for dropout (a positive dropout rate in train mode).
        """
        if not isinstance(model, _RNNSpec):
            raise TypeError(f"model must be a jrnn.RNN, got {type(model).__name__}")
        input_size = model.check_params(params)
        return cls(
            model.cell,
            input_size,
            num_layers=model.num_layers,
            bidirectional=model.bidirectional,
            output_size=model.output_size,
            dropout=model.dropout,
            input_dropout=model.input_dropout,
            recurrent_dropout=model.recurrent_dropout,
            pool=model.pool,
            num_steps=model.num_steps,
            merge=model.merge,
            deterministic=deterministic,
            rng_collection=rng_collection,
            params=params,
            rngs=rngs,
        )

    # -- parameters --------------------------------------------------------------------------
    def network_params(self, state=None) -> NetworkParams:
        """The parameters as a plain ``jrnn.NetworkParams`` (arrays, no ``nnx.Param``).

        With ``state`` (an ``nnx.State`` of this module, such as the gradients from
        ``nnx.grad(loss_fn)(module)`` or ``nnx.state(module, nnx.Param)``), the arrays come from it
        instead, arranged as this module's parameters: ``rnn.network_params(grads)`` gives the
        gradients as ``NetworkParams``, comparable with ``jax.grad`` of the functional model.
        """
        if state is None:
            return NetworkParams(_values(self.layers), None if self.readout is None else _values(self.readout))

        def pick(root):
            def leaf(path, _):
                node = state[root]
                for k in path:
                    node = node[k.idx if isinstance(k, jax.tree_util.SequenceKey) else k.name]
                return node[...]

            return leaf

        try:
            layers = jax.tree_util.tree_map_with_path(pick("layers"), self.layers, is_leaf=_is_variable)
            readout = None
            if self.readout is not None:
                readout = jax.tree_util.tree_map_with_path(pick("readout"), self.readout, is_leaf=_is_variable)
        except (KeyError, IndexError, TypeError) as e:
            raise ValueError(
                f"state must be an nnx.State of this module's parameters (layers/..., readout/...), "
                f"got {type(state).__name__} without entry {e}"
            ) from e
        return NetworkParams(layers, readout)

    @property
    def params(self) -> NetworkParams:
        """``network_params()``: use with ``self.spec.apply`` or jrnn's functional tools."""
        return self.network_params()

    def set_params(self, params: NetworkParams) -> None:
        """Overwrite the parameters in place with ``params`` (same structure and shapes)."""
        input_size = self.spec.check_params(params)
        if input_size != self.input_size:
            raise ValueError(f"params expect input_size {input_size}, this module takes {self.input_size}")
        flat_vars = jax.tree_util.tree_leaves((self.layers, self.readout), is_leaf=_is_variable)
        flat_new = jax.tree_util.tree_leaves((tuple(params.layers), params.readout))
        for var, new in zip(flat_vars, flat_new):
            var[...] = jnp.asarray(new, var[...].dtype)

    def initial_carries(self, batch_shape=(), dtype=None) -> tuple:
        """Zero carries (one entry per layer) in the parameters' dtype unless ``dtype`` is given."""
        if dtype is None:
            dtype = jax.tree_util.tree_leaves(self.layers, is_leaf=_is_variable)[0][...].dtype
        return self.spec.initial_carries(batch_shape, dtype)

    # -- modes -------------------------------------------------------------------------------
    def set_view(self, deterministic: bool | None = None):
        """Used by ``nnx.view(module, deterministic=...)``, as ``nnx.Dropout.set_view``."""
        if deterministic is not None:
            self.deterministic = deterministic

    # -- the forward pass --------------------------------------------------------------------
    def _dropout_key(self, deterministic, rngs):
        if not self.spec.has_dropout:
            return None
        if deterministic is None:
            deterministic = self.deterministic
        if deterministic is None:
            raise ValueError(
                "deterministic must be given to RNN (in the constructor, by module.train()/eval(), or to "
                "__call__) when a dropout rate is positive, got None"
            )
        if deterministic:
            return None
        source = rngs if rngs is not None else self.rngs
        if source is None:
            raise ValueError(
                f"rngs: dropout (dropout={self.spec.dropout}, input_dropout={self.spec.input_dropout}, "
                f"recurrent_dropout={self.spec.recurrent_dropout}) in train mode (deterministic=False) needs an "
                f"nnx.Rngs with a {self.rng_collection!r} (or default) stream, in the constructor or __call__, got None"
            )
        if isinstance(source, nnx.Rngs):
            return source[self.rng_collection]()
        if isinstance(source, nnx.RngStream):
            return source()
        if isinstance(source, jax.Array):
            return source
        raise TypeError(f"rngs must be an nnx.Rngs, nnx.RngStream or a jax.random key, got {type(source).__name__}")

    def __call__(
        self,
        xs: Array,
        carries=None,
        *,
        seq_lengths=None,
        mask=None,
        time_major: bool = False,
        unroll: int = 1,
        remat: bool = False,
        backward: str = "autodiff",
        method: str = "sequential",
        deterministic: bool | None = None,
        rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None,
    ):
        """Run the network: ``xs (B, T, D)`` (``(T, B, D)`` with ``time_major``, or ``(T, D)``).

        Returns ``(ys, carries)`` as ``jrnn.RNN.apply`` does (``seq_lengths``, ``mask``,
        ``unroll``, ``remat``, ``backward`` and ``method`` as there); ``carries`` fed back continues
        the sequence. ``deterministic`` overrides the module's mode for this call; ``rngs`` (an
        ``nnx.Rngs``, a stream or a key) overrides its dropout stream.
        """
        dropout_key = self._dropout_key(deterministic, rngs)
        return self.spec.apply(
            self.network_params(),
            xs,
            carries,
            seq_lengths=seq_lengths,
            mask=mask,
            dropout_key=dropout_key,
            time_major=time_major,
            unroll=unroll,
            remat=remat,
            backward=backward,
            method=method,
        )
