"""The policy zoo: registry and errors, parameter layouts, ODEtoODE against a plain numpy/scipy
reference, orthogonality of the matrix flow, batch invariance (bit for bit), action bounds."""

import json

import numpy as np
import pytest
import scipy.linalg

from odepolicy import OdepolicyError
from odepolicy.policies import POLICIES, make_policy
from odepolicy.policies.sizing import SIZE_OPTION, count_params, match_size, parameter_table

OBS, ACT = 5, 3
SEEDS = [0, 1, 2]
SMALL = {"hidden": 6, "layers": 4}  # kept small so the whole file runs in seconds


def _small_kwargs(name: str) -> dict:
    cls = POLICIES[name]
    return {k: v for k, v in SMALL.items() if k in cls.defaults}


def _population(pol, rng, P: int, noise: float = 0.3) -> np.ndarray:
    """Init points plus Gaussian noise: ES perturbs full matrices, so Q, N leave Symmetric."""
    return np.stack([pol.init(rng) for _ in range(P)]) + noise * rng.standard_normal(
        (P, pol.num_params)
    )


# -- registry and construction ---------------------------------------------------------------
def test_registry_holds_every_family():
    assert set(POLICIES) == {
        "iso_odetoode",
        "gated_odetoode",
        "base_ode",
        "nanode",
        "hypernet",
        "deepnet",
        "deep_resnet",
        "linear",
    }
    for name, cls in POLICIES.items():
        assert cls.name == name


def test_unknown_name_lists_valid_names():
    with pytest.raises(OdepolicyError, match="unknown policy 'mlp'.*iso_odetoode"):
        make_policy("mlp", OBS, ACT)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("iso_odetoode", {"hiddne": 8}, "unknown option.*hiddne.*valid:.*hidden"),
        ("linear", {"hidden": 8}, "unknown option.*hidden"),
        ("iso_odetoode", {"hidden": 0}, "hidden must be a positive integer"),
        ("nanode", {"activation": "gelu"}, "unknown activation 'gelu'"),
        ("base_ode", {"eta": -0.1}, "eta must be a positive number"),
    ],
)
def test_bad_options_raise_odepolicy_error(name, kwargs, match):
    with pytest.raises(OdepolicyError, match=match):
        make_policy(name, OBS, ACT, **kwargs)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_layout_and_init(name):
    pol = make_policy(name, OBS, ACT, **_small_kwargs(name))
    assert pol.num_params == pol.layout.size == sum(b.size for b in pol.layout.blocks)
    theta = pol.init(np.random.default_rng(0))
    assert theta.shape == (pol.num_params,) and theta.dtype == np.float64
    assert pol.layout.max_distance(theta) < 1e-12
    assert np.all(np.isfinite(pol.act(theta, np.ones(OBS))))


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_describe_rebuilds_the_same_policy(name):
    pol = make_policy(name, OBS, ACT, **_small_kwargs(name))
    desc = json.loads(json.dumps(pol.describe()))
    assert desc["num_params"] == pol.num_params
    again = make_policy(desc["name"], desc["obs_dim"], desc["act_dim"], **desc["kwargs"])
    rng = np.random.default_rng(1)
    thetas, obs = _population(pol, rng, 3), rng.standard_normal((3, OBS))
    np.testing.assert_array_equal(again.act(thetas, obs), pol.act(thetas, obs))


# -- batching --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("seed", SEEDS)
def test_batched_equals_per_item_bitwise(name, seed):
    pol = make_policy(name, OBS, ACT, **_small_kwargs(name))
    rng = np.random.default_rng(seed)
    thetas, obs = _population(pol, rng, 9), rng.standard_normal((9, OBS))
    batched = pol.act(thetas, obs)
    assert batched.shape == (9, ACT) and batched.dtype == np.float64
    for i in range(9):
        np.testing.assert_array_equal(batched[i], pol.act(thetas[i], obs[i]))


