"""Which tuning studies become presets.

    python benchmarks/presets.py STUDIES_ROOT [--ship]

STUDIES_ROOT holds `<env>/<policy>/study.sqlite3` and `best.yaml`, as written by
`odepolicy tune --out ROOT/<env>/<policy>`. For every study this prints its trial count, best
score and verdict as a markdown table (failed trials are interrupted ones, which
`odepolicy tune` replaces). A study's best config is shipped as
`experiments/presets/<env>/<policy>.yaml` only when its best score reaches a third of the
task's reference return (ARS's threshold on the locomotion tasks, the maximum 1000 on
InvertedPendulum): below that bar the search found nothing that learns the task, and every
config we ship must learn within its own budget. `--ship` copies the passing best configs there
and every finished study's SQLite file (one with its `best.yaml`, which `odepolicy tune` writes
at its end) to `experiments/tune/studies/<env>/<policy>/`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = {
    "InvertedPendulum-v5": 1000.0,
    "Swimmer-v5": 325.0,
    "Hopper-v5": 3120.0,
    "HalfCheetah-v5": 3430.0,
}
FRACTION = 1 / 3


def passes(env: str, best: float | None) -> bool:
    """Whether a study's best score reaches the bar of its task."""
    return best is not None and best >= FRACTION * REFERENCE[env]


def summarise(db: Path) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="odepolicy", storage=f"sqlite:///{db}")
    states = [t.state.name for t in study.trials]
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = max(done, key=lambda t: t.value) if done else None
    return {
        "trials": len(states),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "best": None if best is None else best.value,
        "best_trial": None if best is None else best.number,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder of <env>/<policy>/study.sqlite3")
    parser.add_argument(
        "--ship", action="store_true", help="copy passing best configs and every study into place"
    )
    args = parser.parse_args(argv)
    dbs = sorted(args.root.glob("*/*/study.sqlite3"))
    if not dbs:
        print(f"error: no <env>/<policy>/study.sqlite3 under {args.root}", file=sys.stderr)
        return 2
    print("| task | policy | trials: complete / pruned / failed | best score | bar | preset |")
    print("|---|---|---:|---:|---:|---|")
    for db in dbs:
        folder = db.parent
        env, policy = folder.parent.name, folder.name
        if env not in REFERENCE:
            print(f"error: no reference return for {env}", file=sys.stderr)
            return 2
        s = summarise(db)
        bar = FRACTION * REFERENCE[env]
        ok = passes(env, s["best"])
        best = "-" if s["best"] is None else f"{s['best']:.1f} (trial {s['best_trial']})"
        verdict = "shipped" if ok else "not shipped"
        print(
            f"| {env} | {policy} | {s['complete']} / {s['pruned']} / {s['failed']} | {best} "
            f"| {bar:.0f} | {verdict} |"
        )
        if args.ship:
            if not (folder / "best.yaml").is_file():  # tune writes it when the study ends
                print(f"skipped {env}/{policy}: no best.yaml, the study is unfinished")
                continue
            studies = ROOT / "experiments" / "tune" / "studies" / env / policy
            studies.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(db, studies / "study.sqlite3")
            if ok:
                preset = ROOT / "experiments" / "presets" / env / f"{policy}.yaml"
                preset.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(folder / "best.yaml", preset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
