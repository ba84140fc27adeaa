"""`odepolicy bench`: ES throughput against the limit of bare environment stepping.

DESIGN principle 5: an ES iteration should cost barely more than stepping the same number of
environment steps with a constant action, at small populations (ARS-style, 8 directions) as at
large ones. For each population size this runs real training iterations through the trainer's
own `Trainer.iterate` (ask, evaluate, merge statistics, tell) and prints their env steps/s, the
ratio to bare stepping, the policy's `prepare` and per-step cost at the lockstep batch size, and
peak resident memory. The sizes are printed side by side.

A constant action is a cheap trajectory: HalfCheetah driven by zeros lies still, while a
policy's actions make contacts the physics must solve. So with `--replay` (local backend) the
timed iterations also record every episode (its reset seed and actions), and fresh environments
then replay them open loop, batch by batch in lockstep over as many environments: MuJoCo is
deterministic, so that is bare stepping of exactly the same trajectories in the same order,
and the ratio of the two rates is the engine's overhead alone (the recording's own cost, about
a microsecond per step, is charged to the ES iteration). One more iteration measures the share
of the time spent inside `env.step` itself.

`--config FILE` takes the env, policy, ES settings, horizon, seed and observation
normalisation from a run config; without `--iterations` it then times the config's whole
budget of env steps (its `max_env_steps`, else its `iterations`), which is how a shipped
config is measured as a user would run it.
"""

from __future__ import annotations

import resource
import time

import numpy as np

from . import OdepolicyError

__all__ = [
    "bare_steps_per_second",
    "bench_command",
    "policy_costs",
    "bench_warp",
    "warp_bare_steps_per_second",
    "warp_iteration_rate",
]


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


def _bench_config(args, directions: int):
    """The Config one population size is timed with: `args.config` with its directions set, or
    the library defaults for `--env` / `--policy`."""
    from .config import BackendConfig, Config, PolicyConfig, load_config
    from .es import ESSettings

    backend = BackendConfig(args.backend, args.workers, args.address)
    if getattr(args, "config", None):
        config = load_config(args.config)
        if args.policy != config.policy.name:  # --policy replaces it, options and all
            config.policy = type(config.policy)(args.policy, {})
        config.es.directions = directions
        if args.no_antithetic:
            config.es.antithetic = False
        if args.hidden is not None:
            config.policy.kwargs["hidden"] = args.hidden
        config.backend = backend
        return config.validate()
    kwargs = {} if args.hidden is None else {"hidden": args.hidden}
    return Config(
        env=args.env,
        policy=PolicyConfig(args.policy, kwargs),
        es=ESSettings(directions=directions, antithetic=not args.no_antithetic),
        horizon=args.horizon,
        backend=backend,
    ).validate()


def _bench_population(args, spec, directions: int) -> dict:
    """Time real ES iterations with `directions` directions: `args.iterations` of them, or
    with `args.iterations` None the config's budget of env steps."""
    from .rollout import lockstep_for
    from .trainer import Trainer

    config = _bench_config(args, directions)
    horizon = config.horizon
    trainer = Trainer(config, spec=spec)
    population = trainer.es.ask().population
    batch = min(population, lockstep_for(trainer.policy))  # envs a worker steps in lockstep
    t_prep, t_step = policy_costs(trainer.policy, trainer.es.center, batch)
    if args.iterations is not None:
        done = lambda i, steps: i >= args.iterations  # noqa: E731
    elif config.max_env_steps is not None:
        done = lambda i, steps: steps >= config.max_env_steps  # noqa: E731
    else:
        done = lambda i, steps: i >= config.iterations  # noqa: E731
    backend = trainer.open_backend()
    try:
        # One short untimed iteration builds the workers' environment pools, as a real run's
        # first iteration does.
        config.horizon = 1
        trainer.iterate()
        config.horizon = horizon
        worker = getattr(backend, "worker", None)
        replay = getattr(args, "replay", False) and worker is not None
        recorder = _EpisodeRecorder(worker.envs) if replay else None
        steps0, t0, i = trainer.counters.env_steps, time.perf_counter(), 0
        while not done(i, trainer.counters.env_steps - steps0):
            trainer.iterate()
            i += 1
        seconds = time.perf_counter() - t0
        steps = trainer.counters.env_steps - steps0
        if recorder is not None:
            recorder.close()
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
    replay_rate, replay_steps = (
        replay_steps_per_second(recorder.batches) if recorder is not None else (None, 0)
    )
    return {
        "directions": directions,
        "population": population,
        "params": trainer.policy.num_params,
        "batch": batch,
        "prepare_ms": t_prep * 1e3,
        "prepare_us_per_step": t_prep / batch / horizon * 1e6,
        "step_us_per_env_step": t_step / batch * 1e6,
        "rate": steps / seconds,
        "steps": steps,
        "iterations": i,
        "seconds": seconds,
        "workers": workers,
        "worker_mem": worker_mem,
        "env_share": share,
        "replay_rate": replay_rate,
        "replay_steps": replay_steps,
    }