@pytest.mark.parametrize("name", ["iso_odetoode", "gated_odetoode", "deep_resnet", "hypernet"])
def test_batched_equals_per_item_bitwise_wide_hidden(name):
    """At h = 64 torch's batched mat-vec changes its kernel with the batch size; the compiled
    kernels (the CPU default) run the same code for every row whatever the batch."""
    kwargs = {
        "iso_odetoode": {"hidden": 64, "T": 0.2},
        "gated_odetoode": {"hidden": 64, "T": 0.2},
        "deep_resnet": {"hidden": 64, "layers": 3},
        "hypernet": {"hidden": 24, "hyper_width": 64, "T": 0.2},
    }[name]
    pol = make_policy(name, 17, 6, **kwargs)
    rng = np.random.default_rng(3)
    thetas, obs = _population(pol, rng, 5, noise=0.05), rng.standard_normal((5, 17))
    batched = pol.act(thetas, obs)
    for i in range(5):
        np.testing.assert_array_equal(batched[i], pol.act(thetas[i : i + 1], obs[i : i + 1])[0])


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_select_keeps_rows(name):
    pol = make_policy(name, OBS, ACT, **_small_kwargs(name))
    rng = np.random.default_rng(4)
    thetas, obs = _population(pol, rng, 6), rng.standard_normal((6, OBS))
    prepared = pol.prepare(thetas)
    assert all(v.shape[0] == 6 for v in prepared.values())
    idx = np.array([4, 1, 5])
    kept = pol.select(prepared, idx)
    assert all(v.shape[0] == 3 for v in kept.values())
    np.testing.assert_array_equal(pol.step(kept, obs[idx]), pol.step(prepared, obs)[idx])


def test_single_theta_broadcasts_over_observations():
    pol = make_policy("iso_odetoode", OBS, ACT, hidden=6)
    rng = np.random.default_rng(5)
    theta, obs = pol.init(rng), rng.standard_normal((4, OBS))
    out = pol.act(theta, obs)
    assert out.shape == (4, ACT)
    np.testing.assert_array_equal(out[2], pol.act(theta, obs[2]))


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_actions_are_clipped_to_bounds(name):
    low, high = np.array([-1.0, -0.5, 0.0]), np.array([1.0, 0.25, 2.0])
    pol = make_policy(name, OBS, ACT, action_low=low, action_high=high, **_small_kwargs(name))
    rng = np.random.default_rng(6)
    thetas = _population(pol, rng, 16, noise=1.0)
    obs = 10 * rng.standard_normal((16, OBS))
    a = pol.act(thetas, obs)
    assert np.all(a >= low) and np.all(a <= high)
    free = make_policy(name, OBS, ACT, **_small_kwargs(name))
    raw = free.act(thetas, obs)
    assert np.any((raw < low) | (raw > high))  # the clip had work to do on these states
    np.testing.assert_array_equal(a, np.clip(raw, low, high))  # and did only that


# -- ODEtoODE against a reference written with loops, numpy and scipy ----------------------
def _reference_flow(name, blocks, h, eta, N):
    """W_0..W_N by paper eq. 5-6."""
    W = blocks["W0"]
    Ws = [W]
    for i in range(1, N + 1):
        if name == "iso_odetoode":
            Q = 0.5 * (blocks["Q"] + blocks["Q"].T)
            Nm = 0.5 * (blocks["N"] + blocks["N"].T)
            M = W.T @ Q @ W
            B = M @ Nm - Nm @ M
        else:
            t = (i - 1) * eta
            B = np.zeros((h, h))
            for a, U, V in zip(blocks["a"], blocks["U"], blocks["V"]):
                F = np.tanh(W @ U + t * V)
                B += a * (F - F.T)
        W = W @ scipy.linalg.expm(eta * B)
        Ws.append(W)
    return Ws


