"""Evaluate a saved policy: returns over seeded episodes, robustness to noise, and a video.

Numbers: the N episodes run in lockstep through `rollout.evaluate_population`, the batched path
the trainer's own evaluation takes (one `prepare`, one batched policy step per time step), with
the run's evaluation seeds by default, so they reproduce `eval_return_mean` in progress.csv bit
for bit. `obs_noise` / `action_noise` wrap each environment in `NoisyEnv`: Gaussian noise drawn
from a generator seeded by the episode's own seed, so a noisy evaluation is repeatable and an
episode gives the same return alone or in a batch. Training never builds a `NoisyEnv`, so its
results are untouched.

An exported policy (`odepolicy export`: a .onnx file, run by onnxruntime on CPU, or an export
npz, run by `export.npz_act`) goes through the same `evaluate_population` with the same seeds
and lockstep batches; its normaliser and action clip are inside it, so the rollout hands it raw
observations (mean 0, std 1, no clip: the identity). Its returns equal the checkpoint's to
rounding.

Video: the first K episodes are run again, one at a time, through the same rollout function in
an environment that renders a frame at reset and after every step (`_RecordingEnv`), so the video
shows exactly the evaluated episodes. Frames come from MuJoCo's offscreen renderer on the
environment's own model and data (Gymnasium and dm_control alike) and stream to the encoder
(imageio/ffmpeg) as they are made, with a progress bar on stderr. By default the camera follows
the agent (`agent_camera`): the model's tracking camera where it has one (`track` in Gymnasium's
locomotion models, `side` or `tracking1` in dm_control's), else the free camera framed as the
task's authors chose (`Env.camera_defaults`), following the body they name.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import OdepolicyError
from .checkpoint import load_policy, resolve_checkpoint
from .envs import PHYSICS, Env, make_env, require_warp
from .export import exported_format, load_exported
from .policies import policy_for_env
from .rollout import RolloutTask, evaluate_population, lockstep_for

__all__ = [
    "evaluate_checkpoint",
    "record_json",
    "record_video",
    "NoisyEnv",
    "agent_camera",
    "summarize",
    "zero_action_return",
]

# Mixed with an episode's seed to seed its noise, so noise draws never coincide with the
# environment's own random stream for the same seed.
_NOISE_STREAM = 0x0B5E


class NoisyEnv:
    """An `Env` whose observations and actions carry Gaussian noise of the given std.

    Observation noise is added to every raw observation (before normalisation, as a sensor's
    would be); action noise to the policy's action, then clipped to the action box. The noise
    generator is reseeded from the seed of every `reset`, so an episode's noise is a function of
    its seed alone."""

    def __init__(self, env: Env, obs_noise: float = 0.0, action_noise: float = 0.0):
        self.env = env
        self.obs_noise = float(obs_noise)
        self.action_noise = float(action_noise)
        self.rng = np.random.default_rng(_NOISE_STREAM)

    def __getattr__(self, name):  # obs_dim, spec, physics, close, ...: the wrapped env's
        return getattr(self.env, name)

    def _observe(self, obs: np.ndarray) -> np.ndarray:
        if self.obs_noise:
            obs = obs + self.obs_noise * self.rng.standard_normal(obs.shape)
        return obs

    def reset(self, seed: int | None = None) -> np.ndarray:
        entropy = [_NOISE_STREAM] if seed is None else [_NOISE_STREAM, int(seed)]
        self.rng = np.random.default_rng(entropy)
        return self._observe(self.env.reset(seed=seed))

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        if self.action_noise:
            action = action + self.action_noise * self.rng.standard_normal(np.shape(action))
            action = np.clip(action, self.env.action_low, self.env.action_high)
        obs, reward, terminated, truncated = self.env.step(action)
        return self._observe(obs), reward, terminated, truncated


def _check_noise(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise OdepolicyError(f"{name} must be a finite number >= 0, got {value}")
    return value


@dataclass
class VideoSettings:
    path: Path
    episodes: int = 1
    camera: str | int | None = None
    fps: int = 30
    width: int = 480
    height: int = 360
    every: int = 1  # keep every k-th frame (smaller files, e.g. a README GIF)

    def validate(self, evaluated: int) -> VideoSettings:
        suffix = self.path.suffix.lower()
        if suffix not in (".mp4", ".gif"):
            raise OdepolicyError(f"--video needs a .mp4 or .gif file name, got {self.path.name}")
        if not 1 <= self.episodes <= evaluated:
            raise OdepolicyError(
                f"--video-episodes must be between 1 and the {evaluated} evaluated episodes, "
                f"got {self.episodes}"
            )
        if self.fps < 1:
            raise OdepolicyError(f"--fps must be at least 1, got {self.fps}")
        if self.every < 1:
            raise OdepolicyError(f"--video-every must be at least 1, got {self.every}")
        if self.width < 16 or self.height < 16:
            raise OdepolicyError(f"video size {self.width}x{self.height} is too small (min 16)")
        if suffix == ".mp4" and (self.width % 2 or self.height % 2):
            # H.264 in yuv420p (what every player reads) needs even sizes.
            raise OdepolicyError(
                f"an mp4 video needs an even --width and --height, got {self.width}x{self.height}"
            )
        if isinstance(self.camera, str) and re.fullmatch(r"-?\d+", self.camera.strip()):
            self.camera = int(self.camera)
        return self


def evaluate_checkpoint(
    path,
    episodes: int | None = None,
    seed: int | None = None,
    env_id: str | None = None,
    horizon: int | None = None,
    *,
    checkpoint: str | None = None,
    obs_noise: float = 0.0,
    action_noise: float = 0.0,
    video: str | os.PathLike | None = None,
    video_episodes: int = 1,
    camera: str | int | None = None,
    fps: int = 30,
    size: tuple[int, int] = (480, 360),
    show_progress: bool = False,
    video_every: int = 1,
    physics: str = "mujoco",
    device: str | None = None,
) -> dict:
    """Evaluate the centre policy of a checkpoint (a file, or a run folder's `checkpoint`:
    latest by default, or best), or a policy from `odepolicy export` (.onnx or npz), over
    `episodes` seeded episodes, seeds `seed`, `seed + 1`, ...; optionally render the first
    `video_episodes` of them to `video` (.mp4 or .gif). Returns the record `odepolicy evaluate
    --json` prints, with `returns` and `lengths` as numpy arrays.

    `physics="warp"` runs the episodes as MuJoCo Warp worlds on `device` (default: the run's
    own device) through the trainer's warp evaluation, so with the default seeds it reproduces
    a warp run's `eval_return_mean`; start states are drawn on the device from `seed` (see
    `odepolicy.rollout_warp`). Noise, videos and exported policies need `physics="mujoco"`."""
    if physics not in PHYSICS:
        raise OdepolicyError(f"--physics must be one of {', '.join(PHYSICS)}, got {physics!r}")
    exported = exported_format(path)  # a policy from `odepolicy export`: .onnx or npz
    if exported:
        if checkpoint is not None:
            raise OdepolicyError(
                f"--checkpoint {checkpoint} picks a file of a run folder, but {path} is an "
                f"exported policy"
            )
        file = Path(path)
        exported_policy = load_exported(file)
        theta, meta = np.zeros(0), exported_policy.meta
    else:
        file = resolve_checkpoint(path, checkpoint)
        _, theta, normalizer, meta = load_policy(file)
    env_id = env_id or meta["env"]["env_id"]
    episodes, seed, horizon = _episodes_seed_horizon(meta, episodes, seed, horizon)
    obs_noise = _check_noise("--obs-noise", obs_noise)
    action_noise = _check_noise("--action-noise", action_noise)
    settings = None
    if video:
        width, height = size
        settings = VideoSettings(
            Path(video), int(video_episodes), camera, int(fps), width, height, int(video_every)
        )
        settings.validate(episodes)
    if physics == "warp":
        _check_warp_options(env_id, exported, obs_noise, action_noise, settings)

    def new_env():
        env = make_env(env_id)
        return NoisyEnv(env, obs_noise, action_noise) if obs_noise or action_noise else env

    env = new_env()
    try:
        _check_sizes(env.spec, meta)
        if settings is not None:  # an unknown camera fails now, not after the evaluation
            agent_camera(env.physics()[0], settings.camera)
        if exported:  # normaliser and action clip are inside: it takes raw observations
            policy = exported_policy
            normalization = (np.zeros(env.spec.obs_dim), np.ones(env.spec.obs_dim), None)
        else:
            # Sized and clipped to the evaluated env's action box, as the trainer's workers do.
            policy = policy_for_env(
                env.spec, {"name": meta["policy"]["name"], **meta["policy"]["kwargs"]}
            )
            mean, std = normalizer.mean_std()
            normalization = (mean, std, normalizer.active_clip)
        seeds = [seed + k for k in range(episodes)]
        if physics == "warp":
            device = device or meta["config"].get("device", "cpu")
            returns, lengths, reasons = _run_episodes_warp(
                meta, env_id, theta, normalization, seed, episodes, horizon, device
            )
        else:
            returns, lengths, reasons = _run_episodes(
                policy, theta, normalization, env, new_env, seeds, horizon
            )
        record = summarize(returns, lengths, reasons)
        record.update(
            checkpoint=str(file),
            env_id=env_id,
            policy=meta["policy"]["name"],
            exported=exported,
            episodes=episodes,
            seed=seed,
            horizon=horizon,
            obs_noise=obs_noise,
            action_noise=action_noise,
            physics=physics,
            video=None,
        )
        if settings is not None:
            k = settings.episodes
            record["video"] = record_video(
                policy, theta, normalization, env, seeds[:k], horizon, settings,
                frames_expected=int(lengths[:k].sum()) + k,
                show_progress=show_progress,
            )  # fmt: skip
    finally:
        env.close()
    return record


def _episodes_seed_horizon(meta: dict, episodes, seed, horizon) -> tuple[int, int, int]:
    """The options given, else the run's own: its eval_episodes, evaluation seed and horizon."""
    config = meta["config"]
    episodes = int(config["eval_episodes"] if episodes is None else episodes)
    if episodes < 1:
        raise OdepolicyError("--episodes must be at least 1")
    seed = int(meta["eval_seed"] if seed is None else seed)
    if seed < 0:
        raise OdepolicyError(f"--seed must be >= 0, got {seed}")
    horizon = int(config["horizon"] if horizon is None else horizon)
    if horizon < 1:
        raise OdepolicyError("--horizon must be at least 1")
    return episodes, seed, horizon


