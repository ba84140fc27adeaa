"""`odepolicy campaign`: a whole comparison (tasks x methods) as stages of resumable units.

A campaign file is YAML, checked by the same typed rules as run configs:

    studies: experiments/comparison/studies   # studies, confirm runs and scores, picks (commit)
    runs: runs/comparison                     # the log, unit logs and locks (scratch)
    results: results/comparison               # evaluation runs: <task>/<method>/s<seed> (commit)
    parallel: 2                               # units at a time (--parallel)
    progress_rows: 1000                       # logs follow the env-step budget (all runs)
    max_evals: 1000                           # evaluations too (evaluation runs)
    explore: {trials: 12, budget: 1000000, sampler_seed: 0}
    confirm: {top: 3, seeds: [1, 2]}
    evaluate: {seeds: [100, 101, 102]}
    methods:
      iso_odetoode: {policy: iso_odetoode}
      iso_odetoode_skip: {policy: iso_odetoode, set: [policy.kwargs.linear_skip=true]}
    tasks:
      Swimmer-v5: {base: experiments/comparison/base/Swimmer-v5.yaml, budget: 1000000}

Every (task, method) goes through three stages, the same for every method of a task:

1. explore: an `odepolicy tune` study of `explore.trials` trials of `explore.budget` env steps
   on the base config's seed (the tuning seed), the family's default space, median pruning, in
   `<studies>/<task>/<method>/study.sqlite3`. A study that already holds trials is continued.
2. confirm: the `confirm.top` best complete trials, each trained again with its settings on every
   `confirm.seeds` seed for the same budget and scored as tune scores (the mean of the last 3
   evaluations); the pick is the trial with the best median over the tuning seed and these.
   Each confirm run is the run folder `<studies>/<task>/<method>/confirm/trial_NNNN_sS`, its
   score the file beside it (`trial_NNNN_sS.json`, written when the run ends), and the pick,
   as a config ready for `odepolicy train` with the task's budget, to `.../pick.yaml`.
3. evaluate: the pick trained for the task's `budget` env steps on each `evaluate.seeds` seed
   (seeds no tuning saw) as the run folder `<results>/<task>/<method>/s<seed>`.

A task with `tune: false` skips explore and confirm: every method is evaluated with the base
config's settings and its own `set` (one fixed protocol, as for Humanoid), on the task's own
`seeds` if it gives them. A task's `methods` (method -> its own key=value overrides) limits it
to those methods, as Humanoid runs the paper's three at its sizes; its `checkpoint_every`
replaces the campaign's for its units.

A unit is one explore study, one confirm run or one evaluation run; a unit becomes ready when
the stage before it has finished for its (task, method), and units are taken in the file's task
order, and within a task in its method order. `run` works through the ready units, `parallel` at
a time, each as its own process (`odepolicy tune` or `odepolicy train`); with `--address` each
uses the Ray cluster's fair share. It can be killed at any moment: finished units are never run
again, a confirm or evaluation run continues from its latest checkpoint, and an interrupted
explore trial is continued by the next tune process from its run's checkpoint with its own
settings, so a resumed campaign gives the numbers an uninterrupted one gives. Several `run`
processes (one per machine on a shared disk) can work on one campaign: a run unit is claimed
with a lock file, a study is shared as `tune` shares it. Within one `run`, a study has one tune
process, so its trials run in a fixed order and a re-run gives the same study. Every start and
end of a unit is a line of `<runs>/campaign.log`.

`status` prints each stage's units done and left per task, the core-hours spent (one core per
local process) and an estimate of those left from the rates measured so far. `report` is
`campaign_report`.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np

from . import OdepolicyError
from .config import build_typed, config_from_dict, dump_config, read_yaml, read_yaml_mapping
from .rundir import RunDir
from .sweep import child_env, stop_processes
from .tune import LAST_EVALS, logged_evals, run_score

__all__ = ["load_campaign", "Campaign", "campaign_command", "STAGES"]

STAGES = ("explore", "confirm", "evaluate", "extend")
# The run of a task's `extend` (one method, one seed) continues past the budget when, at the
# budget, it is still climbing: the mean of its evaluations in the last fifth of the budget is
# above the mean of those in the fifth before (CLIMB_WINDOW of the budget each).
CLIMB_WINDOW = 0.2

WAIT_S = 5.0  # how often a worker with nothing ready looks again


@dataclass
class ExploreSpec:
    trials: int = 12
    budget: int = 1_000_000
    sampler_seed: int = 0


@dataclass
class ConfirmSpec:
    top: int = 3
    seeds: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class EvaluateSpec:
    seeds: list[int] = field(default_factory=lambda: [100, 101, 102])


@dataclass
class MethodSpec:
    policy: str = ""
    label: str = ""  # display name (default: the method's key)
    set: list[str] = field(default_factory=list)  # overrides of every unit of the method


@dataclass
class ExtendSpec:
    method: str = ""  # one of the task's methods
    seed: int | None = None  # one of the task's evaluation seeds
    budget: int = 0  # env steps of the continued run (above the task's budget)
    # true: only if the evaluation run is still climbing at the task's budget (`climbing`);
    # false: always.
    if_climbing: bool = True


@dataclass
class TaskSpec:
    base: str = ""  # base config (its seed is the tuning seed)
    budget: int = 0  # env steps of an evaluation run
    set: list[str] = field(default_factory=list)
    # false: no explore or confirm; every method is evaluated with the base config's settings
    # (plus its own `set`), as when one fixed protocol is the comparison (Humanoid).
    tune: bool = True
    seeds: list[int] = field(default_factory=list)  # evaluation seeds (default: evaluate.seeds)
    # Only these of the campaign's methods run the task, each with its own overrides (method
    # key -> list of key=value), as Humanoid's paper sizes; empty: every method, as listed.
    methods: dict = field(default_factory=dict)
    # Iterations between checkpoints of this task's units (null: the campaign's), for a task
    # whose iterations are long (Humanoid's late ones are minutes each).
    checkpoint_every: int | None = None
    # One evaluation run continued past the budget to `extend.budget` env steps, in a copy under
    # `<results>_extended/` (the task's table and ranks keep the budget every method had), as
    # Humanoid's ISO-ODEtoODE seed to 20M while it still climbs at 10M.
    extend: dict = field(default_factory=dict)


@dataclass
class CampaignFile:
    studies: str = "runs/campaign/studies"
    runs: str = "runs/campaign"
    results: str = "runs/campaign/results"
    parallel: int = 1
    # Iterations between checkpoints of every trial and run: a killed campaign loses at most
    # this many iterations of each unit it was running. The numbers do not depend on it.
    checkpoint_every: int = 10
    # The run config keys of the same names (null: not set). `progress_rows` goes to every trial
    # and run: their committed logs follow the env-step budget, not the iteration count, and no
    # number changes. `max_evals` goes to evaluation runs only: it can skip evaluations, and
    # tuning scores runs by their last evaluations.
    progress_rows: int | None = None
    max_evals: int | None = None
    explore: ExploreSpec = field(default_factory=ExploreSpec)
    confirm: ConfirmSpec = field(default_factory=ConfirmSpec)
    evaluate: EvaluateSpec = field(default_factory=EvaluateSpec)
    methods: dict = field(default_factory=dict)
    tasks: dict = field(default_factory=dict)


def _sets(values, what: str) -> list[str]:
    for v in values:
        if not isinstance(v, str) or "=" not in v:
            raise OdepolicyError(f"{what}: entry {v!r} is not key=value")
    return list(values)


def _find(name: str, base: Path) -> Path:
    for candidate in (Path(name), base / name):
        if candidate.is_file():
            return candidate
    raise OdepolicyError(f"base config {name!r} not found (relative to the CWD or {base})")


def _folder_name(key, what: str) -> str:
    if not isinstance(key, str) or not key or not all(c.isalnum() or c in "._+-" for c in key):
        raise OdepolicyError(f"{what} {key!r} must be a folder name (letters, digits, . _ + -)")
    return key


def _entries(mapping: dict, cls, section: str) -> dict:
    """`methods` or `tasks`: folder-name keys, each a mapping of `cls`'s typed keys."""
    out = {}
    for key, value in mapping.items():
        where = f"{section}.{key}"
        _folder_name(key, section[:-1])
        if not isinstance(value, dict):
            raise OdepolicyError(f"campaign key {where!r} must be a mapping")
        entry = build_typed(cls, value, where + ".", "campaign key")
        entry.set = _sets(entry.set, where + ".set")
        out[key] = entry
    return out