def _reference_act(pol, theta, s):
    blocks = pol.layout.unflatten(theta)
    h, eta, N = pol.hidden, pol.eta, pol.n_steps
    Ws = _reference_flow(pol.name, blocks, h, eta, N)
    x = blocks["omega_in"] @ s
    for i in range(1, N + 1):
        z = Ws[i] @ x + blocks["bias"]
        fz = np.zeros(h)
        for j in range(h):
            fz[j] = abs(z[j])
        x = x + eta * fz
    return blocks["omega_out"] @ x, Ws


@pytest.mark.parametrize("name", ["iso_odetoode", "gated_odetoode"])
@pytest.mark.parametrize("seed", SEEDS)
def test_odetoode_matches_reference(name, seed):
    pol = make_policy(name, OBS, ACT, hidden=6)
    rng = np.random.default_rng(seed)
    thetas = _population(pol, rng, 3, noise=0.1)
    thetas[:, pol.layout["bias"].slice] = rng.standard_normal((3, 6))
    obs = rng.standard_normal((3, OBS))
    got = pol.act(thetas, obs)
    for i in range(3):
        expected, Ws = _reference_act(pol, thetas[i], obs[i])
        np.testing.assert_allclose(got[i], expected, rtol=0, atol=1e-10)
        np.testing.assert_allclose(pol.matrix_flow(thetas[i]), np.stack(Ws), rtol=0, atol=1e-10)


@pytest.mark.parametrize("name", ["iso_odetoode", "gated_odetoode"])
@pytest.mark.parametrize("backend", ["kernels", "torch"])
def test_output_scale_multiplies_the_reference_action(name, backend):
    """a = c * Omega_out x_N: the reference action times c, on both backends, before the clip."""
    c = 0.137
    pol = make_policy(name, OBS, ACT, hidden=6, output_scale=c)
    pol.backend = backend
    rng = np.random.default_rng(4)
    thetas = _population(pol, rng, 3, noise=0.1)
    obs = rng.standard_normal((3, OBS))
    got = pol.act(thetas, obs)
    for i in range(3):
        expected, _ = _reference_act(pol, thetas[i], obs[i])
        np.testing.assert_allclose(got[i], c * expected, rtol=0, atol=1e-10)
    assert np.abs(got).max() > 1e-3  # not trivially zero
    assert pol.describe()["kwargs"]["output_scale"] == c


@pytest.mark.parametrize("bad", [0, -0.5, "big", float("nan")])
def test_output_scale_must_be_positive(bad):
    with pytest.raises(OdepolicyError, match="output_scale must be a positive number"):
        make_policy("iso_odetoode", OBS, ACT, output_scale=bad)


@pytest.mark.parametrize("name", ["iso_odetoode", "gated_odetoode"])
def test_learned_output_scale_is_c_times_exp_of_its_parameter(name):
    """learn_output_scale adds one Euclidean scalar l, starting at 0: the action is
    c * exp(l) * Omega_out x_N. Its other blocks and their initial values are unchanged; a row's
    action is bitwise the same alone and in a batch; both backends agree."""
    learned = make_policy(name, OBS, ACT, hidden=6, output_scale=0.3, learn_output_scale=True)
    fixed = make_policy(name, OBS, ACT, hidden=6, output_scale=0.3)
    assert learned.num_params == fixed.num_params + 1
    assert learned.layout["log_output_scale"].slice.stop == learned.num_params
    rng = np.random.default_rng(7)
    theta = learned.init(np.random.default_rng(3))
    assert theta[-1] == 0.0
    np.testing.assert_array_equal(theta[:-1], fixed.init(np.random.default_rng(3)))
    obs = rng.standard_normal((5, OBS))
    thetas = _population(learned, rng, 5, noise=0.1)
    thetas[:, -1] = np.log([0.5, 1.0, 2.0, 3.0, 0.25])
    got = learned.act(thetas, obs)
    for i in range(5):
        expected, _ = _reference_act(fixed, thetas[i, :-1], obs[i])
        np.testing.assert_allclose(got[i], 0.3 * np.exp(thetas[i, -1]) * expected, atol=1e-10)
        np.testing.assert_array_equal(learned.act(thetas[i : i + 1], obs[i : i + 1])[0], got[i])
    learned.backend = "torch"
    np.testing.assert_allclose(learned.act(thetas, obs), got, rtol=0, atol=1e-12)
    with pytest.raises(OdepolicyError, match="learn_output_scale must be true or false"):
        make_policy(name, OBS, ACT, learn_output_scale="yes")


