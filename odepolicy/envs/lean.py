"""Lean `Env.step` for Gymnasium's v5 locomotion tasks Swimmer, Hopper, HalfCheetah, Walker2d
and Humanoid, and for the DeepMind Control Suite's swimmer (swimmer6, swimmer15).

Gymnasium's step of these tasks spends about as long in Python as MuJoCo spends stepping: the
TimeLimit and OrderEnforcing wrappers, the info dict, the `dt` property (read three times),
`is_healthy` computed twice, `np.clip` and friends on ten-element arrays. A lean step does what
the task's own `step` does, on the unwrapped `MujocoEnv` (`data.ctrl`, `mj_step` with
`nstep=frame_skip`, `mj_rnePostConstraint`), then computes the observation, reward and
termination the way the task's `step`, `_get_obs`, `_get_rew`, `is_healthy` and `control_cost`
do, and truncation the way TimeLimit does, with none of the rest.

Bit for bit the same as Gymnasium's path (tests/test_envs_lean.py compares them):

- every floating-point operation that makes a reward is the task's own, on the same types and
  in the same order (x velocity `(after - before) / dt`, `weight * x_velocity`,
  `is_healthy * healthy_reward`, `rewards - costs`; the control cost is `np.sum` of
  `np.square(action)`, through `np.add.reduce(..., axis=None)`, which is what `np.sum` calls for
  an ndarray). `dt` is `model.opt.timestep * frame_skip`, as the property computes it, once.
- what is not arithmetic is done in cheaper but exact ways: the observation's numbers are
  copies of qpos and qvel, the velocity clip to [-10, 10] (Hopper, Walker2d) selects the bound
  or the value with the same comparisons (a NaN stays the value, as in `np.clip`), and the
  health checks make the same comparisons (`low < x < high`) on the same numbers, each once per
  step.
- the action is checked as `do_simulation` checks it (ValueError for a shape other than (nu,)),
  before anything is stepped or counted.
- truncation is TimeLimit's: the wrapper's own step counter (`_elapsed_steps`, zeroed by the
  wrapper's reset, which `Env.reset` still goes through) goes up by one each step, truncated
  when it reaches `_max_episode_steps`. OrderEnforcing's check needs nothing: `Env` resets the
  environment when it is built.

The info dict is not built (`Env.step` drops it). A lean step is used only for exactly
TimeLimit(OrderEnforcing(<the task's own class>)) with `render_mode` None (`lean_step_for`
returns None otherwise, and `Env` keeps Gymnasium's path): rendering and video and every other
task step as before.

dm_control's swimmer through Shimmy (`_dm_swimmer`) spends about 40% of a step outside MuJoCo:
Shimmy's conversions and info dict, dm_control's `TimeStep`, and `physics.named` lookups by
name (four per step, each a few microseconds). Its lean step still steps the physics through
dm_control's own `physics.step(n_sub_steps)` (the legacy mj_step2 / mj_step / mj_step1 split
and the check that raises `PhysicsError` on a diverged state), sets the control as
`before_step` does (`np.copyto`), and counts steps as `control.Environment` and TimeLimit do;
the observation and reward are the task's `get_observation` and `get_reward` with the names
resolved once: the same arrays indexed the same way, the same `dot`, `np.linalg.norm`, and
`rewards.tolerance`'s long-tail arithmetic on the same numpy scalar types in the same order
(tests/test_envs_lean.py also checks it against `tolerance` itself on a sweep of distances).
A step that dm_control would turn into a reset (after its own time limit) goes through
Shimmy's path.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import _import_gym, flatten_obs

_import_gym()  # MuJoCo's GL backend is chosen (and its known notices quieted) before its import
import mujoco  # noqa: E402

__all__ = ["LEAN_ENV_IDS", "lean_step_for"]

LEAN_ENV_IDS = (
    "Swimmer-v5",
    "Hopper-v5",
    "HalfCheetah-v5",
    "Walker2d-v5",
    "Humanoid-v5",
    "dm_control/swimmer-swimmer6-v0",
    "dm_control/swimmer-swimmer15-v0",
)
_DM_SWIMMER_IDS = LEAN_ENV_IDS[5:]

StepFn = Callable[[object], tuple[np.ndarray, float, bool, bool]]

_mj_step = mujoco.mj_step
_mj_rne_post_constraint = mujoco.mj_rnePostConstraint
_square = np.square
_add_reduce = np.add.reduce
_shape = np.shape
_array = np.array
_concatenate = np.concatenate
_ndarray = np.ndarray
_einsum = np.einsum


def _task_classes() -> dict:
    from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
    from gymnasium.envs.mujoco.hopper_v5 import HopperEnv
    from gymnasium.envs.mujoco.humanoid_v5 import HumanoidEnv
    from gymnasium.envs.mujoco.swimmer_v5 import SwimmerEnv
    from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv

    return {
        "Swimmer-v5": (SwimmerEnv, _swimmer),
        "Hopper-v5": (HopperEnv, _hopper),
        "HalfCheetah-v5": (HalfCheetahEnv, _half_cheetah),
        "Walker2d-v5": (Walker2dEnv, _walker2d),
        "Humanoid-v5": (HumanoidEnv, _humanoid),
    }


def lean_step_for(gym_env, env_id: str) -> StepFn | None:
    """The lean step for `gym_env` (as `gym.make` built it for `env_id`), or None where
    Gymnasium's own step must stay: another task, a render mode, other wrappers."""
    if env_id not in LEAN_ENV_IDS:
        return None
    from gymnasium.wrappers import OrderEnforcing, TimeLimit

    if type(gym_env) is not TimeLimit or type(gym_env.env) is not OrderEnforcing:
        return None
    task = gym_env.env.env
    if env_id in _DM_SWIMMER_IDS:
        return _dm_swimmer(task, gym_env)
    cls, build = _task_classes()[env_id]
    if type(task) is not cls or task.render_mode is not None:
        return None
    return build(task, gym_env)  # None where the task's options are not the ones written here


