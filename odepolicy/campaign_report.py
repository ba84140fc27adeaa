"""`odepolicy campaign report`: a campaign's figure, table and reading of the paper's claim.

From the evaluation runs of a campaign (`<results>/<task>/<method>/s<seed>/`), made as
`odepolicy plot` makes them: the figure `<results>.png` (a panel per task, a curve per method,
ARS's threshold dashed, the zero action dotted where there is no threshold) and the table
`<results>_summary.csv` / `.md`; and `<results>.md`: the protocol, the compute spent and left
(`campaign.status_rows`), the table, each run against the zero action on its own evaluation
episodes, and the paper's claim ("Ode to an ODE", Sec. 5.1.3 and Fig. 2) held against the
measured order task by task.
"""

from __future__ import annotations

import dataclasses
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from . import OdepolicyError
from .campaign import (
    BORROWED,
    CLIMB_WINDOW,
    Campaign,
    _hours,
    _left,
    _run_state,
    _write_atomic,
    status_rows,
)
from .config import config_from_dict, read_yaml
from .rundir import RunDir

__all__ = ["report", "reading", "zero_action_rows", "zero_references", "PAPER_CLAIMS"]


def report(campaign: Campaign) -> tuple[Path, Path]:
    """The comparison figure and table from the evaluation runs, made exactly as `odepolicy
    plot <results>` makes them (every run with an evaluation; an unfinished one shows in the
    env-steps column): `<results>.png` (and .pdf) and `<results>_summary.csv` / `.md`; and
    `<results>.md` (`reading`): protocol, compute, the table, each run against the zero action
    on its own evaluation episodes (`zero_action_rows`) and the paper's claim per task."""
    from .plotting import find_runs, load_run, plot_runs, summary_table, write_table

    runs = [load_run(p) for p in find_runs([campaign.results])] if campaign.results.is_dir() else []
    runs = [r for r in runs if len(r.returns)]
    if not runs:
        raise OdepolicyError(f"no evaluation run in {campaign.results} has an evaluation yet")
    states = {run.path: _run_state(RunDir(run.path)) for run in runs}  # one read of each run
    for run in runs:
        if states[run.path] != "finished":
            print(f"odepolicy: note: {run.path} is not finished", file=sys.stderr)
    stem = campaign.results.parent / campaign.results.name
    zero = zero_action_rows(runs)
    extended = extended_runs(campaign)
    drawn = runs + [run for run in extended.values() if run is not None and len(run.returns)]
    budgets = {  # env id -> budget: a panel spans its task's budget while runs are under way
        campaign.base_config(t, campaign.task_methods(t)[0]).env: spec.budget
        for t, spec in campaign.tasks.items()
    }
    png, _ = plot_runs(
        drawn, stem.with_suffix(".png"), references=zero_references(zero), budgets=budgets
    )
    table = summary_table(runs)
    _, md_path = write_table(table, stem)
    finished = Counter((r.task, r.method) for r in runs if states[r.path] == "finished")
    under_way = [r.path for r in runs if states[r.path] != "finished"]
    paths = [r.path for r in runs]
    text = reading(campaign, table, finished, status_rows(campaign), paths, zero)
    if extended:
        text += _extended_section(campaign, extended)
    if under_way:
        text += _under_way(campaign, under_way)
    _write_atomic(stem.with_suffix(".md"), text)
    return png, md_path


def _steps(n: int) -> str:
    """'10M' for whole millions of env steps, else '2,500'."""
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n:,}"


def extend_label(campaign: Campaign, task: str) -> str:
    """The method name a task's `extend` run has in the figure: '<method> s<seed> to <N>M'."""
    e = campaign.tasks[task].extend
    return f"{e.method} s{e.seed} to {_steps(e.budget)}"


def extended_runs(campaign: Campaign) -> dict:
    """task -> its `extend` run as a plotting Run named by `extend_label` (None before the
    copy exists), for the tasks that have an `extend`. Not in the table: its budget is not
    the one every method had."""
    from .plotting import load_run

    out = {}
    for task, spec in campaign.tasks.items():
        if spec.extend is None:
            continue
        run = campaign.extend_run(task)
        loaded = load_run(run.path) if run.is_run() and run.progress_file.is_file() else None
        if loaded is not None:
            loaded = dataclasses.replace(loaded, method=extend_label(campaign, task))
        out[task] = loaded
    return out


