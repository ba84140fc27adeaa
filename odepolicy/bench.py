"""`odepolicy bench`: ES throughput against the limit of bare environment stepping.

DESIGN principle 5: an ES iteration should cost barely more than stepping the same number of
environment steps with a constant action. This prints both rates, their ratio, the policy's
`prepare` and per-step cost at the population size, and peak resident memory.
"""

from __future__ import annotations

import resource
import time

import numpy as np

__all__ = ["bare_steps_per_second", "bench_command"]


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


def _policy_costs(
    policy, theta: np.ndarray, population: int, repeats: int = 20
) -> tuple[float, float]:
    thetas = np.repeat(theta[None, :], population, axis=0)
    thetas = thetas + 1e-3 * np.random.default_rng(0).standard_normal(thetas.shape)
    obs = np.random.default_rng(1).standard_normal((population, policy.obs_dim))
    policy.prepare(thetas)
    t0 = time.perf_counter()
    for _ in range(3):
        prepared = policy.prepare(thetas)
    t_prep = (time.perf_counter() - t0) / 3
    t0 = time.perf_counter()
    for _ in range(repeats):
        policy.step(prepared, obs)
    return t_prep, (time.perf_counter() - t0) / repeats


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_command(args) -> int:
    import torch

    from . import OdepolicyError
    from .backends import make_backend
    from .envs import make_env
    from .es import ESSettings, RiemannianES
    from .rollout import RolloutTask, RolloutWorker, policy_for_env

    torch.set_num_threads(1)
    if args.perturbations < 1 or args.horizon < 1 or args.iterations < 1:
        raise OdepolicyError("--perturbations, --horizon and --iterations must be positive")
    env = make_env(args.env)
    spec = env.spec
    env.close()
    kwargs = {} if args.hidden is None else {"hidden": args.hidden}
    policy_spec = {"name": args.policy, **kwargs}
    policy = policy_for_env(spec, policy_spec)
    settings = ESSettings(directions=args.perturbations, antithetic=not args.no_antithetic)
    es = RiemannianES(policy.layout, policy.init(np.random.default_rng(0)), settings, seed=0)
    population = es.ask().population

    print(
        f"env {args.env} (obs {spec.obs_dim}, act {spec.act_dim}); policy {args.policy} "
        f"({policy.num_params} params); population {population}; horizon {args.horizon}"
    )
    bare = bare_steps_per_second(args.env, horizon=args.horizon)
    print(f"bare env stepping, 1 core:      {bare:12,.0f} steps/s")
    batch = min(population, RolloutWorker.lockstep)  # envs a worker steps in lockstep
    t_prep, t_step = _policy_costs(policy, es.center, batch)
    print(
        f"policy prepare (P={batch}):        {t_prep * 1e3:12.2f} ms per rollout "
        f"({t_prep / batch / args.horizon * 1e6:.2f} us per env step)"
    )
    print(
        f"policy step (P={batch}):           {t_step * 1e6:12.1f} us per lockstep "
        f"({t_step / batch * 1e6:.2f} us per env step)"
    )

    backend = make_backend(
        args.backend, args.env, policy_spec, workers=args.workers, address=args.address
    )
    try:
        # One untimed iteration builds the worker's environment pool, as a real run's first does.
        warm = es.ask()
        backend.evaluate(RolloutTask(es.center, 1, warm), list(range(warm.population)))
        steps, seconds = 0, 0.0
        for _ in range(args.iterations):
            noise = es.ask()
            task = RolloutTask(es.center, args.horizon, noise)
            t0 = time.perf_counter()
            results = backend.evaluate(task, list(range(noise.population)))
            seconds += time.perf_counter() - t0
            es.tell(
                noise, np.array([r.ret for r in results]), np.array([r.length for r in results])
            )
            steps += sum(r.length for r in results)
        workers = backend.num_workers
        worker_mem = backend.peak_memory_mb() if hasattr(backend, "peak_memory_mb") else {}
    finally:
        backend.close()
    rate = steps / seconds
    print(
        f"ES iteration ({args.backend}, {workers} worker(s)): {rate:12,.0f} steps/s "
        f"({steps:,} steps in {seconds:.1f} s over {args.iterations} iterations)"
    )
    print(f"per worker:                     {rate / workers:12,.0f} steps/s")
    print(f"ratio to bare stepping x {workers}:  {rate / (bare * workers):12.3f}")
    print(f"peak memory, driver:            {_peak_mb():12.0f} MB")
    for name, mb in worker_mem.items():
        print(f"peak memory, {name}:{' ' * max(1, 18 - len(name))}{mb:12.0f} MB")
    return 0