def _cost(task, action):
    # control_cost: `self._ctrl_cost_weight * np.sum(np.square(action))`
    squares = _square(action)
    total = _add_reduce(squares, axis=None) if type(squares) is _ndarray else np.sum(squares)
    return task._ctrl_cost_weight * total


def _check(action, nu: int) -> None:
    # do_simulation's check, message and all (an ndarray of shape (nu,) passes at once)
    if type(action) is _ndarray and action.shape == (nu,):
        return
    if _shape(action) != (nu,):
        raise ValueError(
            f"Action dimension mismatch. Expected {(nu,)}, found {np.array(action).shape}"
        )


def _clip10(values: list) -> list:
    # np.clip(v, -10, 10): the bound where the value is past it, else the value (NaN stays)
    return [-10.0 if x < -10.0 else (10.0 if x > 10.0 else x) for x in values]


class _Sim:
    """The task's MjModel/MjData and views of them, rebuilt should the task ever swap them."""

    __slots__ = ("task", "model", "data", "qpos", "qvel", "ctrl", "nu", "frame_skip", "dt")

    def __init__(self, task):
        self.task = task
        self.frame_skip = task.frame_skip
        self.bind()

    def bind(self) -> None:
        task = self.task
        self.model, self.data = task.model, task.data
        self.qpos, self.qvel, self.ctrl = self.data.qpos, self.data.qvel, self.data.ctrl
        self.nu = self.model.nu
        self.dt = self.model.opt.timestep * self.frame_skip  # MujocoEnv.dt, computed once

    def current(self) -> _Sim:
        task = self.task
        if task.data is not self.data or task.model is not self.model:
            self.bind()
        return self


def _simulate(s: _Sim, action) -> None:
    """The task's `do_simulation`: the action checked, `frame_skip` MuJoCo steps, then
    `mj_rnePostConstraint`."""
    _check(action, s.nu)
    s.ctrl[:] = action
    _mj_step(s.model, s.data, nstep=s.frame_skip)
    _mj_rne_post_constraint(s.model, s.data)