class _EpisodeRecorder:
    """Records what a local worker's environments run: episodes as (slot, env id, reset seed,
    actions), slot being the environment's position in the pool, grouped into `batches` (the
    rows a rollout reset together before stepping them in lockstep)."""

    def __init__(self, envs):
        self.batches: list[list[tuple[int, str, int | None, list]]] = []
        self._stepped = True  # a reset after any step opens a new batch
        self._restore = []
        for slot, env in enumerate(envs):
            current = [None]

            def reset(seed=None, _reset=env.reset, _env=env, _slot=slot, _cur=current):
                if self._stepped:
                    self.batches.append([])
                    self._stepped = False
                _cur[0] = []
                self.batches[-1].append((_slot, _env.env_id, seed, _cur[0]))
                return _reset(seed=seed)

            def step(action, _step=env.step, _cur=current):
                self._stepped = True
                _cur[0].append(np.array(action, dtype=np.float64))
                return _step(action)

            self._restore.append((env, env.__dict__.get("reset"), env.__dict__.get("step")))
            env.reset, env.step = reset, step

    def close(self) -> None:
        for env, reset, step in self._restore:
            for name, value in (("reset", reset), ("step", step)):
                if value is None:
                    env.__dict__.pop(name, None)
                else:
                    setattr(env, name, value)

    @property
    def episodes(self) -> list:
        return [episode for batch in self.batches for episode in batch]


def replay_steps_per_second(batches: list) -> tuple[float, int]:
    """(steps/s, steps) of replaying recorded batches open loop, as the rollout ran them: one
    fresh environment per slot, each batch's rows reset, then stepped in lockstep (so the
    MuJoCo models are visited in the same order, with the same cache traffic). Resets and
    steps are timed, as in `bare_steps_per_second`."""
    from .envs import make_env

    envs, seconds, steps = {}, 0.0, 0
    for batch in batches:
        for slot, env_id, _, _ in batch:
            if (slot, env_id) not in envs:
                envs[slot, env_id] = make_env(env_id)
        t0 = time.perf_counter()
        rows = []
        for slot, env_id, seed, actions in batch:
            env = envs[slot, env_id]
            env.reset(seed=seed)
            rows.append((env.step, actions, len(actions)))
        for t in range(max(n for _, _, n in rows)):
            for step, actions, n in rows:
                if t < n:
                    step(actions[t])
        seconds += time.perf_counter() - t0
        steps += sum(n for _, _, n in rows)
    for env in envs.values():
        env.close()
    return (steps / seconds if seconds > 0 else float("nan")), steps


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


DEFAULT_ENV, DEFAULT_POLICY = "HalfCheetah-v5", "iso_odetoode"  # without --config
DEFAULT_PERTURBATIONS = (8, 100)  # ES directions timed side by side, without --config


def _default_env_and_policy(args) -> None:
    args.env = args.env or DEFAULT_ENV
    args.policy = args.policy or DEFAULT_POLICY


