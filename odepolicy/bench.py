"""`odepolicy bench`: ES throughput against the limit of bare environment stepping.

DESIGN principle 5: an ES iteration should cost barely more than stepping the same number of
environment steps with a constant action, at small populations (ARS-style, 8 directions) as at
large ones. For each population size this runs real training iterations through the trainer's
own `Trainer.iterate` (ask, evaluate, merge statistics, tell) and prints their env steps/s, the
ratio to bare stepping, the policy's `prepare` and per-step cost at the lockstep batch size, and
peak resident memory. The sizes are printed side by side.

A constant action is a cheap trajectory, so on the local backend one more iteration measures
the share of the time spent inside `env.step` itself: the engine's overhead on the very
trajectories the policy produces.
"""

from __future__ import annotations

import resource
import time

import numpy as np

from . import OdepolicyError

__all__ = ["bare_steps_per_second", "bench_command", "policy_costs"]


def bare_steps_per_second(env_id: str, steps: int = 20_000, horizon: int = 1000) -> float:
    """Steps/s of one env driven by a constant (zero, clipped to the box) action."""
    from .envs import make_env

    env = make_env(env_id)
    action = np.clip(np.zeros(env.act_dim), env.action_low, env.action_high)
    env.reset(seed=0)
    t0, n, t = time.perf_counter(), 0, 0
    while n < steps:
        _, _, terminated, truncated = env.step(action)
        n, t = n + 1, t + 1
        if terminated or truncated or t >= horizon:
            env.reset(seed=n)
            t = 0
    rate = n / (time.perf_counter() - t0)
    env.close()
    return rate


def policy_costs(policy, theta: np.ndarray, population: int, repeats: int = 20) -> tuple:
    """(prepare seconds per call, step seconds per call) at batch size `population`."""
    thetas = np.repeat(theta[None, :], population, axis=0)
    thetas = thetas + 1e-3 * np.random.default_rng(0).standard_normal(thetas.shape)
    obs = np.random.default_rng(1).standard_normal((population, policy.obs_dim))
    policy.prepare(thetas)
    t0 = time.perf_counter()
    for _ in range(3):
        prepared = policy.prepare(thetas)
    t_prep = (time.perf_counter() - t0) / 3
    policy.step(prepared, obs)
    t0 = time.perf_counter()
    for _ in range(repeats):
        policy.step(prepared, obs)
    return t_prep, (time.perf_counter() - t0) / repeats


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _bench_population(args, spec, directions: int) -> dict:
    """Time `args.iterations` real ES iterations with `directions` directions."""
    from .config import BackendConfig, Config, PolicyConfig
    from .es import ESSettings
    from .rollout import RolloutWorker
    from .trainer import Trainer

    kwargs = {} if args.hidden is None else {"hidden": args.hidden}
    config = Config(
        env=args.env,
        policy=PolicyConfig(args.policy, kwargs),
        es=ESSettings(directions=directions, antithetic=not args.no_antithetic),
        horizon=args.horizon,
        backend=BackendConfig(args.backend, args.workers, args.address),
    ).validate()
    trainer = Trainer(config, spec=spec)
    population = trainer.es.ask().population
    batch = min(population, RolloutWorker.lockstep)  # envs a worker steps in lockstep
    t_prep, t_step = policy_costs(trainer.policy, trainer.es.center, batch)
    backend = trainer.open_backend()
    try:
        # One short untimed iteration builds the workers' environment pools, as a real run's
        # first iteration does.
        config.horizon = 1
        trainer.iterate()
        config.horizon = args.horizon
        steps0, t0 = trainer.counters.env_steps, time.perf_counter()
        for _ in range(args.iterations):
            trainer.iterate()
        seconds = time.perf_counter() - t0
        steps = trainer.counters.env_steps - steps0
        # One more iteration, with env.step timed (the timer is kept out of the rate above).
        in_env = _time_env_steps(backend)
        t1 = time.perf_counter()
        if in_env is not None:
            trainer.iterate()
        share = in_env[0] / (time.perf_counter() - t1) if in_env else None
        workers = backend.num_workers
        worker_mem = backend.peak_memory_mb() if hasattr(backend, "peak_memory_mb") else {}
    finally:
        backend.close()
    return {
        "directions": directions,
        "population": population,
        "params": trainer.policy.num_params,
        "batch": batch,
        "prepare_ms": t_prep * 1e3,
        "prepare_us_per_step": t_prep / batch / args.horizon * 1e6,
        "step_us_per_env_step": t_step / batch * 1e6,
        "rate": steps / seconds,
        "steps": steps,
        "seconds": seconds,
        "workers": workers,
        "worker_mem": worker_mem,
        "env_share": share,
    }


def _time_env_steps(backend) -> list | None:
    """On the local backend, time every `env.step` of the worker's environments from now on:
    the returned list holds the seconds spent inside them. None on other backends.

    A constant action is a cheap trajectory (HalfCheetah lies still), while a policy's
    actions make contacts the physics must solve, so bare stepping understates what the same
    env steps cost under a policy. The share of an iteration spent inside `env.step` is the
    engine's own measure: everything else is the policy, the rollout loop and ES."""
    worker = getattr(backend, "worker", None)
    if worker is None:
        return None
    spent = [0.0]
    for env in worker.envs:

        def timed(action, _step=env.step):
            t = time.perf_counter()
            out = _step(action)
            spent[0] += time.perf_counter() - t
            return out

        env.step = timed
    return spent


def bench_command(args) -> int:
    from .envs import env_spec
    from .policies._torch import torch, torch_imported

    if torch_imported():  # the CPU kernels never import torch; CUDA policies do, later
        torch.set_num_threads(1)
    sizes = list(args.perturbations)
    if min(sizes) < 1 or args.horizon < 1 or args.iterations < 1:
        raise OdepolicyError("--perturbations, --horizon and --iterations must be positive")
    spec = env_spec(args.env)
    print(f"env {args.env} (obs {spec.obs_dim}, act {spec.act_dim}); policy {args.policy}")
    bare = bare_steps_per_second(args.env, horizon=args.horizon)
    print(f"bare env stepping, 1 core: {bare:,.0f} steps/s; horizon {args.horizon}")
    rows = [_bench_population(args, spec, k) for k in sizes]
    label = f"ES iteration ({args.backend})"
    table = [
        ("directions", lambda r: f"{r['directions']}"),
        ("population", lambda r: f"{r['population']}"),
        ("parameters", lambda r: f"{r['params']}"),
        ("lockstep batch P", lambda r: f"{r['batch']}"),
        ("prepare, ms per batch", lambda r: f"{r['prepare_ms']:.2f}"),
        ("prepare, us per env step", lambda r: f"{r['prepare_us_per_step']:.2f}"),
        ("policy step, us per env step", lambda r: f"{r['step_us_per_env_step']:.2f}"),
        (f"{label}, steps/s", lambda r: f"{r['rate']:,.0f}"),
        ("workers", lambda r: f"{r['workers']}"),
        ("ratio to bare x workers", lambda r: f"{r['rate'] / (bare * r['workers']):.3f}"),
        (
            "share of time inside env.step",
            lambda r: "n/a" if r["env_share"] is None else f"{r['env_share']:.3f}",
        ),
    ]
    width = max(len(name) for name, _ in table)
    for name, cell in table:
        print(f"{name:<{width}}  " + "  ".join(f"{cell(r):>12}" for r in rows))
    print(f"peak memory, driver: {_peak_mb():.0f} MB")
    for name, mb in rows[-1]["worker_mem"].items():
        print(f"peak memory, {name}: {mb:.0f} MB")
    return 0