def _extended_section(campaign: Campaign, extended: dict) -> str:
    """`## Past the budget`: each `extend` run's rule, the decision at the budget and, once
    continued, its numbers."""
    from .plotting import ARS_THRESHOLDS, load_run

    lines = ["", "## Past the budget", ""]
    for task, run in extended.items():
        t = campaign.tasks[task]
        e = t.extend
        source = campaign.eval_run(task, e.method, e.seed)
        rule = (
            f"if it is still climbing there (the mean of its evaluations in the last "
            f"{CLIMB_WINDOW:.0%} of the budget above the mean in the {CLIMB_WINDOW:.0%} before)"
            if e.if_climbing
            else "whatever its curve"
        )
        copy = campaign.extend_run(task)
        text = (
            f"**{task}**: {e.method} seed {e.seed} continues from {_steps(t.budget)} to "
            f"{_steps(e.budget)} env steps {rule}, in `{copy.path}/`; the table above keeps every "
            "method at the budget, the figure draws the continuation as "
            f"'{extend_label(campaign, task)}'."
        )
        if _run_state(source) != "finished":
            lines += [text + " Its evaluation run has not finished.", ""]
            continue
        base = load_run(source.path)
        go, last, before = campaign.extend_decision(task, base)
        at = f" At {_steps(t.budget)}: final return "
        at += f"{base.returns[-1]:.1f}" if len(base.returns) else "none (no evaluation)"
        if np.isfinite(last) and np.isfinite(before):
            at += f", mean {last:.1f} in the last {CLIMB_WINDOW:.0%} against {before:.1f} before"
        elif e.if_climbing:
            at += ", no evaluation in one of the two windows"
        text += at
        if not go:
            lines += [text + ": no longer climbing, not continued.", ""]
            continue
        text += ": still climbing." if e.if_climbing else "."
        if run is None or not len(run.returns):  # the copy is made when its unit starts
            lines += [text + " The continuation starts once the task's other units are done.", ""]
            continue
        done = f"{run.final_env_steps:,} env steps so far"
        if _run_state(copy) == "finished":
            done = "finished"
        text += (
            f" The continuation ({done}): final return {run.returns[-1]:.1f}, best "
            f"{run.returns.max():.1f}"
        )
        threshold = ARS_THRESHOLDS.get(task) or ARS_THRESHOLDS.get(base.task)
        if threshold is not None:
            reached = run.env_steps[run.returns >= threshold]
            text += (
                f"; ARS's threshold ({threshold:.0f}) first reached at {reached[0]:,.0f} env steps"
                if len(reached)
                else f"; ARS's threshold ({threshold:.0f}) not reached"
            )
        lines += [text + ".", ""]
    return "\n".join(lines)


def zero_action_rows(runs) -> list[dict]:
    """Per evaluation run: its task, method, seed, final return and what the zero action (no
    policy) scores on the run's own evaluation episodes (its env, evaluation seeds, episode
    count and horizon, from its config.yaml), stepped by C MuJoCo as the comparison's runs are
    (a `physics: warp` run evaluates in float32 and would differ by rounding). Runs that share
    those episodes share one computation: a few seconds of stepping for the comparison."""
    from .evaluate import zero_action_return
    from .state import eval_seed_base

    cache, rows = {}, []
    for run in runs:
        try:
            config = RunDir(run.path).read_config()
        except OdepolicyError:  # a config this version cannot read (noted as not finished)
            continue
        key = (config.env, eval_seed_base(config), config.eval_episodes, config.horizon)
        if key not in cache:
            cache[key] = zero_action_return(*key)
        final = float(run.returns[-1])
        rows.append(
            {"task": run.task, "method": run.method, "seed": run.seed, "final": final,
             "zero": cache[key]}
        )  # fmt: skip
    return rows


