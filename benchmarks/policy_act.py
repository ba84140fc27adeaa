"""Cost of the policies at HalfCheetah size (obs 17, act 6, hidden 16), one torch thread.

For every registered policy and population sizes P = 1, 64, 256: the time of `prepare`
(once per rollout; for ODEtoODE, NANODE and HyperNet the whole matrix flow W_1..W_N) and of one
`step` (once per environment step, for the whole population), medians over repeats. One
HalfCheetah-v5 `env.step` is timed for comparison: a population step costs P of those.

    python benchmarks/policy_act.py > benchmarks/policy_act.md
"""

from __future__ import annotations

import platform
import statistics
import time

import numpy as np
import torch

from odepolicy.policies import POLICIES, make_policy

OBS, ACT, HIDDEN = 17, 6, 16
POPULATIONS = (1, 64, 256)


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def policy_kwargs(name: str) -> dict:
    return {"hidden": HIDDEN} if "hidden" in POLICIES[name].defaults else {}


def time_policy(name: str, P: int) -> tuple[float, float]:
    pol = make_policy(name, OBS, ACT, action_low=-1.0, action_high=1.0, **policy_kwargs(name))
    rng = np.random.default_rng(0)
    thetas = np.stack([pol.init(rng) for _ in range(P)])
    thetas += 0.02 * rng.standard_normal(thetas.shape)
    obs = rng.standard_normal((P, OBS))
    t_prep = median_time(lambda: pol.prepare(thetas), repeats=7 if P < 256 else 5)
    prepared = pol.prepare(thetas)
    t_step = median_time(lambda: pol.step(prepared, obs), repeats=50)
    return t_prep, t_step


def time_env_step(steps: int = 2000) -> float | None:
    try:
        import gymnasium as gym
    except ImportError:
        return None
    env = gym.make("HalfCheetah-v5")
    env.reset(seed=0)
    action = np.zeros(env.action_space.shape)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action)
        times.append(time.perf_counter() - t0)
        if terminated or truncated:
            env.reset()
    env.close()
    return statistics.median(times)


def fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}" if seconds >= 1e-3 else f"{seconds * 1e3:.4f}"


def main() -> None:
    torch.set_num_threads(1)
    print(f"# Policy cost, HalfCheetah dims (obs {OBS}, act {ACT}, hidden {HIDDEN})\n")
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        "1 torch thread, float64 CPU; medians, milliseconds.\n"
    )
    header = "| policy | params |"
    rule = "|---|---:|"
    for P in POPULATIONS:
        header += f" prepare P={P} | step P={P} |"
        rule += "---:|---:|"
    print(header)
    print(rule)
    for name in POLICIES:
        pol = make_policy(name, OBS, ACT, **policy_kwargs(name))
        row = f"| {name} | {pol.num_params} |"
        for P in POPULATIONS:
            t_prep, t_step = time_policy(name, P)
            row += f" {fmt(t_prep)} | {fmt(t_step)} |"
        print(row, flush=True)
    env_step = time_env_step()
    if env_step is not None:
        print(f"\nOne HalfCheetah-v5 env.step (gymnasium, zero action): {fmt(env_step)} ms;")
        print(
            "a population step for P environments costs P of these, "
            f"e.g. {fmt(64 * env_step)} ms for P=64 and {fmt(256 * env_step)} ms for P=256."
        )


if __name__ == "__main__":
    main()
