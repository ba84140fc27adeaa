"""Compiled per-row CPU kernels of every policy family (numba, float64).

On CPU a policy's `prepare` and `step` are each one call into this module for the whole batch
(DESIGN.md principle 6): at a batch of one, the ~100 small numpy or torch calls of a 25-step
Euler loop cost more than the arithmetic. Each kernel loops over the rows of its batch and runs
the same scalar code on every row, so a row's result does not depend on its batch, bit for bit:
sums run in a fixed order, and nothing is compiled with fastmath (no reassociation, no fused
multiply-add), so the vector lanes LLVM uses for elementwise loops round exactly as scalar code
would. The step kernels (BaseODE, DeepNet, `activation: tanh`) use the module's own `_tanh`
(within 3 ulp of libm's), which vectorises where a call to libm's does not. `prepare` (the
flows of Gated-ODEtoODE and HyperNet, once per rollout) keeps libm's np.tanh, so those
families run bit for bit as in their studies (benchmarks/es_throughput.md, last section).

Mat-vecs on the per-step path take the matrix transposed (`At` = A^T, [cols, rows]): y = A x is
then a sequence of axpy's y += x_j A[:, j] along contiguous memory, which vectorises across
the rows of A while each y_r is still summed in the order j = 0, 1, ... (4.7x faster than
dot products at h = 64). `prepare` stores the matrix flows transposed for this reason.

The matrix flow of ODEtoODE ("Ode to an ODE" eq. 5-6) needs expm of the skew matrix
eta b_psi(t, W); `expm_into` is scaling and squaring with the diagonal Pade approximant whose
degree (3, 5, 7, 9 or 13) is sized to the 1-norm (Higham 2005, as in scipy.linalg.expm). A
diagonal Pade approximant of a skew matrix is orthogonal (r(A) = q(A)^{-1} q(A)^T with q(A)
commuting with its transpose), so W_i stays orthogonal to rounding error.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = [
    "ACTIVATION_CODES",
    "expm_into",
    "iso_flow",
    "gated_flow",
    "nanode_flow",
    "hypernet_flow",
    "ode_step",
    "add_linear_clip",
    "base_ode_step",
    "deepnet_step",
    "deep_resnet_step",
    "linear_step",
]

ACTIVATION_CODES = {"abs": 0, "tanh": 1, "relu": 2}

# Pade coefficients b_0..b_m and the 1-norm bounds theta_m up to which degree m is accurate to
# double precision without scaling (Higham 2005, Table 2.3).
_PADE3 = np.array([120.0, 60.0, 12.0, 1.0])
_PADE5 = np.array([30240.0, 15120.0, 3360.0, 420.0, 30.0, 1.0])
_PADE7 = np.array([17297280.0, 8648640.0, 1995840.0, 277200.0, 25200.0, 1512.0, 56.0, 1.0])
_PADE9 = np.array(
    [
        17643225600.0,
        8821612800.0,
        2075673600.0,
        302702400.0,
        30270240.0,
        2162160.0,
        110880.0,
        3960.0,
        90.0,
        1.0,
    ]
)
_PADE13 = np.array(
    [
        64764752532480000.0,
        32382376266240000.0,
        7771770303897600.0,
        1187353796428800.0,
        129060195264000.0,
        10559470521600.0,
        670442572800.0,
        33522128640.0,
        1323241920.0,
        40840800.0,
        960960.0,
        16380.0,
        182.0,
        1.0,
    ]
)
_THETA3 = 1.495585217958292e-2
_THETA5 = 2.539398330063230e-1
_THETA7 = 9.504178996162932e-1
_THETA9 = 2.097847961257068e0
_THETA13 = 5.371920351148152e0


# -- tanh -------------------------------------------------------------------------------------
# tanh(x) = sign(x) t / (t + 2), t = expm1(2 |x|), with expm1 by range reduction 2|x| = k ln2 + r,
# |r| <= ln2 / 2, a degree-13 Taylor polynomial for expm1(r), and 2^k built from its exponent
# bits. Branch-free, so LLVM runs it in vector lanes: 2 ns per element against 7-15 ns for a
# call to libm's tanh, which cannot be vectorised (DeepNet and BaseODE evaluate 400 and 800
# tanh per env step). Where it is used: see the module doc. Within 3 ulp of
# libm's tanh (max abs difference 2.2e-16); a lane and the scalar remainder loop round
# identically (no fused multiply-add without fastmath), and the result does not depend on the
# platform's libm.
_INV_LN2 = 1.4426950408889634
_LN2_HI = 6.93147180369123816490e-01  # 32 significant bits: k * _LN2_HI is exact for k < 2^21
_LN2_LO = 1.90821492927058770002e-10
_E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9, _E10, _E11, _E12, _E13 = (
    1.0 / math.factorial(n) for n in range(2, 14)
)


@intrinsic
def _f64_from_bits(typingctx, bits):
    """Reinterpret an int64's bits as a float64 (vectorisable, unlike ldexp)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@njit(cache=True, error_model="numpy")