def _extend_spec(campaign: Campaign, key: str) -> ExtendSpec | None:
    task = campaign.tasks[key]
    if not task.extend:
        return None
    e = build_typed(ExtendSpec, task.extend, f"tasks.{key}.extend.", "campaign key")
    where = f"tasks.{key}.extend"
    runs = campaign.task_methods(key)
    if e.method not in runs:
        raise OdepolicyError(
            f"{where}.method must be one of the task's methods ({', '.join(runs)})"
        )
    seeds = campaign.eval_seeds(key)
    if e.seed not in seeds:
        raise OdepolicyError(
            f"{where}.seed must be one of the task's evaluation seeds "
            f"({', '.join(map(str, seeds))})"
        )
    if e.budget <= task.budget:
        raise OdepolicyError(f"{where}.budget must be above the task's budget ({task.budget:,})")
    return e


def climbing(env_steps, returns, budget: int) -> tuple[bool, float, float]:
    """(still climbing at `budget`, mean evaluation return in the last CLIMB_WINDOW of the budget,
    mean in the window before it): climbing when the first is above the second. A window
    without an evaluation gives nan and False."""
    steps, rets = np.asarray(env_steps, dtype=float), np.asarray(returns, dtype=float)
    hi, mid, lo = budget, (1 - CLIMB_WINDOW) * budget, (1 - 2 * CLIMB_WINDOW) * budget
    windows = (rets[(steps > mid) & (steps <= hi)], rets[(steps > lo) & (steps <= mid)])
    last, before = (float(np.mean(w)) if len(w) else math.nan for w in windows)
    return bool(last > before), last, before  # False when either is nan


def load_campaign(path: str | Path) -> Campaign:
    """Read and check a campaign file; OdepolicyError names what is wrong (before any work)."""
    from .policies import POLICIES

    path = Path(path)
    data = read_yaml_mapping(path, "campaign file", "studies, runs, results, methods, tasks, ...")
    try:
        spec = build_typed(CampaignFile, data, kind="campaign key")
        if not spec.methods or not spec.tasks:
            raise OdepolicyError("'methods' and 'tasks' must be non-empty mappings")
        methods = _entries(spec.methods, MethodSpec, "methods")
        for key, m in methods.items():
            if m.policy not in POLICIES:
                known = ", ".join(sorted(POLICIES))
                raise OdepolicyError(
                    f"methods.{key}.policy: unknown policy {m.policy!r}; known: {known}"
                )
        tasks = _entries(spec.tasks, TaskSpec, "tasks")
        for key, t in tasks.items():
            if not t.base:
                raise OdepolicyError(f"tasks.{key} needs a 'base' config")
            if t.budget < 1:
                raise OdepolicyError(f"tasks.{key}.budget must be a positive number of env steps")
            t.base = str(_find(t.base, path.parent))
            for method, sets in t.methods.items():
                if sets is not None and not isinstance(sets, list):
                    raise OdepolicyError(
                        f"tasks.{key}.methods.{method} must be a list of key=value overrides"
                    )
                if method not in methods:
                    raise OdepolicyError(
                        f"tasks.{key}.methods: {method!r} is not one of the campaign's methods "
                        f"({', '.join(methods)})"
                    )
                t.methods[method] = _sets(sets or [], f"tasks.{key}.methods.{method}")
            if t.checkpoint_every is not None and t.checkpoint_every < 1:
                raise OdepolicyError(f"tasks.{key}.checkpoint_every must be a positive integer")
        ex, co, ev = spec.explore, spec.confirm, spec.evaluate
        if ex.trials < 1 or ex.budget < 1:
            raise OdepolicyError("explore.trials and explore.budget must be positive")
        if co.top < 1:
            raise OdepolicyError("confirm.top must be positive")
        if spec.parallel < 1 or spec.checkpoint_every < 1:
            raise OdepolicyError("'parallel' and 'checkpoint_every' must be positive integers")
        for key in ("progress_rows", "max_evals"):
            if getattr(spec, key) is not None and getattr(spec, key) < 1:
                raise OdepolicyError(f"'{key}' must be a positive integer (or null)")
        for what, seeds in (("confirm.seeds", co.seeds), ("evaluate.seeds", ev.seeds)):
            if not seeds or len(set(seeds)) != len(seeds):
                raise OdepolicyError(f"{what} must be a non-empty list of distinct seeds")
        campaign = Campaign(path, spec, methods, tasks)
        for key, t in tasks.items():
            t.extend = _extend_spec(campaign, key)  # its method and seed: the task's own
        for task, t in tasks.items():  # every config the campaign will build, checked now
            seeds = campaign.eval_seeds(task)
            if len(set(seeds)) != len(seeds):
                raise OdepolicyError(f"tasks.{task}.seeds must be distinct")
            for method in campaign.task_methods(task):
                seed = campaign.base_config(task, method).seed
                if t.tune and (seed in co.seeds or seed in seeds or set(co.seeds) & set(seeds)):
                    raise OdepolicyError(
                        f"tasks.{task}: the tuning seed {seed} and the confirm and evaluate "
                        "seeds must all differ"
                    )
    except OdepolicyError as exc:
        raise OdepolicyError(f"campaign file {path}: {exc}") from None
    return campaign


