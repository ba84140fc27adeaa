"""The lean step of Swimmer, Hopper, HalfCheetah, Walker2d and Humanoid v5, and of dm_control's
swimmer6 and swimmer15 (`odepolicy.envs.lean`) returns bit for bit what Gymnasium's (or
Shimmy's) step returns: observations, rewards, terminated and truncated, over the same resets
and actions, through falls, resets after termination and time limits."""

import numpy as np
import pytest

from odepolicy.envs import make_env
from odepolicy.envs.lean import LEAN_ENV_IDS

GYM_TASKS = ("Swimmer-v5", "Hopper-v5", "HalfCheetah-v5", "Walker2d-v5", "Humanoid-v5")
DM_SWIMMERS = ("dm_control/swimmer-swimmer6-v0", "dm_control/swimmer-swimmer15-v0")
TASKS = GYM_TASKS + DM_SWIMMERS


def _actions(env, n: int, rng: np.random.Generator, large=True) -> list[np.ndarray]:
    """Uniform in the action box (a third of it when `large` is False: Hopper and Walker2d then
    stand past a short time limit), with, when `large`, bursts of 3x the box that make Hopper
    and Walker2d fall; and a few float32 actions (the control cost's type then differs)."""
    low, high = env.action_low, env.action_high
    out = []
    for t in range(n):
        a = rng.uniform(low, high)
        if not large:
            a = a / 3.0
        elif t % 100 >= 80:
            a = 3.0 * a
        if t % 17 == 5:
            a = a.astype(np.float32)
        out.append(a)
    return out


def _same(a, b) -> bool:
    obs_a, rew_a, term_a, trunc_a = a
    obs_b, rew_b, term_b, trunc_b = b
    return (
        obs_a.dtype == obs_b.dtype == np.float64
        and np.array_equal(obs_a.view(np.int64), obs_b.view(np.int64))
        and type(rew_a) is type(rew_b) is float
        and np.array_equal(np.float64(rew_a).view(np.int64), np.float64(rew_b).view(np.int64))
        and type(term_a) is type(term_b) is bool
        and type(trunc_a) is type(trunc_b) is bool
        and term_a == term_b
        and trunc_a == trunc_b
    )


def _compare(env_id: str, max_episode_steps=None, episodes=3, steps=300, seed=0, large=True):
    old = make_env(env_id, max_episode_steps=max_episode_steps, lean=False)
    new = make_env(env_id, max_episode_steps=max_episode_steps)
    assert not old.lean and new.lean
    rng = np.random.default_rng(seed)
    counts = {"terminated": 0, "truncated": 0, "steps": 0}
    for episode in range(episodes):
        s = 1000 * seed + episode
        a, b = old.reset(seed=s), new.reset(seed=s)
        assert np.array_equal(a.view(np.int64), b.view(np.int64))
        for t, action in enumerate(_actions(old, steps, rng, large)):
            ra, rb = old.step(action), new.step(action.copy())
            assert _same(ra, rb), (env_id, episode, t, ra, rb)
            counts["steps"] += 1
            if ra[2] or ra[3]:
                counts["terminated" if ra[2] else "truncated"] += 1
                s += 7919  # reset after the end and go on with this episode's actions
                a, b = old.reset(seed=s), new.reset(seed=s)
                assert np.array_equal(a.view(np.int64), b.view(np.int64))
    old.close()
    new.close()
    return counts


@pytest.mark.parametrize("env_id", TASKS)
def test_lean_step_is_gymnasiums_bit_for_bit(env_id):
    counts = _compare(env_id)
    if env_id in ("Hopper-v5", "Walker2d-v5", "Humanoid-v5"):
        assert counts["terminated"] >= 3  # the large actions made them fall, and reset


@pytest.mark.parametrize("env_id", TASKS)
def test_lean_step_truncates_on_the_same_step(env_id):
    limit = 15 if env_id == "Humanoid-v5" else 50  # Humanoid falls in about 20 steps
    counts = _compare(env_id, max_episode_steps=limit, episodes=2, steps=120, seed=1, large=False)
    assert counts["truncated"] >= 1


def test_lean_step_keeps_do_simulations_action_check():
    env = make_env("Hopper-v5", seed=0)
    assert env.lean
    before = env.gym_env._elapsed_steps
    with pytest.raises(ValueError, match="Action dimension mismatch"):
        env.step(np.zeros(4))
    assert env.gym_env._elapsed_steps == before  # nothing stepped, nothing counted
    env.close()


def test_lean_step_only_where_it_is_written():
    assert set(LEAN_ENV_IDS) == set(TASKS)
    for env_id in TASKS:
        env = make_env(env_id)
        assert env.lean
        env.close()
    env = make_env("InvertedPendulum-v5")
    assert not env.lean
    env.close()
    for env_id in ("Hopper-v5", DM_SWIMMERS[0]):
        env = make_env(env_id, render_mode="rgb_array")
        assert not env.lean
        env.close()
    env = make_env("dm_control/cheetah-run-v0")  # another dm_control task
    assert not env.lean
    env.close()
    # Humanoid with an observation other than the default keeps Gymnasium's step.
    import gymnasium as gym

    from odepolicy.envs.lean import lean_step_for

    for options in ({}, {"include_cfrc_ext_in_observation": False}):
        gym_env = gym.make("Humanoid-v5", disable_env_checker=True, **options)
        assert (lean_step_for(gym_env, "Humanoid-v5") is None) == bool(options)
        gym_env.close()