def _tanh(x):
    """tanh(x) in vectorisable arithmetic (see above); +-0 and NaN are returned as given.

    error_model="numpy": IEEE division without the zero check that stops vectorisation."""
    a = abs(x)
    a = a if a <= 20.0 else 20.0  # tanh(20) rounds to 1; NaN -> 20 keeps k defined
    y = a + a
    k = np.int64(y * _INV_LN2 + 0.5)  # y >= 0: truncation rounds to nearest
    kf = np.float64(k)
    r = (y - kf * _LN2_HI) - kf * _LN2_LO
    q = _E13
    q = q * r + _E12
    q = q * r + _E11
    q = q * r + _E10
    q = q * r + _E9
    q = q * r + _E8
    q = q * r + _E7
    q = q * r + _E6
    q = q * r + _E5
    q = q * r + _E4
    q = q * r + _E3
    q = q * r + _E2
    em = r + r * r * q  # expm1(r)
    s = _f64_from_bits((k + 1023) << 52)  # 2^k, 0 <= k <= 58
    t = s * em + (s - 1.0)  # expm1(y) = 2^k expm1(r) + 2^k - 1
    z = t / (t + 2.0)
    return z if x > 0.0 else (-z if x < 0.0 else x)


# -- small dense linear algebra ---------------------------------------------------------------
@njit(cache=True)
def _matvec_t(At, x, y):
    """y = A x for At = A^T [c, r], summed in the order j = 0..c-1 (see module doc).

    The j loop is unrolled by 8 (then 4, then 1) inside the vectorised i loop: each y[i] still
    adds its terms one at a time in the order j = 0, 1, ..., so the result is bit for bit the
    plain loop's, but y is loaded and stored once per 8 columns instead of once per column
    (ISO-ODEtoODE's step at h = 16: about 35% less time)."""
    c, r = At.shape
    for i in range(r):
        y[i] = 0.0
    j = 0
    while j + 8 <= c:
        x0, x1, x2, x3 = x[j], x[j + 1], x[j + 2], x[j + 3]
        x4, x5, x6, x7 = x[j + 4], x[j + 5], x[j + 6], x[j + 7]
        for i in range(r):
            t = y[i] + At[j, i] * x0
            t = t + At[j + 1, i] * x1
            t = t + At[j + 2, i] * x2
            t = t + At[j + 3, i] * x3
            t = t + At[j + 4, i] * x4
            t = t + At[j + 5, i] * x5
            t = t + At[j + 6, i] * x6
            y[i] = t + At[j + 7, i] * x7
        j += 8
    while j + 4 <= c:
        x0, x1, x2, x3 = x[j], x[j + 1], x[j + 2], x[j + 3]
        for i in range(r):
            t = y[i] + At[j, i] * x0
            t = t + At[j + 1, i] * x1
            t = t + At[j + 2, i] * x2
            y[i] = t + At[j + 3, i] * x3
        j += 4
    while j < c:
        xj = x[j]
        for i in range(r):
            y[i] += At[j, i] * xj
        j += 1


@njit(cache=True)
def _matvec(A, x, y):
    """y = A x for A [r, c] by dot products (prepare-side, where A is not stored transposed)."""
    r, c = A.shape
    for i in range(r):
        s = 0.0
        for j in range(c):
            s += A[i, j] * x[j]
        y[i] = s


