"""MuJoCo Warp worlds: a whole population's episodes as the worlds of one batched model.

`WarpWorlds(env_id, nworld, device)` steps `nworld` episodes of one Gymnasium MuJoCo v5 task on
one device (Warp's CPU device or a CUDA GPU). The physics is MuJoCo Warp (`mujoco_warp`, float32)
on Gymnasium's own MJCF file; observations, rewards, health checks and reset noise are written
from Gymnasium's v5 definitions (`gymnasium/envs/mujoco/*_v5.py`, their default keyword
arguments) and computed in torch on the device, on zero-copy views of the Warp arrays
(`wp.to_torch`). Per step nothing crosses to the host: the caller hands actions as a tensor on
the device and gets observations, rewards and termination flags back as tensors there.

What is the same as Gymnasium: the model file, `frame_skip` MuJoCo steps per env step, the
observation layout, every reward term and weight, the health checks, the reset-noise scales and
distributions, and the order of evaluation (MuJoCo's step leaves positions integrated but the
derived quantities, such as Humanoid's `xipos`, `cinert`, `cvel` and `qfrc_actuator`, from the
last substep's forward pass, and Gymnasium then calls `mj_rnePostConstraint` for `cfrc_ext`;
`mjw.step` and `mjw.rne_postconstraint` do the same).

What differs, by necessity:

* Precision: MuJoCo Warp computes in float32 (C MuJoCo in float64), and raises the solver
  tolerance to 1e-6. Observations and rewards are computed from the float32 state in float64.
  One env step from the same state agrees with Gymnasium to about 1e-4 (see
  tests/test_warp_engine.py for the figures per task); over many steps the difference grows
  as it does between two C MuJoCo runs whose start states differ by rounding, faster on tasks
  with contacts, so episodes are statistically, not bitwise, the same.
* Humanoid-v5's model asks for MuJoCo's PGS solver, which MuJoCo Warp does not have; the
  worlds use Newton (the solver MuJoCo Warp recommends, which solves the same convex problem).
* Reset noise is drawn on the device by torch from the same distributions (uniform, or
  Gaussian for HalfCheetah's velocities); the numbers differ from Gymnasium's numpy streams.

Episodes end at different times. `reset(mask, noise)` resets only the worlds in `mask`
(MuJoCo Warp's masked `reset_data`, then the task's reset noise): the other worlds' state, and
what they do next, is unchanged bit for bit. The rollout (`odepolicy.rollout_warp`) masks
finished worlds rather than refilling them.

This module imports `warp` and `mujoco_warp` (the optional extra `pip install -e ".[warp]"`);
`odepolicy.envs.require_warp` checks for them first with a one-line error.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import mujoco
import numpy as np
import torch
import warp as wp

# Warp's banner and its "module loaded" lines on every first use; warnings still show.
wp.config.log_level = wp.LOG_WARNING

import mujoco_warp as mjw  # noqa: E402

from .. import OdepolicyError  # noqa: E402
from . import EnvSpec  # noqa: E402

__all__ = ["TASKS", "WarpTask", "WarpWorlds", "warp_device", "torch_device"]


@dataclass(frozen=True)
class WarpTask:
    """One Gymnasium v5 task's definition (its constructor's default keyword arguments)."""

    env_id: str
    xml_file: str
    frame_skip: int
    reset_noise_scale: float
    skip_qpos: int  # leading qpos entries left out of the observation (x, or x and y)
    forward_weight: float
    ctrl_weight: float
    qvel_noise: str = "uniform"  # "uniform" in [-s, s] or "normal" with std s
    healthy_reward: float = 0.0
    terminate: bool = False
    clip_qvel: float | None = None  # Hopper and Walker2d clip velocities in the observation
    max_episode_steps: int = 1000
    # Warp's buffers per world: contacts and constraint rows (MuJoCo Warp's guesses are small
    # for a humanoid lying on the floor).
    nconmax: int = 32
    njmax: int = 128


TASKS: dict[str, WarpTask] = {
    t.env_id: t
    for t in (
        WarpTask("HalfCheetah-v5", "half_cheetah.xml", 5, 0.1, 1, 1.0, 0.1, qvel_noise="normal"),
        WarpTask(
            "Hopper-v5", "hopper.xml", 4, 5e-3, 1, 1.0, 1e-3,
            healthy_reward=1.0, terminate=True, clip_qvel=10.0,
        ),
        WarpTask(
            "Walker2d-v5", "walker2d_v5.xml", 4, 5e-3, 1, 1.0, 1e-3,
            healthy_reward=1.0, terminate=True, clip_qvel=10.0,
        ),
        WarpTask("Swimmer-v5", "swimmer.xml", 4, 0.1, 2, 1.0, 1e-4),
        WarpTask(
            "Humanoid-v5", "humanoid.xml", 5, 1e-2, 2, 1.25, 0.1,
            healthy_reward=5.0, terminate=True, nconmax=64, njmax=256,
        ),
    )
}  # fmt: skip

# Health checks (Gymnasium v5 defaults; the bounds are strict, as there).
_HOPPER_STATE, _HOPPER_Z, _HOPPER_ANGLE = (-100.0, 100.0), 0.7, (-0.2, 0.2)
_WALKER_Z, _WALKER_ANGLE = (0.8, 2.0), (-1.0, 1.0)
_HUMANOID_Z = (1.0, 2.0)
_CONTACT_COST_WEIGHT, _CONTACT_COST_MAX = 5e-7, 10.0


def torch_device(device: str | torch.device) -> torch.device:
    """The torch device of a run's `device` setting: cpu, cuda[:N] or auto."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise OdepolicyError(f"unknown device {device!r} (use cpu, cuda or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OdepolicyError("device 'cuda' requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def warp_device(device: torch.device) -> str:
    """Warp's name for a torch device: "cpu" or "cuda:N"."""
    return "cpu" if device.type == "cpu" else f"cuda:{device.index or 0}"


