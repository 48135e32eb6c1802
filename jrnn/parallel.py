"""Parallel-in-time evaluation of a recurrent layer: Newton's method over the whole sequence.

A layer's trajectory ``s_1 .. s_T`` (the flattened carry after each step, ``N`` numbers per
sequence: ``H``, or ``2H`` for the LSTM's ``(h, c)``) is the solution of the ``T·N`` equations
``r_t(s) = s_t − f(s_{t−1}, x_t) = 0``. A sequential scan solves them one step after the other,
``T`` dependent steps. Newton's method solves them all at once (Lim et al. 2024, DEER): linearize
every step around the current guess and solve the linear recurrence

    s_t = J_t s_{t−1} + b_t,     J_t = ∂f/∂s (s^{(i)}_{t−1}, x_t),   b_t = f(s^{(i)}_{t−1}, x_t) − J_t s^{(i)}_{t−1}

with one ``jax.lax.associative_scan`` (``O(log T)`` depth; the pairs ``(J, b)`` compose as affine
maps). Each iteration costs the Jacobians of every step (``N`` tangents through the cell), one
scan over ``N × N`` matrix products and one evaluation of every step for the residual.

Legend: ``T`` steps, ``B`` batch, ``D`` input features, ``G`` gate width, ``N`` flat carry size.

Methods (``method=``):

- ``"newton"`` (DEER): full ``N × N`` Jacobians. Quadratic convergence near the solution; the scan
  costs ``O(T·N³)`` work and ``O(T·N²)`` memory, so it is for small ``N``.
- ``"quasi_newton"`` (quasi-DEER, Gonzalez et al. 2024; ParaRNN, Danieli et al.): only the
  diagonal of each Jacobian, so the scan is elementwise (``O(T·N)``). Linear convergence. For a
  cell whose Jacobian is diagonal (``cell.diagonal_jacobian``, the minGRU / minLSTM) the diagonal
  is one tangent with a vector of ones and the method is exact Newton; for any other cell it is
  read off the full Jacobian, chunk by chunk (``N`` tangents per step: the approximation saves
  the scan's cost, not the Jacobian's).
- ``"elk"`` (Gonzalez et al. 2024): Levenberg-Marquardt damping. Each step minimizes
  ``Σ_t ‖s_t − J_t s_{t−1} − b_t‖² + λ Σ_t ‖s_t − s^{(i)}_t‖²``, which is the posterior mean of a
  linear-Gaussian state-space model (dynamics ``(J_t, b_t)`` with unit noise, the current guess
  observed with noise ``1/λ``), computed by the parallel Kalman filter and RTS smoother of Särkkä
  & García-Fernández (2021): two associative scans. ``λ`` is adapted per sequence as in
  Marquardt's method: a step that lowers ``Σ‖r_t‖²`` is accepted and ``λ`` divided by 10,
  otherwise it is rejected and ``λ`` multiplied by 10; ``λ → 0`` is Newton. Full Jacobians while
  ``N <= FULL_JACOBIAN_MAX_SIZE``, else diagonal ones (quasi-ELK).

All three start from the initial carry repeated over time and stop when the scaled residual
``max |s_t − f(s_{t−1}, x_t)| / (1 + |f(s_{t−1}, x_t)|)`` is at most ``tol`` (``default_tol``:
``1.9e-6`` in float32, ``1e-12`` in float64) or after ``max_iter`` iterations. Undamped Newton
and quasi-Newton make at least one more step exact per iteration (step 1 is exact after one
iteration, as ``s_0`` is known), so ``max_iter >= T`` always converges in exact arithmetic; the
question is how much sooner. A contracting recurrence converges in a handful of iterations; a
chaotic one needs about ``T`` (and its intermediate guesses can overflow). Notebook 08 measures it.

A solve that did not converge (residual above ``tol``, or not finite) is never returned as if it
were the trajectory: ``on_failure="sequential"`` (the default) recomputes the trajectory with the
sequential scan under ``lax.cond`` and says so in ``SolveInfo.fell_back``; ``on_failure="nan"``
returns NaNs. Under ``vmap`` ``lax.cond`` runs both branches.

Cells whose recurrence is linear in the carry, ``h_t = a_t ⊙ h_{t−1} + b_t`` with ``a_t > 0`` and
``b_t > 0`` depending on the inputs only (the minGRU and minLSTM of Feng et al. 2024: they define
``log_coefficients``), need no Newton iteration: every parallel method runs one exact log-space
associative scan (pairs ``(log a, log b)`` composed with ``logaddexp``), and reports one iteration.

Padded steps (``seq_lengths``) are identity maps of the carry (``J = I``, ``b = 0``); ``reverse``
solves the reversed recurrence (the sequence flipped in time, as ``lax.scan(reverse=True)``).

Gradients. The solve itself is not differentiated: the trajectory ``s*`` of a converged solve
satisfies ``r(s*; θ) = 0``, so by the implicit function theorem its cotangents are one linear
recurrence in the adjoints, backwards in time::

    λ_t = ∂L/∂s_t + J_{t+1}ᵀ λ_{t+1},     d_θ = Σ_t (∂f_t/∂θ)ᵀ λ_t,   d_x_t = (∂f_t/∂x_t)ᵀ λ_t,
    d_s_0 = J_1ᵀ λ_1

(a ``jax.custom_vjp``). The recurrence is solved by the same associative scan over the exact
``N × N`` Jacobians (``backward="autodiff"`` while ``N <= FULL_JACOBIAN_MAX_SIZE``, or for a
diagonal-Jacobian cell), else by a reverse loop of one-step VJPs (``backward="autodiff"``) or of
the cells' hand-written step backwards (``backward="bptt"``: ``cell.backward_step``,
``param_grads``, ``input_grads``; no JAX-derived derivative). The parameter and input
cotangents are then one VJP of every step at once (one GEMM over ``T·B`` rows). The log-space
scan of the linear cells gets the same adjoint: with diagonal Jacobians ``a_t`` it is one
elementwise scan, exact, and it never differentiates through ``logaddexp``.
"""