@njit(cache=True)
def _axpy_rows(A, i, Acol, B, C):
    """C[i, :] += sum_k A[i, k] B[k, :], k taken 8 at a time and then one by one, each C[i, j]
    still summed in the order k = 0, 1, ... (as `_matvec_t`). `Acol` False reads A[i, k],
    True reads A[k, i]."""
    K = B.shape[0]
    m = B.shape[1]
    k = 0
    while k + 8 <= K:
        if Acol:
            a0, a1, a2, a3 = A[k, i], A[k + 1, i], A[k + 2, i], A[k + 3, i]
            a4, a5, a6, a7 = A[k + 4, i], A[k + 5, i], A[k + 6, i], A[k + 7, i]
        else:
            a0, a1, a2, a3 = A[i, k], A[i, k + 1], A[i, k + 2], A[i, k + 3]
            a4, a5, a6, a7 = A[i, k + 4], A[i, k + 5], A[i, k + 6], A[i, k + 7]
        for j in range(m):
            t = C[i, j] + a0 * B[k, j]
            t = t + a1 * B[k + 1, j]
            t = t + a2 * B[k + 2, j]
            t = t + a3 * B[k + 3, j]
            t = t + a4 * B[k + 4, j]
            t = t + a5 * B[k + 5, j]
            t = t + a6 * B[k + 6, j]
            C[i, j] = t + a7 * B[k + 7, j]
        k += 8
    while k < K:
        a = A[k, i] if Acol else A[i, k]
        for j in range(m):
            C[i, j] += a * B[k, j]
        k += 1


@njit(cache=True)
def _matmul(A, B, C):
    """C = A B; each C[i, j] summed over k = 0, 1, ... (row-of-B axpy's, contiguous)."""
    n = A.shape[0]
    m = B.shape[1]
    for i in range(n):
        for j in range(m):
            C[i, j] = 0.0
        _axpy_rows(A, i, False, B, C)


@njit(cache=True)
def _matmul_tn(A, B, C):
    """C = A^T B; each C[i, j] summed over k = 0, 1, ..."""
    n = A.shape[1]
    m = B.shape[1]
    for i in range(n):
        for j in range(m):
            C[i, j] = 0.0
        _axpy_rows(A, i, True, B, C)


@njit(cache=True)
def _copy_into(A, out):
    """out = A. (Explicit loops: numba's array-to-slice assignment takes seconds to compile.)"""
    n, m = A.shape
    for i in range(n):
        for j in range(m):
            out[i, j] = A[i, j]


@njit(cache=True)
def _transpose_into(A, out):
    n, m = A.shape
    for i in range(n):
        for j in range(m):
            out[j, i] = A[i, j]