def bench_command(args) -> int:
    if getattr(args, "physics", "mujoco") == "warp":
        return bench_warp(args)
    from .config import load_config
    from .envs import env_spec
    from .policies._torch import torch, torch_imported

    if torch_imported():  # the CPU kernels never import torch; CUDA policies do, later
        torch.set_num_threads(1)
    if args.config:
        for option, value in (("--horizon", args.horizon), ("--env", args.env)):
            if value is not None:
                raise OdepolicyError(
                    f"{option} cannot be combined with --config (the config sets it)"
                )
        config = load_config(args.config)  # a bad file is a one-line error, exit 2
        args.env, args.horizon = config.env, config.horizon
        args.policy = args.policy or config.policy.name
        sizes = list(args.perturbations or [config.es.directions])
        source = f"config {args.config}, "
    else:
        _default_env_and_policy(args)
        if args.horizon is None:
            args.horizon = 1000
        if args.iterations is None:
            args.iterations = 2
        sizes = list(args.perturbations or DEFAULT_PERTURBATIONS)
        source = ""
    if min(sizes) < 1 or args.horizon < 1 or (args.iterations is not None and args.iterations < 1):
        raise OdepolicyError("--perturbations, --horizon and --iterations must be positive")
    spec = env_spec(args.env)
    print(f"{source}env {args.env} (obs {spec.obs_dim}, act {spec.act_dim}); policy {args.policy}")
    bare = bare_steps_per_second(args.env, horizon=args.horizon)
    print(
        f"bare env stepping (constant action), 1 core: {bare:,.0f} steps/s; horizon {args.horizon}"
    )
    rows = [_bench_population(args, spec, k) for k in sizes]
    label = f"ES iteration ({args.backend})"

    def replay_ratio(r):
        if r["replay_rate"] is None:
            return "n/a"
        return f"{r['rate'] / (r['replay_rate'] * r['workers']):.3f}"

    replay = [
        (
            "same trajectories replayed, steps/s",
            lambda r: "n/a" if r["replay_rate"] is None else f"{r['replay_rate']:,.0f}",
        ),
        ("ratio to replay x workers", replay_ratio),
    ]
    table = [
        ("directions", lambda r: f"{r['directions']}"),
        ("population", lambda r: f"{r['population']}"),
        ("parameters", lambda r: f"{r['params']}"),
        ("lockstep batch P", lambda r: f"{r['batch']}"),
        ("prepare, ms per batch", lambda r: f"{r['prepare_ms']:.2f}"),
        ("prepare, us per env step", lambda r: f"{r['prepare_us_per_step']:.2f}"),
        ("policy step, us per env step", lambda r: f"{r['step_us_per_env_step']:.2f}"),
        ("timed iterations", lambda r: f"{r['iterations']}"),
        ("timed env steps", lambda r: f"{r['steps']:,}"),
        (f"{label}, steps/s", lambda r: f"{r['rate']:,.0f}"),
        ("workers", lambda r: f"{r['workers']}"),
        ("ratio to bare x workers", lambda r: f"{r['rate'] / (bare * r['workers']):.3f}"),
        *(replay if args.replay else []),
        (
            "share of time inside env.step",
            lambda r: "n/a" if r["env_share"] is None else f"{r['env_share']:.3f}",
        ),
    ]
    width = max(len(name) for name, _ in table)
    for name, cell in table:
        print(f"{name:<{width}}  " + "  ".join(f"{cell(r):>12}" for r in rows))
    replayed = " (includes the recording and the replay's environments)" if args.replay else ""
    print(f"peak memory, driver{replayed}: {_peak_mb():.0f} MB")
    for name, mb in rows[-1]["worker_mem"].items():
        print(f"peak memory, {name}: {mb:.0f} MB")
    return 0


# -- physics: warp -------------------------------------------------------------------------------

WARP_POPULATIONS = (1024, 8192, 32768)