from __future__ import annotations

import functools
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jrnn._checks import check_choice, check_float, check_int, check_seq_lengths, check_sequence
from jrnn.cells.base import Cell, check_cell

Array = jax.Array

Method = Literal["sequential", "newton", "quasi_newton", "elk"]
"""The evaluation methods of ``method=`` (see the module docstring)."""
METHODS: tuple[str, ...] = ("sequential", "newton", "quasi_newton", "elk")
"""Every ``method=``: the sequential scan and the parallel-in-time solvers."""
PARALLEL_METHODS: tuple[str, ...] = ("newton", "quasi_newton", "elk")
"""The parallel-in-time methods: ``METHODS`` but ``"sequential"``."""
JACOBIANS: tuple[str, ...] = ("full", "diagonal")
ON_FAILURE: tuple[str, ...] = ("sequential", "nan")
ADJOINTS: tuple[str, ...] = ("autodiff", "bptt")
SCANS: tuple[str, ...] = ("associative", "doubling")

FULL_JACOBIAN_MAX_SIZE = 64
"""The largest flat carry ``N`` for which ``"elk"`` uses full Jacobians and the adjoint is solved
by the parallel scan over full Jacobians (``T·B·N²`` numbers each); above it, diagonal ones and
a reverse loop."""

DEFAULT_MAX_ITER = 50
"""``max_iter`` when None: at most this many iterations (and never more than ``T``)."""

DEFAULT_DAMPING = 1.0
"""The initial Levenberg-Marquardt ``λ`` of ``"elk"``."""

_DIAGONAL_CHUNK_ELEMENTS = 1 << 22
"""The generic Jacobian diagonal is taken ``c`` tangents at a time, ``c·T·B·N`` at most this."""


class SolveInfo(NamedTuple):
    """How a parallel solve went.

    ``iterations``: Newton iterations run (int32; ELK counts rejected trials too; 1 for the
    log-space scan). ``residual``: the scaled residual of the parallel solution (see the module
    docstring; before any fallback). ``converged``: ``residual <= tol``. ``fell_back``: the
    trajectory was recomputed by the sequential scan (``not converged`` with
    ``on_failure="sequential"``).
    """

    iterations: Array
    residual: Array
    converged: Array
    fell_back: Array


class SolveResult(NamedTuple):
    """``(carry_T, ys, info)``: what ``unroll`` returns, and the ``SolveInfo``."""

    carry_T: Any
    ys: Array
    info: SolveInfo


def default_tol(dtype) -> float:
    """The residual tolerance for a compute dtype: ``max(16·eps, 1e-12)``."""
    return max(16.0 * float(jnp.finfo(dtype).eps), 1e-12)


# --------------------------------------------------------------------------------------------
# Flat carries


class _Flat(NamedTuple):
    """How a carry tree maps to one ``(..., N)`` vector: its treedef and each leaf's width."""

    treedef: Any
    sizes: tuple[int, ...]

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def flatten(self, carry) -> Array:
        leaves = jax.tree_util.tree_leaves(carry)
        return leaves[0] if len(leaves) == 1 else jnp.concatenate(leaves, axis=-1)

    def unflatten(self, flat: Array):
        cuts = np.cumsum(self.sizes)[:-1].tolist()
        return jax.tree_util.tree_unflatten(self.treedef, jnp.split(flat, cuts, axis=-1))


