"""`odepolicy tune`: hyperparameter search with Optuna, as rl-zoo3 does it.

    odepolicy tune CONFIG --trials N --budget ENV_STEPS [--space SPACE.yaml] [--out DIR]

The study lives in `OUT/study.sqlite3`, so running the same command again continues it (the
trials already there count towards N). Each trial is an ordinary run folder `OUT/trial_NNNN`
trained from CONFIG with the sampled settings and `max_env_steps = budget`; it reports its
centre-policy evaluations to Optuna at tenths of the budget and is pruned there by a median
pruner when it trails the others. A trial's value is the mean of its last three evaluation
returns (one lucky evaluation does not win); with `--seeds N` each trial trains seeds s..s+N-1
(s the config's seed) one after another as `OUT/trial_NNNN_sS`, is pruned on the first seed's
curve, and scores the median of the per-seed values. At the end the best trials are printed
and the best config is written to `OUT/best.yaml`, ready for `odepolicy train`, with a header
that states the procedure that found it.

Several tune processes can work on one study at once (the same command started once per
core): every running trial records a heartbeat in the study, a process leaves the trials with a
fresh heartbeat to their owners, and each process stops once the study holds N trials,
counting those running elsewhere. A running trial whose process is gone (its owner, a process
on this host, has exited; or its heartbeat is older than GRACE_S) is taken over by the next tune
process on the study: it continues the trial's run from its latest checkpoint with the trial's
own settings, so an interrupted study ends with the same trials and scores as an uninterrupted
one. Trial k draws its settings with seed `--sampler-seed` + k, so processes sharing a study, or
a study continued, never repeat a draw.

A search space is a YAML mapping from dotted config keys to distributions:

    es.sigma: {type: float, low: 0.005, high: 0.1, log: true}
    es.directions: {type: categorical, choices: [8, 16, 32]}
    es.top_b: {type: int, low: 2, high: 16}

Without `--space` the policy family's default space (`default_space`) is used. Every space is
checked against the config schema before the study is opened, so a bad file changes nothing.
"""

from __future__ import annotations

import fcntl
import functools
import math
import os
import socket
import threading
import warnings
from pathlib import Path

import numpy as np
import yaml

from . import OdepolicyError
from .config import Config, config_from_dict, dump_config, read_yaml, read_yaml_mapping
from .loggers import Logger
from .rundir import RunDir
from .trainer import resume, train

__all__ = ["default_space", "load_space", "tune", "tune_command", "DISTRIBUTIONS"]

DISTRIBUTIONS = ("float", "int", "categorical")
STUDY_FILE = "study.sqlite3"
HEARTBEAT_S = 20  # a running trial records a heartbeat this often
GRACE_S = 120  # a running trial without a heartbeat for this long was interrupted
STUDY_NAME = "odepolicy"
REPORTS = 10  # the budget is reported to the pruner in tenths
LAST_EVALS = 3

# The default space is ARS's V2-t family (top-b shaping with reward-std scaling, SGD), which
# benchmarks/learning.md found to learn far more per env step than the paper's settings; for
# top-b our lr is 2 * sigma * ARS's step size, so lr's range covers ARS's published steps
# (0.01-0.03) at sigma 0.01-0.1. Per-env knowledge (reward_shift for survival bonuses, the
# horizon) belongs in the base config, not in the space.
_COMMON = {
    "es.sigma": {"type": "float", "low": 0.01, "high": 0.1, "log": True},
    "es.lr": {"type": "float", "low": 2e-4, "high": 5e-3, "log": True},
    "es.directions": {"type": "categorical", "choices": [8, 16, 32]},
    "es.top_b": {"type": "categorical", "choices": [2, 4, 8]},
}
# Every family searches the common ES keys; a family adds its own knobs. ODEtoODE's actions are
# c * Omega_out x_N with orthonormal rows and a flow that only grows x, so ES cannot shrink them
# through the parameters; the fixed output scale c is searched with the ES settings. Its range
# stops at 0.5, where about 15% of the initial actions for standard-normal 17-d observations sit
# at the bounds (45% at c = 1, and 82-91% on HalfCheetah-v5; benchmarks/learning.md, section 2).
_SPACES = {
    "linear": _COMMON,
    "ode": _COMMON,
    "deep": _COMMON,
    "odetoode": {
        **_COMMON,
        "policy.kwargs.output_scale": {"type": "float", "low": 0.05, "high": 0.5, "log": True},
    },
    # 1/25 (an Euler step over the 25 layers) up to the paper's 1: see DeepResNet's docstring.
    "resnet": {
        **_COMMON,
        "policy.kwargs.residual_scale": {"type": "float", "low": 0.02, "high": 1.0, "log": True},
    },
}
_FAMILY = {
    "linear": "linear",
    "iso_odetoode": "odetoode",
    "gated_odetoode": "odetoode",
    "base_ode": "ode",
    "nanode": "ode",
    "hypernet": "ode",
    "deepnet": "deep",
    "deep_resnet": "resnet",
}