@njit(cache=True)
def _lu_into(A, piv):
    """Gaussian elimination with partial pivoting in place: U in the upper triangle, each
    multiplier l_ik = A[i, k] / A[k, k] stored at A[i, k], the pivot row of step k in piv[k].

    Every element gets the operations of the textbook right-looking elimination (at step k,
    A[i, j] -= l_ik A[k, j] for all i, j > k) in the same order, so the factors are bit for bit
    that algorithm's; but the updates are applied late, in Crout's order: at step k, column k
    of the remaining rows is brought up to date (to find the pivot), then row k alone. Both
    are long contiguous runs over a copy of L transposed, unrolled over the earlier steps, not
    n short axpy's per step (1.4x faster at n = 64). Rows are swapped whole, so a row's
    multipliers and its pending updates travel with it."""
    n = A.shape[0]
    Lt = np.empty((n, n))  # Lt[k, i] = l_ik
    col = np.empty(n)
    for k in range(n):
        # Column k of rows i >= k through the updates of steps 0..k-1, in that order.
        for i in range(k, n):
            col[i] = A[i, k]
        q = 0
        while q + 4 <= k:
            u0, u1, u2, u3 = A[q, k], A[q + 1, k], A[q + 2, k], A[q + 3, k]
            for i in range(k, n):
                t = col[i] - Lt[q, i] * u0
                t = t - Lt[q + 1, i] * u1
                t = t - Lt[q + 2, i] * u2
                col[i] = t - Lt[q + 3, i] * u3
            q += 4
        while q < k:
            u = A[q, k]
            for i in range(k, n):
                col[i] = col[i] - Lt[q, i] * u
            q += 1
        p = k
        big = abs(col[k])
        for i in range(k + 1, n):
            if abs(col[i]) > big:
                big = abs(col[i])
                p = i
        piv[k] = p
        if p != k:
            for j in range(n):
                A[k, j], A[p, j] = A[p, j], A[k, j]
            for q in range(k):
                Lt[q, k], Lt[q, p] = Lt[q, p], Lt[q, k]
            col[k], col[p] = col[p], col[k]
        A[k, k] = col[k]
        # Row k, columns j > k, through the updates of steps 0..k-1 (rows 0..k-1 are final).
        q = 0
        while q + 8 <= k:
            l0, l1, l2, l3 = Lt[q, k], Lt[q + 1, k], Lt[q + 2, k], Lt[q + 3, k]
            l4, l5, l6, l7 = Lt[q + 4, k], Lt[q + 5, k], Lt[q + 6, k], Lt[q + 7, k]
            for j in range(k + 1, n):
                t = A[k, j] - l0 * A[q, j]
                t = t - l1 * A[q + 1, j]
                t = t - l2 * A[q + 2, j]
                t = t - l3 * A[q + 3, j]
                t = t - l4 * A[q + 4, j]
                t = t - l5 * A[q + 5, j]
                t = t - l6 * A[q + 6, j]
                A[k, j] = t - l7 * A[q + 7, j]
            q += 8
        while q < k:
            l = Lt[q, k]
            for j in range(k + 1, n):
                A[k, j] = A[k, j] - l * A[q, j]
            q += 1
        d = col[k]
        for i in range(k + 1, n):
            l = col[i] / d
            Lt[k, i] = l
            A[i, k] = l


@njit(cache=True)
def _forward_rows(A, B):
    """B[i, :] -= A[i, k] B[k, :] for k = 0..i-1 in that order, row i = 1..n-1 (the unit lower
    factor of `_lu_into`), k taken 8 at a time as in `_axpy_rows`."""
    n, m = B.shape
    for i in range(1, n):
        k = 0
        while k + 8 <= i:
            l0, l1, l2, l3 = A[i, k], A[i, k + 1], A[i, k + 2], A[i, k + 3]
            l4, l5, l6, l7 = A[i, k + 4], A[i, k + 5], A[i, k + 6], A[i, k + 7]
            for j in range(m):
                t = B[i, j] - l0 * B[k, j]
                t = t - l1 * B[k + 1, j]
                t = t - l2 * B[k + 2, j]
                t = t - l3 * B[k + 3, j]
                t = t - l4 * B[k + 4, j]
                t = t - l5 * B[k + 5, j]
                t = t - l6 * B[k + 6, j]
                B[i, j] = t - l7 * B[k + 7, j]
            k += 8
        while k < i:
            l = A[i, k]
            for j in range(m):
                B[i, j] = B[i, j] - l * B[k, j]
            k += 1


@njit(cache=True)
def _backward_rows(A, B):
    """B[i, :] = (B[i, :] - sum_k A[i, k] B[k, :]) / A[i, i], the sum taken k = n-1 down to
    i+1, row i = n-1 down to 0 (the upper factor of `_lu_into`), k taken 8 at a time."""
    n, m = B.shape
    for i in range(n - 1, -1, -1):
        k = n - 1
        while k - 8 >= i:
            u0, u1, u2, u3 = A[i, k], A[i, k - 1], A[i, k - 2], A[i, k - 3]
            u4, u5, u6, u7 = A[i, k - 4], A[i, k - 5], A[i, k - 6], A[i, k - 7]
            for j in range(m):
                t = B[i, j] - u0 * B[k, j]
                t = t - u1 * B[k - 1, j]
                t = t - u2 * B[k - 2, j]
                t = t - u3 * B[k - 3, j]
                t = t - u4 * B[k - 4, j]
                t = t - u5 * B[k - 5, j]
                t = t - u6 * B[k - 6, j]
                B[i, j] = t - u7 * B[k - 7, j]
            k -= 8
        while k > i:
            u = A[i, k]
            for j in range(m):
                B[i, j] = B[i, j] - u * B[k, j]
            k -= 1
        d = A[i, i]
        for j in range(m):
            B[i, j] = B[i, j] / d