def _flat_of(carry) -> _Flat:
    leaves, treedef = jax.tree_util.tree_flatten(carry)
    return _Flat(treedef, tuple(int(leaf.shape[-1]) for leaf in leaves))


def _flat_step(cell: Cell, flat: _Flat, params, xp: Array, s_prev: Array, mask: Array | None) -> Array:
    """``f(s_{t−1}, x_t)`` for every step at once: ``(T, B, N)``; identity at padded steps."""
    carry, _ = cell.step(params, flat.unflatten(s_prev), xp)
    s = flat.flatten(carry)
    return s if mask is None else jnp.where(mask[..., None], s, s_prev)


def _shift(S: Array, s0: Array) -> Array:
    """``s_{t−1}`` for every step: ``(T, B, N)`` with ``s0 (B, N)`` first."""
    return jnp.concatenate([s0[None], S[:-1]], axis=0)


def _scaled_residual(S: Array, F: Array) -> Array:
    """``max |s − f| / (1 + |f|)``: a scalar (NaN stays NaN)."""
    r = jnp.abs(S - F) / (1.0 + jnp.abs(F))
    return jnp.max(jnp.where(jnp.isnan(r), jnp.inf, r))


# --------------------------------------------------------------------------------------------
# Linear recurrences by associative scan. A "matrix" is (..., N, N) when full, (..., N) when
# diagonal; the helpers below do the same algebra on both.


def _mv(A: Array, x: Array, full: bool) -> Array:
    return (A @ x[..., None])[..., 0] if full else A * x


def _mm(A: Array, B: Array, full: bool) -> Array:
    return A @ B if full else A * B


def _tr(A: Array, full: bool) -> Array:
    return jnp.swapaxes(A, -1, -2) if full else A


def _eye_like(x: Array, full: bool) -> Array:
    """The identity for vectors like ``x (..., N)``."""
    if not full:
        return jnp.ones_like(x)
    eye = jnp.eye(x.shape[-1], dtype=x.dtype)
    return jnp.broadcast_to(eye, x.shape + x.shape[-1:])


def _solve_right(M: Array, A: Array, full: bool) -> Array:
    """``A M⁻¹``."""
    if not full:
        return A / M
    return jnp.swapaxes(jnp.linalg.solve(jnp.swapaxes(M, -1, -2), jnp.swapaxes(A, -1, -2)), -1, -2)


def _doubling_scan(combine, elems):
    """Inclusive prefix scan along axis 0 by recursive doubling (Hillis & Steele 1986): level
    ``k`` combines every element with the one ``2^k`` before it. ``⌈log₂ T⌉`` levels in a
    ``fori_loop``, so the combine is compiled once whatever ``T``."""
    T = jax.tree_util.tree_leaves(elems)[0].shape[0]
    index = jnp.arange(T)

    def level(k, x):
        d = jnp.left_shift(1, k)
        combined = combine(jax.tree_util.tree_map(lambda a: jnp.roll(a, d, axis=0), x), x)
        keep = index >= d  # the first d elements have no partner at distance d

        def pick(new, old):
            return jnp.where(keep.reshape((T,) + (1,) * (old.ndim - 1)), new, old)

        return jax.tree_util.tree_map(pick, combined, x)

    return jax.lax.fori_loop(0, max(0, (T - 1).bit_length()), level, elems)


def prefix_scan(combine, elems, impl: str = "associative"):
    """Inclusive prefix scan along axis 0, ``combine(earlier, later)``.

    ``impl="associative"``: ``jax.lax.associative_scan`` (work-efficient, ``O(T)`` combines in
    ``2 log₂ T`` levels; its compile time grows with ``log T`` and with the combine's size).
    ``"doubling"``: recursive doubling, ``O(T log T)`` combines in ``log₂ T`` levels of one
    compiled loop body (compiles in well under a second at any ``T``).
    """
    if impl == "doubling":
        return _doubling_scan(combine, elems)
    return jax.lax.associative_scan(combine, elems)


def linear_scan(A: Array, b: Array, *, full: bool, impl: str = "associative") -> Array:
    """All ``x_t = A_t x_{t−1} + b_t`` along axis 0 with ``x_{−1} = 0``, by one prefix scan.

    ``A``: ``(T, ..., N, N)`` (``full``) or ``(T, ..., N)`` (diagonal); ``b``: ``(T, ..., N)``.
    """

    def compose(earlier, later):  # the affine map "earlier, then later"
        A1, b1 = earlier
        A2, b2 = later
        return _mm(A2, A1, full), _mv(A2, b1, full) + b2

    return prefix_scan(compose, (A, b), impl)[1]


