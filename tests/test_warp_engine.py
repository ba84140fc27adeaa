"""The MuJoCo Warp engine (`physics: warp`) against Gymnasium, on Warp's CPU device.

Skipped where the optional extra is not installed (`pip install -e ".[warp]"`). Compiled Warp
kernels are cached on disk by Warp, and each task's worlds are built once per module.

How closely can float32 MuJoCo Warp follow float64 C MuJoCo? From the same state, one env step
agrees to about 1e-5 (1e-4 of the value where velocities and contact forces are large); that is
what `test_one_step_matches_gymnasium` checks at every step of a 20-step trajectory, and it
checks the task's observation layout, reward terms and health checks exactly. Left running
(`test_same_start_and_actions_match_gymnasium`), the two separate as any two MuJoCo runs
whose states differ by rounding do: on Swimmer, Hopper, Walker2d and Humanoid the rewards stay
within 1e-4 for 20 steps and the falls happen on the same step, but HalfCheetah's contacts
amplify float32 rounding past 1e-4 within a few steps (C MuJoCo against itself, started 1e-7
apart, separates by 2e-3 within 13 steps), so its free-running observations get 1e-2.

Humanoid-v5's model asks for the PGS solver, which MuJoCo Warp does not have; the engine uses
Newton. The tests compare it with Gymnasium's Humanoid switched to Newton too: against PGS the
contact forces differ at the first impact with the floor (by about 100 N in cfrc_ext, 0.26 in
that step's reward), a difference of solvers, not of the engine.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("mujoco_warp", reason='MuJoCo Warp not installed: pip install -e ".[warp]"')

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402
import torch  # noqa: E402
from gymnasium.envs.mujoco.humanoid_v5 import mass_center  # noqa: E402

from odepolicy.cli import main  # noqa: E402
from odepolicy.envs import WARP_ENV_IDS, env_spec  # noqa: E402
from odepolicy.envs.warp import TASKS, WarpWorlds  # noqa: E402

STEPS = 20
FALLING = ("Hopper-v5", "Walker2d-v5", "Humanoid-v5")
# Humanoid's cfrc_ext (the last 78 observations) is compared relative to its largest component
HUMANOID_CFRC = slice(270, 348)


def _gym_env(env_id: str):
    env = gym.make(env_id, disable_env_checker=True)
    if env_id == "Humanoid-v5":  # the engine's one physics change (see the module doc)
        env.unwrapped.model.opt.solver = mujoco.mjtSolver.mjSOL_NEWTON
    return env


def _noise_of(env) -> torch.Tensor:
    """The reset-noise row that puts a world in `env`'s current state."""
    u = env.unwrapped
    return torch.as_tensor(np.concatenate([u.data.qpos - u.init_qpos, u.data.qvel]))


def _actions(env_id: str, act_dim: int) -> np.ndarray:
    """A fall for Hopper, Walker2d and Humanoid (every actuator at -1 topples them within 12
    steps), uniform random actions for the others."""
    if env_id in FALLING:
        return -np.ones((STEPS, act_dim))
    return np.random.default_rng(7).uniform(-1.0, 1.0, (STEPS, act_dim))


def _obs_scale(env_id: str, obs: np.ndarray) -> np.ndarray:
    """What an observation error is measured against: max(1, |value|), and for Humanoid's
    contact forces the largest force of that observation (float32 solver errors scale with
    the forces, not with each component)."""
    scale = np.maximum(1.0, np.abs(obs))
    if env_id == "Humanoid-v5":
        scale[HUMANOID_CFRC] = max(1.0, np.abs(obs[HUMANOID_CFRC]).max())
    return scale


