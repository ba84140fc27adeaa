"""Gymnasium's step against odepolicy's lean step (`odepolicy.envs.lean`), per task.

    python benchmarks/lean_step.py                      # every task with a lean step
    python benchmarks/lean_step.py --env Humanoid-v5 --repeats 7

Each figure is the best of `--repeats` passes over the same `--steps` random actions (uniform
in the action box, seed 0), resetting on termination or truncation; the two steps alternate
pass by pass, so a change in the machine's speed hits both. Both return the same numbers bit for
bit (tests/test_envs_lean.py); this measures only their cost, in microseconds per step.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from odepolicy.envs import make_env
from odepolicy.envs.lean import LEAN_ENV_IDS


def _pass(env, actions: np.ndarray) -> float:
    env.reset(seed=0)
    start = time.perf_counter()
    for action in actions:
        _, _, terminated, truncated = env.step(action)
        if terminated or truncated:
            env.reset()
    return (time.perf_counter() - start) / len(actions)


def measure(env_id: str, steps: int, repeats: int) -> tuple[float, float]:
    gym_env, lean_env = make_env(env_id, lean=False), make_env(env_id)
    assert lean_env.lean and not gym_env.lean
    rng = np.random.default_rng(0)
    actions = rng.uniform(gym_env.action_low, gym_env.action_high, (steps, gym_env.act_dim))
    best = [np.inf, np.inf]
    for _ in range(repeats):
        for k, env in enumerate((gym_env, lean_env)):
            best[k] = min(best[k], _pass(env, actions))
    gym_env.close()
    lean_env.close()
    return best[0] * 1e6, best[1] * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", nargs="+", default=list(LEAN_ENV_IDS), choices=LEAN_ENV_IDS)
    parser.add_argument("--steps", type=int, default=500, help="random actions a pass (500)")
    parser.add_argument("--repeats", type=int, default=5, help="passes of each step (5)")
    args = parser.parse_args(argv)
    print("| task | Gymnasium's step, us | lean step, us | speed-up |")
    print("|---|---:|---:|---:|")
    for env_id in args.env:
        gym_us, lean_us = measure(env_id, args.steps, args.repeats)
        print(f"| {env_id} | {gym_us:.1f} | {lean_us:.1f} | {gym_us / lean_us:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