def _kalman_step(F: Array, u: Array, y: Array, kappa: Array, full: bool, impl: str) -> Array:
    """One Levenberg-Marquardt step as the posterior mean of a linear-Gaussian model.

    Dynamics ``s_t = F_t s_{t−1} + u_t + q_t``, ``q_t ~ N(0, I)`` (``F_0 = 0``: ``s_0`` is folded
    into ``u_0``); observations ``y_t = s_t + r_t``, ``r_t ~ N(0, I/λ)``. ``kappa = λ / (1 + λ)``
    per sequence, ``(1, B, 1)``. Parallel filter and smoother of Särkkä & García-Fernández (2021),
    their elements specialized to unit observation matrix and gain ``κ I``.
    """
    k = kappa
    k_m = kappa[..., None] if full else kappa  # broadcasts against (T, B, N, N)
    # filtering elements (A, b, C, η, J)
    A = (1.0 - k_m) * F
    b = (1.0 - k) * u + k * y
    C = (1.0 - k_m) * _eye_like(u, full)
    eta = k * _mv(_tr(F, full), y - u, full)
    Jm = k_m * _mm(_tr(F, full), F, full)

    def combine(ei, ej):  # ei earlier, ej later
        Ai, bi, Ci, etai, Ji = ei
        Aj, bj, Cj, etaj, Jj = ej
        eye = _eye_like(bi, full)
        W = _solve_right(eye + _mm(Ci, Jj, full), Aj, full)  # A_j (I + C_i J_j)⁻¹
        V = _solve_right(eye + _mm(Jj, Ci, full), _tr(Ai, full), full)  # A_iᵀ (I + J_j C_i)⁻¹
        return (
            _mm(W, Ai, full),
            _mv(W, bi + _mv(Ci, etaj, full), full) + bj,
            _mm(_mm(W, Ci, full), _tr(Aj, full), full) + Cj,
            _mv(V, etaj - _mv(Jj, bi, full), full) + etai,
            _mm(_mm(V, Jj, full), Ai, full) + Ji,
        )

    _, m, P, _, _ = prefix_scan(combine, (A, b, C, eta, Jm), impl)  # filtered means, covariances
    # smoothing elements: E_t = P_t F_{t+1}ᵀ (F_{t+1} P_t F_{t+1}ᵀ + I)⁻¹, g_t = m_t − E_t (F_{t+1} m_t + u_{t+1})
    F_next, u_next = F[1:], u[1:]
    P_t, m_t = P[:-1], m[:-1]
    M = _mm(_mm(F_next, P_t, full), _tr(F_next, full), full) + _eye_like(m_t, full)
    E = _solve_right(M, _mm(P_t, _tr(F_next, full), full), full)
    g = m_t - _mv(E, _mv(F_next, m_t, full) + u_next, full)
    E = jnp.concatenate([E, jnp.zeros_like(E[:1])], axis=0)
    g = jnp.concatenate([g, m[-1:]], axis=0)
    # smoothed means: ms_t = E_t ms_{t+1} + g_t, a reverse linear recurrence
    return linear_scan(E[::-1], g[::-1], full=full, impl=impl)[::-1]


# --------------------------------------------------------------------------------------------
# Jacobians of every step with respect to the carry before it


def _full_jacobians(fn, s_prev: Array) -> Array:
    """``(T, B, N, N)``, ``[..., j, i] = ∂f_j/∂s_i``: ``N`` tangents through every step."""
    N = s_prev.shape[-1]
    eye = jnp.eye(N, dtype=s_prev.dtype)

    def column(e):
        return jax.jvp(fn, (s_prev,), (jnp.broadcast_to(e, s_prev.shape),))[1]

    return jax.vmap(column, out_axes=-1)(eye)