def default_space(policy: str) -> dict:
    """The default search space of a policy's family (linear, ODE families, deep nets)."""
    return {k: dict(v) for k, v in _SPACES[_FAMILY.get(policy, "deep")].items()}


def _check_space(space: dict, base: dict, where: str) -> dict:
    """Each entry well formed, and every value it can take accepted by the config schema."""
    if not space:
        raise OdepolicyError(f"{where}: the search space is empty")
    for key, dist in space.items():
        if not isinstance(key, str) or not isinstance(dist, dict):
            raise OdepolicyError(f"{where}: {key!r} must map a config key to a distribution")
        kind = dist.get("type")
        if kind not in DISTRIBUTIONS:
            raise OdepolicyError(
                f"{where}: {key}: type must be one of {', '.join(DISTRIBUTIONS)}, got {kind!r}"
            )
        allowed = {"type", "choices"} if kind == "categorical" else {"type", "low", "high", "log"}
        extra = set(dist) - allowed
        if extra:
            raise OdepolicyError(f"{where}: {key}: unknown field(s) {', '.join(sorted(extra))}")
        if kind == "categorical":
            values = dist.get("choices")
            if not isinstance(values, list) or not values:
                raise OdepolicyError(f"{where}: {key}: choices must be a non-empty list")
        else:
            low, high = dist.get("low"), dist.get("high")
            numeric = (int,) if kind == "int" else (int, float)
            if not all(isinstance(v, numeric) and not isinstance(v, bool) for v in (low, high)):
                raise OdepolicyError(f"{where}: {key}: low and high must be {kind} numbers")
            if not low < high or (dist.get("log") and low <= 0):
                raise OdepolicyError(f"{where}: {key}: need 0 < low < high (log) or low < high")
            values = [low, high]
        for value in values:
            try:
                config_from_dict(base, [f"{key}={_yaml(value)}"])
            except OdepolicyError as exc:
                raise OdepolicyError(f"{where}: {key}={value!r}: {exc}") from None
    return space


def _yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def load_space(path: str | Path | None, base: dict, policy: str) -> dict:
    if path is None:
        return _check_space(default_space(policy), base, f"default space of {policy}")
    data = read_yaml_mapping(path, "search space file", "config keys -> distributions")
    return _check_space(data, base, f"search space file {path}")


def _suggest(trial, space: dict, replay: bool = False) -> list[str]:
    """Draw the trial's settings in the space's order. `replay`: a trial taken over after its
    process died while drawing; the settings it stored keep their values, and the sampler draws
    for them again (discarded), so the ones after them get the draws they would have had."""
    sets = []
    for key, dist in space.items():
        if replay and key in trial.params:
            frozen = trial.storage.get_trial(trial._trial_id)
            trial.study.sampler.sample_independent(
                trial.study, frozen, key, trial.distributions[key]
            )
        if dist["type"] == "categorical":
            value = trial.suggest_categorical(key, dist["choices"])
        elif dist["type"] == "int":
            value = trial.suggest_int(key, dist["low"], dist["high"], log=bool(dist.get("log")))
        else:
            value = trial.suggest_float(key, dist["low"], dist["high"], log=bool(dist.get("log")))
        sets.append(f"{key}={_yaml(value)}")
    return sets


