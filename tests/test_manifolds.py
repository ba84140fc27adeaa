"""Property tests of the manifolds in float64: points, projections, Riemannian gradients and
exact exponential steps, against finite differences, scipy's expm and a known maximiser."""

import numpy as np
import pytest
import scipy.linalg

from odepolicy.manifolds import Euclidean, Stiefel, Symmetric

MANIFOLDS = {
    "euclidean": lambda: Euclidean(5, 3, scale=1.0),
    "symmetric": lambda: Symmetric(5, scale=1.0),
    "stiefel_tall": lambda: Stiefel(7, 3),
    "stiefel_wide": lambda: Stiefel(3, 7),
    "stiefel_square": lambda: Stiefel(5, 5),
}
SEEDS = [0, 1, 2]


def _in_tangent(M, X, A) -> float:
    """How far A is from the tangent space at X (0 when inside)."""
    if isinstance(M, Stiefel):
        return M.tangent_residual(X, A)
    if isinstance(M, Symmetric):
        return float(np.linalg.norm(A - A.T))
    return 0.0


@pytest.fixture(params=list(MANIFOLDS))
def manifold(request):
    return MANIFOLDS[request.param]()


@pytest.fixture(params=[name for name in MANIFOLDS if MANIFOLDS[name]().constrained])
def constrained(request):
    """The manifolds one can step off (Euclidean's tangent space is everything and its
    distance is 0 by definition: a tangency or drift test of it could not fail)."""
    return MANIFOLDS[request.param]()


@pytest.mark.parametrize("seed", SEEDS)
def test_random_point_is_on_manifold(manifold, seed):
    X = manifold.random(np.random.default_rng(seed))
    assert X.shape == manifold.shape
    assert manifold.distance(X) < 1e-12
    assert np.all(np.isfinite(X)) and np.linalg.norm(X) > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_project_is_idempotent_and_lands_on_manifold(manifold, seed):
    X = 3.0 * np.random.default_rng(seed).standard_normal(manifold.shape)
    Y = manifold.project(X)
    assert manifold.distance(Y) < 1e-12
    np.testing.assert_allclose(manifold.project(Y), Y, atol=1e-12)


def test_distance_detects_points_off_the_manifold():
    X = np.random.default_rng(0).standard_normal((5, 5))
    assert Symmetric(5).distance(X) > 0.1
    assert Stiefel(5, 5).distance(X) > 0.1
    assert Stiefel(3, 5).distance(X[:3]) > 0.1


@pytest.mark.parametrize("seed", SEEDS)
def test_riemannian_grad_is_tangent(constrained, seed):
    M = constrained
    rng = np.random.default_rng(seed)
    X, G = M.random(rng), rng.standard_normal(M.shape)
    A = M.riemannian_grad(X, G)
    assert _in_tangent(M, X, A) < 1e-12
    assert _in_tangent(M, X, G) > 1e-3  # and the raw gradient is not: the test can fail


def test_many_steps_stay_on_manifold(constrained):
    M = constrained
    rng = np.random.default_rng(7)
    X = M.random(rng)
    for _ in range(10_000):
        G = rng.standard_normal(M.shape)
        X = M.retract(X, M.riemannian_grad(X, G), 0.1)
    assert M.distance(X) < 1e-10
    if isinstance(M, Stiefel):  # a curved manifold: straight tangent steps leave it
        Y = M.random(np.random.default_rng(7))
        for _ in range(10):
            Y = Y + 0.1 * M.riemannian_grad(Y, rng.standard_normal(M.shape))
        assert M.distance(Y) > 1e-3


def _smooth_objective(shape, rng):
    """f(X) = tr(C^T X) + 0.5 ||X D||^2 and its Euclidean gradient C + X D D^T."""
    C = rng.standard_normal(shape)
    D = rng.standard_normal((shape[1], shape[1]))

    def f(X):
        return float(np.sum(C * X) + 0.5 * np.sum((X @ D) ** 2))

    def grad(X):
        return C + X @ D @ D.T

    return f, grad


@pytest.mark.parametrize("seed", SEEDS)
def test_riemannian_grad_is_ascent_direction_matching_finite_difference(manifold, seed):
    rng = np.random.default_rng(seed)
    X = manifold.random(rng)
    f, grad = _smooth_objective(manifold.shape, rng)
    G = grad(X)
    A = manifold.riemannian_grad(X, G)
    slope = float(np.sum(G * A))
    assert slope > 0
    h = 1e-5
    fd = (f(manifold.retract(X, A, h)) - f(manifold.retract(X, A, -h))) / (2 * h)
    np.testing.assert_allclose(fd, slope, rtol=1e-6)


@pytest.mark.parametrize("shape", [(7, 3), (3, 7), (5, 5)], ids=["tall", "wide", "square"])
@pytest.mark.parametrize("seed", SEEDS)
def test_ascent_on_trace_reaches_polar_factor(shape, seed):
    """tr(C^T X) over Stiefel is maximised by the polar factor of C; on O(n), within the
    connected component of the start, so the square start shares the polar factor's det sign."""
    rng = np.random.default_rng(seed)
    M = Stiefel(*shape)
    C = rng.standard_normal(shape)
    target = M.project(C)
    X = M.random(rng)
    if shape[0] == shape[1] and np.sign(np.linalg.det(X)) != np.sign(np.linalg.det(target)):
        X[:, 0] *= -1
    lr = 0.5 / np.linalg.norm(C, 2)
    for _ in range(3000):
        X = M.retract(X, M.riemannian_grad(X, C), lr)
    np.testing.assert_allclose(X, target, atol=1e-8)
    assert M.distance(X) < 1e-12


@pytest.mark.parametrize("seed", SEEDS)
def test_square_retract_is_expm_of_paper_generator(seed):
    """Paper eq. 9: Y <- expm(lr (G Y^T - Y G^T)) Y."""
    rng = np.random.default_rng(seed)
    M = Stiefel(6, 6)
    Y, G = M.random(rng), rng.standard_normal((6, 6))
    lr = 0.3
    expected = scipy.linalg.expm(lr * (G @ Y.T - Y @ G.T)) @ Y
    np.testing.assert_allclose(M.retract(Y, M.riemannian_grad(Y, G), lr), expected, atol=1e-12)


def test_euclidean_and_symmetric_steps_are_plain():
    rng = np.random.default_rng(0)
    X, G = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    np.testing.assert_allclose(Euclidean(4, 4).retract(X, G, 0.5), X + 0.5 * G)
    S = Symmetric(4)
    np.testing.assert_allclose(S.riemannian_grad(X, G), 0.5 * (G + G.T))