@pytest.mark.parametrize("env_id", GYM_TASKS)
def test_lean_step_at_fast_states(env_id):
    """From states with joint speeds past the observation clip (Hopper, Walker2d: 10) and past
    Hopper's healthy state range (100), set alike in both environments; the last slides forward
    at 150 m/s, upright (Hopper: unhealthy by its state range alone)."""
    old, new = make_env(env_id, lean=False), make_env(env_id)
    rng = np.random.default_rng(2)
    clipped = 0  # Humanoid steps whose contact cost its range clipped
    for k, speed in enumerate((5.0, 30.0, 150.0, "slide")):
        old.reset(seed=k)
        new.reset(seed=k)
        task = old.gym_env.unwrapped
        qpos = task.data.qpos.copy()
        if speed == "slide":
            qvel = np.zeros(task.model.nv)
            qvel[0] = 150.0
        else:
            qvel = rng.uniform(-speed, speed, task.model.nv)
        task.set_state(qpos, qvel)
        new.gym_env.unwrapped.set_state(qpos, qvel)
        for action in _actions(old, 5, rng):
            out = old.step(action)
            assert _same(out, new.step(action)), (env_id, speed)
            if env_id == "Humanoid-v5":
                clipped += task.contact_cost == task._contact_cost_range[1]
        if speed == "slide" and env_id == "Hopper-v5":
            assert out[2]  # terminated
    if env_id == "Humanoid-v5":
        assert clipped >= 1
    old.close()
    new.close()


def _dm_swimmer_parts(env):
    dm_env = env.gym_env.unwrapped._env
    return dm_env, dm_env.physics


@pytest.mark.parametrize("env_id", DM_SWIMMERS)
def test_dm_swimmer_lean_step_near_the_target(env_id):
    """With the target put on the nose (and then a little off it), the reward's in-bounds
    branch (1.0) and its long tail just outside both run, and agree bit for bit."""
    old, new = make_env(env_id, lean=False), make_env(env_id)
    rng = np.random.default_rng(3)
    rewards = []
    for episode, offset in enumerate((0.0, 0.15, 0.6)):
        old.reset(seed=episode)
        new.reset(seed=episode)
        for env in (old, new):
            _, physics = _dm_swimmer_parts(env)
            nose = physics.named.data.geom_xpos["nose"]
            physics.named.model.geom_pos["target", "x"] = nose[0] + offset
            physics.named.model.geom_pos["target", "y"] = nose[1]
            physics.forward()
        for action in _actions(old, 40, rng, large=False):
            out = old.step(action)
            assert _same(out, new.step(action)), (env_id, episode)
            rewards.append(out[1])
    assert 1.0 in rewards and any(0.0 < r < 1.0 for r in rewards)
    old.close()
    new.close()


@pytest.mark.parametrize("env_id", DM_SWIMMERS)
def test_dm_swimmer_lean_step_past_dm_controls_own_limit(env_id):
    """dm_control ends an episode at its own 1000 steps (truncated); a step after that without
    a reset is dm_control's reset (reward 0, the first observation), through Shimmy's path."""
    old = make_env(env_id, max_episode_steps=1003, lean=False)
    new = make_env(env_id, max_episode_steps=1003)
    old.reset(seed=4)
    new.reset(seed=4)
    rng = np.random.default_rng(4)
    truncated_at = []
    for t, action in enumerate(_actions(old, 1003, rng)):
        out = old.step(action)
        assert _same(out, new.step(action)), (env_id, t)
        if out[3]:
            truncated_at.append(t)
    assert truncated_at == [999, 1002]  # dm_control's limit, then TimeLimit's
    old.close()
    new.close()


def test_dm_swimmer_reward_is_dm_controls_tolerance():
    """The lean step's long-tail reward against `rewards.tolerance` itself, on distances across
    the bound, far past the margin, and at the edges (0, the bound, NaN)."""
    from dm_control.utils import rewards

    env = make_env(DM_SWIMMERS[0])
    _, physics = _dm_swimmer_parts(env)
    upper = physics.named.model.geom_size["target", 0]
    rng = np.random.default_rng(5)
    distances = np.concatenate(
        (
            rng.uniform(0.0, 2.0 * upper, 4000),
            rng.uniform(0.0, 50.0, 4000),
            np.exp(rng.uniform(-40.0, 40.0, 2000)),
            [0.0, upper, np.nextafter(upper, 1.0), np.nextafter(upper, 0.0), np.inf, np.nan],
        )
    )
    from odepolicy.envs import lean

    reward_of = lean._long_tail_reward
    for x in distances:
        x = np.linalg.norm(np.array([x, 0.0]))  # a float64 from a norm, as in the step
        want = rewards.tolerance(x, bounds=(0, upper), margin=5 * upper, sigmoid="long_tail")
        got = reward_of(x, upper)
        assert type(got) is float
        assert np.array_equal(np.float64(got).view(np.int64), np.float64(want).view(np.int64)), x
    env.close()