def _advance(s: _Sim, action) -> float:
    """`_simulate` and the x velocity over it, `(after - before) / dt`."""
    qpos = s.qpos
    x_position_before = qpos[0]
    _simulate(s, action)
    return (qpos[0] - x_position_before) / s.dt


def _count_step(limit) -> bool:
    """TimeLimit's bookkeeping: one more step; truncated once the limit is reached."""
    limit._elapsed_steps += 1
    return limit._elapsed_steps >= limit._max_episode_steps


def _hopper(task, limit) -> StepFn:
    sim = _Sim(task)

    def step(action):
        s = sim.current()
        x_velocity = _advance(s, action)

        position, velocity = s.qpos.tolist(), s.qvel.tolist()
        # is_healthy, once: state_vector()[2:], z and angle, each in its range
        min_state, max_state = task._healthy_state_range
        min_z, max_z = task._healthy_z_range
        min_angle, max_angle = task._healthy_angle_range
        healthy_state = True
        for x in position[2:] + velocity:
            if not (min_state < x < max_state):
                healthy_state = False
                break
        z, angle = position[1], position[2]
        is_healthy = healthy_state and (min_z < z < max_z) and (min_angle < angle < max_angle)

        if task._exclude_current_positions_from_observation:
            position = position[1:]
        observation = _array(position + _clip10(velocity))

        forward_reward = task._forward_reward_weight * x_velocity
        healthy_reward = is_healthy * task._healthy_reward
        rewards = forward_reward + healthy_reward
        costs = _cost(task, action)
        reward = rewards - costs
        terminated = (not is_healthy) and task._terminate_when_unhealthy

        truncated = _count_step(limit)
        return observation, float(reward), bool(terminated), truncated

    return step


def _walker2d(task, limit) -> StepFn:
    sim = _Sim(task)

    def step(action):
        s = sim.current()
        x_velocity = _advance(s, action)

        position = s.qpos.tolist()
        # is_healthy, once: z and angle only (no state range, unlike Hopper)
        z, angle = position[1], position[2]
        min_z, max_z = task._healthy_z_range
        min_angle, max_angle = task._healthy_angle_range
        is_healthy = (min_z < z < max_z) and (min_angle < angle < max_angle)

        if task._exclude_current_positions_from_observation:
            position = position[1:]
        observation = _array(position + _clip10(s.qvel.tolist()))

        forward_reward = task._forward_reward_weight * x_velocity
        healthy_reward = is_healthy * task._healthy_reward
        rewards = forward_reward + healthy_reward
        costs = _cost(task, action)
        reward = rewards - costs
        terminated = (not is_healthy) and task._terminate_when_unhealthy

        truncated = _count_step(limit)
        return observation, float(reward), bool(terminated), truncated

    return step


def _never_unhealthy(task, limit, excluded: int) -> StepFn:
    """HalfCheetah's and Swimmer's step: no health check, the observation leaves out the first
    `excluded` positions (x; Swimmer x and y) when the task says so."""
    sim = _Sim(task)

    def step(action):
        s = sim.current()
        # Swimmer differences (x, y) and divides: per element, the same IEEE operations as on x
        x_velocity = _advance(s, action)

        qpos = s.qpos
        position = qpos[excluded:] if task._exclude_current_positions_from_observation else qpos
        observation = _concatenate((position, s.qvel))

        forward_reward = task._forward_reward_weight * x_velocity
        ctrl_cost = _cost(task, action)
        reward = forward_reward - ctrl_cost

        truncated = _count_step(limit)
        return observation, float(reward), False, truncated

    return step


def _half_cheetah(task, limit) -> StepFn:
    return _never_unhealthy(task, limit, excluded=1)


def _swimmer(task, limit) -> StepFn:
    return _never_unhealthy(task, limit, excluded=2)


