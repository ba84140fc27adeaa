"""The learning benchmark: env steps until the centre policy passes ARS's thresholds.

    python benchmarks/learning.py --run [--parallel 2] [--address auto]   # train, then report
    python benchmarks/learning.py                                         # report existing runs

`--run` launches `odepolicy sweep experiments/learning.yaml` (resumable; on a cluster with
`--address`): the presets of `linear` and `iso_odetoode` on Swimmer-v5, Hopper-v5 and
HalfCheetah-v5 with seeds 1-3, which tuning never used; 1M env steps on Swimmer, 3M on the
others. The report reads the run folders and prints, per task, policy and seed, the env steps
and episodes at the first centre-policy evaluation at or above the threshold, beside ARS's
episodes to threshold (V2-t, or V1-t for Swimmer, whose settings are the closest to ours).
Those ARS figures are from shared/ANCHORS.md, recalled and not yet checked against the paper:
treat them as approximate, and note that ARS ran Gym v1 tasks (MuJoCo 1.31).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "experiments" / "learning.yaml"
# ARS Table 1: average over 3 seeds of the episodes to reach the threshold (V1-t for Swimmer,
# V2-t otherwise); recalled in shared/ANCHORS.md, not verified against the paper's text here.
ARS_EPISODES = {"Swimmer-v5": 100, "Hopper-v5": 1973, "HalfCheetah-v5": 1707}
BUDGETS = {"Swimmer-v5": 1_000_000, "Hopper-v5": 3_000_000, "HalfCheetah-v5": 3_000_000}
TARGET_SEEDS = 2  # of 3


def _first_crossing(run_dir: Path, threshold: float):
    """(env_steps, episodes, last evaluation, env_steps at end) of a run folder."""
    from odepolicy.rundir import RunDir

    rows = RunDir(run_dir).progress.read()
    hit, last, end = None, None, 0
    for r in rows:
        end = int(r["env_steps"])
        if r["eval_return_mean"] in ("", None):
            continue
        last = float(r["eval_return_mean"])
        if hit is None and last >= threshold:
            hit = (int(r["env_steps"]), int(r["episodes"]))
    return hit, last, end


def report(runs: Path) -> str:
    from odepolicy.plotting import ARS_THRESHOLDS
    from odepolicy.rundir import RunDir

    lines = [
        "| task | policy | seed | env steps to threshold | episodes | last eval | env steps run "
        "| run |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    verdicts = []
    # (folder, (env, policy, seed)), each config.yaml read once
    folders = [
        (p, RunDir(p).identity()) for p in sorted(runs.glob("*")) if RunDir(p).has_progress()
    ]
    for task, budget in BUDGETS.items():
        threshold = ARS_THRESHOLDS[task]
        for policy in ("linear", "iso_odetoode"):
            passed = 0
            for folder, (env, name, seed) in folders:
                if (env, name) != (task, policy):
                    continue
                hit, last, end = _first_crossing(folder, threshold)
                status = RunDir(folder).status()
                if status == "empty" and end >= budget:  # collected files, no checkpoints
                    status = "finished (files only)"
                ok = hit is not None and hit[0] <= budget
                passed += ok
                steps = (
                    f"{hit[0]:,}"
                    if hit
                    else ("not reached" if status.startswith("finished") else "-")
                )
                episodes = f"{hit[1]:,}" if hit else ""
                last_text = "" if last is None else f"{last:.0f}"
                lines.append(
                    f"| {task} | {policy} | {seed} | {steps} | {episodes} | {last_text} "
                    f"| {end:,} | {status} |"
                )
            verdicts.append(
                f"{task} {policy}: {passed} seed(s) passed {threshold:.0f} within "
                f"{budget / 1e6:g}M env steps (target {TARGET_SEEDS} of 3); ARS: "
                f"{ARS_EPISODES[task]:,} episodes (recalled figure)"
            )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {v}" for v in verdicts) + "\n"


def collect(runs: Path, dest: Path) -> None:
    import shutil

    from odepolicy.rundir import RunDir

    for folder in sorted(runs.glob("*")):
        run = RunDir(folder)
        if not run.has_progress() or run.status() != "finished":
            continue
        (dest / folder.name).mkdir(parents=True, exist_ok=True)
        for name in ("config.yaml", "progress.csv", "meta.json"):
            shutil.copy2(folder / name, dest / folder.name / name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="store_true", help="train (resume) the sweep first")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "learning"), help="run folders")
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--address", help="Ray cluster address for the sweep")
    parser.add_argument("--report", help="also write the table to this markdown file")
    parser.add_argument(
        "--collect",
        metavar="DIR",
        help="copy each finished run's config.yaml, progress.csv and meta.json to DIR/<run>/ "
        "(what results/ commits; no checkpoints)",
    )
    args = parser.parse_args(argv)
    if args.run:
        cmd = [sys.executable, "-m", "odepolicy.cli", "sweep", str(SWEEP), "--out", args.runs]
        cmd += ["--parallel", str(args.parallel)]
        if args.address:
            cmd += ["--address", args.address]
        subprocess.run(cmd, check=False)
    if args.collect:
        collect(Path(args.runs), Path(args.collect))
    text = report(Path(args.runs))
    print(text, end="")
    if args.report:
        Path(args.report).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