class _PruningLogger(Logger):
    """Reports the latest evaluation at each tenth of the budget; raises when pruned."""

    def __init__(self, trial, budget: int, report: bool = True, reported: int = 0):
        self.trial, self.budget, self.report = trial, budget, report
        self.reported = reported  # the last tenth already reported (a trial taken over)
        self.evals: list[float] = []
        self.iterations = 0  # the last logged iteration

    def start(self, trainer) -> None:
        """A resumed run: the evaluations it logged before its checkpoint count too (progress.csv
        holds them to the last bit, and was cut back to the checkpoint's iteration)."""
        if trainer.run is not None and trainer.counters.iteration > 0:
            self.evals = logged_evals(trainer.run)
            self.iterations = trainer.counters.iteration

    def log(self, row: dict) -> None:
        import optuna

        value = row.get("eval_return_mean", math.nan)
        if not math.isnan(value):
            self.evals.append(float(value))
        self.iterations = int(row["iteration"])
        if not self.report:
            return
        # Tenths 1..9 only: a trial that spent its whole budget completes with its score.
        tenth = min(REPORTS - 1, int(REPORTS * row["env_steps"] / self.budget))
        if tenth > self.reported and self.evals:
            self.reported = tenth
            self.trial.report(self.evals[-1], tenth)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at {tenth}/{REPORTS} of the budget")


def logged_evals(run: RunDir) -> list[float]:
    """Every centre-policy evaluation a run logged (progress.csv), in order."""
    return run.progress.evals()


def run_score(evals: list[float]) -> float:
    """How tune (and the campaign's confirm stage) scores one run: the mean of its last
    LAST_EVALS evaluations."""
    last = evals[-LAST_EVALS:]
    return float(sum(last) / len(last))


def _objective(
    base: dict, space: dict, budget: int, out: Path, extra: list[str], seeds: int, quiet: bool
):
    def objective(trial, taken_over: bool = False) -> float:
        """Train the trial's run(s) and return its score. A trial taken over from a process
        that died keeps its settings and continues each run from its latest checkpoint."""
        if taken_over and "overrides" in trial.user_attrs:
            sets = list(trial.user_attrs["overrides"])
        else:  # a trial taken over before it recorded its settings samples them now
            sets = [*_suggest(trial, space, replay=taken_over), *extra]
            sets.append(f"max_env_steps={budget}")
            sets.append("iterations=1000000000")
            trial.set_user_attr("overrides", sets)
        # A trial taken over reports its last reported tenth again (Optuna keeps the first
        # value) and asks the pruner again: its process may have died between the two.
        reported = max(trial.storage.get_trial(trial._trial_id).intermediate_values, default=1)
        reported -= 1
        scores, runs = [], []
        try:
            return _runs(trial, sets, taken_over, reported, scores, runs)
        finally:  # the trial's CPU time, for `campaign status` (pruned and failed trials too)
            cpu = 0.0
            for run in runs:
                try:
                    cpu += float((run.checkpoint_counters() or {}).get("cpu_seconds", 0.0))
                except OdepolicyError:
                    pass
            try:  # bookkeeping: it must not replace the trial's own outcome (pruned, failed)
                trial.set_user_attr("cpu_seconds", cpu)
            except Exception:  # noqa: BLE001
                pass

    def _runs(trial, sets, taken_over, reported, scores, runs) -> float:
        for k in range(seeds):
            # One seed: `trial_NNNN`. Several: `trial_NNNN_sS`, one after another; only the
            # first seed's curve is reported to the pruner.
            config = config_from_dict(base, sets)
            config.seed += k
            name = f"trial_{trial.number:04d}" + (f"_s{config.seed}" if seeds > 1 else "")
            logger = _PruningLogger(trial, budget, report=(k == 0), reported=reported)
            run = RunDir(out / name)
            runs.append(run)
            state = _run_state(run, config) if taken_over else "empty"
            try:
                if state == "finished":
                    logger.evals = logged_evals(run)
                    logger.iterations = run.checkpoint_counters()["iteration"]
                elif state == "resumable":
                    resume(run.path, show_progress=False, loggers=[logger])
                else:
                    train(config, out, name, show_progress=False, overwrite=True, loggers=[logger])
            except OdepolicyError as exc:  # Optuna records the failure; keep its reason
                trial.set_user_attr("error", str(exc))
                raise
            if k == 0:  # the iteration count best.yaml states, once the run is complete
                trial.set_user_attr("iterations", logger.iterations)
            evals = logger.evals  # every evaluation the run logged, in order
            if not evals:
                raise OdepolicyError(f"trial {trial.number} logged no evaluation")
            scores.append(run_score(evals))
            if seeds > 1 and not quiet:  # a trial of several seeds runs for a while: say each
                print(
                    f"[tune] trial {trial.number}: seed {config.seed} scored {scores[-1]:.2f} "
                    f"({k + 1}/{seeds})",
                    flush=True,
                )
        if seeds > 1:
            trial.set_user_attr("seed_scores", scores)
        return float(np.median(scores))

    return objective