@pytest.mark.parametrize("name", ["iso_odetoode", "gated_odetoode"])
def test_linear_skip_adds_S_s_before_the_clip(name):
    """linear_skip appends a Euclidean S [act_dim, obs_dim] starting at 0: the action is
    clip(c Omega_out x_N + S s). The other blocks and their initial values are unchanged, so at
    init the action is the plain policy's, bit for bit; a row's action is bitwise the same alone
    and in a batch; both backends agree; the clip comes after the sum."""
    skip = make_policy(
        name,
        OBS,
        ACT,
        hidden=6,
        output_scale=0.3,
        linear_skip=True,
        action_low=-0.5,
        action_high=0.5,
    )
    plain = make_policy(name, OBS, ACT, hidden=6, output_scale=0.3)
    m = plain.num_params
    assert skip.num_params == m + ACT * OBS and skip.layout["skip"].slice == slice(m, m + ACT * OBS)
    theta = skip.init(np.random.default_rng(3))
    np.testing.assert_array_equal(theta[:m], plain.init(np.random.default_rng(3)))
    assert not theta[m:].any()
    rng = np.random.default_rng(8)
    obs = rng.standard_normal((6, OBS))
    np.testing.assert_array_equal(
        skip.act(np.repeat(theta[None], 6, axis=0), obs),
        np.clip(plain.act(np.repeat(theta[None, :m], 6, axis=0), obs), -0.5, 0.5),
    )
    thetas = _population(skip, rng, 6, noise=0.3)
    got = skip.act(thetas, obs)
    for i in range(6):
        expected, _ = _reference_act(plain, thetas[i, :m], obs[i])
        S = thetas[i, m:].reshape(ACT, OBS)
        want = np.clip(0.3 * expected + S @ obs[i], -0.5, 0.5)
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-10)
        np.testing.assert_array_equal(skip.act(thetas[i : i + 1], obs[i : i + 1])[0], got[i])
    assert 0 < np.mean(np.abs(got) == 0.5) < 1  # some entries clipped, some not
    skip.backend = "torch"
    np.testing.assert_allclose(skip.act(thetas, obs), got, rtol=0, atol=1e-12)
    with pytest.raises(OdepolicyError, match="linear_skip must be true or false"):
        make_policy(name, OBS, ACT, linear_skip=1)


def test_output_scale_shrinks_saturation_at_init():
    """With orthonormal Omega_in / Omega_out rows, normalised 17-d observations put about half of a
    6-d action at the +-1 bounds at init (HalfCheetah's sizes); c = 0.1 takes it off them."""
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((64, 17))
    fractions = {}
    for c in (1.0, 0.1):
        pol = make_policy("iso_odetoode", 17, 6, action_low=-1.0, action_high=1.0, output_scale=c)
        theta = pol.init(np.random.default_rng(1))
        a = pol.act(np.repeat(theta[None], 64, axis=0), obs)
        fractions[c] = float(np.mean(np.abs(a) >= 1.0))
    assert fractions[1.0] > 0.4 and fractions[0.1] < 0.05, fractions


@pytest.mark.parametrize("name", ["iso_odetoode", "gated_odetoode"])
@pytest.mark.parametrize("seed", SEEDS)
def test_matrix_flow_stays_orthogonal(name, seed):
    pol = make_policy(name, OBS, ACT, hidden=8)
    rng = np.random.default_rng(seed)
    theta = _population(pol, rng, 1, noise=1.0)[0]  # large, non-symmetric Q and N
    theta[pol.layout["W0"].slice] = pol.layout["W0"].manifold.random(rng).ravel()
    Ws = pol.matrix_flow(theta)
    assert Ws.shape == (pol.n_steps + 1, 8, 8) == (26, 8, 8)
    assert np.abs(Ws[-1] - Ws[0]).max() > 1e-2  # the flow moved
    for W in Ws:
        assert np.linalg.norm(W.T @ W - np.eye(8)) < 1e-10