@pytest.fixture(scope="module", params=WARP_ENV_IDS)
def trajectory(request) -> dict:
    """Gymnasium and two warp worlds from the same start state with the same actions for 20
    steps. World 0 runs free; world 1 is put back into Gymnasium's state before every step (a
    masked reset), so its step is one step from the same state. Records the differences."""
    env_id = request.param
    env = _gym_env(env_id)
    worlds = WarpWorlds(env_id, 2, "cpu")
    obs_g, _ = env.reset(seed=3)
    obs_w = worlds.reset(torch.stack([_noise_of(env)] * 2)).numpy()
    rec = {"env_id": env_id, "reset": np.abs(obs_w - obs_g).max(), "free": [], "one": []}
    actions = _actions(env_id, worlds.nu)
    resync = torch.tensor([False, True])
    for t in range(STEPS):
        if t:
            worlds.reset(torch.stack([_noise_of(env)] * 2), mask=resync)
            if worlds.humanoid:  # Gymnasium's "before" mass centre is from the stale xipos
                u = env.unwrapped
                worlds.position[1] = torch.as_tensor(mass_center(u.model, u.data))
        obs, reward, term = worlds.step(torch.as_tensor(np.stack([actions[t]] * 2)))
        obs_g, reward_g, term_g, _, _ = env.step(actions[t])
        scale = _obs_scale(env_id, obs_g)
        for world, key in ((0, "free"), (1, "one")):
            rec[key].append(
                (
                    float(np.max(np.abs(obs[world].numpy() - obs_g) / scale)),
                    abs(float(reward[world]) - reward_g),
                    bool(term[world]) == term_g,
                    term_g,
                )
            )
    env.close()
    return rec


def test_task_list_agrees_with_the_engine():
    assert tuple(TASKS) == WARP_ENV_IDS


def test_reset_observation_matches_gymnasium(trajectory):
    assert trajectory["reset"] < 1e-5


def test_one_step_matches_gymnasium(trajectory):
    """From Gymnasium's state, the same action: observations within 1e-4 (of max(1, |x|)),
    rewards within 1e-4, termination the same, at each of 20 steps."""
    obs_err, rew_err, same_term, _ = zip(*trajectory["one"])
    assert max(obs_err) < 1e-4, trajectory["env_id"]
    assert max(rew_err) < 1e-4, trajectory["env_id"]
    assert all(same_term)


def test_same_start_and_actions_match_gymnasium(trajectory):
    """Free running for 20 steps from the same start state with the same actions."""
    env_id = trajectory["env_id"]
    obs_err, rew_err, same_term, term_g = zip(*trajectory["free"])
    assert all(same_term), f"{env_id}: terminated on another step than Gymnasium"
    if env_id in FALLING:  # the sequence does make them fall, within the 20 steps
        assert any(term_g) and not term_g[0]
    if env_id == "HalfCheetah-v5":  # contacts amplify float32 rounding (module doc)
        assert max(obs_err) < 1e-2 and max(rew_err) < 1e-2
    else:
        assert max(obs_err) < 1e-3, env_id
        assert max(rew_err) < 1e-4, env_id


@pytest.mark.parametrize("env_id", WARP_ENV_IDS)
def test_reset_noise_matches_gymnasium(env_id):
    """Over many resets the start states' mean and spread per coordinate match Gymnasium's
    within sampling error (5 standard errors)."""
    n = 400
    worlds = WarpWorlds(env_id, n, "cpu")
    worlds.reset(worlds.reset_noise(n, torch.Generator().manual_seed(0)))
    warp = torch.cat([worlds.qpos, worlds.qvel], dim=1).double().numpy()
    env = gym.make(env_id, disable_env_checker=True)
    states = []
    for seed in range(n):
        env.reset(seed=seed)
        u = env.unwrapped
        states.append(np.concatenate([u.data.qpos, u.data.qvel]))
    env.close()
    ref = np.array(states)
    sd_w, sd_g = warp.std(0), ref.std(0)
    se_mean = np.sqrt((sd_w**2 + sd_g**2) / n)
    assert np.all(np.abs(warp.mean(0) - ref.mean(0)) <= 5 * se_mean + 1e-6)
    # the std of n draws has a standard error below std / sqrt(n) for these distributions
    assert np.all(np.abs(sd_w - sd_g) <= 5 * np.sqrt(2.0 / n) * sd_g + 1e-6)
    assert sd_g.min() > 0  # every coordinate is randomised, so the check has teeth