def _header(
    command: str, budget: int, config: Config, space: dict, best, trials: int, seeds: int = 1
) -> str:
    if seeds == 1:
        runs = [
            "Optuna TPE over the space below, median pruning at tenths of the budget, each trial",
            f"one run with seed {config.seed} of {budget:,} env steps, scored by the mean of its "
            f"last {LAST_EVALS} evaluations.",
        ]
    else:
        runs = [
            "Optuna TPE over the space below, median pruning at tenths of the budget (on the",
            f"first seed's curve), each trial {seeds} runs with seeds {config.seed}-"
            f"{config.seed + seeds - 1} of {budget:,} env steps,",
            f"scored by the median over seeds of the mean of each run's last {LAST_EVALS} "
            "evaluations.",
        ]
    lines = [
        f"Found by `{command}`:",
        *runs,
        f"Best of {trials} trials: trial {best.number}, score {best.value:.2f}.",
        "Space:",
        *(f"  {k}: {_yaml(v)}" for k, v in space.items()),
    ]
    return "".join(f"# {line}\n" for line in lines)


def _without_experimental_warnings(fn):
    """Run fn with Optuna's ExperimentalWarning silenced: the study's heartbeats are an
    experimental Optuna feature, and the warning tells a user of `tune` nothing."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return fn(*args, **kwargs)

    return wrapped


@_without_experimental_warnings
def tune(
    config_path: str | Path,
    trials: int,
    budget: int,
    out: str | Path | None = None,
    space_path: str | Path | None = None,
    overrides: list[str] | None = None,
    sampler_seed: int = 0,
    quiet: bool = False,
    seeds: int = 1,
) -> dict:
    """Run (or continue) the study in OUT; see the module docstring."""
    import optuna

    if trials < 1 or budget < 1 or seeds < 1:
        raise OdepolicyError("--trials, --budget and --seeds must be positive")
    base = read_yaml(config_path)
    config: Config = config_from_dict(base, overrides)  # the base config must be valid itself
    space = load_space(space_path, base, config.policy.name)
    out = Path(out or Path("runs") / "tune" / Path(config_path).stem)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Every running trial writes a heartbeat, so several tune processes can share one study:
    # a trial whose heartbeat is fresh belongs to a live process; one whose heartbeat is older
    # than GRACE_S was interrupted, and Optuna closes it as failed before each new trial.
    # Two processes that open a new study at once would both create its tables: one at a time.
    with open(out / "study.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            storage = optuna.storages.RDBStorage(
                f"sqlite:///{out / STUDY_FILE}",
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
            )
            study = optuna.create_study(
                study_name=STUDY_NAME, storage=storage, direction="maximize", load_if_exists=True
            )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    # Scores over different numbers of seeds are not comparable: a study keeps its own.
    held = study.user_attrs.get("seeds", 1 if study.trials else None)
    if held is not None and held != seeds:
        raise OdepolicyError(
            f"the study in {out} scores trials over {held} seed(s); run it with --seeds {held} "
            "or use another --out"
        )
    study.set_user_attr("seeds", seeds)
    study.sampler = _trial_seeded_tpe(sampler_seed)
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=3)
    objective = _objective(base, space, budget, out, list(overrides or []), seeds, quiet)
    # First finish the trials whose process died, with their own settings, from their runs'
    # checkpoints; then sample new ones.
    while (trial := _take_over(study, storage, out, quiet)) is not None:
        _run_taken_over(study, storage, trial, objective, quiet)
    live = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
    done = _counted(study, running=False)  # failed trials are replaced
    todo = max(0, trials - done - live)
    if not quiet:
        elsewhere = f" ({live} running in another process)" if live else ""
        print(
            f"[tune] {out / STUDY_FILE}: {done} trials done{elsewhere}, {todo} to run", flush=True
        )
    callbacks = [] if quiet else [_print_trial]
    if todo:
        # Stop once the study holds N trials, counting those other processes are running.
        def enough(study, trial) -> None:
            if _counted(study, running=True) >= trials:
                study.stop()

        study.optimize(
            objective, n_trials=todo, callbacks=[*callbacks, enough], catch=(OdepolicyError,)
        )
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise OdepolicyError(f"no trial of the study in {out} completed")
    best = study.best_trial
    best_config = config_from_dict(base, best.user_attrs["overrides"])
    # The trial ran until its env-step budget; say how many iterations that took. The study
    # records it, so this holds when the trial's folder is gone (a study continued elsewhere);
    # trials from before that record fall back to their folder, then to the base config.
    iterations = best.user_attrs.get("iterations")
    if iterations is None:
        counters = RunDir(out / f"trial_{best.number:04d}").checkpoint_counters() or {}
        iterations = counters.get("iteration", config.iterations)
    best_config.iterations = max(1, int(iterations))
    command = f"odepolicy tune {config_path} --trials {trials} --budget {budget}"
    command += f" --seeds {seeds}" if seeds > 1 else ""
    command += f" --space {space_path}" if space_path else ""
    command += "".join(f" --set {o}" for o in overrides or [])
    finished = [t for t in study.trials if t.state != optuna.trial.TrialState.FAIL]
    text = _header(command, budget, config, space, best, len(finished), seeds)
    # Written whole and renamed: another tune process on the study may write it at the same time.
    tmp = out / f"best.yaml.{os.getpid()}.tmp"
    tmp.write_text(text + dump_config(best_config))
    os.replace(tmp, out / "best.yaml")
    ranked = sorted(complete, key=lambda t: t.value, reverse=True)
    return {"out": str(out), "best": best, "ranked": ranked, "trials": len(study.trials)}


def _counted(study, running: bool) -> int:
    """Trials that count towards --trials: complete and pruned ones (and running ones)."""
    import optuna

    S = optuna.trial.TrialState
    states = (S.COMPLETE, S.PRUNED, S.RUNNING) if running else (S.COMPLETE, S.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _trial_seeded_tpe(seed: int):
    """A TPE sampler whose randomness for trial k is seeded by seed + k. One sampler seeded once
    per process repeats its random start-up settings in every process that shares the study,
    and in a study continued after an interruption (trial k of the second process drew what
    trial 0 of the first did); trial numbers are unique within a study, so these seeds are too.
    A study run by one process is still the same from the same seed."""
    import optuna

    class Sampler(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self._tpe = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)

        def before_trial(self, study, trial) -> None:
            # Who runs the trial, recorded the moment it exists: if this process dies before
            # the trial starts training, the next tune process still sees that it is gone.
            study._storage.set_trial_user_attr(trial._trial_id, "owner", _owner())
            self._tpe = optuna.samplers.TPESampler(seed=seed + trial.number, n_startup_trials=5)
            self._tpe.before_trial(study, trial)

        def infer_relative_search_space(self, study, trial):
            return self._tpe.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self._tpe.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self._tpe.sample_independent(study, trial, param_name, param_distribution)

        def after_trial(self, study, trial, state, values) -> None:
            self._tpe.after_trial(study, trial, state, values)

    return Sampler()


def _owner() -> str:
    """Who runs a trial: this host and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _owner_gone(owner: str | None) -> bool:
    """True when `owner` is a process of this host that no longer exists."""
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _run_state(run: RunDir, config: Config) -> str:
    """'finished', 'resumable' or 'empty' (no usable checkpoint: start the run again)."""
    try:
        return run.status(config) if run.is_run() else "empty"
    except OdepolicyError:  # a checkpoint the kill left unreadable: start again
        return "empty"