class _HumanoidSim(_Sim):
    """`_Sim` with the views Humanoid's step reads: the parts of the observation (bodies 1 on),
    the masses and centres `mass_center` weighs, and `cfrc_ext` for the contact cost."""

    __slots__ = ("obs_parts", "mass", "total_mass", "xipos", "cfrc_ext")

    def bind(self) -> None:
        super().bind()
        data, model = self.data, self.model
        self.obs_parts = (
            data.qpos[2:],
            data.qvel,
            data.cinert[1:].reshape(-1),
            data.cvel[1:].reshape(-1),
            data.qfrc_actuator[6:],
            data.cfrc_ext[1:].reshape(-1),
        )
        self.mass, self.xipos, self.cfrc_ext = model.body_mass, data.xipos, data.cfrc_ext
        self.total_mass = model.body_mass.sum()  # mass_center's denominator, the same each call

    def x_mass_center(self) -> float:
        # mass_center: einsum("b,bj->j", body_mass, xipos) / body_mass.sum(), x component
        return _einsum("b,bj->j", self.mass, self.xipos)[0] / self.total_mass


def _humanoid(task, limit) -> StepFn | None:
    """Humanoid's step: the x velocity of the centre of mass (`mass_center`'s einsum, before and
    after), the observation of qpos[2:], qvel, cinert, cvel, qfrc_actuator and cfrc_ext (bodies
    1 on), the control cost on `data.ctrl` and the contact cost on `cfrc_ext`, clipped to its
    range. Only for the default observation (every part included, x and y left out)."""
    if not (
        task._exclude_current_positions_from_observation
        and task._include_cinert_in_observation is True
        and task._include_cvel_in_observation is True
        and task._include_qfrc_actuator_in_observation is True
        and task._include_cfrc_ext_in_observation is True
    ):
        return None
    sim = _HumanoidSim(task)

    def step(action):
        s = sim.current()
        before = s.x_mass_center()  # no side effects: a bad action still raises, unstepped
        _simulate(s, action)
        x_velocity = (s.x_mass_center() - before) / s.dt

        observation = _concatenate(s.obs_parts)

        min_z, max_z = task._healthy_z_range
        is_healthy = min_z < s.qpos[2] < max_z
        forward_reward = task._forward_reward_weight * x_velocity
        healthy_reward = is_healthy * task._healthy_reward
        rewards = forward_reward + healthy_reward
        ctrl_cost = _cost(task, s.ctrl)  # control_cost reads data.ctrl, not the action
        contact = task._contact_cost_weight * _add_reduce(_square(s.cfrc_ext), axis=None)
        min_cost, max_cost = task._contact_cost_range
        # np.clip(contact, min_cost, max_cost): maximum, then minimum (a NaN stays)
        contact = min_cost if contact < min_cost else contact
        contact = max_cost if contact > max_cost else contact
        reward = rewards - (ctrl_cost + contact)
        terminated = (not is_healthy) and task._terminate_when_unhealthy

        truncated = _count_step(limit)
        return observation, float(reward), bool(terminated), truncated

    return step


# -- dm_control's swimmer, through Shimmy -----------------------------------------------------
_VALUE_AT_MARGIN = 0.1  # dm_control's rewards._DEFAULT_VALUE_AT_MARGIN (checked when built)
# _sigmoids' long tail: scale = np.sqrt(1/value_at_1 - 1), a numpy float64 as there
_LONG_TAIL_SCALE = np.sqrt(1 / _VALUE_AT_MARGIN - 1)
_f64 = np.float64


def _long_tail_reward(x, upper) -> float:
    """`rewards.tolerance(x, bounds=(0, upper), margin=5 * upper, sigmoid='long_tail')` for the
    float64 scalars x (a norm) and upper (a geom size): the same operations on the same numpy
    scalar types (`5 * upper`, `x - upper`, the division, `** 2`, `+ 1`, `1 / ...`), without
    the 0-d arrays `np.where` makes; a NaN x gives NaN, as there."""
    margin = 5 * upper
    if 0 <= x and x <= upper:  # in_bounds
        return 1.0
    # d = np.where(x < lower, lower - x, x - upper) / margin
    d = _f64(0 - x if x < 0 else x - upper) / margin
    return float(1 / ((d * _LONG_TAIL_SCALE) ** 2 + 1))


