"""The training loop: ask, evaluate, tell, log, checkpoint, resume.

A run is a pure function of its config and seed: the iteration's noise and environment seeds are
derived from (seed, iteration), results come back sorted by perturbation index and observation
statistics are merged in that order, so any backend and any number of workers give the same
centre parameters. A checkpoint holds the whole state, so `--resume` continues bit for bit.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import OdepolicyError, __version__
from .backends import Backend, make_backend
from .checkpoint import read_checkpoint, save_checkpoint
from .config import Config, config_from_dict, dump_config, read_yaml
from .envs import EnvSpec, make_env
from .es import RiemannianES
from .normalizer import ObsNormalizer, RunningStats
from .rollout import RolloutTask, policy_for_env

__all__ = ["Trainer", "train", "resume", "PROGRESS_COLUMNS", "library_versions", "run_name"]

PROGRESS_COLUMNS = [
    "iteration",
    "env_steps",
    "episodes",
    "wall_seconds",
    "eval_return_mean",
    "eval_return_std",
    "pert_return_mean",
    "pert_return_max",
    "failed",
    "steps_per_second",
    "manifold_distance",
    "worker_restarts",
]


def library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"odepolicy": __version__, "python": platform.python_version()}
    for dist in ("torch", "gymnasium", "mujoco", "dm-control", "shimmy", "ray", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def run_name(config: Config) -> str:
    env = config.env.replace("dm_control/", "dmc-").replace("/", "-")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{env}_{config.policy.name}_s{config.seed}_{stamp}"


def eval_seed_base(config: Config) -> int:
    """Seeds of the centre-policy evaluation episodes: the same at every evaluation."""
    return 1_000_000 + 1000 * int(config.seed)


@dataclass
class Counters:
    iteration: int = 0
    env_steps: int = 0
    episodes: int = 0
    wall_seconds: float = 0.0
    failed_total: int = 0


class Trainer:
    """Owns a run folder and drives a backend. Build with `Trainer.create` or `Trainer.resume`."""

    def __init__(self, config: Config, run_dir: Path, show_progress: bool = True):
        self.config = config
        self.run_dir = Path(run_dir)
        self.show_progress = show_progress
        env = make_env(config.env, max_episode_steps=None)
        self.env_spec: EnvSpec = env.spec
        env.close()
        self.policy_spec = {"name": config.policy.name, **config.policy.kwargs}
        if config.device != "cpu":
            self.policy_spec["device"] = config.device
        self.policy = policy_for_env(self.env_spec, self.policy_spec)
        rng = np.random.default_rng(config.seed)
        self.es = RiemannianES(self.policy.layout, self.policy.init(rng), config.es, config.seed)
        self.normalizer = ObsNormalizer(self.env_spec.obs_dim, enabled=config.normalize_obs)
        self.counters = Counters()
        self.backend: Backend | None = None

    # -- state ------------------------------------------------------------------------------
    def state_arrays(self) -> dict[str, np.ndarray]:
        arrays = {f"es.{k}": v for k, v in self.es.state_dict().items()}
        arrays.update({f"norm.{k}": v for k, v in self.normalizer.state().items()})
        return arrays

    def meta(self) -> dict:
        spec = self.env_spec
        return {
            "iteration": self.counters.iteration,
            "counters": vars(self.counters).copy(),
            "config": self.config.to_dict(),
            "env": {
                "env_id": spec.env_id,
                "obs_dim": spec.obs_dim,
                "act_dim": spec.act_dim,
                "action_low": list(spec.action_low),
                "action_high": list(spec.action_high),
                "obs_keys": list(spec.obs_keys),
            },
            "policy": {"name": self.config.policy.name, "kwargs": self.config.policy.kwargs},
            "eval_seed": eval_seed_base(self.config),
            "versions": library_versions(),
        }

    def save(self) -> Path:
        ckpt_dir = self.run_dir / "checkpoints"
        arrays, meta = self.state_arrays(), self.meta()
        latest = save_checkpoint(ckpt_dir / "latest.npz", arrays, meta)
        if self.counters.iteration % self.config.checkpoint_every == 0:
            save_checkpoint(ckpt_dir / f"iter_{self.counters.iteration:06d}.npz", arrays, meta)
        return latest

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        self.es.load_state_dict({k[3:]: v for k, v in arrays.items() if k.startswith("es.")})
        self.normalizer = ObsNormalizer.from_state(
            {k[5:]: v for k, v in arrays.items() if k.startswith("norm.")}
        )
        self.counters = Counters(**meta["counters"])

    # -- one iteration ----------------------------------------------------------------------
    def _task(self, noise=None) -> RolloutTask:
        mean, std = self.normalizer.mean_std()
        return RolloutTask(
            center=self.es.center,
            horizon=self.config.horizon,
            noise=noise,
            obs_mean=mean,
            obs_std=std,
            eval_seed=eval_seed_base(self.config),
            obs_clip=self.normalizer.active_clip,
        )

    def evaluate_center(self) -> np.ndarray:
        results = self.backend.evaluate(self._task(), list(range(self.config.eval_episodes)))
        return np.array([r.ret for r in results])

    def iterate(self) -> dict:
        spec = self.es.ask()
        t0 = time.perf_counter()
        results = self.backend.evaluate(self._task(spec), list(range(spec.population)))
        if [r.index for r in results] != list(range(spec.population)):
            raise RuntimeError("backend returned an incomplete or unordered population")
        returns = np.array([r.ret for r in results])
        lengths = np.array([r.length for r in results])
        for r in results:  # fixed (index) order: the same statistics on every backend
            if not r.failed:
                self.normalizer.merge(RunningStats.from_state(r.stats))
        info = self.es.tell(spec, returns, lengths)
        elapsed = time.perf_counter() - t0
        c = self.counters
        c.iteration += 1
        c.env_steps += int(lengths.sum())
        c.episodes += spec.population
        c.failed_total += info["failed"]
        finite = returns[np.isfinite(returns)]
        return {
            "failed": info["failed"],
            "pert_return_mean": float(finite.mean()) if len(finite) else math.nan,
            "pert_return_max": float(finite.max()) if len(finite) else math.nan,
            "steps_per_second": float(lengths.sum() / max(elapsed, 1e-9)),
        }

    # -- the loop ---------------------------------------------------------------------------
    def _done(self) -> bool:
        cfg, c = self.config, self.counters
        if c.iteration >= cfg.iterations:
            return True
        return cfg.max_env_steps is not None and c.env_steps >= cfg.max_env_steps

    def run(self) -> dict:
        cfg = self.config
        self.backend = make_backend(
            cfg.backend.name,
            cfg.env,
            self.policy_spec,
            workers=cfg.backend.workers,
            address=cfg.backend.address,
        )
        bar = _progress_bar(cfg.iterations, self.counters.iteration, self.show_progress)
        last_eval = (math.nan, math.nan)
        try:
            with _ProgressWriter(self.run_dir / "progress.csv") as writer:
                while not self._done():
                    t_start = time.perf_counter()
                    try:
                        row = self.iterate()
                    except Exception:
                        self.save()  # the state of the last finished iteration
                        raise
                    it = self.counters.iteration
                    eval_mean = eval_std = math.nan
                    if it % cfg.eval_every == 0 or self._done():
                        rets = self.evaluate_center()
                        eval_mean, eval_std = float(np.mean(rets)), float(np.std(rets))
                        last_eval = (eval_mean, eval_std)
                    self.counters.wall_seconds += time.perf_counter() - t_start
                    row.update(
                        iteration=it,
                        env_steps=self.counters.env_steps,
                        episodes=self.counters.episodes,
                        wall_seconds=round(self.counters.wall_seconds, 3),
                        eval_return_mean=eval_mean,
                        eval_return_std=eval_std,
                        manifold_distance=self.policy.layout.max_distance(self.es.center),
                        worker_restarts=self.backend.counters.get("worker_restarts", 0),
                    )
                    writer.write(row)
                    if it % cfg.checkpoint_every == 0 or self._done():
                        self.save()
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(
                            ret=f"{row['pert_return_mean']:.1f}", eval=f"{last_eval[0]:.1f}"
                        )
        finally:
            if bar is not None:
                bar.close()
            self.backend.close()
        return {
            "run_dir": str(self.run_dir),
            "iteration": self.counters.iteration,
            "env_steps": self.counters.env_steps,
            "eval_return_mean": last_eval[0],
            "eval_return_std": last_eval[1],
        }


class _ProgressWriter:
    """Appends rows to progress.csv, flushing each so a crash loses at most one row."""

    def __init__(self, path: Path):
        self.path = path
        new = not path.exists() or path.stat().st_size == 0
        self.fh = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=PROGRESS_COLUMNS)
        if new:
            self.writer.writeheader()

    def write(self, row: dict) -> None:
        self.writer.writerow({k: _fmt(row.get(k)) for k in PROGRESS_COLUMNS})
        self.fh.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _progress_bar(total: int, initial: int, show: bool):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="it", dynamic_ncols=True, file=sys.stderr)


def _write_meta(run_dir: Path, config: Config, extra: dict | None = None) -> None:
    meta = {
        "versions": library_versions(),
        "command": sys.argv,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "env": config.env,
        "policy": config.policy.name,
        "seed": config.seed,
    }
    meta.update(extra or {})
    (run_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def train(
    config: Config,
    out: str | Path = "runs",
    name: str | None = None,
    show_progress: bool = True,
    overwrite: bool = False,
) -> dict:
    """Start a new run in `out/name` (name from env, policy, seed and time by default)."""
    trainer = Trainer(config, Path(out) / (name or run_name(config)), show_progress)
    run_dir = trainer.run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise OdepolicyError(
                f"run folder {run_dir} already exists; use --resume or a new --name"
            )
        if not (run_dir / "config.yaml").is_file():
            raise OdepolicyError(f"refusing to overwrite {run_dir}: it is not a run folder")
        import shutil

        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(config))
    _write_meta(run_dir, config)
    return trainer.run()


def resume(
    run_dir: str | Path, overrides: list[str] | None = None, show_progress: bool = True
) -> dict:
    """Continue a run from `run_dir/checkpoints/latest.npz`; `overrides` may raise `iterations`."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise OdepolicyError(f"{run_dir} is not a run folder (no config.yaml)")
    latest = run_dir / "checkpoints" / "latest.npz"
    arrays, meta = read_checkpoint(latest)
    config = config_from_dict(read_yaml(run_dir / "config.yaml"), overrides)
    trainer = Trainer(config, run_dir, show_progress)
    if meta["env"]["obs_dim"] != trainer.env_spec.obs_dim:
        raise OdepolicyError(f"checkpoint in {run_dir} does not match env {config.env}")
    trainer.load_state(arrays, meta)
    _truncate_progress(run_dir / "progress.csv", trainer.counters.iteration)
    if overrides:
        (run_dir / "config.yaml").write_text(dump_config(config))
    _write_meta(run_dir, config, {"resumed_from_iteration": trainer.counters.iteration})
    return trainer.run()


def _truncate_progress(path: Path, iteration: int) -> None:
    """Drop rows logged after the checkpoint, so a resumed run logs each iteration once."""
    if not path.exists():
        return
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    keep = [r for r in rows if int(r["iteration"]) <= iteration]
    if len(keep) == len(rows):
        return
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=PROGRESS_COLUMNS)
        writer.writeheader()
        writer.writerows(keep)
    os.replace(tmp, path)