@njit(cache=True)
def _solve_into(A, B):
    """Solve A X = B by Gaussian elimination with partial pivoting; X overwrites B and A is
    destroyed. Only used on Pade denominators q(A), which are well conditioned for the norms
    `expm_into` lets through.

    Every element of B goes through the operations of the textbook right-looking elimination
    (B[i, :] -= l_ik B[k, :] at step k, then back substitution column by column), in the same
    order, so X is bit for bit that algorithm's; but B is updated a row at a time, 8 pivot rows
    per pass, after the factorisation (tests/test_kernels.py keeps
    the textbook form as the reference)."""
    n = A.shape[0]
    m = B.shape[1]
    piv = np.empty(n, dtype=np.int64)
    _lu_into(A, piv)
    for k in range(n):  # the row swaps, in the order the elimination made them
        p = piv[k]
        if p != k:
            for j in range(m):
                B[k, j], B[p, j] = B[p, j], B[k, j]
    _forward_rows(A, B)
    _backward_rows(A, B)


@njit(cache=True)
def _norm1(A):
    n, m = A.shape
    best = 0.0
    for j in range(m):
        s = 0.0
        for i in range(n):
            s += abs(A[i, j])
        if s > best or s != s:  # NaN must propagate (expm_into then gives NaN)
            best = s
    return best


@njit(cache=True)
def _combine(c, powers, out):
    """out = sum_k c[k] powers[k]. Coefficients come as a (strided) array, not as literal
    offsets, so that numba compiles one specialisation instead of one per call site."""
    n = out.shape[0]
    for i in range(n):
        for j in range(n):
            s = 0.0
            for k in range(c.shape[0]):
                s += c[k] * powers[k, i, j]
            out[i, j] = s


@njit(cache=True)
def expm_into(A, E, work):
    """E = expm(A) for square A by scaling and squaring with a diagonal Pade approximant
    (degree 3, 5, 7, 9 or 13 by the 1-norm of A; Higham 2005). `work` is scratch space of
    shape [9, n, n]; A is not modified."""
    n = A.shape[0]
    powers = work[0:5]  # I, X^2, X^4, X^6, X^8 of the scaled X = A / 2^s
    X, U, V, T = work[5], work[6], work[7], work[8]
    nrm = _norm1(A)
    if not np.isfinite(nrm):  # overflowed parameters: NaN out (the rollout drops the row)
        E[:, :] = np.nan
        return
    s = 0
    if nrm <= _THETA3:
        b, m = _PADE3, 3
    elif nrm <= _THETA5:
        b, m = _PADE5, 5
    elif nrm <= _THETA7:
        b, m = _PADE7, 7
    elif nrm <= _THETA9:
        b, m = _PADE9, 9
    else:
        b, m = _PADE13, 13
        if nrm > _THETA13:
            s = int(np.ceil(np.log2(nrm / _THETA13)))
    scale = 2.0 ** (-s)  # a power of two: scaling is exact
    for i in range(n):
        for j in range(n):
            X[i, j] = A[i, j] * scale
            powers[0, i, j] = 1.0 if i == j else 0.0
    _matmul(X, X, powers[1])
    if m == 13:
        _matmul(powers[1], powers[1], powers[2])
        _matmul(powers[2], powers[1], powers[3])
        # U = X [X^6 (b13 X^6 + b11 X^4 + b9 X^2) + b7 X^6 + b5 X^4 + b3 X^2 + b1 I], V likewise
        # with the even coefficients: 6 products instead of 12.
        _combine(b[9::2], powers[1:4], T)
        _matmul(powers[3], T, V)
        _combine(b[1:9:2], powers[0:4], T)
        for i in range(n):
            for j in range(n):
                T[i, j] += V[i, j]
        _matmul(X, T, U)
        _combine(b[8::2], powers[1:4], T)
        _matmul(powers[3], T, V)
        _combine(b[0:8:2], powers[0:4], T)
        for i in range(n):
            for j in range(n):
                V[i, j] += T[i, j]
    else:
        count = (m + 1) // 2  # I, X^2, ..., X^(m-1)
        for k in range(2, count):
            _matmul(powers[k - 1], powers[1], powers[k])
        _combine(b[1::2], powers[0:count], T)
        _matmul(X, T, U)
        _combine(b[0::2], powers[0:count], V)
    # r(X) = (V - U)^{-1} (V + U), then square s times.
    for i in range(n):
        for j in range(n):
            u, v = U[i, j], V[i, j]
            T[i, j] = v - u
            E[i, j] = v + u
    _solve_into(T, E)
    for _ in range(s):
        _matmul(E, E, T)
        _copy_into(T, E)