class Campaign:
    """The units of a campaign file and where their files live."""

    def __init__(self, path: Path, spec: CampaignFile, methods: dict, tasks: dict):
        self.path, self.spec, self.methods, self.tasks = path, spec, methods, tasks
        self.studies, self.runs = Path(spec.studies), Path(spec.runs)
        self.results = Path(spec.results)
        self.extended = self.results.parent / f"{self.results.name}_extended"
        self.cache: dict = {}  # study file -> (its stamp, study, trials)

    # -- configs ---------------------------------------------------------------------------
    def method_sets(self, task: str, method: str) -> list[str]:
        """The overrides that make the task's base config this method (as tune's --set)."""
        m, t = self.methods[method], self.tasks[task]
        return [f"policy.name={m.policy}", *m.set, *t.set, *t.methods.get(method, [])]

    def task_methods(self, task: str) -> list[str]:
        """The methods that run a task, in the file's order of `methods`."""
        only = self.tasks[task].methods
        return [m for m in self.methods if not only or m in only]

    def eval_seeds(self, task: str) -> list[int]:
        return list(self.tasks[task].seeds or self.spec.evaluate.seeds)

    def base_config(self, task: str, method: str):
        return config_from_dict(read_yaml(self.tasks[task].base), self.method_sets(task, method))

    # -- files -----------------------------------------------------------------------------
    def study_dir(self, task: str, method: str) -> Path:
        return self.studies / task / method

    def confirm_score(self, task: str, method: str, trial: int, seed: int) -> Path:
        return self.study_dir(task, method) / "confirm" / f"trial_{trial:04d}_s{seed}.json"

    def confirm_run(self, task: str, method: str, trial: int, seed: int) -> RunDir:
        return RunDir(self.study_dir(task, method) / "confirm" / f"trial_{trial:04d}_s{seed}")

    def pick_file(self, task: str, method: str) -> Path:
        return self.study_dir(task, method) / "pick.yaml"

    def eval_run(self, task: str, method: str, seed: int) -> RunDir:
        return RunDir(self.results / task / method / f"s{seed}")

    def extend_run(self, task: str) -> RunDir | None:
        """The continued copy of a task's `extend` run (None: the task has no `extend`)."""
        e = self.tasks[task].extend
        return RunDir(self.extended / task / e.method / f"s{e.seed}") if e else None

    def extend_decision(self, task: str, run=None) -> tuple[bool, float, float]:
        """(continue, mean of the last window, mean of the window before) for a task's `extend`
        run at the task's budget, from its evaluation run (which must be finished; `run`: that
        run already loaded by `plotting.load_run`)."""
        from .plotting import load_run

        e = self.tasks[task].extend
        if run is None:
            run = load_run(self.eval_run(task, e.method, e.seed).path)
        up, last, before = climbing(run.env_steps, run.returns, self.tasks[task].budget)
        return (up or not e.if_climbing), last, before

    def log(self, line: str) -> None:
        self.runs.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now().isoformat(timespec="seconds")
        with open(self.runs / "campaign.log", "a") as fh:  # one short O_APPEND write a line
            fh.write(f"{stamp} {line}\n")


# -- the state of each stage, read from the files ------------------------------------------------
def _study(campaign: Campaign, task: str, method: str):
    """The explore study, or None before it exists."""
    import optuna

    db = campaign.study_dir(task, method) / "study.sqlite3"
    try:
        stamp = db.stat()
    except FileNotFoundError:
        return None
    with open(db, "rb") as fh:  # SQLite's file change counter: bytes 24-27 of the header
        counter = fh.read(28)[24:]
    key = (stamp.st_mtime_ns, stamp.st_size, counter)
    cached = campaign.cache.get(db)
    if cached is None or cached[0] != key:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Read only: `odepolicy tune`, which writes the study, checks its schema; checking it
        # again at every look (alembic loads its revision files) was a third of `status`.
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{db}", skip_compatibility_check=True, skip_table_creation=True
        )
        study = optuna.load_study(study_name="odepolicy", storage=storage)
        cached = campaign.cache[db] = (key, study, study.get_trials(deepcopy=False))
    return _Snapshot(cached[1], cached[2])


class _Snapshot:
    """A study with its trials read once (reading them is most of the cost of a look)."""

    def __init__(self, study, trials):
        self.study, self.trials = study, trials

    def get_trials(self, deepcopy=False, states=None):
        return [t for t in self.trials if states is None or t.state in states]


