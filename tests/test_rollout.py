"""The rollout engine on real MuJoCo: batching never changes a result, failures stay local."""

import numpy as np

from odepolicy.envs import Env, make_env
from odepolicy.es import NoiseSpec
from odepolicy.rollout import RolloutTask, RolloutWorker, evaluate_population


def _task(worker, directions=5, horizon=40):
    center = worker.policy.init(np.random.default_rng(0))
    noise = NoiseSpec(iteration_seed=11, num_params=len(center), directions=directions, sigma=0.1)
    return RolloutTask(center, horizon, noise), noise.population


def test_results_do_not_depend_on_lockstep_size_or_order():
    worker = RolloutWorker("Hopper-v5", {"name": "iso_odetoode", "hidden": 6})
    task, population = _task(worker)
    worker.lockstep = 64
    whole = worker.run(task, range(population))
    worker.lockstep = 3
    chunked = worker.run(task, range(population))
    reverse = worker.run(task, list(range(population))[::-1])
    by_index = {r.index: r for r in reverse}
    for a, b in zip(whole, chunked):
        assert (a.index, a.ret, a.length) == (b.index, b.ret, b.length)
        c = by_index[a.index]
        assert (a.ret, a.length) == (c.ret, c.length)
        for key in a.stats:
            assert np.array_equal(a.stats[key], b.stats[key])
    # Hopper falls: episodes end at different times and leave the batch early
    assert len({r.length for r in whole}) > 1


def test_observation_statistics_match_the_states_visited():
    env = make_env("Swimmer-v5")
    worker = RolloutWorker("Swimmer-v5", {"name": "linear"})
    theta = worker.policy.init(np.random.default_rng(0))  # zero policy: action 0
    res = evaluate_population(worker.policy, theta[None, :], [env], [7], horizon=5)
    env2 = make_env("Swimmer-v5")
    seen = [env2.reset(seed=7)]
    for _ in range(4):
        seen.append(env2.step(np.zeros(2))[0])
    stats = res.stats(0)
    assert stats.count == 5
    assert np.allclose(stats.mean, np.mean(seen, axis=0), atol=1e-12)
    assert np.allclose(stats.var, np.var(seen, axis=0, ddof=1), atol=1e-10)


class _RaisesAtStep(Env):
    """A real pendulum whose step raises once it has taken `at` steps (a crashing simulator)."""

    def __init__(self, at):
        base = make_env("InvertedPendulum-v5")
        super().__init__(base.gym_env, base.env_id, base.obs_keys)
        self.at, self.t = at, 0

    def reset(self, seed=None):
        self.t = 0
        return super().reset(seed)

    def step(self, action):
        self.t += 1
        if self.t >= self.at:
            raise RuntimeError("simulator exploded")
        return super().step(action)


def test_a_raising_env_or_nonfinite_parameters_fail_only_their_row():
    worker = RolloutWorker("InvertedPendulum-v5", {"name": "iso_odetoode", "hidden": 4})
    theta = worker.policy.init(np.random.default_rng(1))
    thetas = np.repeat(theta[None, :], 3, axis=0)
    thetas[2, 0] = np.nan  # NaN parameters -> NaN actions -> non-finite physics
    envs = [make_env("InvertedPendulum-v5"), _RaisesAtStep(3), make_env("InvertedPendulum-v5")]
    res = evaluate_population(worker.policy, thetas, envs, [0, 0, 0], horizon=20)
    assert not res.failed[0] and np.isfinite(res.returns[0]) and res.lengths[0] >= 3
    assert res.failed[1] and "simulator exploded" in res.reasons[1] and np.isnan(res.returns[1])
    assert res.failed[2] and "non-finite action" in res.reasons[2]


def test_lockstep_kernels_match_the_numpy_they_replace():
    """`_rollout_kernels.observe` is bit for bit the numpy it replaced (statistics, normalise,
    clip; NaN passes through), and the finiteness checks catch NaN and inf anywhere."""
    from odepolicy import _rollout_kernels as rk

    rng = np.random.default_rng(7)
    cur = rng.standard_normal((5, 11)) * 3.0
    cur[2, 4] = np.nan
    mean, std = rng.standard_normal(11), 0.5 + rng.random(11)
    for clip in (None, 1.3):
        s0, q0 = rng.standard_normal((5, 11)), rng.standard_normal((5, 11))
        ref_sum, ref_sq = s0 + cur, q0 + cur * cur
        ref_z = (cur - mean) / std
        if clip is not None:
            ref_z = np.clip(ref_z, -clip, clip)
        s, q, z = s0.copy(), q0.copy(), np.empty_like(cur)
        rk.observe(cur, mean, std, -1.0 if clip is None else clip, s, q, z)
        for got, want in ((s, ref_sum), (q, ref_sq), (z, ref_z)):
            assert got.tobytes() == want.tobytes()
    assert np.isnan(z[2, 4]) and np.abs(z[np.isfinite(z)]).max() == 1.3
    ok = rng.standard_normal((3, 4))
    assert rk.all_finite(ok) and rk.rows_finite(np.zeros(3), ok)
    for bad in (np.nan, np.inf, -np.inf):
        a = ok.copy()
        a[2, 3] = bad
        r = np.zeros(3)
        r[1] = bad
        assert not rk.all_finite(a)
        assert not rk.rows_finite(np.zeros(3), a)
        assert not rk.rows_finite(r, ok)


def test_lockstep_shrinks_for_policies_whose_rows_do_not_fit_in_cache():
    """ISO-ODEtoODE at h = 64 keeps 25 matrices of 64 x 64 per row (0.8 MB): a worker steps it
    a row or two at a time; small policies keep the full batch of 64."""
    from odepolicy.policies import make_policy
    from odepolicy.rollout import LOCKSTEP_MAX, ROWS_CACHE, lockstep_for

    big = make_policy("iso_odetoode", 348, 17, hidden=64)
    assert big.prepared_bytes() >= 25 * 64 * 64 * 8
    assert lockstep_for(big) == ROWS_CACHE // big.prepared_bytes() == 2
    small = make_policy("iso_odetoode", 17, 6, hidden=16)
    assert small.prepared_bytes() < 64 << 10
    assert lockstep_for(small) == LOCKSTEP_MAX == 64
    mid = make_policy("deepnet", 17, 6, hidden=64)
    assert 1 < lockstep_for(mid) < LOCKSTEP_MAX


def test_shared_start_gives_every_direction_the_same_start_state():
    """With `shared_start`, every perturbation of an iteration is reset like direction 0's pair:
    at a perturbation scale too small to move Hopper's actions, all returns agree, while the
    default start states (one per direction, reset noise included) give different returns; the
    pairs of direction 0 are the same episode either way."""
    worker = RolloutWorker("Hopper-v5", {"name": "linear"})
    center = worker.policy.init(np.random.default_rng(0)) + 0.1
    noise = NoiseSpec(iteration_seed=5, num_params=len(center), directions=4, sigma=1e-12)
    own = worker.run(RolloutTask(center, 30, noise), range(noise.population))
    shared = worker.run(RolloutTask(center, 30, noise, shared_start=True), range(8))
    own_returns = [r.ret for r in own]
    shared_returns = [r.ret for r in shared]
    assert np.ptp(shared_returns) < 1e-6
    assert np.ptp(own_returns) > 1e-3
    assert shared_returns[:2] == own_returns[:2]  # direction 0: its own seed either way
