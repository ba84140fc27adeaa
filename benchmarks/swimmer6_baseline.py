"""What dm_control swimmer6 returns without a policy: the zero action's return per episode.

    python benchmarks/swimmer6_baseline.py                  # 40 reset seeds, and the runs' own
    python benchmarks/swimmer6_baseline.py --episodes 3     # evaluation episodes at 3 a run

The task puts its target at random each episode, so the same policy returns from about 10 to
1000 by where the target lands. This prints the zero action's returns over reset seeds 0..N-1
(their spread is why experiments/comparison/base/swimmer6.yaml sets `shared_start`), and its
mean return on the evaluation episodes of runs (`evaluate.zero_action_return`, the figures
`odepolicy campaign report` holds each run against) with seeds 0, 1, 2 and 100-102 (the seeds
`eval_seed_base` gives them: what a method that learned nothing scores on that run).
"""

from __future__ import annotations

import argparse

import numpy as np

from odepolicy.config import config_from_dict
from odepolicy.evaluate import zero_action_return
from odepolicy.state import eval_seed_base

ENV = "dm_control/swimmer-swimmer6-v0"
HORIZON = 1000  # the suite's episode length, the comparison's horizon


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=40, help="reset seeds 0..N-1 (40)")
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes a run (10)")
    args = parser.parse_args(argv)
    returns = np.array([zero_action_return(ENV, s, 1, HORIZON) for s in range(args.seeds)])
    print(
        f"zero action over reset seeds 0..{args.seeds - 1}: median {np.median(returns):.1f}, "
        f"mean {returns.mean():.1f}, min {returns.min():.1f}, max {returns.max():.1f}"
    )
    print(f"| run seed | zero action's mean return on its {args.episodes} evaluation episodes |")
    print("|---:|---:|")
    for seed in (0, 1, 2, 100, 101, 102):
        base = eval_seed_base(config_from_dict({"env": ENV, "seed": seed}))
        print(f"| {seed} | {zero_action_return(ENV, base, args.episodes, HORIZON):.1f} |")


if __name__ == "__main__":
    main()