def _states(study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def explore_state(campaign: Campaign, task: str, method: str) -> str:
    """'done' (the study holds its trials, none running), 'running' (it holds them counting
    trials running now) or 'todo'."""
    study = _study(campaign, task, method)
    if study is None:
        return "todo"
    from .tune import _interrupted

    s = _states(study)
    finished = s.get("COMPLETE", 0) + s.get("PRUNED", 0)
    trials = campaign.spec.explore.trials
    running = s.get("RUNNING", 0)
    if running:  # a trial whose process died is not running: the next tune takes it over
        if _interrupted(study, campaign.study_dir(task, method)):
            return "todo"
    if finished >= trials and not running:
        return "done"
    if finished + running >= trials:
        return "running"
    return "todo"


def top_trials(campaign: Campaign, task: str, method: str) -> list:
    """The confirm stage's trials: the best complete ones (ties: the earlier trial)."""
    import optuna

    study = _study(campaign, task, method)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise OdepolicyError(f"the study of {task}/{method} has no complete trial")
    complete.sort(key=lambda t: (-t.value, t.number))
    return complete[: campaign.spec.confirm.top]


def _read_score(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def confirm_scores(campaign: Campaign, task: str, method: str) -> dict:
    """{trial number: {seed: score}} for the top trials: the tuning seed's score is the study's
    value; a confirm seed is there once its run has finished."""
    out = {}
    for t in top_trials(campaign, task, method):
        tuning_seed = campaign.base_config(task, method).seed
        scores = {tuning_seed: float(t.value)}
        for seed in campaign.spec.confirm.seeds:
            record = _read_score(campaign.confirm_score(task, method, t.number, seed))
            if record is not None:
                scores[seed] = float(record["score"])
        out[t.number] = scores
    return out


def pick(campaign: Campaign, task: str, method: str) -> tuple[int, float, dict] | None:
    """(trial, median score, scores) of the pick once every confirm run has finished."""
    scores = confirm_scores(campaign, task, method)
    need = 1 + len(campaign.spec.confirm.seeds)
    if any(len(s) < need for s in scores.values()):
        return None
    medians = {n: float(np.median(list(s.values()))) for n, s in scores.items()}
    best = min(medians, key=lambda n: (-medians[n], n))
    return best, medians[best], scores


def _trial_sets(trial) -> list[str]:
    """A trial's own overrides, without where it ran (the backend does not change results)."""
    return [o for o in trial.user_attrs["overrides"] if not o.startswith("backend.")]


def write_pick(campaign: Campaign, task: str, method: str) -> Path:
    """`pick.yaml`: the picked trial's config with the task's evaluation budget, and a header
    that states the protocol and the scores behind the pick."""
    import optuna

    number, median, scores = pick(campaign, task, method)
    study = _study(campaign, task, method)
    trial = study.trials[number]
    spec = campaign.spec
    sets = [*_trial_sets(trial), f"max_env_steps={campaign.tasks[task].budget}"]
    config = config_from_dict(read_yaml(campaign.tasks[task].base), sets)
    n_trials = len([t for t in study.trials if t.state != optuna.trial.TrialState.FAIL])
    per_trial = "; ".join(
        f"trial {n}: " + ", ".join(f"s{seed} {v:.2f}" for seed, v in sorted(s.items()))
        for n, s in scores.items()
    )
    lines = [
        f"{task} / {method}: picked by the campaign {campaign.path}.",
        f"Explore: {n_trials} trials of {spec.explore.budget:,} env steps on seed {config.seed} "
        "(Optuna TPE, median pruning, the family's default space).",
        f"Confirm: the best {spec.confirm.top} trials on seeds "
        f"{', '.join(map(str, spec.confirm.seeds))}, each scored by the mean of its last "
        f"{LAST_EVALS} evaluations; pick: the best median over seeds.",
        f"Scores: {per_trial}.",
        f"Pick: trial {number}, median {median:.2f}. Budget: {campaign.tasks[task].budget:,} "
        "env steps.",
    ]
    header = "".join(f"# {line}\n" for line in lines)
    path = campaign.pick_file(task, method)
    config.iterations = 1_000_000_000
    _write_atomic(path, header + dump_config(config))
    return path


def write_fixed_pick(campaign: Campaign, task: str, method: str) -> Path:
    """`pick.yaml` of a task without tuning: the base config with the method's overrides and
    the task's budget."""
    t = campaign.tasks[task]
    sets = [*campaign.method_sets(task, method), f"max_env_steps={t.budget}"]
    config = config_from_dict(read_yaml(t.base), [*sets, "iterations=1000000000"])
    lines = [
        f"{task} / {method}: the campaign {campaign.path} evaluates this task without tuning:",
        f"the settings of {t.base} for every method, with {', '.join(sets)}.",
    ]
    path = campaign.pick_file(task, method)
    _write_atomic(path, "".join(f"# {line}\n" for line in lines) + dump_config(config))
    return path


def _write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file of this process and thread: the
    campaign's workers are threads, and two finishing a method's last confirm runs at once
    both write its pick (the same text; with one temporary file between them, one `os.replace`
    found it gone and its worker died before logging `done`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _run_state(run: RunDir) -> str:
    """'finished', 'resumable' or 'empty' against the run's own config, or 'unreadable' when
    its config or checkpoint cannot be read (a kill mid-write cannot leave one: writes are
    atomic; a config written by a newer odepolicy can). An unreadable run is never started
    again over its files: its unit fails and says why."""
    if not run.is_run():
        return "empty"
    try:
        return run.status()
    except OdepolicyError:
        return "unreadable"


def _readable_state(run: RunDir) -> str:
    """`_run_state` for a run a unit is about to train: an unreadable one is an error that
    says why."""
    if not run.is_run():
        return "empty"
    try:
        return run.status()
    except OdepolicyError as exc:
        raise OdepolicyError(
            f"{run.path} cannot be read ({exc}); if a newer odepolicy wrote it, restart the "
            "campaign with that version"
        ) from exc


# -- units ---------------------------------------------------------------------------------------
@dataclass
class Unit:
    stage: str
    task: str
    method: str
    trial: int | None = None
    seed: int | None = None

    @property
    def name(self) -> str:
        if self.stage == "explore":
            return f"explore/{self.task}/{self.method}"
        if self.stage == "confirm":
            return f"confirm/{self.task}/{self.method}/trial_{self.trial:04d}_s{self.seed}"
        return f"{self.stage}/{self.task}/{self.method}/s{self.seed}"


def stage_units(campaign: Campaign, task: str, method: str, stage: str) -> list[Unit] | None:
    """The units of a stage for (task, method) with their order; None while the stage before
    has not finished (their list is not known yet)."""
    if method not in campaign.task_methods(task):
        return []
    if stage == "extend":
        e = campaign.tasks[task].extend
        if e is None or e.method != method:
            return []
        if not unit_done(campaign, Unit("evaluate", task, method, seed=e.seed)):
            return None
        return [Unit("extend", task, method, seed=e.seed)]
    if not campaign.tasks[task].tune:  # evaluation only, with the base config's settings
        if stage != "evaluate":
            return []
        return [Unit("evaluate", task, method, seed=s) for s in campaign.eval_seeds(task)]
    if stage == "explore":
        return [Unit("explore", task, method)]
    if explore_state(campaign, task, method) != "done":
        return None
    if stage == "confirm":
        return [
            Unit("confirm", task, method, t.number, seed)
            for t in top_trials(campaign, task, method)
            for seed in campaign.spec.confirm.seeds
        ]
    if pick(campaign, task, method) is None:
        return None
    return [Unit("evaluate", task, method, seed=s) for s in campaign.eval_seeds(task)]


def _unit_from_name(name: str) -> Unit | None:
    """The unit a log line names (Unit.name's inverse), or None for a name it cannot be."""
    parts = name.split("/")
    try:
        if parts[0] == "explore" and len(parts) == 3:
            return Unit("explore", parts[1], parts[2])
        if parts[0] == "confirm" and len(parts) == 4:
            trial, seed = re.fullmatch(r"trial_(\d+)_s(\d+)", parts[3]).groups()
            return Unit("confirm", parts[1], parts[2], int(trial), int(seed))
        if parts[0] in ("evaluate", "extend") and len(parts) == 4:
            return Unit(parts[0], parts[1], parts[2], seed=int(parts[3].removeprefix("s")))
    except (AttributeError, ValueError):
        pass
    return None


def unit_done(campaign: Campaign, unit: Unit) -> bool:
    if unit.stage == "explore":
        return explore_state(campaign, unit.task, unit.method) == "done"
    if unit.stage == "confirm":
        path = campaign.confirm_score(unit.task, unit.method, unit.trial, unit.seed)
        return _read_score(path) is not None
    if unit.stage == "extend":  # finished, or not to be run (no longer climbing at the budget)
        state = _run_state(campaign.extend_run(unit.task))
        return state == "finished" or (
            state == "empty" and not campaign.extend_decision(unit.task)[0]
        )
    return _run_state(campaign.eval_run(unit.task, unit.method, unit.seed)) == "finished"


def _start_extend(campaign: Campaign, task: str) -> None:
    """Copy the finished evaluation run of a task's `extend` to its place under
    `<results>_extended/` with the longer budget in its config.yaml (written before the copy
    takes its name, so a copy never stands finished at the old budget), ready for `--resume`."""
    e = campaign.tasks[task].extend
    source, target = campaign.eval_run(task, e.method, e.seed), campaign.extend_run(task)
    staging = target.path.with_name(target.path.name + ".copying")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source.path, staging)
    copy = RunDir(staging)
    copy.write_config(copy.read_config([f"max_env_steps={e.budget}"]))
    shutil.rmtree(target.path, ignore_errors=True)  # an empty run folder, nothing else
    os.replace(staging, target.path)


# -- running -------------------------------------------------------------------------------------
def unit_command(campaign: Campaign, unit: Unit, backend: list[str]) -> list[str]:
    """The `odepolicy tune` or `odepolicy train` command line that does a unit's work."""
    cli = [sys.executable, "-m", "odepolicy.cli"]
    task = campaign.tasks[unit.task]
    every = task.checkpoint_every or campaign.spec.checkpoint_every
    keep = [f"checkpoint_every={every}"]
    if campaign.spec.progress_rows is not None:
        keep.append(f"progress_rows={campaign.spec.progress_rows}")
    if unit.stage == "explore":
        spec = campaign.spec.explore
        cmd = [*cli, "tune", task.base, "--trials", str(spec.trials), "--budget", str(spec.budget)]
        cmd += ["--out", str(campaign.study_dir(unit.task, unit.method))]
        cmd += ["--sampler-seed", str(spec.sampler_seed)]
        sets = [*campaign.method_sets(unit.task, unit.method), *backend, *keep]
        return cmd + [a for s in sets for a in ("--set", s)]
    if unit.stage == "extend":
        run = campaign.extend_run(unit.task)
        state = _readable_state(run)
        if state == "finished":
            return []
        if state == "empty":
            _start_extend(campaign, unit.task)
        sets = [*backend, *keep]
        cmd = [*cli, "train", "--resume", str(run.path)]
        return cmd + [a for s in sets for a in ("--set", s)] + ["--quiet"]
    if unit.stage == "confirm":
        run = campaign.confirm_run(unit.task, unit.method, unit.trial, unit.seed)
        trial = _study(campaign, unit.task, unit.method).trials[unit.trial]
        sets = [*_trial_sets(trial), f"seed={unit.seed}"]
        config_path = task.base
    else:
        run = campaign.eval_run(unit.task, unit.method, unit.seed)
        sets = [f"seed={unit.seed}"]
        if campaign.spec.max_evals is not None:
            keep = [*keep, f"max_evals={campaign.spec.max_evals}"]
        config_path = str(campaign.pick_file(unit.task, unit.method))
        if not Path(config_path).is_file():  # written here, not when units are listed (status)
            write = write_pick if task.tune else write_fixed_pick
            write(campaign, unit.task, unit.method)
    state = _readable_state(run)
    if state == "finished":  # it ended as the campaign was stopped: only bookkeeping is left
        return []
    if state == "resumable":  # the run folder's config.yaml holds its settings
        cmd = [*cli, "train", "--resume", str(run.path)]
        sets = [*backend, *keep]
    else:
        cmd = [*cli, "train", config_path, "--out", str(run.path.parent)]
        cmd += ["--name", run.path.name, "--overwrite"]
        sets = [*sets, *backend, *keep]
    return cmd + [a for s in sets for a in ("--set", s)] + ["--quiet"]


def _finish_confirm(campaign: Campaign, unit: Unit) -> None:
    run = campaign.confirm_run(unit.task, unit.method, unit.trial, unit.seed)
    evals = logged_evals(run)
    if not evals:
        raise OdepolicyError(f"{run.path} logged no evaluation")
    counters = run.checkpoint_counters() or {}
    record = {
        "task": unit.task,
        "method": unit.method,
        "trial": unit.trial,
        "seed": unit.seed,
        "score": run_score(evals),
        "env_steps": int(counters.get("env_steps", 0)),
        "wall_seconds": float(counters.get("wall_seconds", 0.0)),
        "cpu_seconds": float(counters.get("cpu_seconds", counters.get("wall_seconds", 0.0))),
    }
    path = campaign.confirm_score(unit.task, unit.method, unit.trial, unit.seed)
    _write_atomic(path, json.dumps(record, indent=1) + "\n")


class _Lock:
    """A non-blocking claim on a run unit shared by every campaign process on this disk."""

    def __init__(self, campaign: Campaign, unit: Unit):
        path = campaign.runs / "locks" / (unit.name.replace("/", "__") + ".lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "a")

    def acquire(self) -> bool:
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            self.fh.close()
            return False

    def release(self) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


class Runner:
    """Workers take the next ready unit, in the file's order, until none is left."""

    def __init__(
        self,
        campaign: Campaign,
        parallel: int,
        backend: list[str],
        stages,
        quiet,
        tasks=None,
        methods=None,
    ):
        self.campaign, self.parallel, self.backend = campaign, parallel, backend
        self.stages, self.quiet = tuple(stages), quiet
        self.tasks = tuple(tasks or campaign.tasks)  # only these (default: all, file order)
        self.methods = tuple(methods or campaign.methods)
        self.lock = threading.Lock()
        self.busy: Counter[str] = Counter()  # units this process is running
        self.failed: dict[str, str] = {}
        self.ran: list[str] = []
        self.live: set[subprocess.Popen] = set()
        self.stopping = False

    def say(self, text: str) -> None:
        if not self.quiet:
            print(f"[campaign] {text}", flush=True)

    def next_unit(self) -> tuple[Unit | None, _Lock | None, bool]:
        """(a ready unit, its lock) in the file's order, or (None, None, whether work that runs
        now elsewhere may still make a unit ready)."""
        c = self.campaign
        waiting = False
        # Task by task, and within a task method by method: a method's evaluation runs start
        # once its pick is known, so finished comparisons land early on a small machine. A
        # task's `extend` run comes after all its other units: the comparison first.
        order = [
            (t, m, s)
            for t in c.tasks
            if t in self.tasks
            for last in (False, True)
            for m in c.task_methods(t)
            if m in self.methods
            for s in STAGES
            if s in self.stages and (s == "extend") == last
        ]
        for task, method, stage in order:
            for unit in stage_units(c, task, method, stage) or []:
                if unit.name in self.failed or unit_done(c, unit):
                    continue
                if self.busy[unit.name]:  # one worker a unit: a study's trials
                    waiting = True  # then run in a fixed order, as with one process
                    continue
                if unit.stage == "explore":
                    if explore_state(c, task, method) == "running":
                        waiting = True  # its last trials run in other processes
                        continue
                    return unit, None, True  # tune processes elsewhere may share it
                lock = _Lock(c, unit)
                if not lock.acquire():  # another campaign process runs it
                    waiting = True
                    continue
                if unit_done(c, unit):  # it finished while we looked
                    lock.release()
                    continue
                return unit, lock, True
        return None, None, waiting

    def work(self) -> None:
        while True:
            with self.lock:
                if self.stopping:
                    return
                unit, lock, waiting = self.next_unit()
                if unit is None and not waiting and not sum(self.busy.values()):
                    return  # nothing left that this process or another could make ready
                if unit is not None:
                    self.busy[unit.name] += 1
            if unit is None:
                time.sleep(WAIT_S)
                continue
            try:
                self.execute(unit)
            except Exception as exc:  # a bug, not the unit's failure: say so, keep working
                self._fail(unit, OdepolicyError(f"{type(exc).__name__}: {exc}"))
            finally:
                with self.lock:
                    self.busy[unit.name] -= 1
                if lock is not None:
                    lock.release()

    def _fail(self, unit: Unit, exc: OdepolicyError) -> None:
        with self.lock:
            self.failed[unit.name] = str(exc)
        self.campaign.log(f"failed {unit.name}: {exc}")
        self.say(f"failed {unit.name}: {exc}")

    def execute(self, unit: Unit) -> None:
        c = self.campaign
        try:
            cmd = unit_command(c, unit, self.backend)
        except OdepolicyError as exc:
            self._fail(unit, exc)
            return
        logs = c.runs / "_logs"
        logs.mkdir(parents=True, exist_ok=True)
        c.log(f"start {unit.name}")
        self.say(f"start {unit.name}")
        log_path = logs / (unit.name.replace("/", "__") + ".log")
        returncode = 0
        if cmd:
            with open(log_path, "a") as log:
                log.write(" ".join(cmd) + "\n")
                log.flush()
                with self.lock:
                    if self.stopping:
                        return
                    proc = subprocess.Popen(
                        cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env()
                    )
                    self.live.add(proc)
                returncode = proc.wait()
                with self.lock:
                    self.live.discard(proc)
        if self.stopping:
            return
        c.cache.clear()  # read what the unit wrote afresh
        try:
            if returncode != 0:
                raise OdepolicyError(f"exit status {returncode}; see {log_path}")
            if unit.stage == "confirm":
                _finish_confirm(c, unit)
                if pick(c, unit.task, unit.method) is not None:
                    write_pick(c, unit.task, unit.method)
            elif unit.stage == "explore" and explore_state(c, unit.task, unit.method) == "done":
                if pick(c, unit.task, unit.method) is not None:  # confirmed earlier
                    write_pick(c, unit.task, unit.method)
        except OdepolicyError as exc:
            self._fail(unit, exc)
            return
        if unit.stage == "explore" and not unit_done(c, unit):
            return  # the study's last trials run in another process
        with self.lock:
            if unit.name in self.ran:  # two workers shared the study; it is done once
                return
            self.ran.append(unit.name)
        c.log(f"done {unit.name}")
        self.say(f"done {unit.name}")

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            procs = list(self.live)
        stop_processes(procs)

    def close_open_units(self) -> None:
        """Log `done` for units the last process started and saw finish but was stopped before
        it could say so (killed between its unit's last write and its log line), so the log
        keeps one `done` line a finished unit."""
        c = self.campaign
        path = c.runs / "campaign.log"
        if not path.exists():
            return
        open_names: dict[str, None] = {}
        for line in path.read_text().splitlines():
            parts = line.split(" ", 2)
            if len(parts) < 3:
                continue
            verb, rest = parts[1], parts[2]
            name = rest.split(":", 1)[0].split(" ", 1)[0]
            if verb == "start":
                open_names[name] = None
            elif verb in ("done", "failed"):
                open_names.pop(name, None)
        for name in open_names:
            unit = _unit_from_name(name)
            if unit is None or unit.task not in c.tasks or unit.method not in c.methods:
                continue
            # A run unit another campaign process holds is its to log (it keeps the lock
            # until its `done` line is written); a study has no lock (processes share it).
            lock = _Lock(c, unit) if unit.stage != "explore" else None
            if lock is not None and not lock.acquire():
                continue
            try:
                if unit_done(c, unit):
                    c.log(f"done {name} (finished before the campaign was stopped)")
                    self.ran.append(name)
            finally:
                if lock is not None:
                    lock.release()

    def run(self) -> None:
        self.close_open_units()
        threads = [
            threading.Thread(target=self.work, name=f"campaign-{i}", daemon=True)
            for i in range(self.parallel)
        ]
        for t in threads:
            t.start()
        try:
            for t in threads:
                while t.is_alive():
                    t.join(timeout=0.5)
        finally:
            self.stop()


# -- status --------------------------------------------------------------------------------------
def _trial_seconds(study) -> list[tuple[float, float]]:
    """(seconds, env steps) of each finished trial: the CPU time of its runs (its wall time,
    for a trial recorded before tune kept it), and its budget share (a pruned trial ran to the
    tenth it was pruned at)."""
    import optuna

    S = optuna.trial.TrialState
    out = []
    for t in study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED)):
        if not (t.datetime_start and t.datetime_complete):
            continue
        seconds = t.user_attrs.get("cpu_seconds") or (
            (t.datetime_complete - t.datetime_start).total_seconds()
        )
        budget = next(
            (int(o.split("=", 1)[1]) for o in t.user_attrs.get("overrides", [])
             if o.startswith("max_env_steps=")),
            0,
        )  # fmt: skip
        if t.state == S.PRUNED:
            budget = budget * (max(t.intermediate_values, default=0) + 1) // 10
        out.append((seconds, float(budget)))
    return out


def status_rows(campaign: Campaign) -> list[dict]:
    """One row per (task, stage): units done and left, core-hours spent and estimated left."""
    c = campaign
    rows = []
    measured: dict[str, list[tuple[float, float]]] = {}  # task -> explore (seconds, steps)
    runs: dict[str, list[tuple[float, float]]] = {}  # task -> confirm/evaluate (seconds, steps)
    by_method: dict[tuple, list[tuple[float, float]]] = {}  # (task, method) -> the same
    explore_trial_s: dict[str, list[float]] = {}
    for task in c.tasks:
        measured[task], explore_trial_s[task], runs[task] = [], [], []
        for stage in STAGES:
            if stage == "extend" and c.tasks[task].extend is None:
                continue
            row = {"task": task, "stage": stage, "done": 0, "left": 0, "spent_s": 0.0}
            row["left_steps"], row["left_trials"], row["unknown"] = 0.0, 0, 0
            row["left_by_method"] = Counter()  # method -> env steps left (runs)
            row["started"] = []  # started, unfinished units, one line each
            for method in c.task_methods(task):
                units = stage_units(c, task, method, stage)
                if stage == "explore" and c.tasks[task].tune:
                    study = _study(c, task, method)
                    pairs = _trial_seconds(study) if study is not None else []
                    row["spent_s"] += sum(s for s, _ in pairs)
                    measured[task] += [p for p in pairs if p[1] > 0]
                    explore_trial_s[task] += [s for s, _ in pairs]
                    done = explore_state(c, task, method) == "done"
                    row["done" if done else "left"] += 1
                    finished = len(pairs)
                    row["left_trials"] += max(0, c.spec.explore.trials - finished)
                    if not done and study is not None:
                        s = _states(study)
                        if s.get("COMPLETE", 0) + s.get("PRUNED", 0) or s.get("RUNNING", 0):
                            name = Unit("explore", task, method).name
                            row["started"].append(
                                f"{name}: {finished} of {c.spec.explore.trials} trials finished"
                            )
                    continue
                if units is None:  # not known yet: the stage's usual count
                    n = c.spec.confirm.top * len(c.spec.confirm.seeds)
                    n = n if stage == "confirm" else len(c.eval_seeds(task))
                    budget = c.spec.explore.budget if stage == "confirm" else c.tasks[task].budget
                    if stage == "extend":  # counted as if it will run
                        n, budget = 1, c.tasks[task].extend.budget - c.tasks[task].budget
                    row["left"] += n
                    row["left_steps"] += n * budget
                    row["left_by_method"][method] += n * budget
                    continue
                for unit in units:
                    seconds, steps, budget = _unit_cost(c, unit)
                    row["spent_s"] += seconds
                    if steps:
                        runs[task].append((seconds, float(steps)))
                        by_method.setdefault((task, method), []).append((seconds, float(steps)))
                    if unit_done(c, unit):
                        row["done"] += 1
                    else:
                        row["left"] += 1
                        row["left_steps"] += max(0, budget - steps)
                        row["left_by_method"][method] += max(0, budget - steps)
                        if steps:
                            more = max(0, budget - steps) * seconds / steps
                            row["started"].append(
                                f"{unit.name}: {steps:,} of {budget:,} env steps "
                                f"({100 * steps / budget:.0f}%), about {_hours(more)} "
                                "core-hours more at its rate so far"
                            )
            rows.append(row)

    def rate(pairs) -> float:
        return sum(s for s, _ in pairs) / sum(n for _, n in pairs) if pairs else math.nan

    every = [p for pairs in measured.values() for p in pairs]
    explore_rate = {task: rate(measured[task] or every) for task in c.tasks}
    # Studies may have run on another machine: scale their rates by how this campaign's runs
    # compare with them on the same tasks (1 until a run has been measured).
    pairs = [(s, n * explore_rate[t]) for t in c.tasks for s, n in runs[t]]
    factor = rate(pairs) if pairs and not math.isnan(rate(pairs)) else 1.0
    all_trials = [s for v in explore_trial_s.values() for s in v]
    for row in rows:
        task = row["task"]
        if row["stage"] == "explore":
            per_trial = explore_trial_s[task] or all_trials
            mean = float(np.mean(per_trial)) * factor if per_trial else math.nan
            row["left_s"] = row["left_trials"] * mean if row["left_trials"] else 0.0
        else:
            # A method's own runs price its steps (Humanoid's ISO-ODEtoODE at h = 64 costs
            # several times its linear policy); else the task's runs; else its studies' rate.
            r = rate(runs[task]) if runs[task] else explore_rate[task] * factor
            row["left_s"] = float(
                sum(
                    n * (rate(by_method[task, m]) if (task, m) in by_method else r)
                    for m, n in row["left_by_method"].items()
                    if n
                )
            )
        # No unit of the task measured yet: its rate is the other tasks' (Humanoid's physics
        # is several times theirs), which the status and the report mark.
        row["borrowed"] = bool(row["left_s"]) and not (measured[task] or runs[task])
    return rows


BORROWED = (
    "* no unit of this task has run yet: its estimate uses the other tasks' mean rate per env "
    "step, and a task with slower physics (Humanoid) will cost more"
)


def _left(row: dict) -> str:
    return _hours(row["left_s"]) + ("*" if row.get("borrowed") else "")


def _counters(run: RunDir) -> tuple[float, int]:
    try:
        counters = run.checkpoint_counters() or {}
    except OdepolicyError:
        counters = {}
    seconds = counters.get("cpu_seconds", counters.get("wall_seconds", 0.0))
    return float(seconds), int(counters.get("env_steps", 0))


def _unit_cost(campaign: Campaign, unit: Unit) -> tuple[float, int, int]:
    """(seconds spent, env steps done, env-step budget) of a run unit; an `extend` unit counts
    only what its copy did past the evaluation run it continues."""
    if unit.stage == "extend":
        run, task = campaign.extend_run(unit.task), campaign.tasks[unit.task]
        if not run.is_run():
            return 0.0, 0, task.extend.budget - task.budget
        seconds, steps = _counters(run)
        was_s, was_steps = _counters(campaign.eval_run(unit.task, unit.method, unit.seed))
        return (
            max(0.0, seconds - was_s),
            max(0, steps - was_steps),
            task.extend.budget - task.budget,
        )
    if unit.stage == "confirm":
        record = _read_score(campaign.confirm_score(unit.task, unit.method, unit.trial, unit.seed))
        budget = campaign.spec.explore.budget
        if record is not None:
            seconds = record.get("cpu_seconds", record["wall_seconds"])
            return float(seconds), int(record["env_steps"]), budget
        run = campaign.confirm_run(unit.task, unit.method, unit.trial, unit.seed)
    else:
        budget = campaign.tasks[unit.task].budget
        run = campaign.eval_run(unit.task, unit.method, unit.seed)
    seconds, steps = _counters(run)
    return seconds, steps, budget


def started_units(campaign: Campaign) -> list[str]:
    """One line per unit that has started but not finished (running now, or stopped and to be
    continued by the next `run`): a study's finished trials, a run's env steps."""
    return [line for row in status_rows(campaign) for line in row["started"]]


def _hours(seconds: float) -> str:
    return "?" if math.isnan(seconds) else f"{seconds / 3600:.2f}"


def print_status(campaign: Campaign) -> list[dict]:
    rows = status_rows(campaign)
    head = ["task", "stage", "done", "left", "core-h spent", "core-h left (est.)"]
    table = [
        [r["task"], r["stage"], str(r["done"]), str(r["left"]), _hours(r["spent_s"]), _left(r)]
        for r in rows
    ]  # fmt: skip
    spent = sum(r["spent_s"] for r in rows)
    left = sum(r["left_s"] for r in rows)
    table.append(["all", "", str(sum(r["done"] for r in rows)), str(sum(r["left"] for r in rows)),
                  _hours(spent), _hours(left)])  # fmt: skip
    widths = [max(len(head[i]), *(len(t[i]) for t in table)) for i in range(len(head))]
    print("  ".join(h.ljust(w) for h, w in zip(head, widths)))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)))
    started = [line for r in rows for line in r["started"]]
    if started:
        print("started, not finished (running now, or continued by the next `run`):")
        for line in started:
            print(f"  {line}")
    print(
        "units: explore = one study per (task, method); confirm = one run per (top trial, seed); "
        "evaluate = one run per seed; extend = a task's one run continued past its budget. "
        "core-hours: the CPU time of each unit's processes, a Ray run's actors included (its "
        "wall time, for work recorded before odepolicy counted CPU time); the estimate uses "
        "each task's measured seconds per env step (per trial for explore), with rates "
        "from studies run elsewhere scaled by this campaign's measured runs."
    )
    if any(r["borrowed"] for r in rows):
        print(BORROWED)
    return rows