@njit(cache=True)
def _scratch(h):
    return np.empty((9, h, h))


# -- matrix flows (prepare) -------------------------------------------------------------------
@njit(cache=True)
def iso_flow(W0, Q, N, eta, n_steps):
    """ISO-ODEtoODE: W_i = W_{i-1} expm(eta [M, Ns]), M = sym(W^T Qs W), Qs = sym(Q),
    Ns = sym(N); returns W_1^T..W_N^T as [P, n_steps, h, h]."""
    P, h = W0.shape[0], W0.shape[1]
    out = np.empty((P, n_steps, h, h))
    Qs, Ns = np.empty((h, h)), np.empty((h, h))
    W, Wn = np.empty((h, h)), np.empty((h, h))
    T, M, C = np.empty((h, h)), np.empty((h, h)), np.empty((h, h))
    A, E = np.empty((h, h)), np.empty((h, h))
    work = _scratch(h)
    for p in range(P):
        for i in range(h):
            for j in range(h):
                Qs[i, j] = 0.5 * (Q[p, i, j] + Q[p, j, i])
                Ns[i, j] = 0.5 * (N[p, i, j] + N[p, j, i])
                W[i, j] = W0[p, i, j]
        for step in range(n_steps):
            _matmul_tn(W, Qs, T)
            _matmul(T, W, C)
            for i in range(h):
                for j in range(h):
                    M[i, j] = 0.5 * (C[i, j] + C[j, i])
            _matmul(M, Ns, C)
            for i in range(h):
                for j in range(h):
                    A[i, j] = eta * (C[i, j] - C[j, i])
            expm_into(A, E, work)
            _matmul(W, E, Wn)
            W, Wn = Wn, W
            _transpose_into(W, out[p, step])
    return out


@njit(cache=True)
def gated_flow(W0, a, U, V, eta, n_steps):
    """Gated-ODEtoODE: W_i = W_{i-1} expm(eta sum_g a_g (F_g - F_g^T)), F_g = tanh(W U_g +
    t V_g), t = (i - 1) eta; returns W_1^T..W_N^T as [P, n_steps, h, h]."""
    P, h = W0.shape[0], W0.shape[1]
    G = a.shape[1]
    out = np.empty((P, n_steps, h, h))
    W, Wn = np.empty((h, h)), np.empty((h, h))
    F, B = np.empty((h, h)), np.empty((h, h))
    A, E = np.empty((h, h)), np.empty((h, h))
    work = _scratch(h)
    for p in range(P):
        _copy_into(W0[p], W)
        for step in range(n_steps):
            t = step * eta
            B[:, :] = 0.0
            for g in range(G):
                _matmul(W, U[p, g], F)
                for i in range(h):
                    for j in range(h):
                        F[i, j] = np.tanh(F[i, j] + t * V[p, g, i, j])
                ag = a[p, g]
                for i in range(h):
                    for j in range(h):
                        B[i, j] += ag * (F[i, j] - F[j, i])
            for i in range(h):
                for j in range(h):
                    A[i, j] = eta * B[i, j]
            expm_into(A, E, work)
            _matmul(W, E, Wn)
            W, Wn = Wn, W
            _transpose_into(W, out[p, step])
    return out