def warp_bare_steps_per_second(env_id: str, worlds: int, device: str, steps: int = 50) -> float:
    """Env steps/s of MuJoCo Warp's own stepping of `worlds` worlds (frame_skip `mjw.step`s per
    env step, zero controls, no observation, reward or policy): the limit an ES iteration on
    warp worlds is compared against. The first step (compilation, CUDA graph capture) is not
    timed."""
    import torch
    import warp as wp

    from .envs.warp import WarpWorlds

    w = WarpWorlds(env_id, worlds, device)
    with w.stream():
        w.reset(w.reset_noise(worlds, torch.Generator(device=w.device).manual_seed(0)))
        w.ctrl.zero_()
        w.physics_step()
        wp.synchronize_device(w.wp_device)
        t0 = time.perf_counter()
        for _ in range(steps):
            w.physics_step()
        wp.synchronize_device(w.wp_device)
    return worlds * steps / (time.perf_counter() - t0)


def warp_iteration_rate(config, iterations: int = 1) -> dict:
    """Time `iterations` ES iterations (the trainer's own `iterate`) of `config` (physics
    warp) after one untimed iteration of horizon 1 that builds the worlds."""
    from .trainer import Trainer

    trainer = Trainer(config)
    backend = trainer.open_backend()
    try:
        horizon, config.horizon = config.horizon, 1
        trainer.iterate()
        config.horizon = horizon
        steps0, t0 = trainer.counters.env_steps, time.perf_counter()
        for _ in range(iterations):
            trainer.iterate()
        seconds = time.perf_counter() - t0
        steps = trainer.counters.env_steps - steps0
    finally:
        backend.close()
    return {"rate": steps / seconds, "steps": steps, "seconds": seconds}


def _warp_config(args, population: int):
    from .config import Config, PolicyConfig
    from .es import ESSettings

    kwargs = {} if args.hidden is None else {"hidden": args.hidden}
    antithetic = not args.no_antithetic
    directions = max(population // 2, 1) if antithetic else population
    return Config(
        env=args.env,
        policy=PolicyConfig(args.policy, kwargs),
        es=ESSettings(directions=directions, antithetic=antithetic),
        horizon=args.horizon,
        physics="warp",
        device=args.device,
    ).validate()


def bench_warp(args) -> int:
    """`odepolicy bench --physics warp`: for each population (worlds), ES iteration env steps/s
    on MuJoCo Warp worlds and the ratio to MuJoCo Warp's bare stepping of as many worlds."""
    from .envs import require_warp
    from .envs.warp import torch_device

    if args.config or args.replay or args.backend != "local":
        raise OdepolicyError("--physics warp takes --env/--policy (no --config, --replay or ray)")
    _default_env_and_policy(args)
    require_warp(args.env)
    sizes = list(args.perturbations or WARP_POPULATIONS)
    args.horizon = 1000 if args.horizon is None else args.horizon
    iterations = 1 if args.iterations is None else args.iterations
    if min(sizes) < 1 or args.horizon < 1 or iterations < 1:
        raise OdepolicyError("--perturbations, --horizon and --iterations must be positive")
    device = torch_device(args.device)
    args.device = device.type  # a config's device: cpu or cuda
    print(
        f"env {args.env}, policy {args.policy}, physics warp on {device}; horizon "
        f"{args.horizon}, {iterations} timed iteration(s) per population"
    )
    rows = []
    for n in sizes:
        config = _warp_config(args, n)
        bare = warp_bare_steps_per_second(args.env, config.es.population, args.device)
        es = warp_iteration_rate(config, iterations)
        rows.append((config.es.population, bare, es))
    table = [
        ("population (worlds)", lambda r: f"{r[0]}"),
        ("bare MuJoCo Warp, steps/s", lambda r: f"{r[1]:,.0f}"),
        ("ES iteration, steps/s", lambda r: f"{r[2]['rate']:,.0f}"),
        ("ratio to bare", lambda r: f"{r[2]['rate'] / r[1]:.3f}"),
        ("timed env steps", lambda r: f"{r[2]['steps']:,}"),
    ]
    width = max(len(name) for name, _ in table)
    for name, cell in table:
        print(f"{name:<{width}}  " + "  ".join(f"{cell(r):>14}" for r in rows))
    return 0
