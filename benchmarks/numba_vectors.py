"""The compiled kernels with numba's default vector width against 512-bit vectors.

    python benchmarks/numba_vectors.py --rounds 5

`odepolicy` lets numba's LLVM use 512-bit vectors on x86-64 CPUs with AVX512-VBMI2
(`odepolicy._widen_numba_vectors`); `ODEPOLICY_NUMBA_VECTORS=256` keeps LLVM's default. This
times both in fresh processes, alternately, `--rounds` times each: `prepare` (the matrix flow
for the ODE families, once per rollout) and one policy step, both on a lockstep batch of the
size the rollout uses, for the comparison's sizes on Humanoid-v5 (ISO-ODEtoODE at h = 64,
DeepNet at h = 32, linear) and HalfCheetah-v5 (every family at its defaults). Each figure is
the best of many calls within a process; the table gives the best and the median over rounds,
since a shared machine's speed varies from minute to minute. The outputs are bit for bit the
same (tests/test_kernels.py::test_512_bit_vectors_change_no_bit).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

CASES = [  # (label, env, policy, kwargs)
    ("Humanoid iso_odetoode h=64", "Humanoid-v5", "iso_odetoode", {"hidden": 64}),
    ("Humanoid deepnet h=32", "Humanoid-v5", "deepnet", {"hidden": 32}),
    ("Humanoid linear", "Humanoid-v5", "linear", {}),
    ("HalfCheetah iso_odetoode", "HalfCheetah-v5", "iso_odetoode", {}),
    ("HalfCheetah gated_odetoode", "HalfCheetah-v5", "gated_odetoode", {}),
    ("HalfCheetah base_ode", "HalfCheetah-v5", "base_ode", {}),
    ("HalfCheetah deepnet", "HalfCheetah-v5", "deepnet", {}),
]

CHILD = """
import json, sys, time
import numpy as np
from odepolicy.envs import env_spec
from odepolicy.policies import policy_for_env
from odepolicy.rollout import lockstep_for

out = {}
for label, env, name, kwargs in json.loads(sys.argv[1]):
    spec = env_spec(env)
    pol = policy_for_env(spec, {"name": name, **kwargs})
    P = min(lockstep_for(pol), 16)
    rng = np.random.default_rng(0)
    thetas = np.stack([pol.init(rng) for _ in range(P)])
    thetas += 0.01 * rng.standard_normal(thetas.shape)
    obs = rng.standard_normal((P, spec.obs_dim))
    prepared = pol.prepare(thetas)
    pol.step(prepared, obs)
    best_prepare = best_step = float("inf")
    for _ in range(20):
        t = time.perf_counter(); prepared = pol.prepare(thetas)
        best_prepare = min(best_prepare, time.perf_counter() - t)
    for _ in range(300):
        t = time.perf_counter(); pol.step(prepared, obs)
        best_step = min(best_step, time.perf_counter() - t)
    out[label] = (P, 1e3 * best_prepare / P, 1e6 * best_step / P)
print(json.dumps(out))
"""


def run(width: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU")}
    env["ODEPOLICY_NUMBA_VECTORS"] = width
    args = [sys.executable, "-c", CHILD, json.dumps(CASES)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="processes per width (5)")
    args = parser.parse_args(argv)
    from odepolicy import cpuinfo

    print(f"CPU: {cpuinfo()[0]}")
    results: dict[str, list[dict]] = {"256": [], "512": []}
    for _ in range(args.rounds):
        for width in results:
            results[width].append(run(width))
    print(
        "| case | rows a batch | prepare ms a row, 256 / 512 (best; median) "
        "| step us a row, 256 / 512 (best; median) |"
    )
    print("|---|---:|---:|---:|")
    for label, *_ in CASES:
        cells = []
        for k in (1, 2):
            a = [r[label][k] for r in results["256"]]
            b = [r[label][k] for r in results["512"]]
            cells.append(f"{min(a):.3g} / {min(b):.3g}; {np.median(a):.3g} / {np.median(b):.3g}")
        rows = results["256"][0][label][0]
        print(f"| {label} | {rows} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
