"""Probe, not library code: features of ISO-ODEtoODE's initial Swimmer policy (the preset's
output scale) for the seeds whose 1M-step outcome benchmarks/learning.md, section 7 reports:
one episode's return, the singular values of the linear path c Omega_out Omega_in, and the
actions on 256 standard-normal observations.

    python benchmarks/probes/init_features.py
"""

import numpy as np

from odepolicy.envs import make_env
from odepolicy.policies import make_policy
from odepolicy.rollout import evaluate_population

C = 0.4598675496284058  # the Swimmer preset's output scale
# Seed -> last evaluation at 1M env steps with the Swimmer preset (learning.md, sections 5-7).
FINAL = {0: 326, 1: 114, 2: 60, 3: 28, 10: 138, 11: 290, 12: 310, 13: 41, 14: 50, 15: 311, 16: 43}

pol = make_policy("iso_odetoode", 8, 2, output_scale=C, action_low=-1, action_high=1)
env = make_env("Swimmer-v5")
obs = np.random.default_rng(99).standard_normal((256, 8))
for seed, final in sorted(FINAL.items(), key=lambda kv: kv[1]):
    theta = pol.init(np.random.default_rng(seed))
    p = pol.layout.unflatten(theta)
    sv = np.linalg.svd(C * p["omega_out"] @ p["omega_in"], compute_uv=False)
    ret = evaluate_population(pol, theta[None], [env], [seed], horizon=1000).returns[0]
    a = pol.step(pol.prepare(np.repeat(theta[None], len(obs), 0)), obs)
    print(
        f"seed {seed:2d}  final {final:4d} | initial return {ret:7.1f} | linear path sv "
        f"{sv.round(2)} | mean action {a.mean(0).round(2)} | at bounds "
        f"{(np.abs(a) >= 0.999).mean():.2f} | action std {a.std(0).round(2)}"
    )