def _dm_swimmer(shimmy_env, limit) -> StepFn | None:
    """The swimmer's step of dm_control through Shimmy (module doc), for the suite's own
    `control.Environment` of the swimmer task with its dict observation, no reward colours and
    no render mode; None otherwise."""
    from dm_control.rl import control
    from dm_control.suite import swimmer
    from dm_control.utils import rewards
    from shimmy.dm_control_compatibility import DmControlCompatibilityV0

    if type(shimmy_env) is not DmControlCompatibilityV0 or shimmy_env.render_mode is not None:
        return None
    dm_env = shimmy_env._env
    if type(dm_env) is not control.Environment or dm_env._flat_observation:
        return None
    task, physics = dm_env.task, dm_env.physics
    if type(task) is not swimmer.Swimmer or type(physics) is not swimmer.Physics:
        return None
    if task.visualize_reward:  # after_step would recolour the model from the reward
        return None
    keys = tuple(sorted(shimmy_env.observation_space.spaces))
    if keys != ("body_velocities", "joints", "to_target"):  # `Env` concatenates in this order
        return None
    if rewards._DEFAULT_VALUE_AT_MARGIN != _VALUE_AT_MARGIN:  # the tail written below
        return None
    n_sub_steps = dm_env._n_sub_steps
    model = physics.model
    target = model.name2id("target", "geom")
    nose = model.name2id("nose", "geom")
    head = model.name2id("head", "body")
    bound: dict = {}

    def bind() -> dict:
        data = physics.data
        sensors = data.sensordata
        # body_velocities: sensordata[12:].reshape((-1, 6))[:, [0, 1, 5]].ravel(), as indices
        rows = np.arange(len(sensors[12:]) // 6)
        velocity = (12 + 6 * rows[:, None] + np.array([0, 1, 5])).ravel()
        bound.update(
            data=data,
            ctrl=data.ctrl,
            qpos=data.qpos,
            sensors=sensors,
            velocity=velocity,
            geom_xpos=data.geom_xpos,
            xmat=data.xmat,
            geom_size=model.geom_size,
        )
        return bound

    bind()
    copyto = np.copyto
    norm = np.linalg.norm

    def step(action):
        if dm_env._reset_next_step or dm_env._physics is not physics:
            # dm_control resets instead of stepping (its time limit was reached): Shimmy's path
            obs, reward, terminated, truncated, _ = limit.step(action)
            return flatten_obs(obs, keys), float(reward), bool(terminated), bool(truncated)
        b = bound if physics.data is bound["data"] else bind()
        # before_step: `continuous_actions` of legacy action objects, then set_control
        copyto(b["ctrl"], getattr(action, "continuous_actions", action))
        physics.step(n_sub_steps)
        # after_step recolours nothing (visualize_reward is off)

        # nose_to_target: (geom_xpos[target] - geom_xpos[nose]).dot(xmat[head] as 3 x 3)[:2]
        geom_xpos = b["geom_xpos"]
        to_target = (geom_xpos[target] - geom_xpos[nose]).dot(b["xmat"][head].reshape(3, 3))[:2]

        # get_reward: rewards.tolerance(norm, bounds=(0, size), margin=5 * size, 'long_tail')
        reward = _long_tail_reward(norm(to_target), b["geom_size"][target, 0])

        # get_observation, keys in sorted order: body_velocities, joints (qpos[3:]), to_target
        observation = _concatenate((b["sensors"][b["velocity"]], b["qpos"][3:], to_target))

        # control.Environment's step count and limit (discount 1.0: Shimmy's truncation), then
        # TimeLimit's; the swimmer never terminates (get_termination is None)
        dm_env._step_count += 1
        truncated = dm_env._step_count >= dm_env._step_limit
        if truncated:
            dm_env._reset_next_step = True
        truncated = _count_step(limit) or truncated
        return observation, reward, False, truncated

    return step