def _check_sizes(spec, meta: dict) -> None:
    trained = meta["env"]
    if (spec.obs_dim, spec.act_dim) != (trained["obs_dim"], trained["act_dim"]):
        raise OdepolicyError(
            f"checkpoint was trained on {trained['env_id']} (obs {trained['obs_dim']}, "
            f"act {trained['act_dim']}); {spec.env_id} has obs {spec.obs_dim}, "
            f"act {spec.act_dim}"
        )


def _run_episodes(policy, theta, normalization, env, new_env, seeds, horizon):
    """(returns, lengths, failure reasons) of the centre policy on episodes `seeds`: in lockstep
    batches of `lockstep_for(policy)` environments (`env` and more from `new_env`), one
    `prepare` and one batched policy step per time step, exactly as the trainer evaluates."""
    batch = min(len(seeds), lockstep_for(policy))
    envs = [env] + [new_env() for _ in range(batch - 1)]
    returns, lengths, reasons = [], [], []
    try:
        for start in range(0, len(seeds), batch):
            chunk = seeds[start : start + batch]
            thetas = np.repeat(theta[None, :], len(chunk), axis=0)
            res = evaluate_population(
                policy, thetas, envs[: len(chunk)], chunk, horizon, *normalization
            )
            returns += res.returns.tolist()
            lengths += res.lengths.tolist()
            reasons += [r for r in res.reasons if r]
    finally:
        for extra in envs[1:]:
            extra.close()
    return np.array(returns), np.array(lengths, dtype=np.int64), reasons


