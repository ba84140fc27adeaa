"""Optimisers as objects: SGD, Adam and ClipUp against hand-computed steps; constrained blocks
stay on their manifolds whatever the optimiser does."""

import numpy as np
import pytest

from odepolicy.es import ESSettings, RiemannianES
from odepolicy.es.optimizers import SGD, Adam, ClipUp, make_optimizer
from odepolicy.manifolds import Euclidean, Stiefel, Symmetric
from odepolicy.params import ParamLayout


def test_clipup_step_equals_a_hand_computed_one():
    mask = np.ones(3, dtype=bool)
    opt = ClipUp(3, mask, lr=0.1, momentum=0.5, max_speed=0.3)
    g1 = np.array([3.0, 4.0, 0.0])  # |g1| = 5
    d1, scale = opt.update(g1)
    assert scale == 1.0
    np.testing.assert_allclose(d1, [0.06, 0.08, 0.0], rtol=0, atol=1e-15)
    g2 = np.array([0.0, 0.0, 2.0])
    d2, _ = opt.update(g2)
    # v = 0.5 * [0.06, 0.08, 0] + 0.1 * [0, 0, 1]
    np.testing.assert_allclose(d2, [0.03, 0.04, 0.1], rtol=0, atol=1e-15)
    # A speed above max_speed is clipped to it, direction kept.
    fast = ClipUp(2, np.ones(2, dtype=bool), lr=1.0, momentum=0.9, max_speed=0.25)
    d, _ = fast.update(np.array([1.0, 1.0]))
    np.testing.assert_allclose(d, [0.25 / np.sqrt(2), 0.25 / np.sqrt(2)], atol=1e-15)


def test_clipup_speed_never_exceeds_max_speed():
    rng = np.random.default_rng(0)
    opt = ClipUp(50, np.ones(50, dtype=bool), lr=0.2, momentum=0.95, max_speed=0.5)
    speeds = []
    for _ in range(300):
        g = rng.standard_normal(50) * rng.uniform(1e-3, 1e3) + 2.0  # a persistent drift
        d, _ = opt.update(g)
        speeds.append(np.linalg.norm(d))
    assert max(speeds) <= 0.5 * (1 + 1e-12)
    assert max(speeds) > 0.49  # the drift does reach the cap, so the clip is exercised


def test_clipup_default_max_speed_is_twice_the_step():
    s = ESSettings(optimizer="clipup", lr=0.03)
    opt = make_optimizer(s, 4, np.ones(4, dtype=bool))
    assert isinstance(opt, ClipUp) and opt.max_speed == pytest.approx(0.06)


def test_stiefel_block_stays_on_its_manifold_over_1000_clipup_steps():
    rng = np.random.default_rng(3)
    layout = ParamLayout([("X", Stiefel(8, 3)), ("O", Stiefel(5, 5)), ("S", Symmetric(3))])
    es = RiemannianES(
        layout,
        layout.init(rng),
        ESSettings(optimizer="clipup", lr=0.3, momentum=0.9, max_speed=0.6),
        seed=0,
    )
    for _ in range(1000):
        es.step(rng.standard_normal(layout.size) * 10.0)
    assert layout.max_distance(es.center) < 1e-10
    assert np.linalg.norm(es.optimizer.velocity) <= 0.6 * (1 + 1e-12)


def test_adam_matches_the_formula_on_euclidean_entries_only():
    mask = np.array([True, True, False])
    opt = Adam(3, mask, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8)
    g = np.array([0.5, -2.0, 7.0])
    d, scale = opt.update(g)
    m = 0.1 * g[:2] / (1 - 0.9)
    v = 0.001 * g[:2] ** 2 / (1 - 0.999)
    np.testing.assert_allclose(d[:2], m / (np.sqrt(v) + 1e-8), rtol=1e-12)
    assert d[2] == 7.0 and scale == 0.01  # the curved entry keeps the plain gradient


@pytest.mark.parametrize("cls", [Adam, ClipUp])
def test_optimiser_state_round_trips(cls):
    rng = np.random.default_rng(1)
    mask = np.ones(6, dtype=bool)
    a, b, fresh = cls(6, mask, 0.1), cls(6, mask, 0.1), cls(6, mask, 0.1)
    for _ in range(3):
        a.update(rng.standard_normal(6))
    b.load_state_dict(a.state_dict())
    g = rng.standard_normal(6)
    da, _ = a.update(g)
    db, _ = b.update(g)
    assert np.array_equal(da, db)
    assert not np.array_equal(fresh.update(g)[0], da)  # the state is what made them equal


def test_sgd_keeps_no_state():
    sgd = SGD(3, np.ones(3, dtype=bool), 0.1)
    g = np.array([1.0, -2.0, 3.0])
    assert sgd.state_dict() == {}
    d, _ = sgd.update(g)
    assert np.array_equal(d, g) and d is not g  # the plain gradient, a copy


def test_missing_optimiser_state_is_refused():
    with pytest.raises(KeyError, match="velocity"):
        ClipUp(2, np.ones(2, dtype=bool), 0.1).load_state_dict({})


def test_euclidean_layout_sgd_is_plain_gradient_ascent():
    layout = ParamLayout([("e", Euclidean(3))])
    es = RiemannianES(layout, np.zeros(3), ESSettings(lr=0.5), seed=0)
    es.step(np.array([1.0, -2.0, 4.0]))
    assert np.array_equal(es.center, [0.5, -1.0, 2.0])
