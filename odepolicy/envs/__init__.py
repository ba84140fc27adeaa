"""One interface over Gymnasium MuJoCo tasks and DeepMind Control Suite tasks (`physics:
mujoco`, on the CPU), and the MuJoCo Warp engine (`physics: warp`, `odepolicy.envs.warp`).

`make_env` returns an `Env` with float64 flat observations, the bounds of the action box, and the
Gymnasium step contract (terminated and truncated kept apart). dm_control tasks come through
Shimmy's Gymnasium ids (`dm_control/<domain>-<task>-v0`); their Dict observations are flattened
in sorted key order, which is recorded (`obs_keys`) so a checkpoint can refuse a mismatch.

This layer also owns the environments' console noise: third-party deprecation notices that say
nothing about the user's run (MuJoCo's `settotalmass` notice, which arrives either through our
MuJoCo warning callback or, once dm_control is imported, through dm_control's absl logging) are
dropped in one place, `_quiet_known_notices`; every other warning still shows.

`physics: warp` runs Gymnasium's v5 locomotion tasks (`WARP_ENV_IDS`) as worlds of one batched
MuJoCo Warp model on a device (`odepolicy.envs.warp.WarpWorlds`). That module imports Warp, an
optional extra; `require_warp` checks the id and the extra first, with a one-line error.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys
from dataclasses import dataclass

import numpy as np

from .. import OdepolicyError

__all__ = [
    "Env",
    "EnvSpec",
    "make_env",
    "env_spec",
    "known_env_ids",
    "PHYSICS",
    "WARP_ENV_IDS",
    "require_warp",
]

PHYSICS = ("mujoco", "warp")  # config.PHYSICS must agree (tests/test_structure.py)
# The tasks `physics: warp` has (odepolicy.envs.warp.TASKS), written from Gymnasium's v5 files.
WARP_ENV_IDS = ("HalfCheetah-v5", "Hopper-v5", "Walker2d-v5", "Swimmer-v5", "Humanoid-v5")
WARP_INSTALL_HINT = 'pip install -e ".[warp]"'

_DM_PREFIX = "dm_control/"
_DM_DEFAULT_STEPS = 1000


# Gymnasium's half_cheetah.xml and dm_control's cheetah.xml use a compiler attribute MuJoCo 3.x
# deprecates; MuJoCo repeats the notice for every model compiled (one per environment built,
# hundreds per ES iteration), and there is nothing a user of this library can do about it.
_KNOWN_NOTICES = ("settotalmass",)


def _is_known_notice(message: str) -> bool:
    return any(notice in message for notice in _KNOWN_NOTICES)


def _quiet_mujoco_warning(message: str) -> None:
    if not _is_known_notice(message):
        sys.stderr.write(f"MuJoCo warning: {message}\n")


class _KnownNoticeFilter(logging.Filter):
    """Drops the known notices from a logger; passes every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not _is_known_notice(record.getMessage())


def _quiet_known_notices() -> None:
    """Install the filters (idempotent; each process building environments calls it)."""
    import mujoco

    # Without dm_control, MuJoCo's warnings reach our callback. Importing dm_control replaces
    # any callback with one that logs through absl, so the absl logger gets the same filter.
    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_quiet_mujoco_warning)
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _KnownNoticeFilter) for f in absl_logger.filters):
        absl_logger.addFilter(_KnownNoticeFilter())


def _import_gym():
    # Rendering needs a GL backend chosen before mujoco is first imported.
    os.environ.setdefault("MUJOCO_GL", "egl")
    import gymnasium as gym

    _quiet_known_notices()
    return gym


def _register_dm_control() -> None:
    try:
        import shimmy  # noqa: F401  (registers the dm_control/* ids on import)
    except ImportError as exc:  # pragma: no cover - shimmy is a declared dependency
        raise OdepolicyError(f"dm_control tasks need shimmy[dm-control]: {exc}") from exc


def known_env_ids() -> list[str]:
    gym = _import_gym()
    if any(k.startswith(_DM_PREFIX) for k in gym.registry):
        return sorted(gym.registry)
    _register_dm_control()
    return sorted(gym.registry)


def flatten_obs(obs, keys: tuple[str, ...]) -> np.ndarray:
    """A float64 vector: a Dict observation's values concatenated in `keys` order, or an array
    observation flattened."""
    if isinstance(obs, dict):
        return np.concatenate([np.asarray(obs[k], dtype=np.float64).ravel() for k in keys])
    return np.asarray(obs, dtype=np.float64).ravel()


@dataclass(frozen=True)
class EnvSpec:
    """What a policy and a checkpoint need to know about an environment."""

    env_id: str
    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    obs_keys: tuple[str, ...]
    max_episode_steps: int | None