def zero_references(zero: list[dict]) -> dict[str, list[tuple[float, str]]]:
    """The figure's reference line on each task without an ARS threshold (where nothing else
    says what learning is): the zero action's return, mean over the evaluation seeds."""
    from .plotting import ARS_THRESHOLDS

    references = {}
    for task in dict.fromkeys(r["task"] for r in zero if r["task"] not in ARS_THRESHOLDS):
        per_seed = {r["seed"]: r["zero"] for r in zero if r["task"] == task}
        mean = float(np.mean(list(per_seed.values())))
        references[task] = [(mean, f"zero action {mean:.0f} (mean over seeds)")]
    return references


def _below_zero(rows: list[dict]) -> dict[str, tuple[int, int]]:
    """method -> (seeds whose final return beats the zero action's, seeds), for the methods
    that do not beat it on every seed."""
    counts: dict[str, list[int]] = {}
    for r in rows:
        c = counts.setdefault(r["method"], [0, 0])
        c[0] += r["final"] > r["zero"]
        c[1] += 1
    return {m: (a, n) for m, (a, n) in counts.items() if a < n}


def _zero_section(zero: list[dict]) -> list[str]:
    """The report's section on the zero action: per task, its return on each evaluation
    seed's episodes, and each method's final return minus it (mean over seeds) with the
    number of seeds on which the method ends above it."""
    lines = [
        "## Against the zero action",
        "",
        "A method has learned something only where it ends above the zero action (no policy) "
        "on the same evaluation episodes. A run's evaluation episodes are fixed by its seed and "
        "are the same for every method; where start states differ widely (swimmer6 puts its "
        "target at random) the zero action's return differs more from seed to seed than some "
        "methods' do, so each run is held against the zero action on its own episodes. Gain: "
        "a run's final return minus the zero action's on its episodes, mean over seeds, and in "
        "brackets the seeds on which the run ends above it.",
        "",
        "| task | zero action's return (seed) | gain of each method (seeds above it / seeds) |",
        "|---|---|---|",
    ]
    for task in dict.fromkeys(r["task"] for r in zero):
        rows = [r for r in zero if r["task"] == task]
        seeds = {r["seed"]: r["zero"] for r in rows}
        per_seed = ", ".join(f"{z:.1f} (s{s})" for s, z in sorted(seeds.items()))
        gains = {}
        for r in rows:
            gains.setdefault(r["method"], []).append(r["final"] - r["zero"])
        order = sorted(gains, key=lambda m: -float(np.mean(gains[m])))
        cells = ", ".join(
            f"{m} {float(np.mean(gains[m])):+.1f} ({sum(g > 0 for g in gains[m])}/{len(gains[m])})"
            for m in order
        )
        lines.append(f"| {task} | {per_seed} | {cells} |")
    return lines + [""]


# "Ode to an ODE", Sec. 5.1.3 and Fig. 2 (../shared/ANCHORS.md): what the paper says of each of
# its tasks. "best": ODEtoODE is solely the best; "top2": one of the two best. The third entry
# names the methods the paper says do not learn the task; "does not learn" is measured as a
# mean final return under a third of ARS's threshold (the bar a preset must reach).
PAPER_CLAIMS = {
    "HalfCheetah-v5": ("best", "ODEtoODE is the best of the methods", ()),
    "Humanoid-v5": (
        "best",
        "ODEtoODE (h = 64) is the best, the only method that learns good policies, and "
        "DeepNet does not learn at all",
        ("deepnet",),
    ),
    "Swimmer-v5": (
        "top2",
        "ODEtoODE is one of the two best methods; HyperNet does not learn",
        ("hypernet",),
    ),
    "Walker2d-v5": ("top2", "ODEtoODE is one of the two best methods", ()),
    "dm_control/swimmer-swimmer6-v0": ("top2", "ODEtoODE is one of the two best methods", ()),
}
NO_LEARNING = 1 / 3  # of ARS's threshold: under it, a method "does not learn" the task
ODE_TO_ODE = ("iso_odetoode", "gated_odetoode")  # the paper's ODEtoODE, without additions


