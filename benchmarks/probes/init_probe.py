"""Probe, not library code: train from the initial parameters of seed INIT_SEED while every other
random stream (ES noise, env resets) follows the config's seed. Local backend only.
benchmarks/learning.md, section 7.

    python benchmarks/probes/init_probe.py 15 -- train \
        experiments/presets/Swimmer-v5/iso_odetoode.yaml --set seed=13 ..."""

import sys

import numpy as np

from odepolicy.policies.base import Policy

init_seed = int(sys.argv[1])
args = sys.argv[sys.argv.index("--") + 1 :]
orig = Policy.init


def init(self, rng):
    return orig(self, np.random.default_rng(init_seed))


Policy.init = init
from odepolicy.cli import main  # noqa: E402

sys.exit(main(args))