def test_masked_reset_leaves_other_worlds_bit_for_bit():
    """Resetting world 1 of 4 changes nothing of worlds 0, 2, 3: their state now and what they
    do next, compared with the same worlds never reset. Humanoid: its reset recomputes the
    kinematics of every world."""
    env_id, n = "Humanoid-v5", 4
    a, b = WarpWorlds(env_id, n, "cpu"), WarpWorlds(env_id, n, "cpu")
    noise = a.reset_noise(n, torch.Generator().manual_seed(1))
    a.reset(noise)
    b.reset(noise)
    actions = torch.as_tensor(np.random.default_rng(0).uniform(-0.4, 0.4, (3, n, a.nu)))
    for t in range(2):
        a.step(actions[t])
        b.step(actions[t])
    mask = torch.tensor([False, True, False, False])
    a.reset(a.reset_noise(n, torch.Generator().manual_seed(2)), mask=mask)
    keep = [0, 2, 3]
    sa, sb = a.state(), b.state()
    assert not np.array_equal(sa["qpos"][1], sb["qpos"][1])  # world 1 did reset
    assert np.array_equal(sa["time"][1], 0 * sb["time"][1])
    for key in sa:
        np.testing.assert_array_equal(sa[key][keep], sb[key][keep], err_msg=key)
    for t in range(2, 3):
        oa, ra, ta = a.step(actions[t])
        ob, rb, tb = b.step(actions[t])
        np.testing.assert_array_equal(oa[keep].numpy(), ob[keep].numpy())
        np.testing.assert_array_equal(ra[keep].numpy(), rb[keep].numpy())
        np.testing.assert_array_equal(ta[keep].numpy(), tb[keep].numpy())


def test_warp_spec_is_gymnasiums():
    worlds = WarpWorlds("Hopper-v5", 1, "cpu")
    spec = env_spec("Hopper-v5")
    assert worlds.spec.obs_dim == spec.obs_dim and worlds.spec.act_dim == spec.act_dim
    np.testing.assert_allclose(worlds.spec.action_low, spec.action_low)


def _train(out, name: str) -> int:
    return main(
        [
            "train", "--env", "HalfCheetah-v5", "--policy", "iso_odetoode",
            "--set", "physics=warp", "--set", "iterations=2", "--set", "horizon=10",
            "--set", "es.directions=2", "--set", "eval_episodes=2", "--set", "eval_every=2",
            "--set", "checkpoint_every=2", "--out", str(out), "--name", name, "--quiet",
        ]
    )  # fmt: skip


@pytest.fixture(scope="module")
def warp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("warp_runs")
    assert _train(out, "w") == 0
    return out


def test_es_run_on_warp_end_to_end(warp_run, capsys):
    """A 2-iteration run with physics: warp writes a normal run folder; its policy evaluates on
    physics: mujoco, and on warp it reproduces the run's own evaluation."""
    import json
    import math

    from odepolicy.rundir import RunDir

    tmp_path = warp_run
    run = RunDir(tmp_path / "w")
    rows = run.progress.read()
    assert [int(r["iteration"]) for r in rows] == [1, 2]
    assert int(rows[-1]["env_steps"]) == 2 * 4 * 10  # HalfCheetah never terminates
    assert run.latest.is_file() and "physics: warp" in (tmp_path / "w" / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "w"), "--physics", "mujoco", "--json"]) == 0
    on_mujoco = json.loads(capsys.readouterr().out)
    assert on_mujoco["physics"] == "mujoco" and all(math.isfinite(r) for r in on_mujoco["returns"])
    assert main(["evaluate", str(tmp_path / "w"), "--physics", "warp", "--json"]) == 0
    on_warp = json.loads(capsys.readouterr().out)
    # the same episodes again, in another process's worlds: the same returns (deterministic)
    assert on_warp["mean"] == pytest.approx(float(rows[-1]["eval_return_mean"]), abs=1e-9)


def test_evaluate_warp_refuses_what_it_cannot_do(warp_run, capsys):
    capsys.readouterr()
    code = main(["evaluate", str(warp_run / "w"), "--physics", "warp", "--obs-noise", "0.1"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--physics mujoco" in err
