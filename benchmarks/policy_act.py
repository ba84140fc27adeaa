"""Cost of the policies at HalfCheetah size (obs 17, act 6, hidden 16), one thread.

For every registered policy and population sizes P = 1, 8, 64, 256, on both backends in the same
run: the compiled CPU kernels (the default on CPU) and the torch backend (the CPU path before the
kernels; `policy.backend = "torch"`). Reported: `prepare` (once per rollout; for ODEtoODE,
NANODE and HyperNet the whole matrix flow W_1..W_N) in milliseconds per rollout, and `step` (once
per environment step for the whole population) in microseconds per environment step, i.e. the
call's time divided by P; medians over repeats. One HalfCheetah-v5 `env.step` is timed for
comparison. Then the first-call compile time of the kernels, each family in a fresh process,
with an empty numba cache and again with the cache that run wrote.

    python benchmarks/policy_act.py > benchmarks/policy_act.md
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numba
import numpy as np
import torch

from odepolicy.policies import POLICIES, make_policy

OBS, ACT, HIDDEN = 17, 6, 16
POPULATIONS = (1, 8, 64, 256)
BACKENDS = ("kernels", "torch")


def median_time(fn, repeats: int) -> float:
    """Median CPU seconds of the calling thread per call of fn. CPU time, not wall time: on a
    busy machine a long call is preempted more often than a short one, which would skew the
    comparison across batch sizes; all work here runs in this one thread. Each sample times
    enough calls to last about a millisecond (the clock costs a system call)."""
    fn()  # warm-up (and, for the kernels, compilation or loading from the cache)
    t0 = time.thread_time()
    fn()
    inner = max(1, min(200, int(1e-3 / max(time.thread_time() - t0, 1e-7))))
    times = []
    for _ in range(repeats):
        t0 = time.thread_time()
        for _ in range(inner):
            fn()
        times.append((time.thread_time() - t0) / inner)
    return statistics.median(times)


def policy_kwargs(name: str) -> dict:
    return {"hidden": HIDDEN} if "hidden" in POLICIES[name].defaults else {}


def make(name: str, backend: str):
    pol = make_policy(name, OBS, ACT, action_low=-1.0, action_high=1.0, **policy_kwargs(name))
    pol.backend = backend
    return pol


def population(pol, P: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    thetas = np.stack([pol.init(rng) for _ in range(P)])
    return thetas + 0.02 * rng.standard_normal(thetas.shape)


def time_policy(name: str, backend: str, P: int) -> tuple[float, float]:
    """(seconds of prepare per rollout, seconds of step per environment step)."""
    pol = make(name, backend)
    thetas = population(pol, P)
    obs = np.random.default_rng(1).standard_normal((P, OBS))
    slow = backend == "torch" and P >= 64
    t_prep = median_time(lambda: pol.prepare(thetas), repeats=5 if slow else 11)
    prepared = pol.prepare(thetas)
    t_step = median_time(lambda: pol.step(prepared, obs), repeats=21 if slow else 51)
    return t_prep / P, t_step / P


def time_env_step(steps: int = 2000) -> float | None:
    try:
        import gymnasium as gym
    except ImportError:
        return None
    env = gym.make("HalfCheetah-v5")
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape)

    def step() -> None:
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset()

    t = median_time(step, repeats=steps // 20)
    env.close()
    return t


_FIRST_CALL = """
import time, numpy as np
t0 = time.perf_counter()
from odepolicy.policies import make_policy
t1 = time.perf_counter()
pols = [make_policy(name, {OBS}, {ACT}, **kwargs) for name, kwargs in {specs!r}]
thetas = [pol.init(np.random.default_rng(0)) for pol in pols]
t2 = time.perf_counter()
for pol, theta in zip(pols, thetas):
    pol.act(theta, np.ones({OBS}))
t3 = time.perf_counter()
for pol, theta in zip(pols, thetas):
    pol.act(theta, np.ones({OBS}))