class Env:
    """A thin wrapper: flat float64 observations, `reset(seed)` and `step(action)`.

    Gymnasium's Swimmer, Hopper, HalfCheetah, Walker2d and Humanoid v5 and dm_control's
    swimmer6 and swimmer15 (built by `make_env`, no render mode) step through a lean step
    (`odepolicy.envs.lean`) that returns bit for bit what Gymnasium's (Shimmy's) step returns,
    with less Python around MuJoCo; `lean=False` keeps Gymnasium's step for them too. `lean`
    says which one this environment uses."""

    def __init__(self, env, env_id: str, obs_keys: tuple[str, ...], lean: bool = True):
        self.gym_env = env
        self.env_id = env_id
        self.obs_keys = obs_keys
        space = env.action_space
        self.action_low = np.asarray(space.low, dtype=np.float64)
        self.action_high = np.asarray(space.high, dtype=np.float64)
        self.act_dim = int(np.prod(space.shape))
        self.max_episode_steps = getattr(env.spec, "max_episode_steps", None)
        obs, _ = env.reset(seed=0)
        self.obs_dim = int(self._flatten(obs).shape[0])
        self._lean_step = None
        if lean:
            from .lean import lean_step_for

            self._lean_step = lean_step_for(env, env_id)

    @property
    def lean(self) -> bool:
        """Whether `step` is the lean step (`odepolicy.envs.lean`) rather than Gymnasium's."""
        return self._lean_step is not None

    def _flatten(self, obs) -> np.ndarray:
        return flatten_obs(obs, self.obs_keys)

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs, _ = self.gym_env.reset(seed=seed)
        return self._flatten(obs)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        if self._lean_step is not None:
            return self._lean_step(action)
        obs, reward, terminated, truncated, _ = self.gym_env.step(action)
        return self._flatten(obs), float(reward), bool(terminated), bool(truncated)

    def render(self):
        return self.gym_env.render()

    def physics(self):
        """The MuJoCo (MjModel, MjData) this environment steps, for rendering and inspection;
        the same pair for Gymnasium MuJoCo tasks and, through Shimmy, dm_control tasks."""
        inner = self.gym_env.unwrapped
        if hasattr(inner, "model") and hasattr(inner, "data"):  # gymnasium MujocoEnv
            return inner.model, inner.data
        dm_env = getattr(inner, "_env", None)  # shimmy's DmControlCompatibilityV0
        physics = getattr(dm_env, "physics", None)
        if physics is None:
            raise OdepolicyError(f"{self.env_id} is not a MuJoCo environment")
        return physics.model.ptr, physics.data.ptr

    def camera_defaults(self) -> dict:
        """The free camera's settings (MjvCamera attributes) the task's authors chose, for a
        model without a camera of its own that follows the agent; {} when they chose none."""
        renderer = getattr(self.gym_env.unwrapped, "mujoco_renderer", None)
        return dict(getattr(renderer, "default_cam_config", None) or {})

    def close(self) -> None:
        self.gym_env.close()

    @property
    def spec(self) -> EnvSpec:
        return EnvSpec(
            env_id=self.env_id,
            obs_dim=self.obs_dim,
            act_dim=self.act_dim,
            action_low=tuple(self.action_low.tolist()),
            action_high=tuple(self.action_high.tolist()),
            obs_keys=self.obs_keys,
            max_episode_steps=self.max_episode_steps,
        )


def make_env(
    env_id: str,
    seed: int | None = None,
    max_episode_steps: int | None = None,
    render_mode: str | None = None,
    lean: bool = True,
) -> Env:
    """Build an environment by Gymnasium id or `dm_control/<domain>-<task>-v0` id.

    Unknown ids raise OdepolicyError naming close matches. dm_control tasks have no episode
    limit in Shimmy's specs; they get the suite's usual 1000 steps unless told otherwise.
    `lean=False` keeps Gymnasium's own step where `Env` would use a lean one (see `Env`).
    """
    gym = _import_gym()
    if env_id.startswith(_DM_PREFIX) or env_id not in gym.registry:
        _register_dm_control()
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise OdepolicyError(f"unknown environment id {env_id!r}{hint}")
    kwargs = {}
    if render_mode is not None:
        kwargs["render_mode"] = render_mode
    if max_episode_steps is None and env_id.startswith(_DM_PREFIX):
        max_episode_steps = _DM_DEFAULT_STEPS
    try:
        env = gym.make(
            env_id, max_episode_steps=max_episode_steps, disable_env_checker=True, **kwargs
        )
    except Exception as exc:  # a registered id that cannot be built here (missing extra)
        raise OdepolicyError(f"cannot build environment {env_id!r}: {exc}") from exc
    space = env.observation_space
    obs_keys: tuple[str, ...] = ()
    if hasattr(space, "spaces") and isinstance(space.spaces, dict):
        obs_keys = tuple(sorted(space.spaces))
    wrapped = Env(env, env_id, obs_keys, lean=lean)
    if seed is not None:
        wrapped.reset(seed=seed)
    return wrapped


def env_spec(env_id: str) -> EnvSpec:
    env = make_env(env_id)
    try:
        return env.spec
    finally:
        env.close()


def require_warp(env_id: str | None = None) -> None:
    """Check that `physics: warp` can run `env_id`: a task it has, and the optional extra
    installed. Raises OdepolicyError (one line) otherwise; imports nothing of Warp's itself
    beyond finding the packages."""
    if env_id is not None and env_id not in WARP_ENV_IDS:
        raise OdepolicyError(
            f"physics: warp has no task {env_id!r}; it has {', '.join(WARP_ENV_IDS)} "
            f"(use physics: mujoco for other environments)"
        )
    import importlib.util

    missing = [m for m in ("warp", "mujoco_warp") if importlib.util.find_spec(m) is None]
    if missing:
        raise OdepolicyError(
            f"physics: warp needs MuJoCo Warp ({', '.join(missing)} not installed): "
            f"{WARP_INSTALL_HINT}"
        )