@pytest.mark.parametrize("zero", ["Q", "N"])
def test_iso_flow_is_constant_without_q_or_n(zero):
    pol = make_policy("iso_odetoode", OBS, ACT, hidden=6)
    theta = pol.init(np.random.default_rng(0))
    theta[pol.layout[zero].slice] = 0.0
    Ws = pol.matrix_flow(theta)
    np.testing.assert_array_equal(Ws, np.broadcast_to(Ws[0], Ws.shape))


def test_iso_uses_symmetric_parts_of_q_and_n():
    pol = make_policy("iso_odetoode", OBS, ACT, hidden=6)
    rng = np.random.default_rng(1)
    theta, obs = pol.init(rng), rng.standard_normal(OBS)
    skewed = theta.copy()
    K = rng.standard_normal((6, 6))
    skewed[pol.layout["Q"].slice] += (K - K.T).ravel()
    np.testing.assert_allclose(pol.act(skewed, obs), pol.act(theta, obs), atol=1e-12)


# -- other families, small closed forms ------------------------------------------------------
def test_linear_is_affine_and_starts_at_zero():
    pol = make_policy("linear", OBS, ACT)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(pol.act(pol.init(rng), np.ones(OBS)), np.zeros(ACT))
    M, c, s = rng.standard_normal((ACT, OBS)), rng.standard_normal(ACT), rng.standard_normal(OBS)
    theta = pol.layout.flatten({"M": M, "c": c})
    np.testing.assert_allclose(pol.act(theta, s), M @ s + c, atol=1e-14)


def test_nanode_matches_euler_reference():
    pol = make_policy("nanode", OBS, ACT, hidden=4, activation="tanh", T=2.0, eta=0.1)
    rng = np.random.default_rng(2)
    theta = rng.standard_normal(pol.num_params)
    p = pol.layout.unflatten(theta)
    s = rng.standard_normal(OBS)
    x = p["omega_in"] @ s
    for i in range(1, 21):  # N = T / eta = 20, W_i = W(t_i), t_i = i eta
        t = i * 0.1
        W = p["A0"].copy()
        for k in range(1, 6):
            W += p["A"][k - 1] * np.cos(np.pi * k * t) + p["B"][k - 1] * np.sin(np.pi * k * t)
        x = x + 0.1 * np.tanh(W @ x + p["bias"])
    np.testing.assert_allclose(pol.act(theta, s), p["omega_out"] @ x, atol=1e-12)


def test_hypernet_matches_euler_reference():
    pol = make_policy("hypernet", OBS, ACT, hidden=3, hyper_width=5, eta=0.1)
    rng = np.random.default_rng(3)
    theta = 0.5 * rng.standard_normal(pol.num_params)
    p = pol.layout.unflatten(theta)

    def mlp(w):
        z = np.tanh(p["hyper_w1"] @ w + p["hyper_b1"])
        z = np.tanh(p["hyper_w2"] @ z + p["hyper_b2"])
        return p["hyper_w3"] @ z + p["hyper_b3"]

    s = rng.standard_normal(OBS)
    x, w = p["omega_in"] @ s, p["w0"].ravel()
    for _ in range(10):
        w = w + 0.1 * mlp(w)
        x = x + 0.1 * np.abs(w.reshape(3, 3) @ x + p["bias"])
    np.testing.assert_allclose(pol.act(theta, s), p["omega_out"] @ x, atol=1e-12)


def test_deep_resnet_matches_reference():
    pol = make_policy("deep_resnet", OBS, ACT, hidden=4, layers=3)
    rng = np.random.default_rng(4)
    theta = rng.standard_normal(pol.num_params)
    p = pol.layout.unflatten(theta)
    s = rng.standard_normal(OBS)
    x = p["omega_in"] @ s
    for l in range(3):
        x = x + np.abs(p["W"][l] @ x + p["b"][l])
    np.testing.assert_allclose(pol.act(theta, s), p["omega_out"] @ x, atol=1e-12)


