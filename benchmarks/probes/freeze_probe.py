"""Probe, not library code: ES perturbs only some of ISO-ODEtoODE's blocks, and the others stay
at their initial values (their noise rows are zeroed, so the update leaves them alone). Local
backend only: the patch lives in this process. benchmarks/learning.md, section 7.

    python benchmarks/probes/freeze_probe.py W0,Q,N 17 6 -- train \
        experiments/presets/HalfCheetah-v5/iso_odetoode.yaml --set seed=11 ...

BLOCKS are comma-separated block names; OBS and ACT size the policy to find their slices."""

import sys

import numpy as np

from odepolicy import noise
from odepolicy.policies import make_policy

frozen, obs, act = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3])
args = sys.argv[sys.argv.index("--") + 1 :]
layout = make_policy("iso_odetoode", obs, act).layout
mask = np.ones(layout.size)
for name in frozen:
    mask[layout[name].slice] = 0.0
print("perturbed dims", int(mask.sum()), "of", layout.size, flush=True)
orig = noise._gaussian_row


def masked(seed, j, m):
    row = orig(seed, j, m)
    assert m == mask.size
    return row * mask


noise._gaussian_row = masked
from odepolicy.cli import main  # noqa: E402

sys.exit(main(args))
