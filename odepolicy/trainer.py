"""The training loop: ask, evaluate, tell, evaluate the centre, checkpoint, resume.

A run is a pure function of its config and seed: the iteration's noise and environment seeds are
derived from (seed, iteration), results come back sorted by perturbation index and observation
statistics are merged in that order, so any backend and any number of workers give the same
centre parameters. The whole state (`state.TrainState`) goes into each checkpoint, so `--resume`
continues bit for bit. An evaluation that beats the best so far (`Counters.best_eval`, kept
across resumes) also saves the state as the run's best checkpoint. The run folder's format
belongs to `rundir`, reporting to `loggers`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from . import OdepolicyError
from .backends import Backend, make_backend
from .config import Config
from .envs import EnvSpec, env_spec, require_warp
from .es import RiemannianES
from .loggers import Logger, ProgressBarLogger, ProgressCSVLogger, TensorBoardLogger
from .normalizer import ObsNormalizer, RunningStats
from .policies import policy_for_env
from .rollout import RolloutTask
from .rundir import RunDir, run_name
from .state import TrainState, budget_spent, eval_seed_base, evaluation_due

__all__ = ["Trainer", "train", "resume", "budget_warning"]


class Trainer:
    """Drives a backend over a TrainState. `run` (optional) is where checkpoints go."""

    def __init__(
        self,
        config: Config,
        run: RunDir | None = None,
        loggers: list[Logger] | None = None,
        spec: EnvSpec | None = None,
    ):
        self.config, self.run, self.loggers = config, run, list(loggers or [])
        if config.physics == "warp":  # an unsupported task or a missing extra: fail first
            require_warp(config.env)
        self.env_spec = spec or env_spec(config.env)
        self.policy_spec = {"name": config.policy.name, **config.policy.kwargs}
        if config.device != "cpu":
            self.policy_spec["device"] = config.device
        self.policy = policy_for_env(self.env_spec, self.policy_spec)
        center = self.policy.init(np.random.default_rng(config.seed))
        es = RiemannianES(self.policy.layout, center, config.es, config.seed)
        normalizer = ObsNormalizer(self.env_spec.obs_dim, enabled=config.normalize_obs)
        self.state = TrainState(es, normalizer)
        self.backend: Backend | None = None
        self.last_eval = (math.nan, math.nan)

    counters = property(lambda self: self.state.counters)
    es = property(lambda self: self.state.es)

    def save(self, best: bool = False, latest: bool = True) -> None:
        if self.run is not None and (best or latest):
            kwargs = self.policy.kwargs
            self.run.save_state(self.state, self.config, self.env_spec, best, latest, kwargs)

    def open_backend(self) -> Backend:
        cfg = self.config
        self.backend = make_backend(
            cfg.backend.name,
            cfg.env,
            self.policy_spec,
            workers=cfg.backend.workers,
            address=cfg.backend.address,
            policy=self.policy,  # a local run steps the trainer's own policy
            physics=cfg.physics,
            device=cfg.device,
        )
        info = getattr(self.backend, "cluster_info", None)
        if info and self.run is not None:
            self.run.update_meta(ray=info)
        return self.backend

    def _task(self, noise=None) -> RolloutTask:
        mean, std = self.state.normalizer.mean_std()
        clip = self.state.normalizer.active_clip
        c = self.config
        seed = eval_seed_base(c)
        return RolloutTask(self.es.center, c.horizon, noise, mean, std, seed, clip, c.shared_start)

    def evaluate_center(self) -> np.ndarray:
        results = self.backend.evaluate(self._task(), list(range(self.config.eval_episodes)))
        return np.array([r.ret for r in results])

    def evaluate(self) -> bool:
        """Evaluate the centre into `last_eval`; True if its mean beats the best so far."""
        rets = self.evaluate_center()
        mean = float(np.mean(rets))
        self.last_eval = (mean, float(np.std(rets)))
        c, target = self.counters, self.config.target_return
        c.evaluations += 1
        c.target_reached = target is not None and mean >= target
        better = math.isfinite(mean) and (c.best_eval is None or mean > c.best_eval)
        if better:
            c.best_eval = mean
        return better

    def iterate(self) -> dict:
        """One ES iteration: ask, evaluate the population, merge statistics, tell."""
        spec = self.es.ask()
        t0 = time.perf_counter()
        results = self.backend.evaluate(self._task(spec), list(range(spec.population)))
        if [r.index for r in results] != list(range(spec.population)):
            raise RuntimeError("backend returned an incomplete or unordered population")
        returns = np.array([r.ret for r in results])
        lengths = np.array([r.length for r in results])
        for r in results:  # fixed (index) order: the same statistics on every backend
            if not r.failed:
                self.state.normalizer.merge(RunningStats.from_state(r.stats))
        info = self.es.tell(spec, returns, lengths)
        c = self.counters
        c.iteration, c.env_steps = c.iteration + 1, c.env_steps + int(lengths.sum())
        c.episodes, c.failed_total = c.episodes + spec.population, c.failed_total + info["failed"]
        return _population_row(returns, lengths, info["failed"], time.perf_counter() - t0)

    def done(self) -> bool:
        return budget_spent(self.config, self.counters)

    def _cpu_seconds(self) -> float:
        """This process's CPU time and its backend's workers' (a Ray run's actors) so far."""
        return time.process_time() + self.backend.remote_cpu_seconds

    def train(self) -> dict:
        """Iterate until the budget is spent; log every iteration, checkpoint as configured."""
        cfg = self.config
        self.open_backend()
        try:
            for logger in self.loggers:
                logger.start(self)
            while not self.done():
                t_start, cpu_start = time.perf_counter(), self._cpu_seconds()
                try:
                    row = self.iterate()
                except Exception:
                    for logger in self.loggers:  # what they hold back, before the checkpoint
                        logger.flush()
                    self.save()  # the state of the last finished iteration
                    raise
                it, best = self.counters.iteration, False
                row.update(eval_return_mean=math.nan, eval_return_std=math.nan)
                if evaluation_due(cfg, self.counters):
                    best = self.evaluate()
                    row.update(
                        eval_return_mean=self.last_eval[0], eval_return_std=self.last_eval[1]
                    )
                self.counters.wall_seconds += time.perf_counter() - t_start
                self.counters.cpu_seconds += self._cpu_seconds() - cpu_start
                latest = it % cfg.checkpoint_every == 0 or self.done()
                row.update(
                    iteration=it,
                    env_steps=self.counters.env_steps,
                    episodes=self.counters.episodes,
                    wall_seconds=round(self.counters.wall_seconds, 3),
                    manifold_distance=self.policy.layout.max_distance(self.es.center),
                    worker_restarts=self.backend.counters.get("worker_restarts", 0),
                    checkpoint=latest,
                )
                for logger in self.loggers:
                    logger.log(row)
                self.save(best, latest)
        finally:
            for logger in self.loggers:
                logger.close()
            self.backend.close()
        return self.summary()

    def summary(self) -> dict:
        run = None if self.run is None else str(self.run.path)
        c, (mean, std) = self.counters, self.last_eval
        return {"run_dir": run, "iteration": c.iteration, "env_steps": c.env_steps,
                "eval_return_mean": mean, "eval_return_std": std}  # fmt: skip


def _population_row(returns, lengths, failed: int, seconds: float) -> dict:
    """The progress columns an iteration's population gives (and its rollout seconds, which
    a progress row of several iterations needs for its steps per second)."""
    finite = returns[np.isfinite(returns)]
    return {
        "failed": failed,
        "pert_return_mean": float(finite.mean()) if len(finite) else math.nan,
        "pert_return_max": float(finite.max()) if len(finite) else math.nan,
        "steps_per_second": float(lengths.sum() / max(seconds, 1e-9)),
        "rollout_seconds": seconds,
    }


def _loggers(
    config: Config, run: RunDir, show_progress: bool, extra: list[Logger] | None
) -> list[Logger]:
    """The run's loggers; a TensorBoardLogger (`tensorboard: true`) checks for its package
    now, before anything is written."""
    return [
        ProgressCSVLogger(run),
        *([TensorBoardLogger(run)] if config.tensorboard else []),
        *(extra or []),
        *([ProgressBarLogger()] if show_progress else []),
    ]


def budget_warning(config: Config) -> str | None:
    """A warning when one iteration alone can use more env steps than `max_env_steps` (the run
    stops only after the iteration that crosses it), else None."""
    most = config.es.population * config.horizon
    if config.max_env_steps is None or most <= config.max_env_steps:
        return None
    return (
        f"one iteration can use up to {most:,} env steps ({config.es.population} perturbations "
        f"x horizon {config.horizon}), more than max_env_steps={config.max_env_steps:,}"
    )


def train(
    config: Config,
    out: str | Path = "runs",
    name: str | None = None,
    show_progress: bool = True,
    overwrite: bool = False,
    loggers: list[Logger] | None = None,
) -> dict:
    """Start a new run in `out/name` (name from env, policy, seed and time by default)."""
    run = RunDir(Path(out) / (name or run_name(config)))
    # Build everything first, so an unknown env or policy fails before the folder is made.
    trainer = Trainer(config, run, _loggers(config, run, show_progress, loggers))
    run.create(config, overwrite)
    return trainer.train()


def resume(
    run_dir: str | Path,
    overrides: list[str] | None = None,
    show_progress: bool = True,
    loggers: list[Logger] | None = None,
) -> dict:
    """Continue a run from `run_dir/checkpoints/latest.npz`; `overrides` may raise `iterations`."""
    run = RunDir(run_dir)
    if not run.is_run():
        raise OdepolicyError(f"{run.path} is not a run folder (no config.yaml)")
    if not run.latest.is_file():
        raise OdepolicyError(
            f"{run.path} has no checkpoint yet (the run stopped before its first one), so there "
            f"is nothing to resume; start it again with `{run.restart_command()}`"
        )
    arrays, meta = run.read_latest()
    config = run.read_config(overrides)
    trainer = Trainer(config, run, _loggers(config, run, show_progress, loggers))
    made, spec = meta["env"], trainer.env_spec
    made_on = (made.get("env_id", spec.env_id), made["obs_dim"], made.get("act_dim", spec.act_dim))
    if made_on != (spec.env_id, spec.obs_dim, spec.act_dim):
        raise OdepolicyError(
            f"checkpoint in {run.path} was made on {made_on[0]} ({made_on[1]} observations, "
            f"{made_on[2]} actions), not {spec.env_id} ({spec.obs_dim}, {spec.act_dim}): a run "
            "keeps its env on resume; train a new run for another env"
        )
    if meta.get("policy", {}).get("name", config.policy.name) != config.policy.name:
        raise OdepolicyError(
            f"checkpoint in {run.path} holds a {meta['policy']['name']} policy, not "
            f"{config.policy.name}: a run keeps its policy on resume"
        )
    saved, now = meta.get("policy", {}).get("kwargs", {}), trainer.policy.kwargs
    differ = sorted(k for k in saved.keys() & now.keys() if saved[k] != now[k])
    if differ:  # an override, or a default changed since the checkpoint
        was = ", ".join(f"{k}={saved[k]!r} (now {now[k]!r})" for k in differ)
        raise OdepolicyError(
            f"checkpoint in {run.path} holds a policy with {was}: a run keeps its policy "
            "options on resume"
        )
    trainer.state.restore(arrays, meta)
    # best.npz may be ahead of latest (it is saved at any evaluation): never overwrite it with
    # a centre that evaluates worse.
    c, saved = trainer.counters, run.best_eval()
    if saved is not None and (c.best_eval is None or saved > c.best_eval):
        c.best_eval = saved
    run.progress.truncate(trainer.counters.iteration)
    if "evaluations" not in meta.get("counters", {}):  # a checkpoint from before the count
        c.evaluations = len(run.progress.evals())
    if overrides:
        run.write_config(config)
    run.write_meta(config, resumed_from=trainer.counters.iteration)
    return trainer.train()