def _claim_paragraph(
    task: str, rows: list[dict], finished: Counter, campaign: Campaign, zero=()
) -> str:
    """One task's paragraph: the paper's claim, the measured order, and a verdict that says
    'provisional' until every method of the campaign has all its evaluation runs finished."""
    rows = sorted(rows, key=lambda r: r["rank"])
    order = "; ".join(
        f"{r['rank']}. {r['method']} {r['final_return_mean']:.1f} ± {r['final_return_std']:.1f}"
        for r in rows
    )
    keys = {  # env id -> task
        campaign.base_config(k, campaign.task_methods(k)[0]).env: k for k in campaign.tasks
    }
    key = keys.get(task, task if task in campaign.tasks else None)
    seeds = len(campaign.eval_seeds(key)) if key else len(campaign.spec.evaluate.seeds)
    methods = campaign.task_methods(key) if key else list(campaign.methods)
    complete = [m for m in methods if finished[(task, m)] >= seeds]
    status = (
        "final"
        if len(complete) == len(methods) and {r["method"] for r in rows} >= set(methods)
        else f"provisional: {len(complete)} of {len(methods)} methods have all "
        f"{seeds} evaluation runs finished"
    )
    claim = PAPER_CLAIMS.get(task)
    measured = f"Measured, by final return (mean ± std over seeds): {order}."
    if claim is None:
        return f"**{task}** ({status}). The paper does not report this task. {measured}"
    kind, text, no_learn = claim
    ode = [r for r in rows if r["method"] in ODE_TO_ODE]
    lines = [f"**{task}** ({status}). The paper: {text}.", measured]
    so_far = " so far" if status != "final" else ""
    task_zero = [z for z in zero if z["task"] == task]
    below = _below_zero(task_zero)
    learned = {z["method"] for z in task_zero} - set(below)  # above the zero action, every seed
    if not ode:
        lines.append("No ODEtoODE run has an evaluation yet.")
    else:
        best = ode[0]
        above = [r["method"] for r in rows if r["rank"] < best["rank"]]
        holds = best["rank"] == 1 and sum(r["rank"] == 1 for r in rows) == 1
        if kind == "top2":
            holds = best["rank"] <= 2
        verdict = "holds" if holds else "does not hold"
        where = f" ({', '.join(above)} above it)" if above else ""
        head = f"The best ODEtoODE form, {best['method']}, ranks {best['rank']} of {len(rows)}"
        gap, spread, close = _margin(best, rows[1]) if len(rows) > 1 else (0.0, 0.0, False)
        if task_zero and not learned:  # an order among policies that learned nothing
            lines.append(
                f"{head}{where}, but no method ends above the zero action on every seed's "
                "evaluation episodes: the order is among policies that learned nothing, and the "
                f"claim is undecided here{so_far}."
            )
        elif task_zero and holds and best["method"] not in learned:
            does = "does" if len(learned) == 1 else "do"
            lines.append(
                f"{head}{where}, but it does not end above the zero action on every seed's "
                f"evaluation episodes, and {', '.join(sorted(learned))} {does}: the claim does "
                f"not hold here{so_far}."
            )
        elif best["rank"] == 1 and holds and close:
            lines.append(
                f"{head}, ahead of {rows[1]['method']} by {gap:.1f}, less than the larger of "
                f"their spreads over seeds ({spread:.1f}): the claim holds here by rank, not by "
                f"a clear margin{so_far}."
            )
        else:
            lines.append(f"{head}{where}: the claim {verdict} here{so_far}.")
    unlearned = []  # the methods the paper says do not learn, and measured under the bar
    for r in rows:
        bar = _no_learning_bar(r)
        if r["method"] not in no_learn or bar is None:
            continue
        final = r["final_return_mean"]
        if final < bar:
            unlearned.append(r["method"])
        lines.append(
            f"{r['method']} ends at {final:.1f}, under a third of ARS's threshold ({bar:.0f}): "
            f"it does not learn here either{so_far}."
            if final < bar
            else f"{r['method']} ends at {final:.1f}, past a third of ARS's threshold "
            f"({bar:.0f}): it learns here{so_far}, which the paper says it does not."
        )
    bar = _no_learning_bar(ode[0]) if no_learn and ode else None
    if bar is not None and ode[0]["final_return_mean"] < bar:  # the bar says the same of ODEtoODE
        contrast = (
            f": the contrast the paper draws with {', '.join(unlearned)} is not seen"
            if unlearned
            else ""
        )
        lines.append(
            f"By the same bar, {ode[0]['method']} ({ode[0]['final_return_mean']:.1f}) does not "
            f"learn here either{so_far}{contrast}."
        )
    if below:
        lines.append(
            "Not above the zero action on every seed's evaluation episodes: "
            + ", ".join(f"{m} ({a} of {n} seeds above it)" for m, (a, n) in below.items())
            + "."
        )
    return " ".join(lines)


