"""ES against closed forms: the smoothed gradient of a quadratic, and Riemannian ascent on a
product of manifolds that must stay on its manifolds throughout."""

import numpy as np
import pytest

from odepolicy.es import ESSettings, NoiseSpec, RiemannianES, centered_ranks, perturbed_params
from odepolicy.es.shaping import direction_weights
from odepolicy.manifolds import Euclidean, Stiefel, Symmetric
from odepolicy.params import ParamLayout


def _quadratic_grad(antithetic: bool, orthogonal: bool, directions: int, seed: int):
    m = 8
    rng = np.random.default_rng(seed)
    c, theta = rng.standard_normal(m), rng.standard_normal(m)
    layout = ParamLayout([("x", Euclidean(m))])
    settings = ESSettings(
        directions=directions, antithetic=antithetic, orthogonal=orthogonal, shaping="none"
    )
    es = RiemannianES(layout, theta, settings, seed)
    spec = es.ask()
    pop = perturbed_params(spec, theta, range(spec.population))
    returns = -((pop - c) ** 2).sum(axis=1)
    grad, used = es.gradient(spec, returns)
    assert used == directions
    # F(theta) = -||theta - c||^2: the Gaussian smoothing differs by a constant, so its gradient
    # is exactly -2 (theta - c).
    return grad, -2.0 * (theta - c)


@pytest.mark.parametrize("antithetic", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smoothed_gradient_of_quadratic_within_5_percent(antithetic, seed):
    grad, exact = _quadratic_grad(antithetic, False, 12_000, seed)
    assert np.linalg.norm(grad - exact) / np.linalg.norm(exact) < 0.05


def test_orthogonal_exploration_is_orthogonal_and_more_accurate():
    spec = NoiseSpec(iteration_seed=5, num_params=8, directions=8, sigma=1.0, orthogonal=True)
    eps = perturbed_params(spec, np.zeros(8), range(0, 16, 2))
    gram = eps @ eps.T
    assert np.allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-10)
    errs = {}
    for orth in (False, True):
        e = [
            np.linalg.norm(g - x) / np.linalg.norm(x)
            for g, x in (_quadratic_grad(True, orth, 64, s) for s in range(20))
        ]
        errs[orth] = np.mean(e)
    assert errs[True] < errs[False]


def test_antithetic_pairs_are_mirror_images():
    spec = NoiseSpec(iteration_seed=3, num_params=5, directions=4, sigma=0.1)
    center = np.arange(5.0)
    pop = perturbed_params(spec, center, range(8))
    assert np.allclose(pop[0::2] + pop[1::2], 2 * center, atol=1e-14)
    # regenerating one perturbation alone gives the same vector (seeds, not vectors, travel)
    assert np.array_equal(perturbed_params(spec, center, [5])[0], pop[5])


def test_centered_ranks_and_topb():
    r = centered_ranks(np.array([3.0, -1.0, 10.0, 0.0]))
    assert np.allclose(r, [1 / 6, -0.5, 0.5, -1 / 6])
    plus, minus = np.array([1.0, 5.0, 2.0]), np.array([0.0, 1.0, 9.0])
    w, n = direction_weights(plus, minus, "topb", top_b=2)
    assert n == 2 and w[0] == 0.0  # direction 0 has the smallest max(F+, F-)
    std = np.array([5.0, 1.0, 2.0, 9.0]).std()
    assert np.allclose(w[1:], [(5 - 1) / 2 / std, (2 - 9) / 2 / std])


def test_failed_perturbations_are_left_out():
    layout = ParamLayout([("x", Euclidean(4))])
    es = RiemannianES(layout, np.zeros(4), ESSettings(directions=6, shaping="none"), 0)
    spec = es.ask()
    pop = perturbed_params(spec, es.center, range(spec.population))
    returns = -((pop - 1.0) ** 2).sum(axis=1)
    returns[3] = np.nan  # direction 1's minus side
    returns[8] = np.inf  # direction 4's plus side
    grad, used = es.gradient(spec, returns)
    assert used == 4
    sub = NoiseSpec(spec.iteration_seed, 4, 6, spec.sigma)
    eps = perturbed_params(sub, np.zeros(4), range(0, 12, 2)) / spec.sigma
    w = (returns[0::2] - returns[1::2]) / 2
    expected = sum(w[j] * eps[j] for j in (0, 2, 3, 5)) / (4 * spec.sigma)
    assert np.allclose(grad, expected, atol=1e-12)
    info = es.tell(spec, returns)
    assert info["failed"] == 2 and np.all(np.isfinite(es.center))


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "clipup"])
@pytest.mark.parametrize("seed", [0, 1])
def test_riemannian_es_converges_and_stays_on_manifolds(optimizer, seed):
    rng = np.random.default_rng(seed)
    stiefel, sym, euc = Stiefel(6, 3), Symmetric(3), Euclidean(4)
    layout = ParamLayout([("X", stiefel), ("S", sym), ("e", euc), ("W", Stiefel(2, 5))])
    C, S0, e0, D = (
        rng.standard_normal((6, 3)),
        sym.project(rng.standard_normal((3, 3))),
        rng.standard_normal(4),
        rng.standard_normal((2, 5)),
    )

    def objective(theta):
        p = layout.unflatten(theta)
        X, S, e, W = p["X"], p["S"], p["e"], p["W"]
        return (
            np.einsum("...ij,ij->...", X, C)
            - ((S - S0) ** 2).sum((-1, -2))
            - ((e - e0) ** 2).sum(-1)
            + np.einsum("...ij,ij->...", W, D)
        )

    theta0 = layout.init(rng)
    lr = {"sgd": 0.05, "adam": 0.02, "clipup": 0.02}[optimizer]
    settings = ESSettings(
        sigma=0.05, lr=lr, momentum=0.5, directions=40, shaping="none", optimizer=optimizer
    )
    es = RiemannianES(layout, theta0, settings, seed)
    optimum = layout.flatten(
        {"X": stiefel.project(C), "S": S0, "e": e0, "W": Stiefel(2, 5).project(D)}
    )
    start_gap = objective(optimum) - objective(theta0)
    for _ in range(400):
        spec = es.ask()
        pop = perturbed_params(spec, es.center, range(spec.population))
        es.tell(spec, objective(pop))
        assert layout.max_distance(es.center) < 1e-10
    final_gap = objective(optimum) - objective(es.center)
    assert final_gap < 0.02 * start_gap
