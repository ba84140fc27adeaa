"""`odepolicy tune`: a real Optuna study in SQLite over real (tiny) training runs."""

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from odepolicy import OdepolicyError
from odepolicy.cli import main
from odepolicy.config import load_config
from odepolicy.rundir import RunDir
from odepolicy.tune import default_space, load_space

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "experiments" / "tune" / "InvertedPendulum-v5.yaml"
TINY = ["horizon=40", "eval_episodes=1", "eval_every=1", "policy.name=linear"]


def _sets():
    return [arg for s in TINY for arg in ("--set", s)]


def _trials(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute("SELECT number, state FROM trials ORDER BY number").fetchall()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_tune_writes_a_study_and_a_best_config_and_resumes(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["tune", str(BASE), "--budget", "600", "--out", str(out), *_sets()]
    assert main([*args, "--trials", "3"]) == 0
    db = out / "study.sqlite3"
    assert len(_trials(db)) == 3
    for n in range(3):  # every finished or pruned trial is an ordinary run folder
        run = RunDir(out / f"trial_{n:04d}")
        assert run.is_run(), run.path
        assert run.read_config().max_env_steps == 600
    import optuna

    # Each trial keeps its run's CPU time (what `campaign status` counts as its core-hours).
    study = optuna.load_study(study_name="odepolicy", storage=f"sqlite:///{out / 'study.sqlite3'}")
    for t in study.trials:
        cpu = RunDir(out / f"trial_{t.number:04d}").checkpoint_counters()["cpu_seconds"]
        assert t.user_attrs["cpu_seconds"] == cpu > 0
    best = out / "best.yaml"
    text = best.read_text()
    assert text.startswith("# Found by `odepolicy tune")
    config = load_config(best)  # ready to train
    assert config.env == "InvertedPendulum-v5" and config.policy.name == "linear"
    data = yaml.safe_load(text)
    assert set(default_space("linear")) <= {f"es.{k}" for k in data["es"]}
    printed = capsys.readouterr().out
    assert "best config written to" in printed
    # Running it again continues the same study.
    assert main([*args, "--trials", "5"]) == 0
    assert [n for n, _ in _trials(db)] == [0, 1, 2, 3, 4]
    assert "3 trials done, 2 to run" in capsys.readouterr().out

    def settings(folder: Path) -> list[tuple]:
        storage = f"sqlite:///{folder / 'study.sqlite3'}"
        study = optuna.load_study(study_name="odepolicy", storage=storage)
        return [tuple(sorted(t.params.items())) for t in study.trials]

    # The continued study draws new settings: its sampler is seeded per trial, so trial 3 does
    # not repeat trial 0's draw, as a sampler seeded once per process did. The same command in
    # a new folder draws the same settings again.
    assert len(set(settings(out))) == 5, settings(out)
    again = tmp_path / "again"
    assert (
        main(["tune", str(BASE), "--budget", "600", "--out", str(again), *_sets(), "--trials", "3"])
        == 0
    )
    assert settings(again) == settings(out)[:3]
    # Continued elsewhere, from its SQLite file alone (no trial folders), the study still writes
    # the best trial's own iteration count, not the base config's.
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copyfile(db, moved / "study.sqlite3")
    assert (
        main(["tune", str(BASE), "--budget", "600", "--out", str(moved), *_sets(), "--trials", "5"])
        == 0
    )
    iterations = load_config(out / "best.yaml").iterations
    assert load_config(moved / "best.yaml").iterations == iterations
    best = optuna.load_study(study_name="odepolicy", storage=f"sqlite:///{db}").best_trial
    counters = RunDir(out / f"trial_{best.number:04d}").checkpoint_counters()
    assert counters["iteration"] == iterations  # what the run itself did
    assert (
        iterations < load_config(BASE).iterations
    )  # 600 env steps, not the base's 1000 iterations


@pytest.mark.parametrize(
    "space, message",
    [
        ("es.sigma: {type: float, low: 0.1, high: 0.01}\n", "low < high"),
        ("es.sigmaa: {type: float, low: 0.01, high: 0.1}\n", "es.sigmaa"),
        ("es.lr: {type: gaussian}\n", "type must be one of"),
        ("es.shaping: {type: categorical, choices: [topb, bogus]}\n", "es.shaping"),
        ("es.sigma: [0.1\n", "malformed YAML"),
    ],
)
def test_bad_space_is_exit_2_and_leaves_the_study_intact(tmp_path, capsys, space, message):
    out = tmp_path / "study"
    good = ["tune", str(BASE), "--budget", "300", "--out", str(out), *_sets()]
    assert main([*good, "--trials", "1"]) == 0
    db = out / "study.sqlite3"
    before = _digest(db)
    bad = tmp_path / "space.yaml"
    bad.write_text(space)
    capsys.readouterr()
    assert main([*good, "--trials", "2", "--space", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert _digest(db) == before and len(_trials(db)) == 1


def test_default_spaces_are_valid_for_every_policy():
    from odepolicy.config import read_yaml
    from odepolicy.policies import POLICIES

    base = read_yaml(BASE)
    for name in POLICIES:
        assert load_space(None, base, name)
    with pytest.raises(OdepolicyError):
        load_space(None, {**base, "es": {"shaping": "nope"}}, "linear")


def test_odetoode_trials_sample_the_output_scale(tmp_path):
    """ISO-ODEtoODE's default space adds policy.kwargs.output_scale: each trial's run folder
    trains with a sampled c inside [0.05, 0.5], and the best config carries it."""
    out = tmp_path / "iso"
    sets = [a for s in TINY[:-1] + ["policy.name=iso_odetoode"] for a in ("--set", s)]
    assert (
        main(["tune", str(BASE), "--budget", "200", "--out", str(out), *sets, "--trials", "2"]) == 0
    )
    scales = []
    for n in range(2):
        run = RunDir(out / f"trial_{n:04d}")
        if run.is_run():
            scales.append(run.read_config().policy.kwargs["output_scale"])
    assert scales and all(0.05 <= c <= 0.5 for c in scales), scales
    best = load_config(out / "best.yaml")
    assert best.policy.name == "iso_odetoode" and best.policy.kwargs["output_scale"] in scales
    assert default_space("gated_odetoode")["policy.kwargs.output_scale"]["high"] == 0.5
    assert "policy.kwargs.output_scale" not in default_space("base_ode")
    resnet = default_space("deep_resnet")["policy.kwargs.residual_scale"]
    assert (resnet["low"], resnet["high"]) == (0.02, 1.0)
    assert "policy.kwargs.residual_scale" not in default_space("deepnet")


def test_a_failing_trial_says_why(tmp_path, capsys):
    """A space key the policy does not take passes the schema check but fails the trial; the
    log line of the failed trial names the reason, and the command exits 2."""
    space = tmp_path / "space.yaml"
    space.write_text("policy.kwargs.output_scale: {type: float, low: 0.1, high: 0.5}\n")
    args = ["tune", str(BASE), "--budget", "200", "--out", str(tmp_path / "s"), *_sets()]
    assert main([*args, "--trials", "1", "--space", str(space)]) == 2
    out = capsys.readouterr().out
    assert "trial 0: fail (policy 'linear' got unknown option(s) output_scale" in out


def test_seeds_score_the_median_of_per_seed_runs_and_a_study_keeps_its_count(tmp_path, capsys):
    """--seeds 3: each trial trains seeds 0, 1, 2 as trial_NNNN_sS, and its value is the median
    of the three runs' own scores (mean of their last 3 evaluations, from their progress.csv).
    The study then refuses another seed count (exit 2) without changing its file."""
    import statistics

    import optuna

    out = tmp_path / "study"
    args = ["tune", str(BASE), "--budget", "300", "--out", str(out), *_sets()]
    assert main([*args, "--trials", "2", "--seeds", "3"]) == 0
    printed = capsys.readouterr().out
    study = optuna.load_study(study_name="odepolicy", storage=f"sqlite:///{out / 'study.sqlite3'}")
    assert study.user_attrs["seeds"] == 3
    for t in study.trials:
        assert t.state.name == "COMPLETE"
        scores = []
        for seed in (0, 1, 2):
            run = RunDir(out / f"trial_{t.number:04d}_s{seed}")
            assert run.read_config().seed == seed
            evals = [float(r["eval_return_mean"]) for r in run.progress.read()]
            evals = [e for e in evals if e == e][-3:]
            scores.append(sum(evals) / len(evals))
        assert t.user_attrs["seed_scores"] == scores
        for k, (seed, score) in enumerate(zip((0, 1, 2), scores)):  # a line per seed's run
            line = f"[tune] trial {t.number}: seed {seed} scored {score:.2f} ({k + 1}/3)"
            assert line in printed, printed
        assert t.value == statistics.median(scores)
    assert len(set(map(tuple, (t.user_attrs["seed_scores"] for t in study.trials)))) == 2
    assert "median over seeds" in (out / "best.yaml").read_text()
    before = _digest(out / "study.sqlite3")
    assert main([*args, "--trials", "3"]) == 2
    assert "scores trials over 3 seed(s)" in capsys.readouterr().err
    assert _digest(out / "study.sqlite3") == before


def _tune_process(out: Path, trials: int, budget: int):
    import subprocess
    import sys

    cli = "import sys; from odepolicy.cli import main; sys.exit(main())"
    cmd = [sys.executable, "-c", cli, "tune", str(BASE), "--budget", str(budget)]
    cmd += ["--trials", str(trials), "--out", str(out), *_sets(), "--set", "horizon=200"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_tune_processes_share_one_study(tmp_path):
    """A second `odepolicy tune` on a study another process is running: it leaves the other's
    running trials alone (their heartbeats are fresh), samples other settings, and the two
    together stop at the requested count. Before heartbeats the second marked the first's trial
    failed and ran its own N trials on top. Whether a trial of the first is running at the
    moment the second opens the study is up to timing; the message the second prints then is
    checked in-process by test_interrupted_trials_are_continued_not_replaced."""
    import time

    out = tmp_path / "study"
    first = _tune_process(out, trials=6, budget=4000)
    db = out / "study.sqlite3"
    deadline = time.monotonic() + 120
    while not (db.exists() and "RUNNING" in [state for _, state in _safe_trials(db)]):
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0]
        time.sleep(0.05)
    second = _tune_process(out, trials=6, budget=4000)
    logs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], logs
    states = [state for _, state in _trials(db)]
    assert "FAIL" not in states and "RUNNING" not in states, states
    assert 6 <= len(states) <= 7, states  # 7 only if both started a last trial at once
    import optuna

    study = optuna.load_study(study_name="odepolicy", storage=f"sqlite:///{db}")
    settings = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(settings)) == len(settings)  # no trial repeats another's settings


def _safe_trials(db: Path) -> list[tuple]:
    try:
        return _trials(db)
    except sqlite3.OperationalError:  # the schema is still being created
        return []


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")
def test_interrupted_trials_are_continued_not_replaced(tmp_path, capsys):
    """Trials left RUNNING: one with no heartbeat that started an hour ago (a study older than
    heartbeats) and one whose heartbeat is an hour old are continued when tune starts again,
    under their own numbers (they recorded no settings, so they draw them now, seeded by their
    numbers). One with no heartbeat that started just now is a trial another process has just
    begun: it is left running and counted."""
    import optuna

    from odepolicy import tune as tune_module

    out = tmp_path / "study"
    args = ["tune", str(BASE), "--budget", "300", "--out", str(out), *_sets()]
    assert main([*args, "--trials", "1", "--quiet"]) == 0
    db = out / "study.sqlite3"
    url = f"sqlite:///{db}"
    study = optuna.load_study(study_name="odepolicy", storage=url)
    study.ask()  # trial 1: no heartbeat, started an hour ago (below)
    beating = optuna.storages.RDBStorage(url, heartbeat_interval=20, grace_period=120)
    study = optuna.load_study(study_name="odepolicy", storage=beating)
    stale = study.ask()  # trial 2: heartbeat an hour old (below)
    beating.record_heartbeat(stale._trial_id)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE trial_heartbeats SET heartbeat = datetime(heartbeat, '-1 hour')")
        con.execute(
            "UPDATE trials SET datetime_start = datetime(datetime_start, '-1 hour') "
            "WHERE number = 1"
        )
    study.ask()  # trial 3: no heartbeat yet, started just now
    assert [s for _, s in _trials(db)] == ["COMPLETE"] + ["RUNNING"] * 3
    assert tune_module.GRACE_S < 3600
    assert main([*args, "--trials", "3"]) == 0
    printed = capsys.readouterr().out
    assert "trial 1 was interrupted; continuing it" in printed
    assert "trial 2 was interrupted; continuing it" in printed
    assert "trial 3 was interrupted" not in printed
    assert "3 trials done (1 running in another process), 0 to run" in printed
    assert [s for _, s in _trials(db)] == ["COMPLETE", "COMPLETE", "COMPLETE", "RUNNING"]
    study = optuna.load_study(study_name="odepolicy", storage=url)
    drawn = [tuple(sorted(t.params.items())) for t in study.trials[:3]]
    assert all(drawn) and len(set(drawn)) == 3


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_trial_killed_while_drawing_its_settings_gets_the_settings_it_would_have_had(
    tmp_path,
):
    """The process died after trial 1 stored its first setting (es.sigma) and before the rest:
    the tune that takes it over keeps that value and draws the others as the uninterrupted
    study did (the sampler draws again for es.sigma and discards it)."""
    import socket
    import subprocess

    import optuna

    from odepolicy.tune import _trial_seeded_tpe, default_space

    args = ["tune", str(BASE), "--budget", "300", *_sets(), "--quiet"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main([*args, "--out", str(straight), "--trials", "2"]) == 0
    assert main([*args, "--out", str(killed), "--trials", "1"]) == 0
    study = optuna.load_study(
        study_name="odepolicy", storage=f"sqlite:///{killed / 'study.sqlite3'}"
    )
    study.sampler = _trial_seeded_tpe(0)
    trial = study.ask()  # trial 1, as tune's loop asks for it
    sigma = default_space("linear")["es.sigma"]
    trial.suggest_float("es.sigma", sigma["low"], sigma["high"], log=True)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process of this host that has exited
    study._storage.set_trial_user_attr(
        trial._trial_id, "owner", f"{socket.gethostname()}:{dead.pid}"
    )
    assert main([*args, "--out", str(killed), "--trials", "2"]) == 0

    def trials(folder):
        s = optuna.load_study(
            study_name="odepolicy", storage=f"sqlite:///{folder / 'study.sqlite3'}"
        )
        return [(t.number, t.state.name, t.value, t.params) for t in s.trials]

    assert trials(killed) == trials(straight)
    assert len(trials(killed)) == 2 and len(trials(killed)[1][3]) == 4