def _margin(first: dict, second: dict) -> tuple[float, float, bool]:
    """(gap between two methods' mean final returns, the larger of their standard deviations
    over seeds, whether the gap is under it: an order a seed or two could turn over)."""
    gap = first["final_return_mean"] - second["final_return_mean"]
    spread = max(first["final_return_std"], second["final_return_std"])
    return gap, spread, gap < spread


def _no_learning_bar(row: dict) -> float | None:
    """The return under which a method "does not learn" its task (a third of ARS's threshold),
    or None for a task without a threshold."""
    if row.get("threshold") in (None, ""):
        return None
    return NO_LEARNING * float(row["threshold"])


def _machines(paths) -> str:
    """'12 runs on 2 x AMD EPYC (AVX2), ...': the machines of the evaluation runs, from their
    meta.json (`cpu` is recorded since 2026-12-05)."""
    counts = Counter()
    for path in paths:
        meta = RunDir(path).read_meta()
        cpus = [meta.get("cpu")] + [r.get("cpu") for r in meta.get("resumes", [])]
        cpus = list(dict.fromkeys(c or "a CPU not recorded" for c in cpus))  # in order, once
        counts[f"{meta.get('cpus', '?')} cores of {' then '.join(cpus)}"] += 1
    return "; ".join(f"{n} run{'s' * (n > 1)} on {m}" for m, n in counts.most_common())


def _under_way(campaign: Campaign, paths) -> str:
    """The evaluation runs that have not reached their budget: their last evaluation stands in
    for the final one in the table until they do."""
    lines = [
        "",
        "## Runs under way",
        "",
        "Their last evaluation stands for the final one in the table until they finish.",
        "",
    ]
    for path in paths:
        try:
            counters = RunDir(path).checkpoint_counters() or {}
        except OdepolicyError:
            counters = {}
        steps = int(counters.get("env_steps", 0))
        rel = Path(path).resolve().relative_to(campaign.results.resolve()).as_posix()
        lines.append(f"- {rel}: {steps:,} env steps so far")
    return "\n".join(lines) + "\n"