def gymnasium_model(task: WarpTask) -> mujoco.MjModel:
    """The task's MjModel from Gymnasium's own asset, made loadable by MuJoCo Warp."""
    import gymnasium.envs.mujoco as gym_mujoco

    from . import _quiet_known_notices

    _quiet_known_notices()  # HalfCheetah's `settotalmass` notice, as for Gymnasium's envs
    path = os.path.join(os.path.dirname(gym_mujoco.__file__), "assets", task.xml_file)
    model = mujoco.MjModel.from_xml_path(path)
    if model.opt.solver == mujoco.mjtSolver.mjSOL_PGS:  # Humanoid: see the module doc
        model.opt.solver = mujoco.mjtSolver.mjSOL_NEWTON
    return model


class WarpWorlds:
    """`nworld` episodes of `env_id` as worlds of one MuJoCo Warp model on `device`.

    Tensors in and out live on `self.device`: actions [nworld, act_dim] (any float dtype),
    observations [nworld, obs_dim] and rewards [nworld] in float64, flags as bool."""

    def __init__(self, env_id: str, nworld: int, device: str | torch.device = "cpu"):
        self.task = task = TASKS[env_id]
        self.env_id = env_id
        self.nworld = int(nworld)
        self.device = torch_device(device)
        self.wp_device = warp_device(self.device)
        self.mjm = gymnasium_model(task)
        self.dt = float(self.mjm.opt.timestep) * task.frame_skip
        self.nq, self.nv, self.nu = self.mjm.nq, self.mjm.nv, self.mjm.nu
        with wp.ScopedDevice(self.wp_device):
            self.m = mjw.put_model(self.mjm)
            self.d = mjw.make_data(
                self.mjm, nworld=self.nworld, nconmax=task.nconmax, njmax=task.njmax
            )
        d = self.d
        self.qpos, self.qvel = wp.to_torch(d.qpos), wp.to_torch(d.qvel)
        self.ctrl = wp.to_torch(d.ctrl)
        self.humanoid = env_id.startswith("Humanoid")
        if self.humanoid:
            self.body_mass = torch.as_tensor(self.mjm.body_mass, device=self.device)
            self.xipos = wp.to_torch(d.xipos)
            self.cinert = wp.to_torch(d.cinert)
            self.cvel = wp.to_torch(d.cvel)
            self.qfrc_actuator = wp.to_torch(d.qfrc_actuator)
            self.cfrc_ext = wp.to_torch(d.cfrc_ext)
        self.init_qpos = torch.as_tensor(self.mjm.qpos0, dtype=torch.float64, device=self.device)
        ctrl_range = torch.as_tensor(self.mjm.actuator_ctrlrange, device=self.device)
        self.action_low = ctrl_range[:, 0].to(torch.float64)
        self.action_high = ctrl_range[:, 1].to(torch.float64)
        self.obs_dim = int(self._observe().shape[1])
        self.obs = torch.zeros(self.nworld, self.obs_dim, dtype=torch.float64, device=self.device)
        self.position = torch.zeros(self.nworld, 2, dtype=torch.float64, device=self.device)
        self._graph = None

    # -- streams and graphs --------------------------------------------------------------------
    def stream(self):
        """A context in which torch and Warp share one CUDA stream (so their work is ordered
        without host synchronisation); a no-op on the CPU."""
        if self.device.type != "cuda":
            return contextlib.nullcontext()
        stream = wp.get_stream(self.wp_device)
        return torch.cuda.stream(wp.stream_to_torch(stream))

    def _physics_step(self) -> None:
        for _ in range(self.task.frame_skip):
            mjw.step(self.m, self.d)
        if self.humanoid:  # cfrc_ext, as Gymnasium's mj_rnePostConstraint after the steps
            mjw.rne_postconstraint(self.m, self.d)

    def physics_step(self) -> None:
        """`frame_skip` MuJoCo Warp steps of every world with the current controls: on a GPU
        captured once as a CUDA graph and replayed (MuJoCo Warp's solver loop needs a graph
        to run without host round trips)."""
        with wp.ScopedDevice(self.wp_device):
            if self.device.type != "cuda":
                self._physics_step()
                return
            if self._graph is None:
                with wp.ScopedCapture() as capture:
                    self._physics_step()
                self._graph = capture.graph
            wp.capture_launch(self._graph)

    # -- the task ------------------------------------------------------------------------------
    def _observe(self) -> torch.Tensor:
        """Gymnasium's `_get_obs` on every world, float64."""
        t = self.task
        parts = [self.qpos[:, t.skip_qpos :], self.qvel]
        if t.clip_qvel is not None:
            parts[1] = self.qvel.clamp(-t.clip_qvel, t.clip_qvel)
        if self.humanoid:  # include_cinert / cvel / qfrc_actuator / cfrc_ext: all True in v5
            n = self.nworld
            parts += [
                self.cinert[:, 1:].reshape(n, -1),
                self.cvel[:, 1:].reshape(n, -1),
                self.qfrc_actuator[:, 6:],
                self.cfrc_ext[:, 1:].reshape(n, -1),
            ]
        return torch.cat([p.to(torch.float64) for p in parts], dim=1)

    def _position(self) -> torch.Tensor:
        """What the forward reward differentiates: qpos[0] (x, y for Swimmer's info), or
        Humanoid's mass centre from `xipos` (Gymnasium's `mass_center`)."""
        if self.humanoid:
            xipos = self.xipos.to(torch.float64)
            com = (self.body_mass[None, :, None] * xipos).sum(1) / self.body_mass.sum()
            return com[:, :2]
        return self.qpos[:, :2].to(torch.float64)

    def _healthy(self) -> torch.Tensor:
        qpos = self.qpos
        if self.env_id == "Hopper-v5":
            z, angle = qpos[:, 1], qpos[:, 2]
            lo, hi = _HOPPER_STATE
            state = torch.cat([qpos[:, 2:], self.qvel], dim=1)
            return (
                ((lo < state) & (state < hi)).all(1)
                & (_HOPPER_Z < z)
                & (_HOPPER_ANGLE[0] < angle)
                & (angle < _HOPPER_ANGLE[1])
            )
        if self.env_id == "Walker2d-v5":
            z, angle = qpos[:, 1], qpos[:, 2]
            return (
                (_WALKER_Z[0] < z)
                & (z < _WALKER_Z[1])
                & (_WALKER_ANGLE[0] < angle)
                & (angle < _WALKER_ANGLE[1])
            )
        if self.humanoid:
            z = qpos[:, 2]
            return (_HUMANOID_Z[0] < z) & (z < _HUMANOID_Z[1])
        return torch.ones(self.nworld, dtype=torch.bool, device=self.device)

    def _reward(self, before: torch.Tensor, after: torch.Tensor, healthy, action) -> torch.Tensor:
        t = self.task
        x_velocity = (after[:, 0] - before[:, 0]) / self.dt
        reward = t.forward_weight * x_velocity
        if t.healthy_reward:
            reward = reward + t.healthy_reward * healthy.to(torch.float64)
        # Humanoid's control cost reads data.ctrl, the others the action: the same numbers
        # (our actions are clipped to the box), but the ctrl is what the physics saw.
        ctrl = self.ctrl.to(torch.float64) if self.humanoid else action
        reward = reward - t.ctrl_weight * (ctrl * ctrl).sum(1)
        if self.humanoid:
            forces = self.cfrc_ext.to(torch.float64).reshape(self.nworld, -1)
            contact = _CONTACT_COST_WEIGHT * (forces * forces).sum(1)
            reward = reward - contact.clamp(max=_CONTACT_COST_MAX)
        return reward

    # -- the interface -------------------------------------------------------------------------
    @property
    def spec(self) -> EnvSpec:
        return EnvSpec(
            env_id=self.env_id,
            obs_dim=self.obs_dim,
            act_dim=self.nu,
            action_low=tuple(self.action_low.tolist()),
            action_high=tuple(self.action_high.tolist()),
            obs_keys=(),
            max_episode_steps=self.task.max_episode_steps,
        )

    def reset_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n rows of the task's reset noise [n, nq + nv] (float64, on the device): qpos
        offsets uniform in [-s, s]; qvel uniform too, or Gaussian with std s (HalfCheetah)."""
        s, nq, nv = self.task.reset_noise_scale, self.nq, self.nv
        kw = {"generator": generator, "device": self.device, "dtype": torch.float64}
        qpos = (torch.rand(n, nq, **kw) * 2.0 - 1.0) * s
        if self.task.qvel_noise == "normal":
            qvel = torch.randn(n, nv, **kw) * s
        else:
            qvel = (torch.rand(n, nv, **kw) * 2.0 - 1.0) * s
        return torch.cat([qpos, qvel], dim=1)

    def reset(self, noise: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Start new episodes in the worlds of `mask` (bool [nworld]; None: all) at
        qpos0 + noise[:, :nq], noise[:, nq:] (rows of `reset_noise`, one per world). The
        other worlds are left exactly as they were. Returns the observations [nworld,
        obs_dim]."""
        if mask is None:
            mask = torch.ones(self.nworld, dtype=torch.bool, device=self.device)
        noise = noise.to(self.device, torch.float64)
        with wp.ScopedDevice(self.wp_device):
            mjw.reset_data(self.m, self.d, wp.from_torch(mask.contiguous(), dtype=wp.bool))
        rows = mask[:, None]
        qpos = (self.init_qpos + noise[:, : self.nq]).to(self.qpos.dtype)
        qvel = noise[:, self.nq :].to(self.qvel.dtype)
        self.qpos.copy_(torch.where(rows, qpos, self.qpos))
        self.qvel.copy_(torch.where(rows, qvel, self.qvel))
        if self.humanoid:
            # Gymnasium's mj_forward after set_state gives the observation its cinert and cvel
            # and the mass centre its xipos. Only these kinematic quantities are needed (the
            # next step's forward pass recomputes everything from qpos and qvel); they are
            # recomputed for every world, but the other worlds' observations and positions
            # are kept from before, so nothing they report or do changes.
            with wp.ScopedDevice(self.wp_device):
                mjw.kinematics(self.m, self.d)
                mjw.com_pos(self.m, self.d)
                mjw.com_vel(self.m, self.d)
        self.obs = torch.where(rows, self._observe(), self.obs)
        self.position = torch.where(rows, self._position(), self.position)
        return self.obs

    def step(self, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One env step of every world: (observations, rewards, terminated)."""
        action = action.to(self.device, torch.float64)
        self.ctrl.copy_(action.to(self.ctrl.dtype))
        self.physics_step()
        return self.after_physics(action)

    def after_physics(self, action: torch.Tensor):
        """The task's half of `step`, once the physics has stepped: Gymnasium's observation,
        reward and termination from the worlds' data (tests feed it C MuJoCo's data)."""
        before = self.position
        self.position = self._position()
        healthy = self._healthy()
        reward = self._reward(before, self.position, healthy, action)
        self.obs = self._observe()
        if self.task.terminate:
            terminated = ~healthy
        else:
            terminated = torch.zeros(self.nworld, dtype=torch.bool, device=self.device)
        return self.obs, reward, terminated

    def state(self) -> dict[str, np.ndarray]:
        """The worlds' physics state and task bookkeeping on the host (for tests)."""
        d = self.d
        arrays = {
            "qpos": d.qpos, "qvel": d.qvel, "ctrl": d.ctrl, "act": d.act, "time": d.time,
            "qacc_warmstart": d.qacc_warmstart,
        }  # fmt: skip
        out = {k: v.numpy().copy() for k, v in arrays.items()}
        out["obs"] = self.obs.cpu().numpy().copy()
        out["position"] = self.position.cpu().numpy().copy()
        return out