def _check_warp_options(env_id, exported, obs_noise, action_noise, settings) -> None:
    """What `physics: warp` cannot do here, as one-line errors, before anything runs."""
    if exported:
        raise OdepolicyError(
            "--physics warp runs checkpoints (the policy's torch path); an exported policy "
            "runs on --physics mujoco"
        )
    if obs_noise or action_noise:
        raise OdepolicyError("--obs-noise and --action-noise need --physics mujoco")
    if settings is not None:
        raise OdepolicyError("--video renders MuJoCo's own data: use --physics mujoco")
    require_warp(env_id)


def _run_episodes_warp(meta, env_id, theta, normalization, seed, episodes, horizon, device):
    """(returns, lengths, failure reasons) of the centre policy on `episodes` MuJoCo Warp
    worlds, exactly as a warp run's trainer evaluates it (evaluation seed `seed`)."""
    from .rollout_warp import WarpRolloutWorker

    spec = {"name": meta["policy"]["name"], **meta["policy"]["kwargs"]}
    worker = WarpRolloutWorker(env_id, spec, device=device)
    mean, std, clip = normalization
    task = RolloutTask(theta, horizon, None, mean, std, eval_seed=seed, obs_clip=clip)
    results = worker.run(task, list(range(episodes)))
    worker.close()
    returns = np.array([r.ret for r in results])
    lengths = np.array([r.length for r in results], dtype=np.int64)
    return returns, lengths, [r.reason for r in results if r.reason]