def reading(
    campaign: Campaign,
    table: list[dict],
    finished: Counter,
    status: list[dict],
    run_paths=(),
    zero=(),
) -> str:
    """`<results>.md`: the protocol, compute, the table and the paper's claim task by task."""
    from .plotting import table_markdown

    spec = campaign.spec
    name = campaign.results.name
    tasks = ", ".join(f"{t} {s.budget / 1e6:g}M" for t, s in campaign.tasks.items())
    tuned = [t for t, s in campaign.tasks.items() if s.tune]
    lines = [
        f"# {name.capitalize()}: every method under one protocol",
        "",
        f"Made by `odepolicy campaign report {campaign.path}` from the evaluation runs in "
        f"`{campaign.results}/` (each number is read from a run's own progress.csv); the "
        f"figure is `{name}.png`, the table also `{name}_summary.csv`. Rerun the command to "
        "regenerate all three.",
        "",
        "## Protocol",
        "",
        f"- Tasks and env steps per evaluation run: {tasks}.",
        f"- Methods: {', '.join(campaign.methods)}.",
    ]
    if tuned:
        lines += [
            f"- Explore ({', '.join(tuned)}): {spec.explore.trials} trials of "
            f"{spec.explore.budget / 1e6:g}M env steps on the base config's seed, median "
            "pruning, each family's default search space.",
            f"- Confirm: the best {spec.confirm.top} trials on seeds "
            f"{', '.join(map(str, spec.confirm.seeds))}; the pick is the best median over the "
            "tuning seed and these.",
        ]
    for task, t in campaign.tasks.items():
        if t.methods:
            only = ", ".join(
                f"{m} ({', '.join(t.methods[m])})" if t.methods[m] else m
                for m in campaign.task_methods(task)
            )
            lines.append(f"- {task}: only {only}.")
        if t.extend is not None:
            lines.append(
                f"- {task}: {t.extend.method} seed {t.extend.seed} continues to "
                f"{_steps(t.extend.budget)} env steps"
                + (" if it still climbs at the budget" if t.extend.if_climbing else "")
                + " (Past the budget, below)."
            )
        if not t.tune:
            seeds = ", ".join(map(str, campaign.eval_seeds(task)))
            lines.append(
                f"- {task}: no tuning; every method with the settings of `{t.base}`, "
                f"evaluated on seeds {seeds}."
            )
    if tuned:
        bases = ", ".join(f"{t} `{campaign.tasks[t].base}`" for t in tuned)
        lines.append(
            f"- Base configs (a task's fixed settings, the same for every method): {bases}."
        )
    shared = [
        t for t, s in campaign.tasks.items() if config_from_dict(read_yaml(s.base)).shared_start
    ]
    if shared:
        lines.append(
            f"- {', '.join(shared)}: every episode of an ES iteration starts from one start "
            "state (`shared_start: true`), so that directions are ranked on the same episode "
            "(the task's start states differ more than its policies do)."
        )
    seeds = sorted({s for t in tuned for s in campaign.eval_seeds(t)})
    if seeds:
        lines += [
            f"- Evaluate: the pick at the task's budget on seeds {', '.join(map(str, seeds))}."
        ]
    if spec.max_evals is not None:
        lines += [
            f"- Evaluation runs evaluate the centre every `eval_every` iterations, but at most "
            f"about {round(1.1 * spec.max_evals):,} times (`max_evals: {spec.max_evals}`: a run "
            "whose iterations shrink to a few env steps skips some); best return is the best "
            "of the evaluations made."
        ]
    if spec.progress_rows is not None:
        lines += [
            f"- Logs: iterations shorter than a {spec.progress_rows:,}th of the budget share a "
            f"progress.csv row (`progress_rows: {spec.progress_rows}`); evaluations always end "
            "a row."
        ]
    lines += ["", "## Progress and compute", ""]
    lines += [
        "| task | stage | units done | units left | core-hours spent | core-hours left (est.) |"
    ]
    lines += ["|---|---|---:|---:|---:|---:|"]
    for r in status:
        lines.append(
            f"| {r['task']} | {r['stage']} | {r['done']} | {r['left']} | "
            f"{_hours(r['spent_s'])} | {_left(r)} |"
        )
    spent = sum(r["spent_s"] for r in status)
    left = sum(r["left_s"] for r in status)
    lines += [
        f"| all | | {sum(r['done'] for r in status)} | {sum(r['left'] for r in status)} | "
        f"{_hours(spent)} | {_hours(left)} |",
        "",
        "Core-hours are the CPU time of each unit's processes (a Ray run's actors included), on "
        "the machines the units ran on (its wall time, for work recorded before odepolicy "
        "counted CPU time, where minutes a stopped campaign sat count too); the estimate left "
        "uses the rates measured so far."
        + (f" ({BORROWED}.)" if any(r.get("borrowed") for r in status) else "")
        + (f" Evaluation runs: {_machines(run_paths)}." if run_paths else ""),
        "",
        "## Results",
        "",
        "Final and best return: each seed's last and best evaluation of the centre policy, mean "
        "± std over seeds. Steps to threshold: ARS's threshold, over the seeds that reached it. "
        "Rank: by final return within the task. A run still under way shows fewer env steps "
        "than its budget.",
        "",
        table_markdown(table).rstrip("\n"),
        "",
    ]
    if zero:
        lines += _zero_section(list(zero))
    lines += [
        "## The paper's claim, task by task",
        "",
        "ODEtoODE here is the better of ISO- and gated-ODEtoODE as the paper defines them; "
        "ISO-ODEtoODE with the linear skip path is not the paper's policy and is ranked as its "
        "own method.",
        "",
    ]
    for task in dict.fromkeys(r["task"] for r in table):
        rows = [r for r in table if r["task"] == task]
        lines += [_claim_paragraph(task, rows, finished, campaign, zero), ""]
    return "\n".join(lines)
