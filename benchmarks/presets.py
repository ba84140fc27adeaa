"""Which tuning studies, and which picks of the comparison campaign, become presets.

    python benchmarks/presets.py STUDIES_ROOT [--ship]
    python benchmarks/presets.py --campaign experiments/comparison.yaml [--ship]

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

With `--campaign`, the presets of every task whose confirm stage has finished for every method
come from the campaign instead: for each policy, the method of that policy with the best pick
(the best median score over the tuning seeds; the plain method or its labelled variant, as if
the variant's addition were one more searched key), shipped when that median reaches the bar
and, once the pick's evaluation runs (unseen seeds, the full budget) have all finished, their
mean final return reaches it too: a preset must learn as shipped, on seeds it was not picked on.
`--ship` writes those presets (the pick's config under a header that states the protocol and
the scores) and removes the task's presets whose best pick misses the bar, so that a task's
presets are exactly what its comparison confirmed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

from odepolicy.campaign_report import NO_LEARNING
from odepolicy.plotting import ARS_THRESHOLDS

ROOT = Path(__file__).resolve().parents[1]
# ARS's thresholds on the locomotion tasks; InvertedPendulum's maximum return.
REFERENCE = {"InvertedPendulum-v5": 1000.0, **ARS_THRESHOLDS}
FRACTION = NO_LEARNING  # the same bar the comparison's report calls "does not learn"


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


def campaign_rows(campaign) -> list[dict]:
    """One row per (task, policy) of each tuned task of `campaign` whose every method has its
    pick: the method of that policy with the best pick median (ties: the method listed first),
    the other methods of the policy, and whether the median reaches the task's bar (a task
    without a reference return has no bar: nothing is shipped)."""
    from odepolicy.campaign import pick

    rows = []
    for task, spec in campaign.tasks.items():
        order = campaign.task_methods(task)
        if not spec.tune or not all(campaign.pick_file(task, m).is_file() for m in order):
            continue  # pick.yaml is written once a method's confirm runs have all finished
        picks = {m: pick(campaign, task, m) for m in order}
        if any(p is None for p in picks.values()):
            continue
        by_policy: dict[str, list[str]] = {}
        for m in order:
            by_policy.setdefault(campaign.methods[m].policy, []).append(m)
        for policy, methods in by_policy.items():
            best = min(methods, key=lambda m: (-picks[m][1], order.index(m)))
            trial, median, _ = picks[best]
            evaluated = _evaluated(campaign, task, best)
            rows.append(
                {
                    "task": task,
                    "policy": policy,
                    "method": best,
                    "trial": trial,
                    "median": median,
                    "others": {m: picks[m][1] for m in methods if m != best},
                    "evaluated": evaluated,
                    "bar": FRACTION * REFERENCE[task] if task in REFERENCE else None,
                    "ok": task in REFERENCE
                    and passes(task, median)
                    and (evaluated is None or passes(task, evaluated)),
                }
            )
    return rows


def _evaluated(campaign, task: str, method: str) -> float | None:
    """Mean final evaluation return of the method's evaluation runs once all have finished."""
    from odepolicy.campaign import Unit, unit_done

    seeds = campaign.eval_seeds(task)
    if not all(unit_done(campaign, Unit("evaluate", task, method, seed=s)) for s in seeds):
        return None
    finals = [campaign.eval_run(task, method, s).progress.final_eval() for s in seeds]
    return float(np.mean(finals))


def campaign_preset_text(campaign, row: dict) -> str:
    """The preset of one passing row: the pick's own file (its header states the protocol and
    every confirmed score; its config is what the evaluation runs used) under a first line
    naming the campaign and the method, with the bar and the evaluation added to the header."""
    task, method = row["task"], row["method"]
    label = campaign.methods[method].label
    pick_lines = campaign.pick_file(task, method).read_text().splitlines(keepends=True)
    header = [line for line in pick_lines if line.startswith("#")][1:]  # less "picked by"
    body = [line for line in pick_lines if not line.startswith("#")]
    first = (
        f"Found by `odepolicy campaign run {campaign.path}`: task {task}, method {method}"
        + (f" ({label})" if label and label != method else "")
        + "."
    )
    lines = [f"Bar: {row['bar']:.2f}, a third of ARS's {REFERENCE[task]:g}."]
    if row["others"]:
        others = ", ".join(f"{m} {v:.2f}" for m, v in row["others"].items())
        lines.append(f"Best pick median of the policy's other methods: {others}.")
    seeds = ", ".join(map(str, campaign.eval_seeds(task)))
    where = f"{campaign.eval_run(task, method, 0).path.parent}/ (results/comparison.md)"
    if row["evaluated"] is None:
        lines.append(f"Being evaluated at this budget on seeds {seeds}: {where}.")
    else:
        lines.append(
            f"Evaluated at this budget on seeds {seeds}: mean final return "
            f"{row['evaluated']:.2f}; {where}."
        )
    return f"# {first}\n" + "".join(header) + "".join(f"# {ln}\n" for ln in lines) + "".join(body)


def campaign_main(path: str, ship: bool) -> int:
    from odepolicy.campaign import load_campaign

    campaign = load_campaign(path)
    rows = campaign_rows(campaign)
    if not rows:
        print(f"no task of {path} has finished its confirm stage for every method")
        return 0
    print("| task | policy | best method | pick: trial, median | evaluation | bar | preset |")
    print("|---|---|---|---:|---:|---:|---|")
    for row in rows:
        bar = "-" if row["bar"] is None else f"{row['bar']:.0f}"
        evaluated = "-" if row["evaluated"] is None else f"{row['evaluated']:.1f}"
        verdict = "shipped" if row["ok"] else "not shipped"
        print(
            f"| {row['task']} | {row['policy']} | {row['method']} "
            f"| {row['trial']}, {row['median']:.1f} | {evaluated} | {bar} | {verdict} |"
        )
        preset = ROOT / "experiments" / "presets" / row["task"] / f"{row['policy']}.yaml"
        if ship and row["ok"]:
            preset.parent.mkdir(parents=True, exist_ok=True)
            preset.write_text(campaign_preset_text(campaign, row))
        elif ship and preset.is_file():
            preset.unlink()
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, nargs="?", help="folder of <env>/<policy>/study.sqlite3")
    parser.add_argument(
        "--campaign", help="a campaign file: presets from its confirm stage instead (see above)"
    )
    parser.add_argument(
        "--ship", action="store_true", help="copy passing best configs and every study into place"
    )
    args = parser.parse_args(argv)
    if (args.root is None) == (args.campaign is None):
        parser.error("give either STUDIES_ROOT or --campaign FILE")
    if args.campaign:
        return campaign_main(args.campaign, args.ship)
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