@njit(cache=True)
def nanode_flow(A0, A, B, cos, sin):
    """NANODE: W_i = A0 + sum_k (cos[i, k] A_k + sin[i, k] B_k), returned transposed as
    [P, N, h, h] for the N rows of the basis."""
    P, h = A0.shape[0], A0.shape[1]
    n_steps, degree = cos.shape
    out = np.empty((P, n_steps, h, h))
    for p in range(P):
        for step in range(n_steps):
            Wt = out[p, step]
            for i in range(h):
                for j in range(h):
                    w = A0[p, i, j]
                    for k in range(degree):
                        w = w + cos[step, k] * A[p, k, i, j]
                        w = w + sin[step, k] * B[p, k, i, j]
                    Wt[j, i] = w
    return out


@njit(cache=True)
def _mlp(w1, b1, w2, b2, w3, b3, x, z1, z2, y):
    """y = w3 tanh(w2 tanh(w1 x + b1) + b2) + b3 (weights untransposed)."""
    _matvec(w1, x, z1)
    for i in range(z1.shape[0]):
        z1[i] = np.tanh(z1[i] + b1[i])
    _matvec(w2, z1, z2)
    for i in range(z2.shape[0]):
        z2[i] = np.tanh(z2[i] + b2[i])
    _matvec(w3, z2, y)
    for i in range(y.shape[0]):
        y[i] += b3[i]


@njit(cache=True)
def hypernet_flow(w0, w1, b1, w2, b2, w3, b3, eta, n_steps):
    """HyperNet: w_i = w_{i-1} + eta MLP(w_{i-1}) on the flattened h x h state; returns
    W_1^T..W_N^T (W_i = w_i as h x h) as [P, n_steps, h, h]."""
    P, h = w0.shape[0], w0.shape[1]
    width = b1.shape[1]
    out = np.empty((P, n_steps, h, h))
    w = np.empty(h * h)
    g = np.empty(h * h)
    z1, z2 = np.empty(width), np.empty(width)
    for p in range(P):
        for i in range(h):
            for j in range(h):
                w[i * h + j] = w0[p, i, j]
        for step in range(n_steps):
            _mlp(w1[p], b1[p], w2[p], b2[p], w3[p], b3[p], w, z1, z2, g)
            for k in range(h * h):
                w[k] = w[k] + eta * g[k]
            for i in range(h):
                for j in range(h):
                    out[p, step, j, i] = w[i * h + j]
    return out


# -- steps ------------------------------------------------------------------------------------
@njit(cache=True)
def _clip_row(a, low, high):
    """np.clip(a, low, high) in place; NaN stays NaN (the rollout must see it)."""
    for i in range(a.shape[0]):
        if a[i] < low[i]:
            a[i] = low[i]
        if a[i] > high[i]:
            a[i] = high[i]


@njit(cache=True)
def _activate(y, code):
    """f(y) in place: 0 abs, 1 tanh, 2 relu (NaN stays NaN)."""
    if code == 0:
        for i in range(y.shape[0]):
            y[i] = abs(y[i])
    elif code == 1:
        for i in range(y.shape[0]):
            y[i] = _tanh(y[i])
    else:
        for i in range(y.shape[0]):
            if y[i] < 0.0:
                y[i] = 0.0


@njit(cache=True)
def ode_step(omega_in_t, bias, W_t, omega_out_t, obs, eta, code, low, high):
    """x_0 = Omega_in s, x_i = x_{i-1} + eta f(W_i x_{i-1} + b), a = clip(Omega_out x_N), for
    the flow W_t [P, N, h, h] (transposed) of ODEtoODE, NANODE or HyperNet."""
    P = obs.shape[0]
    h = bias.shape[1]
    out = np.empty((P, omega_out_t.shape[2]))
    x, y = np.empty(h), np.empty(h)
    for p in range(P):
        _matvec_t(omega_in_t[p], obs[p], x)
        for step in range(W_t.shape[1]):
            _matvec_t(W_t[p, step], x, y)
            for i in range(h):
                y[i] += bias[p, i]
            _activate(y, code)
            for i in range(h):
                x[i] += eta * y[i]
        _matvec_t(omega_out_t[p], x, out[p])
        _clip_row(out[p], low, high)
    return out