def summarize(returns: np.ndarray, lengths: np.ndarray, reasons: list[str]) -> dict:
    """Mean +- std, min and max of the finite returns; failed episodes are counted apart."""
    finite = returns[np.isfinite(returns)]
    stat = (lambda f: float(f(finite))) if len(finite) else (lambda f: math.nan)
    return {
        "returns": returns,
        "lengths": lengths,
        "mean": stat(np.mean),
        "std": stat(np.std),
        "min": stat(np.min),
        "max": stat(np.max),
        "length_mean": float(np.mean(lengths)),
        "length_min": int(np.min(lengths)),
        "length_max": int(np.max(lengths)),
        "failed": int(len(returns) - len(finite)),
        "failures": reasons,
    }


def record_json(record: dict) -> str:
    """An evaluation record as one line of strict JSON: arrays as lists, NaN (a failed
    episode's return) as null."""

    def plain(x):
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, np.ndarray):
            x = x.tolist()
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, float) and not math.isfinite(x):
            return None
        return x

    return json.dumps(plain(record), allow_nan=False)


# -- video ------------------------------------------------------------------------------------


def _tracking_camera(model) -> int | None:
    """The model's camera that follows the agent: one named `track` (Gymnasium's locomotion
    models), else the first that moves with a body (mode track or trackcom)."""
    import mujoco

    named = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, "track")
    if named >= 0:
        return named
    following = {
        int(mujoco.mjtCamLight.mjCAMLIGHT_TRACK),
        int(mujoco.mjtCamLight.mjCAMLIGHT_TRACKCOM),
    }
    for cam_id in range(model.ncam):
        if int(model.cam_mode[cam_id]) in following:
            return cam_id
    return None


def _camera_names(model) -> list[str]:
    import mujoco

    names = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]
    return [n if n else f"#{i}" for i, n in enumerate(names)]


def agent_camera(model, camera: str | int | None = None, defaults: dict | None = None):
    """A `mujoco.MjvCamera` and a label for it. None: follow the agent (see the module doc);
    a name or an id: that camera of the model; -1: MuJoCo's free camera, which stays put.
    `defaults` (`Env.camera_defaults`) frame the free camera where the model has no camera
    that follows the agent; their `trackbodyid`, if any, is the body followed."""
    import mujoco

    cam = mujoco.MjvCamera()
    if camera is None:
        cam_id = _tracking_camera(model)
        if cam_id is None:  # InvertedPendulum, Reacher, cartpole, ...
            return _free_camera(model, defaults or {})
    elif isinstance(camera, str):
        cam_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cam_id < 0:
            raise OdepolicyError(
                f"no camera named {camera!r}; this model has: "
                f"{', '.join(_camera_names(model)) or 'none'} (or an id, -1 for the free camera)"
            )
    else:
        cam_id = int(camera)
        if not -1 <= cam_id < model.ncam:
            raise OdepolicyError(
                f"camera id {cam_id} out of range: this model has {model.ncam} camera(s) "
                f"({', '.join(_camera_names(model)) or 'none'}); -1 is the free camera"
            )
    if cam_id == -1:
        return _free_camera(model, {})
    cam.type = mujoco.mjtCamera.mjCAMERA_FIXED
    cam.fixedcamid = cam_id
    return cam, _camera_names(model)[cam_id]


def _free_camera(model, settings: dict):
    """MuJoCo's default view of the whole model, adjusted by `settings`; a `trackbodyid` >= 0
    among them makes it follow that body's subtree (0: the whole model's centre of mass)."""
    import mujoco

    cam = mujoco.MjvCamera()
    mujoco.mjv_defaultFreeCamera(model, cam)
    for key, value in settings.items():
        if isinstance(value, np.ndarray):
            getattr(cam, key)[:] = value
        else:
            setattr(cam, key, value)
    if settings.get("trackbodyid", -1) >= 0:
        cam.type = mujoco.mjtCamera.mjCAMERA_TRACKING
        return cam, f"free, following body {cam.trackbodyid}"
    cam.type = mujoco.mjtCamera.mjCAMERA_FREE
    return cam, "free"