def _interrupted(study, out: Path) -> list:
    """The running trials whose process is gone. A trial's process is gone when its owner (set
    as the trial is created) was a process of this host that has exited, when its heartbeat is
    older than GRACE_S, or, without owner or heartbeat, when it started over GRACE_S ago (a
    study older than heartbeats); a younger one is a trial another process has just started."""
    import sqlite3
    from contextlib import closing
    from datetime import datetime, timedelta

    import optuna

    with closing(sqlite3.connect(out / STUDY_FILE)) as con:
        rows = con.execute(
            "SELECT trial_id, heartbeat < datetime('now', ?) FROM trial_heartbeats",
            (f"-{GRACE_S} seconds",),
        ).fetchall()  # SQLite's clock, as Optuna writes heartbeats with it
    stale = {trial_id for trial_id, old in rows if old}
    beating = {trial_id for trial_id, _ in rows}
    old = datetime.now() - timedelta(seconds=GRACE_S)  # Optuna stores local, naive times
    gone = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if (
            _owner_gone(t.user_attrs.get("owner"))
            or t._trial_id in stale
            or (t._trial_id not in beating and t.datetime_start and t.datetime_start < old)
        ):
            gone.append(t)
    return gone


def _take_over(study, storage, out: Path, quiet: bool):
    """Claim the first interrupted trial for this process (under the study's lock file, so two
    processes never take the same one)."""
    with open(out / "study.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            gone = _interrupted(study, out)
            if not gone:
                return None
            trial = min(gone, key=lambda t: t.number)
            storage.set_trial_user_attr(trial._trial_id, "owner", _owner())
            storage.record_heartbeat(trial._trial_id)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if not quiet:
        print(f"[tune] trial {trial.number} was interrupted; continuing it", flush=True)
    return trial


def _run_taken_over(study, storage, frozen, objective, quiet: bool) -> None:
    """Finish a claimed trial as Optuna's own loop would: a heartbeat while it runs, then its
    value, or pruned, or failed with the reason."""
    import optuna

    trial = optuna.trial.Trial(study, frozen._trial_id)  # the sampler's before_trial: its seed
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            storage.record_heartbeat(frozen._trial_id)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        value = objective(trial, taken_over=True)
    except optuna.TrialPruned:
        study.tell(frozen.number, state=optuna.trial.TrialState.PRUNED)
    except OdepolicyError:
        study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(frozen.number, value)
    finally:
        stop.set()
        thread.join()
    if not quiet:
        _print_trial(study, study.trials[frozen.number])


def _print_trial(study, trial) -> None:
    import optuna

    if trial.state == optuna.trial.TrialState.COMPLETE:
        what = f"score {trial.value:.2f}"
    elif trial.state == optuna.trial.TrialState.FAIL:
        what = f"({trial.user_attrs.get('error', 'see the trial folder')})"
    else:
        last = max(trial.intermediate_values, default=None)
        what = f"at {last}/{REPORTS} of the budget" if last is not None else ""
    print(f"[tune] trial {trial.number}: {trial.state.name.lower()} {what}".rstrip(), flush=True)


def tune_command(args) -> int:
    result = tune(
        args.config,
        args.trials,
        args.budget,
        args.out,
        args.space,
        args.overrides,
        args.sampler_seed,
        args.quiet,
        args.seeds,
    )
    print(f"{result['trials']} trials in {result['out']}; best:")
    for t in result["ranked"][:5]:
        params = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items()
        )
        print(f"  trial {t.number:4d}  score {t.value:10.2f}  {params}")
    print(f"best config written to {Path(result['out']) / 'best.yaml'}")
    return 0