def _diagonal_jacobians(fn, s_prev: Array, exact_diagonal: bool) -> Array:
    """``(T, B, N)``: the diagonal of every step's Jacobian.

    One tangent of ones when the Jacobian is known to be diagonal; otherwise the full Jacobian's
    diagonal, ``c`` tangents at a time (``N`` tangents in all).
    """
    if exact_diagonal:
        return jax.jvp(fn, (s_prev,), (jnp.ones_like(s_prev),))[1]
    N = s_prev.shape[-1]
    c = int(max(1, min(N, _DIAGONAL_CHUNK_ELEMENTS // max(1, s_prev.size))))
    chunks = -(-N // c)
    idx = jnp.minimum(jnp.arange(chunks * c).reshape(chunks, c), N - 1)  # (chunks, c)

    def chunk(ids):
        def column(i):
            e = jax.nn.one_hot(i, N, dtype=s_prev.dtype)
            col = jax.jvp(fn, (s_prev,), (jnp.broadcast_to(e, s_prev.shape),))[1]  # (T, B, N)
            return jnp.take(col, i, axis=-1)  # ∂f_i/∂s_i: (T, B)

        return jax.vmap(column)(ids)  # (c, T, B)

    diag = jax.lax.map(chunk, idx).reshape(chunks * c, *s_prev.shape[:-1])[:N]  # (N, T, B)
    return jnp.moveaxis(diag, 0, -1)


def _jacobians(fn, s_prev: Array, full: bool, exact_diagonal: bool) -> Array:
    if full:
        return _full_jacobians(fn, s_prev)
    return _diagonal_jacobians(fn, s_prev, exact_diagonal)


# --------------------------------------------------------------------------------------------
# The solvers (forward only; everything here runs on stop_gradient inputs)


class _Problem(NamedTuple):
    """One layer's recurrence in processing order: ``xp (T, B, G)`` projected inputs, ``s0 (B, N)``,
    ``mask (T, B)`` or None."""

    cell: Cell
    flat: _Flat
    params: Any
    xp: Array
    s0: Array
    mask: Array | None

    def f(self, s_prev: Array) -> Array:
        return _flat_step(self.cell, self.flat, self.params, self.xp, s_prev, self.mask)


def _sequential(pb: _Problem) -> Array:
    """The trajectory by the sequential scan: ``(T, B, N)``."""
    mask = pb.mask if pb.mask is not None else jnp.ones(pb.xp.shape[:2], bool)

    def body(s, inputs):
        xp_t, m_t = inputs
        new = _flat_step(pb.cell, pb.flat, pb.params, xp_t, s, m_t)
        return new, new

    return jax.lax.scan(body, pb.s0, (pb.xp, mask))[1]


def _newton(pb: _Problem, method: str, full: bool, tol, max_iter: int, damping: float, impl: str):
    """``(S (T, B, N), iterations, residual)`` by (quasi-)Newton or ELK iterations."""
    exact_diag = bool(getattr(pb.cell, "diagonal_jacobian", False))
    S0 = jnp.broadcast_to(pb.s0[None], pb.xp.shape[:2] + pb.s0.shape[-1:])
    F0 = pb.f(_shift(S0, pb.s0))
    elk = method == "elk"

    def merit(S, F):  # per sequence: Σ_t ‖r_t‖², NaN as +inf
        m = jnp.sum(jnp.square(S - F), axis=(0, 2))
        return jnp.where(jnp.isnan(m), jnp.inf, m)

    def linearize(S, F):
        s_prev = _shift(S, pb.s0)
        J = _jacobians(pb.f, s_prev, full, exact_diag)
        u = F - _mv(J, s_prev, full)
        # step 0: s_{−1} = s0 is known, so its affine map is the constant F_0
        J = J.at[0].set(0.0)
        u = u.at[0].set(F[0])
        return J, u

    def cond(state):
        k, _, _, res = state[:4]
        return (k < max_iter) & (res > tol) & jnp.isfinite(res)

    def newton_body(state):
        k, S, F, _ = state
        J, u = linearize(S, F)
        S = linear_scan(J, u, full=full, impl=impl)
        F = pb.f(_shift(S, pb.s0))
        return k + 1, S, F, _scaled_residual(S, F)

    def elk_body(state):
        k, S, F, res, lam, m = state
        J, u = linearize(S, F)
        kappa = (lam / (1.0 + lam))[None, :, None]  # (1, B, 1)
        S_new = _kalman_step(J, u, S, kappa, full, impl)
        F_new = pb.f(_shift(S_new, pb.s0))
        m_new = merit(S_new, F_new)
        accept = m_new < m  # (B,)
        keep = accept[None, :, None]
        S = jnp.where(keep, S_new, S)
        F = jnp.where(keep, F_new, F)
        lam = jnp.clip(jnp.where(accept, lam / 10.0, lam * 10.0), 1e-12, 1e12)
        return k + 1, S, F, _scaled_residual(S, F), lam, jnp.where(accept, m_new, m)

    k0 = jnp.zeros((), jnp.int32)
    res0 = _scaled_residual(S0, F0)
    if elk:
        lam0 = jnp.full(pb.s0.shape[:1], damping, pb.s0.dtype)
        state = (k0, S0, F0, res0, lam0, merit(S0, F0))
        k, S, _, res, _, _ = jax.lax.while_loop(cond, elk_body, state)
    else:
        k, S, _, res = jax.lax.while_loop(cond, newton_body, (k0, S0, F0, res0))
    return S, k, res


def _log_space(pb: _Problem, impl: str) -> Array:
    """The exact trajectory of a linear cell by one log-space associative scan: ``(T, B, H)``."""
    log_a, log_b = pb.cell.log_coefficients(pb.params, pb.xp)  # (T, B, H) each
    if pb.mask is not None:
        m = pb.mask[..., None]
        # a padded step is the identity: a = 1, b = 0 (a very negative finite log keeps the
        # gradients finite where logaddexp meets two of them)
        log_a = jnp.where(m, log_a, jnp.zeros_like(log_a))
        log_b = jnp.where(m, log_b, jnp.full_like(log_b, jnp.finfo(log_b.dtype).min / 4))

    def compose(earlier, later):
        la1, lb1 = earlier
        la2, lb2 = later
        return la1 + la2, jnp.logaddexp(la2 + lb1, lb2)

    log_A, log_B = prefix_scan(compose, (log_a, log_b), impl)
    return jnp.exp(log_A) * pb.s0[None] + jnp.exp(log_B)  # h_t = (Π a) h_0 + Σ (Π a) b


# --------------------------------------------------------------------------------------------
# The adjoint: a custom VJP around the solved trajectory


def _adjoint_parallel(pb: _Problem, S: Array, d_S: Array, exact_diag: bool, impl: str) -> Array:
    """``λ (T, B, N)``: the reverse recurrence ``λ_t = d_S_t + J_{t+1}ᵀ λ_{t+1}`` by one scan."""
    s_prev = _shift(S, pb.s0)
    full = not exact_diag
    J = _jacobians(pb.f, s_prev, full, exact_diag)  # (T, B, N, N) or (T, B, N)
    A = jnp.concatenate([_tr(J[1:], full), jnp.zeros_like(J[:1])], axis=0)  # J_{t+1}ᵀ, 0 at the end
    return linear_scan(A[::-1], d_S[::-1], full=full, impl=impl)[::-1]


def _adjoint_loop(pb: _Problem, S: Array, d_S: Array) -> Array:
    """``λ`` by a reverse loop of one-step VJPs (JAX-derived)."""
    s_prev = _shift(S, pb.s0)
    mask = pb.mask if pb.mask is not None else jnp.ones(pb.xp.shape[:2], bool)

    def body(mu, inputs):  # mu = J_{t+1}ᵀ λ_{t+1}
        d_s_t, sp_t, xp_t, m_t = inputs
        lam_t = d_s_t + mu
        _, vjp = jax.vjp(lambda sp: _flat_step(pb.cell, pb.flat, pb.params, xp_t, sp, m_t), sp_t)
        return vjp(lam_t)[0], lam_t

    _, lam = jax.lax.scan(body, jnp.zeros_like(pb.s0), (d_S, s_prev, pb.xp, mask), reverse=True)
    return lam


def _grads_bptt(pb: _Problem, xs: Array, S: Array, d_S: Array):
    """``(d_params, d_xs, d_s0)`` by the cells' hand-written step backward over the solved carries."""
    cell, flat, params = pb.cell, pb.flat, pb.params
    s_prev = _shift(S, pb.s0)
    mask = pb.mask if pb.mask is not None else jnp.ones(pb.xp.shape[:2], bool)

    def body(d_carry, inputs):  # d_carry: the flat cotangent flowing into s_t from later steps
        d_s_t, sp_t, xp_t, m_t = inputs
        carry_tm1 = flat.unflatten(sp_t)
        carry, res = cell.forward_step(params, carry_tm1, xp_t)  # recompute the step's residuals
        d_new = flat.unflatten(d_s_t + d_carry)
        d_pre, d_carry_tm1 = cell.backward_step(params, res, carry_tm1, carry, d_new)
        m = m_t[:, None]
        d_pre = jax.tree_util.tree_map(lambda a: jnp.where(m, a, jnp.zeros_like(a)), d_pre)
        d_carry_tm1 = jnp.where(m, flat.flatten(d_carry_tm1), d_s_t + d_carry)  # padded: identity
        return d_carry_tm1, d_pre

    d_s0, d_pre = jax.lax.scan(body, jnp.zeros_like(pb.s0), (d_S, s_prev, pb.xp, mask), reverse=True)
    h_prev = cell.output(flat.unflatten(s_prev))  # (T, B, H)
    return cell.param_grads(params, xs, h_prev, d_pre), cell.input_grads(params, d_pre), d_s0


def _problem(cell, params, xs, carry, mask) -> _Problem:
    flat = _flat_of(carry)
    return _Problem(cell, flat, params, cell.project_inputs(params, xs), flat.flatten(carry), mask)


def _outputs(cell, params, xs, carry, mask, S):
    flat = _flat_of(carry)
    h = cell.output(flat.unflatten(S))  # (T, B, H)
    ys = h if mask is None else jnp.where(mask[..., None], h, jnp.zeros_like(h))
    return flat.unflatten(S[-1]), ys


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _attach(cell, adjoint, params, xs, carry, mask, S):  # adjoint: (backward, impl)
    """``(carry_T, ys)`` from the solved trajectory ``S``, with the adjoint as its VJP."""
    return _outputs(cell, params, xs, carry, mask, S)


def _attach_fwd(cell, adjoint, params, xs, carry, mask, S):
    return _outputs(cell, params, xs, carry, mask, S), (params, xs, carry, mask, S)


def _attach_bwd(cell, adjoint, residuals, cotangents):
    params, xs, carry, mask, S = residuals
    backward, impl = adjoint
    d_carry_T, d_ys = cotangents
    pb = _problem(cell, params, xs, carry, mask)
    flat = pb.flat
    H = d_ys.shape[-1]
    if mask is not None:
        d_ys = jnp.where(mask[..., None], d_ys, jnp.zeros_like(d_ys))
    d_S = jnp.zeros_like(S).at[..., :H].add(d_ys)  # y_t = h_t, the carry's first part
    d_S = d_S.at[-1].add(flat.flatten(d_carry_T))
    if backward == "bptt":
        d_params, d_xs, d_s0 = _grads_bptt(pb, xs, S, d_S)
    else:
        exact_diag = bool(getattr(cell, "diagonal_jacobian", False))
        if exact_diag or flat.size <= FULL_JACOBIAN_MAX_SIZE:
            lam = _adjoint_parallel(pb, S, d_S, exact_diag, impl)
        else:
            lam = _adjoint_loop(pb, S, d_S)
        # every step's parameter, input and entering-carry cotangents: one VJP over all steps
        s_prev = _shift(S, pb.s0)
        f = lambda p, x, sp: _flat_step(cell, flat, p, cell.project_inputs(p, x), sp, mask)  # noqa: E731
        _, vjp = jax.vjp(f, params, xs, s_prev)
        d_params, d_xs, d_s_prev = vjp(lam)
        d_s0 = d_s_prev[0]
    d_carry0 = flat.unflatten(d_s0)
    return d_params, d_xs, d_carry0, None, jnp.zeros_like(S)


_attach.defvjp(_attach_fwd, _attach_bwd)


# --------------------------------------------------------------------------------------------
# The layer-level solver (time-major, validated) and its public face


def _compute_dtype(xs, params):
    return jnp.result_type(xs.dtype, *(a.dtype for a in jax.tree_util.tree_leaves(params)))


def _step_mask(steps, T):
    """``(T, B)`` booleans from lengths ``(B,)`` or a ``(T, B)`` mask; None when every step runs."""
    if steps is None or steps.ndim == 2:
        return steps
    return jnp.arange(T)[:, None] < steps[None, :]


def uses_full_jacobians(method: str, jacobian: str | None = None) -> bool:
    """Whether ``method`` linearizes with full Jacobians: ``"newton"`` does, ``"quasi_newton"``
    and ``"elk"`` (quasi-ELK) take diagonal ones, unless ``jacobian`` says otherwise."""
    return method == "newton" if jacobian is None else jacobian == "full"


def solve_layer(
    cell: Cell,
    params,
    xs: Array,
    carry,
    lengths: Array | None,
    *,
    method: str = "newton",
    reverse: bool = False,
    tol: float | None = None,
    max_iter: int | None = None,
    damping: float = DEFAULT_DAMPING,
    jacobian: str | None = None,
    on_failure: str = "sequential",
    backward: str = "autodiff",
    scan: str = "associative",
) -> SolveResult:
    """One layer by a parallel method (time-major, validated): ``SolveResult(carry_T, ys, info)``.

    ``xs (T, B, D)``, ``carry`` the initial carry ``(B, ·)`` per leaf, ``lengths (B,)`` or None.
    ``backward`` picks how the adjoint is solved (module docstring). Differentiable in ``params``,
    ``xs`` and ``carry``.
    """
    T = xs.shape[0]
    dtype = _compute_dtype(xs, params)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)
    xs = xs.astype(dtype)
    carry = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), carry)
    mask = _step_mask(lengths, T)
    if mask is not None:  # padding is never read (a NaN there would reach the gradients as 0·NaN)
        xs = jnp.where(mask[..., None], xs, jnp.zeros_like(xs))
    if reverse:  # the reversed recurrence: process the flipped sequence forwards
        xs = xs[::-1]
        mask = None if mask is None else mask[::-1]
    tol = default_tol(dtype) if tol is None else float(tol)
    max_iter = min(T, DEFAULT_MAX_ITER) if max_iter is None else int(max_iter)

    stop = jax.lax.stop_gradient
    pb = _problem(cell, stop(params), stop(xs), stop(carry), mask)
    if hasattr(cell, "log_coefficients"):
        S = _log_space(pb, scan)
        res = _scaled_residual(S, pb.f(_shift(S, pb.s0)))
        k = jnp.ones((), jnp.int32)
    else:
        full = uses_full_jacobians(method, jacobian)
        S, k, res = _newton(pb, method, full, tol, max_iter, damping, scan)
    converged = res <= tol
    if on_failure == "sequential":
        S = jax.lax.cond(converged, lambda: S, lambda: _sequential(pb))
        fell_back = jnp.logical_not(converged)
    else:
        S = jnp.where(converged, S, jnp.full_like(S, jnp.nan))
        fell_back = jnp.zeros((), bool)
    carry_T, ys = _attach(cell, (backward, scan), params, xs, carry, mask, stop(S))
    if reverse:
        ys = ys[::-1]
    return SolveResult(carry_T, ys, SolveInfo(k, res, converged, fell_back))


def solve(
    cell: Cell,
    params,
    xs: Array,
    carry=None,
    *,
    method: Method = "newton",
    seq_lengths=None,
    reverse: bool = False,
    time_major: bool = False,
    tol: float | None = None,
    max_iter: int | None = None,
    damping: float = DEFAULT_DAMPING,
    jacobian: str | None = None,
    on_failure: str = "sequential",
    backward: str = "autodiff",
    scan: str = "associative",
) -> SolveResult:
    """``unroll(cell, params, xs, carry, method=...)`` with the solver's options and its report.

    Args:
      cell, params, xs, carry, seq_lengths, reverse, time_major: as in ``jrnn.unroll``.
      method: ``"newton"``, ``"quasi_newton"`` or ``"elk"`` (module docstring).
      tol: the scaled-residual tolerance (``default_tol`` of the compute dtype when None).
      max_iter: at most this many iterations (``min(T, 50)`` when None; ``0`` runs none).
      damping: ELK's initial ``λ``.
      jacobian: ``"full"`` or ``"diagonal"`` to override the method's choice (None).
      on_failure: ``"sequential"`` (recompute the trajectory by the sequential scan) or ``"nan"``.
      backward: how the adjoint is solved, ``"autodiff"`` or ``"bptt"``.
      scan: the prefix scan, ``"associative"`` (``jax.lax.associative_scan``) or ``"doubling"``
        (see ``prefix_scan``).

    Returns:
      ``SolveResult(carry_T, ys, info)``: ``carry_T`` and ``ys`` as ``unroll`` returns them, and
      ``info``, a ``SolveInfo`` (iterations, residual, converged, fell_back).
    """
    check_cell(cell)
    check_choice("method", method, PARALLEL_METHODS)
    if tol is not None:
        check_float("tol", tol, 0.0, low_open=True)
    if max_iter is not None:
        check_int("max_iter", max_iter, 0)
    check_float("damping", damping, 0.0)
    if jacobian is not None:
        check_choice("jacobian", jacobian, JACOBIANS)
    check_choice("on_failure", on_failure, ON_FAILURE)
    check_choice("backward", backward, ADJOINTS)
    check_choice("scan", scan, SCANS)
    cell.check_params(params)
    layout = check_sequence(xs, cell.input_size_of(params), time_major=time_major)
    lengths = check_seq_lengths(seq_lengths, layout.batch_size if layout.batched else None, layout.num_steps)
    if carry is not None:
        cell.check_carry(carry, layout.batch_shape, "carry")
    options = dict(method=method, reverse=bool(reverse), tol=None if tol is None else float(tol),
                   max_iter=None if max_iter is None else int(max_iter), damping=float(damping),
                   jacobian=jacobian, on_failure=on_failure, backward=backward, scan=scan)  # fmt: skip
    return _solve(cell, params, xs, carry, lengths, layout=layout, options=tuple(sorted(options.items())))


@functools.partial(jax.jit, static_argnames=("cell", "layout", "options"))
def _solve(cell, params, xs, carry, lengths, *, layout, options):
    xs = layout.to_scan(xs)  # (T, B, D)
    dtype = _compute_dtype(xs, params)
    if carry is None:
        carry = cell.initial_carry((xs.shape[1],), dtype)
    else:
        carry = layout.carry_to_scan(jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), carry))
    carry_T, ys, info = solve_layer(cell, params, xs, carry, lengths, **dict(options))
    return SolveResult(layout.carry_from_scan(carry_T), layout.from_scan(ys), info)


__all__ = [
    "DEFAULT_DAMPING",
    "DEFAULT_MAX_ITER",
    "FULL_JACOBIAN_MAX_SIZE",
    "METHODS",
    "Method",
    "PARALLEL_METHODS",
    "SolveInfo",
    "SolveResult",
    "default_tol",
    "linear_scan",
    "prefix_scan",
    "solve",
    "solve_layer",
]