print(t1 - t0, t3 - t2 - (time.perf_counter() - t3))
"""


def first_call_seconds(names: list[str], cache_dir: str) -> tuple[float, float]:
    """(import seconds, seconds of the first prepare + step of each family beyond a warm one)
    in a fresh process whose numba cache lives in cache_dir."""
    specs = [(name, policy_kwargs(name)) for name in names]
    code = _FIRST_CALL.format(specs=specs, OBS=OBS, ACT=ACT)
    env = {**os.environ, "NUMBA_CACHE_DIR": cache_dir}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return float(out[0]), float(out[1])


def compile_seconds(names: list[str]) -> tuple[float, float, float]:
    """(cold, cached, import) seconds: an empty numba cache, then the cache that run wrote."""
    with tempfile.TemporaryDirectory() as cache_dir:
        imp, cold = first_call_seconds(names, cache_dir)
        _, cached = first_call_seconds(names, cache_dir)
    return cold, cached, imp


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.2f}" if seconds < 1e-4 else f"{seconds * 1e6:.1f}"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.4f}" if seconds < 1e-3 else f"{seconds * 1e3:.3f}"


def table(title: str, results: dict, index: int, fmt) -> None:
    print(f"## {title}\n")
    header, rule = "| policy | params |", "|---|---:|"
    for P in POPULATIONS:
        header += f" P={P} kernels | P={P} torch | ratio |"
        rule += "---:|---:|---:|"
    print(header)
    print(rule)
    for name in POLICIES:
        row = f"| {name} | {make(name, 'kernels').num_params} |"
        for P in POPULATIONS:
            k, t = results[name, "kernels", P][index], results[name, "torch", P][index]
            row += f" {fmt(k)} | {fmt(t)} | {t / k:.2g}x |"
        print(row)
    print()


def main() -> None:
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    results = {}
    for name in POLICIES:
        for backend in BACKENDS:
            for P in POPULATIONS:
                results[name, backend, P] = time_policy(name, backend, P)
        print(f"timed {name}", file=sys.stderr, flush=True)
    env_step = time_env_step()

    print(f"# Policy cost, HalfCheetah dims (obs {OBS}, act {ACT}, hidden {HIDDEN})\n")
    print(
        f"numba {numba.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"{platform.processor() or platform.machine()}, one thread, float64 CPU; medians of "
        "the thread's CPU time (a shared, busy machine: wall times would be noisier). "
        "`kernels`: the compiled per-row kernels (the CPU default); `torch`: the torch backend "
        "on CPU, the path before the kernels (batched torch, numpy Euler loop; a lone row's "
        "mat-vecs no longer padded to two). ratio = torch / kernels. "
        "Regenerate: `python benchmarks/policy_act.py > benchmarks/policy_act.md`.\n"
    )
    table("step: microseconds per environment step (one batched call / P)", results, 1, us)
    table("prepare: milliseconds per rollout (one batched call / P)", results, 0, ms)

    iso1 = results["iso_odetoode", "kernels", 1][1]
    if env_step is not None:
        print(
            f"One HalfCheetah-v5 `env.step` (gymnasium, zero action): {us(env_step)} us. "
            f"ISO-ODEtoODE's step at P=1 costs {us(iso1)} us = {iso1 / env_step:.2f} env steps "
            f"with the kernels, {results['iso_odetoode', 'torch', 1][1] / env_step:.2f} with "
            "torch.\n"
        )

    pol = make("iso_odetoode", "kernels")
    distinct = population(pol, 64)
    centre = np.repeat(distinct[:1], 64, axis=0)
    t_distinct = median_time(lambda: pol.prepare(distinct), 11)
    t_centre = median_time(lambda: pol.prepare(centre), 11)
    print(
        f"Identical rows share one `prepare`: ISO-ODEtoODE, P=64, the centre's evaluation "
        f"episodes (64 copies of one vector) {ms(t_centre)} ms for the whole batch, against "
        f"{ms(t_distinct)} ms for 64 distinct rows.\n"
    )

    print("## First-call compile time of the kernels (seconds, fresh process per family)\n")
    print(
        "`cold`: empty numba cache (what the first run after a fresh checkout pays); `cached`: "
        "the same, loading what the cold run wrote (numba's on-disk cache, `cache=True`). Both "
        "are the first `act` call less a warm one, in wall time, so they grow with the load of "
        f"the machine ({os.cpu_count()} cores, load average {load_before:.1f} when this run "
        f"started, {os.getloadavg()[0]:.1f} before the compile runs); `import` is "
        "`import odepolicy.policies` (numba and torch included), paid once per process "
        "either way.\n"
    )
    print("| policy | cold | cached |")
    print("|---|---:|---:|")
    imports = []
    for name in POLICIES:
        cold, cached, imp = compile_seconds([name])
        imports.append(imp)
        print(f"| {name} | {cold:.2f} | {cached:.2f} |")
    cold, cached, _ = compile_seconds(list(POLICIES))
    print(f"| all families in one process | {cold:.2f} | {cached:.2f} |")
    print(f"\n`import odepolicy.policies`: {statistics.median(imports):.2f} s (median).")


if __name__ == "__main__":
    main()