class _RecordingEnv:
    """Wraps an env: a frame at every reset and after every step, handed to `sink`."""

    def __init__(self, env, renderer, camera, sink):
        self.env, self.renderer, self.camera, self.sink = env, renderer, camera, sink
        self.model, self.data = env.physics()

    def __getattr__(self, name):
        return getattr(self.env, name)

    def _frame(self) -> None:
        self.renderer.update_scene(self.data, self.camera)
        self.sink(self.renderer.render())

    def reset(self, seed: int | None = None) -> np.ndarray:
        obs = self.env.reset(seed=seed)
        self._frame()
        return obs

    def step(self, action: np.ndarray):
        out = self.env.step(action)
        self._frame()
        return out


def _open_renderer(model, width: int, height: int):
    import mujoco

    # Without a GPU, EGL renders on the CPU (llvmpipe), where the cost of a frame is set by the
    # buffers, not the frame: Gymnasium's models ask for a 640x480 offscreen buffer and a 4096^2
    # shadow map. A buffer of the frame's size and a shadow map about twice the frame's look the
    # same and cost a half (Hopper, 480x360) to a quarter (160x120) of the time. The model is
    # this evaluation's own copy, so nothing else sees the change.
    model.vis.global_.offwidth, model.vis.global_.offheight = width, height
    shadow = 1 << max(2 * max(width, height) - 1, 1).bit_length()
    model.vis.quality.shadowsize = min(model.vis.quality.shadowsize, shadow)
    try:
        return mujoco.Renderer(model, height=height, width=width)
    except Exception as exc:
        backend = os.environ.get("MUJOCO_GL", "default")
        raise OdepolicyError(
            f"cannot render headless with MUJOCO_GL={backend} ({exc}); try MUJOCO_GL=osmesa"
        ) from None


def _open_writer(path: Path, settings: VideoSettings):
    import imageio.v2 as imageio

    if path.suffix.lower() == ".gif":
        return imageio.get_writer(path, mode="I", duration=1000 / settings.fps, loop=0)
    return imageio.get_writer(path, fps=settings.fps, macro_block_size=1)


def record_video(
    policy,
    theta: np.ndarray,
    normalization: tuple[np.ndarray, np.ndarray, float | None],
    env,
    seeds: list[int],
    horizon: int,
    settings: VideoSettings,
    frames_expected: int | None = None,
    show_progress: bool = False,
) -> dict:
    """Run the episodes `seeds` one after another in `env` (an `Env`, possibly noisy) through
    `evaluate_population`, rendering every state into one video file. The file is written
    under a temporary name and renamed when complete, so a failure never leaves a broken video
    in place of an existing one. Returns what was written (path, frames, camera, returns)."""
    from tqdm import tqdm

    mean, std, clip = normalization
    path = settings.path
    model, _ = env.physics()
    camera, label = agent_camera(model, settings.camera, env.camera_defaults())
    # Beside the target (so the rename is atomic), with its suffix (the encoder goes by it).
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    renderer = _open_renderer(model, settings.width, settings.height)
    bar = tqdm(total=frames_expected, unit="frame", desc="rendering", disable=not show_progress)
    returns, frames, seen = [], 0, 0
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = _open_writer(tmp, settings)
        try:

            def sink(frame: np.ndarray) -> None:
                nonlocal frames, seen
                seen += 1
                bar.update()
                if (seen - 1) % settings.every == 0:
                    writer.append_data(frame)
                    frames += 1

            recorder = _RecordingEnv(env, renderer, camera, sink)
            for s in seeds:
                res = evaluate_population(
                    policy, theta[None, :], [recorder], [s], horizon, mean, std, clip
                )
                returns.append(float(res.returns[0]))
        finally:
            writer.close()
        os.replace(tmp, path)
    finally:
        bar.close()
        renderer.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {
        "path": str(path),
        "episodes": len(seeds),
        "frames": frames,
        "camera": label,
        "fps": settings.fps,
        "width": settings.width,
        "height": settings.height,
        "returns": returns,
    }


def zero_action_return(env_id: str, eval_seed: int, episodes: int, horizon: int) -> float:
    """The zero action's mean return on evaluation episodes `eval_seed + k`, k < `episodes`
    (up to `horizon` steps each): what a policy that learned nothing scores on a run's own
    evaluation episodes. It is the linear policy with every parameter zero, run through the
    trainer's evaluation path (`RolloutWorker`), so its episodes are the run's bit for bit."""
    from .rollout import RolloutWorker

    worker = RolloutWorker(env_id, {"name": "linear"})
    try:
        theta = np.zeros(worker.policy.num_params)
        task = RolloutTask(theta, int(horizon), eval_seed=int(eval_seed))
        results = worker.run(task, range(int(episodes)))
    finally:
        worker.close()
    return float(np.mean([r.ret for r in results]))