# -- sizing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n, k in SIZE_OPTION.items() if k])
def test_match_size_gives_smallest_count_not_below_target(name):
    target = count_params("iso_odetoode", 17, 6, hidden=16)
    fixed = {"hidden": 16} if name in ("hypernet", "base_ode") else {}
    kwargs = match_size(name, 17, 6, target, **fixed)
    key = SIZE_OPTION[name]
    assert count_params(name, 17, 6, **kwargs) >= target
    if kwargs[key] > 1:  # size 1 is returned when even it exceeds the target
        assert count_params(name, 17, 6, **{**kwargs, key: kwargs[key] - 1}) < target


def test_parameter_table_rows():
    rows = parameter_table(17, 6, 16)
    assert [r[0] for r in rows] == list(POLICIES)
    iso = rows[0][2]
    assert iso == 16 * 17 + 6 * 16 + 16 + 3 * 16 * 16
    for name, kwargs, n in rows:
        assert n == count_params(name, 17, 6, **kwargs)
        if name != "linear":
            assert n >= iso


@pytest.mark.parametrize("backend", ["kernels", "torch"])
def test_deep_resnet_residual_scale_against_a_hand_written_reference(backend):
    """x_0 = Omega_in s, x_l = x_{l-1} + c |W_l x_{l-1} + b_l|, a = Omega_out x_L (no action
    box given, so no clip)."""
    c = 0.04
    pol = make_policy("deep_resnet", OBS, ACT, hidden=6, layers=4, residual_scale=c)
    pol.backend = backend
    rng = np.random.default_rng(9)
    thetas = _population(pol, rng, 3, noise=0.5)
    obs = 2 * rng.standard_normal((3, OBS))
    got = pol.act(thetas, obs)
    for i in range(3):
        b = pol.layout.unflatten(thetas[i])
        x = b["omega_in"] @ obs[i]
        for l in range(4):
            x = x + c * np.abs(b["W"][l] @ x + b["b"][l])
        np.testing.assert_allclose(got[i], b["omega_out"] @ x, rtol=0, atol=1e-12)
    assert pol.describe()["kwargs"]["residual_scale"] == c
    with pytest.raises(OdepolicyError, match="residual_scale must be a positive number"):
        make_policy("deep_resnet", OBS, ACT, residual_scale=0)


def test_deep_resnet_residual_scale_gives_es_a_signal_on_inverted_pendulum():
    """The zero-variance trap and its way out, on real MuJoCo. From the initial parameters, 8
    antithetic pairs at sigma 0.05: with the paper's c = 1 the bias perturbations of 25 |.|
    layers push every perturbed policy's actions the same way and the pole falls at once in
    every episode; with c = 1/25 the episodes differ, so the returns carry a signal."""
    from odepolicy.envs import make_env
    from odepolicy.rollout import evaluate_population

    envs = [make_env("InvertedPendulum-v5") for _ in range(16)]
    spread = {}
    for c in (1.0, 0.04):
        pol = make_policy("deep_resnet", 4, 1, residual_scale=c, action_low=-3, action_high=3)
        center = pol.init(np.random.default_rng(0))
        eps = np.random.default_rng(1).standard_normal((8, pol.num_params))
        thetas = np.concatenate([center + 0.05 * eps, center - 0.05 * eps])
        r = evaluate_population(pol, thetas, envs, [5] * 8 + [5] * 8, horizon=200)
        spread[c] = (r.returns.max(), np.ptp(r.lengths))
    assert spread[1.0][0] <= 3 and spread[1.0][1] == 0, spread  # every pole falls at step 2-3
    assert spread[0.04][0] >= 10 and spread[0.04][1] >= 3, spread  # measured: 13 and 4