# -- command line --------------------------------------------------------------------------------
def _backend_sets(address: str | None, parallel: int, workers: int | None = None) -> list[str]:
    """Where each unit runs its rollouts, stated on every unit's command line (a resumed run
    keeps the backend of its config.yaml otherwise): on the cluster at `address` with `workers`
    actors (default: a fair share of its CPUs); without one, in the unit's own process, or on
    `workers` > 1 actors of a Ray instance the unit starts. The backend changes no result."""
    if workers is not None and workers < 1:
        raise OdepolicyError(f"--workers must be at least 1, got {workers}")
    if address:
        from .sweep import cluster_cpus

        workers = workers or max(1, cluster_cpus(address) // parallel)
        return ["backend.name=ray", f"backend.address={address}", f"backend.workers={workers}"]
    if workers is not None and workers > 1:
        return ["backend.name=ray", "backend.address=null", f"backend.workers={workers}"]
    return ["backend.name=local"]


def campaign_command(args) -> int:
    campaign = load_campaign(args.campaign)
    if args.action == "status":
        print_status(campaign)
        return 0
    if args.action == "report":
        from .campaign_report import report

        png, md = report(campaign)
        print(md.read_text(), end="")
        print(f"wrote {png} and {md}")
        return 0
    parallel = args.parallel if args.parallel is not None else campaign.spec.parallel
    if parallel < 1:
        raise OdepolicyError("--parallel must be at least 1")
    stages = args.stage or list(STAGES)
    for given, known, what in (
        (args.task, campaign.tasks, "task"),
        (args.method, campaign.methods, "method"),
    ):
        unknown = [name for name in given or [] if name not in known]
        if unknown:
            raise OdepolicyError(
                f"{campaign.path} has no {what} {unknown[0]!r}; it has {', '.join(known)}"
            )
    tasks, methods = args.task or list(campaign.tasks), args.method or list(campaign.methods)
    backend = _backend_sets(args.address, parallel, args.workers)
    runner = Runner(campaign, parallel, backend, stages, args.quiet, tasks, methods)
    runner.say(
        f"{campaign.path}: {len(tasks)} tasks x {len(methods)} methods, "
        f"stages {', '.join(stages)}, {parallel} at a time"
    )
    runner.run()
    if not args.quiet:
        print_status(campaign)
    for name, why in runner.failed.items():
        print(f"odepolicy: unit {name} failed: {why}", file=sys.stderr)
    return 1 if runner.failed else 0
