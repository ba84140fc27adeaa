"""Evaluate a saved policy: returns over seeded episodes, and optionally a rendered video.

The numbers come from the same `RolloutWorker` path the trainer's evaluation uses, with the same
seeds by default, so they reproduce the `eval_return_mean` logged in progress.csv.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import OdepolicyError
from .checkpoint import load_policy
from .envs import make_env
from .rollout import RolloutTask, RolloutWorker

__all__ = ["evaluate_checkpoint", "record_video"]


def evaluate_checkpoint(
    path,
    episodes: int | None = None,
    seed: int | None = None,
    env_id: str | None = None,
    horizon: int | None = None,
    video: str | None = None,
    fps: int = 30,
    size: tuple[int, int] = (480, 360),
) -> dict:
    policy, theta, normalizer, meta = load_policy(path)
    config = meta["config"]
    env_id = env_id or meta["env"]["env_id"]
    episodes = int(episodes or config["eval_episodes"])
    if episodes < 1:
        raise OdepolicyError("--episodes must be at least 1")
    seed = int(meta["eval_seed"] if seed is None else seed)
    horizon = int(horizon or config["horizon"])
    policy_spec = {"name": meta["policy"]["name"], **meta["policy"]["kwargs"]}
    worker = RolloutWorker(env_id, policy_spec)
    try:
        env_spec = worker.envs[0].spec
        if (env_spec.obs_dim, env_spec.act_dim) != (meta["env"]["obs_dim"], meta["env"]["act_dim"]):
            raise OdepolicyError(
                f"checkpoint was trained on {meta['env']['env_id']} (obs {meta['env']['obs_dim']}, "
                f"act {meta['env']['act_dim']}); {env_id} has obs {env_spec.obs_dim}, "
                f"act {env_spec.act_dim}"
            )
        mean, std = normalizer.mean_std()
        task = RolloutTask(theta, horizon, None, mean, std, seed, normalizer.active_clip)
        results = worker.run(task, list(range(episodes)))
    finally:
        worker.close()
    returns = np.array([r.ret for r in results])
    if video:
        record_video(policy, theta, normalizer, env_id, seed, horizon, video, fps, size)
    return {
        "env_id": env_id,
        "policy": meta["policy"]["name"],
        "returns": returns,
        "mean": float(np.mean(returns)),
        "std": float(np.std(returns)),
        "episodes": episodes,
        "seed": seed,
    }


def record_video(policy, theta, normalizer, env_id, seed, horizon, path, fps=30, size=(480, 360)):
    """Render one episode headless (MUJOCO_GL=egl or osmesa) to an mp4 or gif file."""
    import imageio.v2 as imageio

    path = Path(path)
    if path.suffix.lower() not in (".mp4", ".gif"):
        raise OdepolicyError(f"--video needs a .mp4 or .gif file name, got {path.name}")
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        env = _render_env(env_id, size)
    except Exception as exc:
        raise OdepolicyError(
            f"cannot render {env_id} headless ({exc}); try MUJOCO_GL=osmesa"
        ) from None
    frames = []
    try:
        obs = env.reset(seed=seed)
        prepared = policy.prepare(theta[None, :])
        for _ in range(horizon):
            frames.append(np.asarray(env.render()))
            action = policy.step(prepared, normalizer.normalize(obs[None, :]))[0]
            obs, _, terminated, truncated = env.step(action)
            if terminated or truncated:
                break
        frames.append(np.asarray(env.render()))
    finally:
        env.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
    else:
        imageio.mimsave(path, frames, fps=fps, macro_block_size=1)
    return path


def _render_env(env_id: str, size: tuple[int, int]):
    width, height = size
    if env_id.startswith("dm_control/"):
        env = make_env(env_id, render_mode="rgb_array")
        return env
    import gymnasium as gym

    from .envs import Env

    raw = gym.make(
        env_id, render_mode="rgb_array", width=width, height=height, disable_env_checker=True
    )
    return Env(raw, env_id, ())