@njit(cache=True)
def add_linear_clip(out, skip_t, obs, low, high):
    """out[p] = clip(out[p] + S_p s_p) in place, for S^T as skip_t [P, obs_dim, act_dim] (the
    linear skip path of ODEtoODE's `linear_skip`)."""
    y = np.empty(out.shape[1])
    for p in range(out.shape[0]):
        _matvec_t(skip_t[p], obs[p], y)
        for i in range(out.shape[1]):
            out[p, i] += y[i]
        _clip_row(out[p], low, high)
    return out


@njit(cache=True)
def base_ode_step(
    omega_in_t, omega_out_t, w1_t, b1, w2_t, b2, w3_t, b3, obs, eta, n_steps, low, high
):
    """BaseODE: x_i = x_{i-1} + eta MLP(x_{i-1}) (tanh MLP, weights transposed)."""
    P = obs.shape[0]
    h, width = b3.shape[1], b1.shape[1]
    out = np.empty((P, omega_out_t.shape[2]))
    x, g = np.empty(h), np.empty(h)
    z1, z2 = np.empty(width), np.empty(width)
    for p in range(P):
        _matvec_t(omega_in_t[p], obs[p], x)
        for _ in range(n_steps):
            _matvec_t(w1_t[p], x, z1)
            for i in range(width):
                z1[i] = _tanh(z1[i] + b1[p, i])
            _matvec_t(w2_t[p], z1, z2)
            for i in range(width):
                z2[i] = _tanh(z2[i] + b2[p, i])
            _matvec_t(w3_t[p], z2, g)
            for i in range(h):
                x[i] = x[i] + eta * (g[i] + b3[p, i])
        _matvec_t(omega_out_t[p], x, out[p])
        _clip_row(out[p], low, high)
    return out


@njit(cache=True)
def deepnet_step(w_in_t, b_in, W_t, b, w_out_t, b_out, obs, low, high):
    """DeepNet: z_1 = tanh(W_in s + b_in), z_l = tanh(W_l z_{l-1} + b_l), a = W_out z_L + b_out."""
    P = obs.shape[0]
    h = b_in.shape[1]
    out = np.empty((P, w_out_t.shape[2]))
    z, y = np.empty(h), np.empty(h)
    for p in range(P):
        _matvec_t(w_in_t[p], obs[p], z)
        for i in range(h):
            z[i] = _tanh(z[i] + b_in[p, i])
        for l in range(W_t.shape[1]):
            _matvec_t(W_t[p, l], z, y)
            for i in range(h):
                z[i] = _tanh(y[i] + b[p, l, i])
        a = out[p]
        _matvec_t(w_out_t[p], z, a)
        for i in range(a.shape[0]):
            a[i] += b_out[p, i]
        _clip_row(a, low, high)
    return out


@njit(cache=True)
def deep_resnet_step(omega_in_t, W_t, b, omega_out_t, obs, code, low, high, scale):
    """DeepResNet: x_0 = Omega_in s, x_l = x_{l-1} + scale f(W_l x_{l-1} + b_l),
    a = Omega_out x_L. (scale 1.0 multiplies exactly: the paper's form, bit for bit.)"""
    P = obs.shape[0]
    h = b.shape[2]
    out = np.empty((P, omega_out_t.shape[2]))
    x, y = np.empty(h), np.empty(h)
    for p in range(P):
        _matvec_t(omega_in_t[p], obs[p], x)
        for l in range(W_t.shape[1]):
            _matvec_t(W_t[p, l], x, y)
            for i in range(h):
                y[i] += b[p, l, i]
            _activate(y, code)
            for i in range(h):
                x[i] += scale * y[i]
        _matvec_t(omega_out_t[p], x, out[p])
        _clip_row(out[p], low, high)
    return out


@njit(cache=True)
def linear_step(M_t, c, obs, low, high):
    """Linear: a = clip(M s + c)."""
    P = obs.shape[0]
    out = np.empty((P, c.shape[1]))
    for p in range(P):
        a = out[p]
        _matvec_t(M_t[p], obs[p], a)
        for i in range(a.shape[0]):
            a[i] += c[p, i]
        _clip_row(a, low, high)
    return out
