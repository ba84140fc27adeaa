"""`odepolicy campaign`: a real (tiny) campaign of real training runs, killed and resumed."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from odepolicy.campaign import (
    STAGES,
    Runner,
    Unit,
    _Lock,
    load_campaign,
    started_units,
    status_rows,
)
from odepolicy.checkpoint import read_checkpoint
from odepolicy.cli import main
from odepolicy.config import load_config
from odepolicy.rundir import RunDir, cpu_name

ROOT = Path(__file__).resolve().parents[1]

BASE = {
    "env": "InvertedPendulum-v5",
    "seed": 0,
    "policy": {"name": "linear"},
    "es": {"sigma": 0.05, "lr": 0.001, "directions": 8, "shaping": "topb", "top_b": 4},
    "horizon": 40,
    "iterations": 1000,
    "eval_every": 1,
    "eval_episodes": 1,
    "checkpoint_every": 1,
    "normalize_obs": True,
}


def _campaign(root: Path, **changes) -> Path:
    """A campaign of 2 methods on 1 task with tiny budgets, its folders under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "base.yaml").write_text(yaml.safe_dump(BASE))
    data = {
        "studies": str(root / "studies"),
        "runs": str(root / "runs"),
        "results": str(root / "results"),
        "parallel": 2,
        "checkpoint_every": 1,
        "explore": {"trials": 3, "budget": 1500},
        "confirm": {"top": 2, "seeds": [1]},
        "evaluate": {"seeds": [100]},
        "methods": {
            "linear": {"policy": "linear"},
            "iso_odetoode": {"policy": "iso_odetoode", "set": ["policy.kwargs.hidden=4"]},
        },
        "tasks": {"pendulum": {"base": str(root / "base.yaml"), "budget": 2500}},
        **changes,
    }
    path = root / "campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _start(path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "odepolicy.cli", "campaign", "run", str(path)]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 600) -> None:
    """SIGKILL the campaign and its units (its process group) as soon as ready() holds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the campaign never got there"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _log(root: Path) -> list[str]:
    path = root / "runs" / "campaign.log"
    return [ln.split(" ", 1)[1] for ln in path.read_text().splitlines()] if path.exists() else []


def _numbers(root: Path) -> dict:
    """Everything a campaign decides and produces: trials, confirm scores, picks, final centres."""
    import optuna

    out = {}
    for db in sorted((root / "studies").glob("*/*/study.sqlite3")):
        study = optuna.load_study(study_name="odepolicy", storage=f"sqlite:///{db}")
        key = db.parent.relative_to(root).as_posix()
        out[key] = [
            (t.number, t.state.name, t.value, sorted(t.params.items())) for t in study.trials
        ]
        # The pick, less its first line (which names the campaign file).
        out[key + "/pick"] = (db.parent / "pick.yaml").read_text().split("\n", 1)[1]
    for score in sorted((root / "studies").glob("*/*/confirm/*.json")):
        record = yaml.safe_load(score.read_text())
        out[score.relative_to(root).as_posix()] = (record["score"], record["env_steps"])
    for ckpt in sorted((root / "results").glob("*/*/s*/checkpoints/latest.npz")):
        arrays, meta = read_checkpoint(ckpt)
        out[ckpt.relative_to(root).as_posix()] = (
            {k: v.tobytes() for k, v in arrays.items()},
            meta["counters"]["env_steps"],
        )
    return out


def test_tiny_campaign_killed_twice_finishes_with_the_numbers_of_an_uninterrupted_one(
    tmp_path, monkeypatch
):
    # One campaign straight through.
    straight = tmp_path / "straight"
    proc = _start(_campaign(straight))
    log = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, log
    done = [ln for ln in _log(straight) if ln.startswith("done")]
    assert len(done) == 2 + 2 * 2 + 2, done  # 2 studies, 2 x (2 trials x 1 seed), 2 x 1 seed
    expected = _numbers(straight)
    assert len([k for k in expected if k.endswith("latest.npz")]) == 2

    # The same campaign, killed in the middle of an explore trial and of a confirm run.
    killed = tmp_path / "killed"
    path = _campaign(killed)
    trial_ckpts = killed / "studies" / "pendulum" / "iso_odetoode"
    _kill_when(_start(path), lambda: any(trial_ckpts.glob("trial_0001/checkpoints/latest.npz")))
    assert not any(ln.startswith("done explore/pendulum/iso") for ln in _log(killed))
    studies = killed / "studies" / "pendulum"
    _kill_when(_start(path), lambda: any(studies.glob("*/confirm/*/checkpoints/latest.npz")))
    # (Another confirm run may have finished in the instant before the kill; not all of them.)
    assert len([ln for ln in _log(killed) if ln.startswith("done confirm")]) < 4
    # Status names the started units: the killed confirm run with its env steps so far.
    started = started_units(load_campaign(path))
    pattern = (
        r"confirm/pendulum/\w+/trial_\d{4}_s1: ([\d,]+) of 1,500 env steps \(\d+%\), about "
        r"(\d+\.\d\d) core-hours more at its rate so far"
    )
    assert any(re.fullmatch(pattern, line) for line in started), started
    for line in started:  # the hours are the unit's own seconds per env step times the rest
        match = re.fullmatch(pattern, line)
        if match:
            name = line.split(":")[0]
            trial, seed = re.search(r"trial_(\d+)_s(\d+)", name).groups()
            run = RunDir(studies / name.split("/")[2] / "confirm" / f"trial_{trial}_s{seed}")
            counters = run.checkpoint_counters()
            done = counters["env_steps"]
            rest = (1500 - done) * counters["cpu_seconds"] / done / 3600
            assert int(match.group(1).replace(",", "")) == done
            assert float(match.group(2)) == pytest.approx(rest, abs=0.005)
    proc = _start(path)
    log = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, log
    lines = _log(killed)
    # One `done` line a unit, none twice; a unit that finished as a kill landed (before its
    # line was written) gets it from the next run, marked so.
    done = [ln.split()[1] for ln in lines if ln.startswith("done")]
    assert sorted(done) == sorted(set(done)) and len(done) == 8, lines
    assert _numbers(killed) == expected
    # The interrupted trial was continued, not replaced by a new one.
    tune_log = (killed / "runs" / "_logs" / "explore__pendulum__iso_odetoode.log").read_text()
    assert "trial 1 was interrupted; continuing it" in tune_log

    # Status: every unit done, nothing left, the time spent measured.
    campaign = load_campaign(path)
    # A unit killed after its last write but before its `done` line: the next run writes it.
    log_path = killed / "runs" / "campaign.log"
    kept = [
        ln
        for ln in log_path.read_text().splitlines()
        if "done evaluate/pendulum/linear/s100" not in ln
    ]
    log_path.write_text("\n".join(kept) + "\n")
    runner = Runner(campaign, 1, [], ["evaluate"], quiet=True)
    held = _Lock(campaign, Unit("evaluate", "pendulum", "linear", seed=100))
    assert held.acquire()  # as if another campaign process were still running it
    runner.close_open_units()
    assert len(_log(killed)) == len(kept)  # that process will write the line, not this one
    held.release()
    runner.close_open_units()
    assert _log(killed)[-1] == (
        "done evaluate/pendulum/linear/s100 (finished before the campaign was stopped)"
    )
    assert runner.ran == ["evaluate/pendulum/linear/s100"]
    runner.close_open_units()  # closed now: not twice
    assert len(_log(killed)) == len(kept) + 1
    rows = status_rows(campaign)
    assert [(r["stage"], r["done"], r["left"]) for r in rows] == [
        ("explore", 2, 0),
        ("confirm", 4, 0),
        ("evaluate", 2, 0),
    ]
    assert all(r["spent_s"] > 0 and r["left_s"] == 0 for r in rows)
    assert started_units(campaign) == []
    # The evaluation run is an ordinary run folder with the pick's settings and its own seed.
    run = killed / "results" / "pendulum" / "iso_odetoode" / "s100"
    config = yaml.safe_load((run / "config.yaml").read_text())
    pick = yaml.safe_load(
        (killed / "studies" / "pendulum" / "iso_odetoode" / "pick.yaml").read_text()
    )
    assert config["seed"] == 100 and config["max_env_steps"] == 2500
    assert config["es"] == pick["es"] and config["policy"] == pick["policy"]
    assert config["policy"]["kwargs"]["hidden"] == 4
    assert np.isfinite(float(config["policy"]["kwargs"]["output_scale"]))

    # The report is `odepolicy plot` of the evaluation runs.
    assert main(["campaign", "report", str(path)]) == 0
    assert _csv_rows(killed / "results_summary.csv") == _plot_rows(killed / "results")
    assert (killed / "results.png").stat().st_size > 10_000
    reading = (killed / "results.md").read_text()
    for method in ("iso_odetoode", "linear"):
        assert f"| InvertedPendulum-v5 | {method} | 1 |" in reading
    assert "| all | | 8 | 0 |" in reading  # units done and left
    assert "**InvertedPendulum-v5** (final). The paper does not report this task." in reading
    assert "max_evals" not in reading and "progress_rows" not in reading
    assert f"Evaluation runs: 2 runs on {os.cpu_count()} cores of {cpu_name()}." in reading
    assert "## Runs under way" not in reading
    # A run whose budget is raised is under way again: the reading names it and its steps.
    run = killed / "results" / "pendulum" / "linear" / "s100"
    steps = RunDir(run).checkpoint_counters()["env_steps"]
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("max_env_steps: 2500", "max_env_steps: 25000"))
    assert main(["campaign", "report", str(path)]) == 0
    reading = (killed / "results.md").read_text()
    lines = reading.split("## Runs under way\n", 1)[1].strip().splitlines()
    assert lines[-1] == f"- pendulum/linear/s100: {steps:,} env steps so far"
    assert "(provisional: 1 of 2 methods" in reading
    # The same with the campaign's folders relative to the working directory, as shipped.
    data = yaml.safe_load(path.read_text())
    data.update(studies="studies", runs="runs", results="results")
    (killed / "relative.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.chdir(killed)
    assert main(["campaign", "report", "relative.yaml"]) == 0
    relative = (killed / "results.md").read_text()
    assert relative.split("## Results")[1] == reading.split("## Results")[1]


def _csv_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _plot_rows(results: Path) -> list[dict]:
    """The summary table `odepolicy plot` computes from run folders, as its CSV writes it."""
    from odepolicy.plotting import find_runs, load_run, summary_table

    table = summary_table([load_run(p) for p in find_runs([results])])
    return [{k: repr(v) if isinstance(v, float) else str(v) for k, v in r.items()} for r in table]


def test_the_committed_comparison_table_is_what_plot_computes_from_the_committed_runs():
    results = ROOT / "results" / "comparison"
    summary = ROOT / "results" / "comparison_summary.csv"
    if not any(results.glob("*/*/s*/progress.csv")):
        assert not summary.exists()  # no table without runs
        pytest.skip("no evaluation run of the comparison is committed yet")
    assert _csv_rows(summary) == _plot_rows(results)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"explor": {"trials": 3}}, "unknown campaign key 'explor'"),
        (
            {"methods": {"linear": {"polcy": "linear"}}},
            "unknown campaign key 'methods.linear.polcy'",
        ),
        ({"methods": {"x": {"policy": "nope"}}}, "unknown policy 'nope'"),
        ({"evaluate": {"seeds": [0]}}, "must all differ"),
        ({"tasks": {"t": {"base": "missing.yaml", "budget": 10}}}, "base config 'missing.yaml'"),
        ({"confirm": {"top": 0}}, "confirm.top must be positive"),
        ({"progress_rows": 0}, "'progress_rows' must be a positive integer"),
        ({"max_evals": -1}, "'max_evals' must be a positive integer"),
    ],
)
def test_a_bad_campaign_file_is_one_line_and_exit_2(tmp_path, capsys, change, message):
    path = _campaign(tmp_path, **change)
    assert main(["campaign", "status", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "studies").exists()


def test_the_shipped_campaign_file_is_valid():
    campaign = load_campaign(ROOT / "experiments" / "comparison.yaml")
    assert len(campaign.methods) == 9 and "iso_odetoode_skip" in campaign.methods
    assert campaign.spec.explore.trials >= 12 and campaign.spec.explore.budget == 1_000_000
    budgets = {t: spec.budget for t, spec in campaign.tasks.items()}
    assert budgets == {
        "Swimmer-v5": 1_000_000,
        "Hopper-v5": 3_000_000,
        "HalfCheetah-v5": 3_000_000,
        "Walker2d-v5": 5_000_000,
        "swimmer6": 1_000_000,
        "Humanoid-v5": 10_000_000,  # three methods (its own test, below)
    }
    # Every method runs every task but Humanoid (the paper's three there) with the task's
    # settings alone; only the labelled variant adds something to its family.
    for task, spec in campaign.tasks.items():
        assert spec.set == [] and (task == "Humanoid-v5" or spec.methods == {})
    extra = {m: spec.set for m, spec in campaign.methods.items() if spec.set}
    assert extra == {"iso_odetoode_skip": ["policy.kwargs.linear_skip=true"]}
    # Logs follow the env-step budget (every unit), and so do evaluation runs' evaluations.
    assert (campaign.spec.progress_rows, campaign.spec.max_evals) == (1000, 1000)


def test_a_task_without_tuning_evaluates_every_method_with_the_base_settings(tmp_path):
    """`tune: false`: no study, no confirm run; each method's evaluation runs use the base
    config with the method's own overrides, on the task's own seeds."""
    path = _campaign(
        tmp_path,
        tasks={
            "fixed": {"base": str(tmp_path / "base.yaml"), "budget": 600, "tune": False,
                      "seeds": [7]}
        },
        progress_rows=20,
        max_evals=30,
    )  # fmt: skip
    assert main(["campaign", "status", str(path)]) == 0
    assert not (tmp_path / "studies").exists()  # status reads; it writes nothing
    assert main(["campaign", "run", str(path), "--quiet"]) == 0
    assert not (tmp_path / "studies" / "fixed" / "linear" / "study.sqlite3").exists()
    for method, hidden in (("linear", None), ("iso_odetoode", 4)):
        run = tmp_path / "results" / "fixed" / method / "s7"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["seed"] == 7 and config["max_env_steps"] == 600
        assert (config["progress_rows"], config["max_evals"]) == (20, 30)  # the campaign's
        assert config["es"]["sigma"] == BASE["es"]["sigma"] and config["es"]["top_b"] == 4
        assert config["policy"]["name"] == method
        assert config["policy"]["kwargs"].get("hidden") == hidden
        counters = read_checkpoint(run / "checkpoints" / "latest.npz")[1]["counters"]
        assert counters["env_steps"] >= 600
    rows = {r["stage"]: r for r in status_rows(load_campaign(path))}
    assert [(rows[s]["done"], rows[s]["left"]) for s in ("explore", "confirm", "evaluate")] == [
        (0, 0),
        (0, 0),
        (2, 0),
    ]

    # The report states both settings; without them (the tiny campaign above) it says nothing.
    assert main(["campaign", "report", str(path)]) == 0
    reading = (tmp_path / "results.md").read_text()
    assert "at most about 33 times (`max_evals: 30`" in reading
    assert "a 20th of the budget share a progress.csv row (`progress_rows: 20`)" in reading
    assert "shared_start" not in reading  # no task of this campaign sets it
    # Each run against the zero action on its own evaluation episodes (seed 7's: stepped here
    # with zeros), its gain its last evaluation minus that.
    from odepolicy.envs import make_env
    from odepolicy.state import eval_seed_base

    env = make_env(BASE["env"])
    env.reset(seed=eval_seed_base(load_config(tmp_path / "results/fixed/linear/s7/config.yaml")))
    zero, t, done = 0.0, 0, False
    while not done and t < BASE["horizon"]:
        _, reward, terminated, truncated = env.step(np.zeros(env.act_dim))
        zero, t, done = zero + reward, t + 1, terminated or truncated
    section = reading.split("## Against the zero action")[1]
    row = next(line for line in section.splitlines() if line.startswith("| InvertedPendulum"))
    assert f"| {zero:.1f} (s7) |" in row
    for method in ("linear", "iso_odetoode"):
        final = RunDir(tmp_path / "results" / "fixed" / method / "s7").progress.final_eval()
        assert f"{method} {final - zero:+.1f} ({int(final > zero)}/1)" in row
    # the figure draws it on tasks without an ARS threshold (this one), not on the others
    from odepolicy.campaign_report import zero_references

    rows = [{"task": "InvertedPendulum-v5", "seed": s, "zero": z} for s, z in ((7, 2.0), (8, 5.0))]
    rows += [{"task": "Hopper-v5", "seed": 7, "zero": 150.0}]
    assert zero_references(rows + rows[:1]) == {
        "InvertedPendulum-v5": [(3.5, "zero action 4 (mean over seeds)")]
    }
    (tmp_path / "shared.yaml").write_text(yaml.safe_dump({**BASE, "shared_start": True}))
    fixed = {"base": str(tmp_path / "shared.yaml"), "budget": 600, "tune": False, "seeds": [7]}
    # (the same runs, reported under a base config that sets it)
    other = _campaign(tmp_path / "other", tasks={"fixed": fixed}, results=str(tmp_path / "results"))
    assert main(["campaign", "report", str(other)]) == 0
    assert (
        "- fixed: every episode of an ES iteration starts from one start state "
        in (tmp_path / "results.md").read_text()
    )

    # A finished run this version cannot read (here: a key from a newer odepolicy) is never
    # trained again over its files: its unit fails and says why; the other is left alone.
    run = tmp_path / "results" / "fixed" / "linear" / "s7"
    text = (run / "config.yaml").read_text() + "from_the_future: 1\n"
    (run / "config.yaml").write_text(text)
    before = {p.name: p.read_bytes() for p in sorted((run / "checkpoints").iterdir())}
    assert main(["campaign", "run", str(path), "--quiet"]) != 0
    log = (tmp_path / "runs" / "campaign.log").read_text()
    assert "failed evaluate/fixed/linear/s7" in log and "cannot be read" in log
    assert "start evaluate/fixed/iso_odetoode/s7" not in log.split("cannot be read")[-1]
    assert (run / "config.yaml").read_text() == text
    assert {p.name: p.read_bytes() for p in sorted((run / "checkpoints").iterdir())} == before
    # The report still runs: that run stays in the table (its progress.csv reads) but has no
    # zero-action row, as its config cannot be read.
    assert main(["campaign", "report", str(path)]) == 0
    section = (tmp_path / "results.md").read_text().split("## Against the zero action")[1]
    row = next(line for line in section.splitlines() if line.startswith("| InvertedPendulum"))
    assert "iso_odetoode" in row and "linear" not in row


def test_progress_rows_reach_every_unit_and_max_evals_only_evaluation_runs(tmp_path):
    """Tuning scores a run by its last evaluations, so the evaluation limit is for evaluation
    runs only; merging log rows changes no number, so every trial and run gets it."""
    from odepolicy.campaign import unit_command

    campaign = load_campaign(_campaign(tmp_path, progress_rows=20, max_evals=30))
    explore = unit_command(campaign, Unit("explore", "pendulum", "linear"), [])
    assert "progress_rows=20" in explore and not any("max_evals" in a for a in explore)
    assert explore[explore.index("progress_rows=20") - 1] == "--set"


def test_run_can_be_narrowed_to_named_tasks_and_methods(tmp_path, capsys):
    """`--task` / `--method` run only those units; a name the file lacks is one line, exit 2,
    and nothing is run."""
    tasks = {
        "fixed": {"base": str(tmp_path / "base.yaml"), "budget": 300, "tune": False, "seeds": [7]},
        "other": {"base": str(tmp_path / "base.yaml"), "budget": 300, "tune": False, "seeds": [7]},
    }  # fmt: skip
    path = _campaign(tmp_path, tasks=tasks)
    assert main(["campaign", "run", str(path), "--method", "lin", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("has no method 'lin'; it has iso_odetoode, linear") and "\n" not in err
    assert main(["campaign", "run", str(path), "--task", "nope", "--quiet"]) == 2
    assert "has no task 'nope'; it has fixed, other" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
    argv = ["campaign", "run", str(path), "--task", "other", "--method", "linear", "--quiet"]
    assert main(argv) == 0
    runs = sorted(p.relative_to(tmp_path / "results").as_posix()
                  for p in (tmp_path / "results").glob("*/*/s7"))  # fmt: skip
    assert runs == ["other/linear/s7"]
    assert main(["campaign", "run", str(path), "--quiet"]) == 0  # the rest, nothing twice
    assert _log(tmp_path).count("start evaluate/other/linear/s7") == 1
    assert len(list((tmp_path / "results").glob("*/*/s7"))) == 4


def test_status_estimates_what_is_left_from_the_measured_rates(tmp_path, capsys):
    """After the explore stage alone (`--stage explore`): the confirm and evaluate units are
    not known yet, so status counts the protocol's units (2 methods x 2 trials x 1 seed; 2 x 1
    seed) and prices their env steps at the studies' measured seconds per env step."""
    import optuna

    path = _campaign(tmp_path)
    assert main(["campaign", "run", str(path), "--stage", "explore", "--quiet"]) == 0
    assert not list((tmp_path / "studies").glob("*/*/confirm"))
    seconds = steps = 0.0
    for db in (tmp_path / "studies").glob("*/*/study.sqlite3"):
        study = optuna.load_study(study_name="odepolicy", storage=f"sqlite:///{db}")
        for t in study.trials:  # 3 complete trials each, too few for the pruner
            assert t.state.name == "COMPLETE"
            wall = (t.datetime_complete - t.datetime_start).total_seconds()
            assert 0 < t.user_attrs["cpu_seconds"] < wall  # its runs' CPU time is what counts
            seconds += t.user_attrs["cpu_seconds"]
            steps += 1500
    rows = {r["stage"]: r for r in status_rows(load_campaign(path))}
    assert (rows["explore"]["done"], rows["explore"]["left"]) == (2, 0)
    assert rows["explore"]["spent_s"] == pytest.approx(seconds, rel=1e-9)
    assert (rows["confirm"]["done"], rows["confirm"]["left"]) == (0, 4)
    assert rows["confirm"]["left_s"] == pytest.approx(4 * 1500 * seconds / steps, rel=1e-9)
    assert (rows["evaluate"]["done"], rows["evaluate"]["left"]) == (0, 2)
    assert rows["evaluate"]["left_s"] == pytest.approx(2 * 2500 * seconds / steps, rel=1e-9)
    assert not any(r["borrowed"] for r in rows.values())  # the task's own rates

    # A task none of whose units has run borrows the others' rate, and says so (marked *).
    fixed = {"base": str(tmp_path / "base.yaml"), "budget": 900, "tune": False, "seeds": [7]}
    tasks = {**yaml.safe_load(path.read_text())["tasks"], "later": fixed}
    more = _campaign(tmp_path, tasks=tasks)
    rows = [r for r in status_rows(load_campaign(more)) if r["task"] == "later"]
    later = {r["stage"]: r for r in rows}["evaluate"]
    assert later["borrowed"] and later["left_s"] == pytest.approx(
        2 * 900 * seconds / steps, rel=1e-9
    )
    assert main(["campaign", "status", str(more)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"later +evaluate +0 +2 +0\.00 +[0-9.]+\*", out)
    assert "* no unit of this task has run yet" in out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_campaign_on_a_ray_cluster_gives_the_numbers_of_a_local_one(tmp_path):
    """`campaign run --address`: every unit runs its rollouts on a real Ray cluster (a head
    started here with `ray start --block`, token auth as Ray 2.60 sets it up), and with
    `--parallel 1 --workers 2` on two actors of a Ray instance each unit starts, with the same
    centres bit for bit as the same campaign run locally."""
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}  # the session's RAY_AUTH_TOKEN (conftest)
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
         f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        tasks = {"fixed": {"base": str(tmp_path / "base.yaml"), "budget": 600, "tune": False}}
        runs = {}
        for where, extra in (
            ("local", []),
            ("ray", ["--address", f"127.0.0.1:{port}"]),
            ("workers", ["--parallel", "1", "--workers", "2"]),
        ):
            path = _campaign(tmp_path / where, tasks=tasks, evaluate={"seeds": [3]})
            (tmp_path / "base.yaml").write_text((tmp_path / where / "base.yaml").read_text())
            cmd = [sys.executable, "-m", "odepolicy.cli", "campaign", "run", str(path), *extra]
            deadline = time.monotonic() + 120
            while True:  # the head takes a while to come up on a busy machine
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
                if proc.returncode == 0 or time.monotonic() > deadline or where != "ray":
                    break
                time.sleep(3)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            runs[where] = tmp_path / where / "results" / "fixed"
        for method in ("linear", "iso_odetoode"):
            backends = {
                w: yaml.safe_load((runs[w] / method / "s3" / "config.yaml").read_text())["backend"]
                for w in runs
            }
            assert backends["local"]["name"] == "local"
            assert backends["ray"]["name"] == "ray" and backends["ray"]["workers"] == 1
            assert backends["workers"] == {"name": "ray", "workers": 2, "address": None}
            centres = [
                read_checkpoint(runs[w] / method / "s3" / "checkpoints" / "latest.npz")[0]
                for w in runs
            ]
            for other in centres[1:]:
                assert centres[0]["es.center"].tobytes() == other["es.center"].tobytes()
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)


def test_the_shipped_humanoid_task_is_one_fixed_protocol():
    """ARS's Humanoid V2-t settings translated (es.lr = 2 sigma alpha), one for every method;
    the paper's three methods at its sizes; seeds no other unit uses; one checkpoint an
    iteration."""
    from odepolicy.envs import env_spec
    from odepolicy.policies.sizing import count_params

    comparison = load_campaign(ROOT / "experiments" / "comparison.yaml")
    task = "Humanoid-v5"
    fixed = comparison.tasks[task]
    assert not fixed.tune and fixed.budget == 10_000_000 and fixed.checkpoint_every == 1
    assert comparison.task_methods(task) == ["iso_odetoode", "deepnet", "linear"]
    used = {0, *comparison.spec.confirm.seeds, *comparison.spec.evaluate.seeds}
    for other, spec in comparison.tasks.items():
        if other != task:
            used |= {*spec.seeds, comparison.base_config(other, "linear").seed}
    assert len(fixed.seeds) == 2 and not used & set(fixed.seeds)
    sizes = {}
    for method in comparison.task_methods(task):
        config = comparison.base_config(task, method)
        es = config.es
        assert (es.sigma, es.directions, es.top_b, es.reward_shift) == (0.0075, 230, 230, 5.0)
        assert es.lr == pytest.approx(2 * 0.0075 * 0.02) and config.normalize_obs
        s = env_spec(config.env)
        kwargs = config.policy.kwargs
        sizes[method] = count_params(config.policy.name, s.obs_dim, s.act_dim, **kwargs)
    # ISO-ODEtoODE's scale knob is the comparison's Walker2d-v5 pick's, the others keep theirs.
    pick = load_config(comparison.pick_file("Walker2d-v5", "iso_odetoode"))
    iso = comparison.base_config(task, "iso_odetoode").policy.kwargs
    assert iso["output_scale"] == pick.policy.kwargs["output_scale"] and iso["hidden"] == 64
    h, s = 64, env_spec(task)  # Stiefel in (h x obs) and out (act x h), bias, W0, Q and N
    assert sizes["iso_odetoode"] == h * s.obs_dim + s.act_dim * h + h + 3 * h * h == 35712
    assert sizes["iso_odetoode"] <= sizes["deepnet"] <= 1.3 * sizes["iso_odetoode"]
    assert comparison.base_config(task, "linear").policy.kwargs == {}
    # One ISO-ODEtoODE seed continues to 20M while it still climbs at 10M (issue 22, item 3).
    e = fixed.extend
    assert (e.method, e.seed, e.budget, e.if_climbing) == ("iso_odetoode", 200, 20_000_000, True)
    where = comparison.extend_run(task).path.as_posix()
    assert where == "results/comparison_extended/Humanoid-v5/iso_odetoode/s200"


def test_a_task_runs_only_its_methods_with_their_own_overrides(tmp_path, capsys):
    """`tasks.<t>.methods`: only those methods run the task, each with its overrides on top of
    the method's; `tasks.<t>.checkpoint_every` replaces the campaign's for its units."""
    fixed = {"base": str(tmp_path / "base.yaml"), "budget": 300, "tune": False, "seeds": [7]}
    only = {**fixed, "methods": {"iso_odetoode": ["policy.kwargs.hidden=3"]},
            "checkpoint_every": 3}  # fmt: skip
    path = _campaign(tmp_path, tasks={"every": fixed, "only": only})
    campaign = load_campaign(path)
    assert campaign.task_methods("only") == ["iso_odetoode"]
    assert campaign.task_methods("every") == ["iso_odetoode", "linear"]  # the file's order
    rows = {(r["task"], r["stage"]): r for r in status_rows(campaign)}
    assert (rows["only", "evaluate"]["left"], rows["every", "evaluate"]["left"]) == (1, 2)
    assert main(["campaign", "run", str(path), "--quiet"]) == 0
    assert not (tmp_path / "results" / "only" / "linear").exists()
    for task, hidden, every in (("only", 3, 3), ("every", 4, 1)):
        config = yaml.safe_load(
            (tmp_path / f"results/{task}/iso_odetoode/s7/config.yaml").read_text()
        )
        assert (config["policy"]["kwargs"]["hidden"], config["checkpoint_every"]) == (hidden, every)
    assert main(["campaign", "report", str(path)]) == 0
    reading = (tmp_path / "results.md").read_text()
    assert "- only: only iso_odetoode (policy.kwargs.hidden=3)." in reading
    for methods, message in [
        ({"deepnet": []}, "tasks.only.methods: 'deepnet' is not one of the campaign's methods"),
        ({"linear": "seed=3"}, "tasks.only.methods.linear must be a list of key=value"),
        ({"linear": ["seed"]}, "tasks.only.methods.linear: entry 'seed' is not key=value"),
    ]:
        bad = _campaign(tmp_path / "bad", tasks={"only": {**fixed, "methods": methods}})
        capsys.readouterr()
        assert main(["campaign", "status", str(bad)]) == 2
        assert message in capsys.readouterr().err


def _row(task, method, rank, final, threshold=""):
    return {"task": task, "method": method, "rank": rank, "final_return_mean": final,
            "final_return_std": 1.0, "threshold": threshold}  # fmt: skip


def test_the_claim_paragraph_says_holds_or_not_and_stays_provisional_until_every_run_is_done(
    tmp_path,
):
    from collections import Counter

    from odepolicy.campaign_report import _claim_paragraph

    path = _campaign(
        tmp_path,
        methods={
            "iso_odetoode": {"policy": "iso_odetoode"},
            "iso_odetoode_skip": {
                "policy": "iso_odetoode",
                "set": ["policy.kwargs.linear_skip=true"],
            },
            "deepnet": {"policy": "deepnet"},
        },
        tasks={"cheetah": {"base": str(tmp_path / "base.yaml"), "budget": 10}},
    )  # fmt: skip
    campaign = load_campaign(path)
    env = "InvertedPendulum-v5"  # the task's env id, as the table names it
    rows = [_row(env, "iso_odetoode_skip", 1, 300.0), _row(env, "iso_odetoode", 2, 200.0),
            _row(env, "deepnet", 3, 100.0)]  # fmt: skip
    done = Counter({(env, m): 1 for m in campaign.methods})
    from odepolicy import campaign_report as module

    claims = {env: ("best", "ODEtoODE is the best", ())}
    original = dict(module.PAPER_CLAIMS)
    module.PAPER_CLAIMS.update(claims)
    try:
        text = _claim_paragraph(env, rows, done, campaign)
        assert text.startswith(f"**{env}** (final). The paper: ODEtoODE is the best.")
        assert "iso_odetoode, ranks 2 of 3 (iso_odetoode_skip above it)" in text
        assert text.endswith("the claim does not hold here.")
        module.PAPER_CLAIMS[env] = ("top2", "ODEtoODE is one of the two best", ())
        assert _claim_paragraph(env, rows, done, campaign).endswith("the claim holds here.")
        partial = Counter({(env, "iso_odetoode"): 1})
        text = _claim_paragraph(env, rows, partial, campaign)
        assert "(provisional: 1 of 3 methods have all 1 evaluation runs finished)" in text
        assert text.endswith("the claim holds here so far.")
        # a method the paper says does not learn: under a third of ARS's threshold or not
        module.PAPER_CLAIMS[env] = ("top2", "ODEtoODE is one of the two best", ("deepnet",))
        for final, says in [
            (99.9, "deepnet ends at 99.9, under a third of ARS's threshold (100): it does not "
             "learn here either."),
            (100.0, "deepnet ends at 100.0, past a third of ARS's threshold (100): it learns "
             "here, which the paper says it does not."),
        ]:  # fmt: skip
            rows[2] = _row(env, "deepnet", 3, final, threshold=300.0)
            text = _claim_paragraph(env, rows, done, campaign)
            assert text.endswith("the claim holds here. " + says), text
        # Humanoid's case: ODEtoODE first by less than the spread over seeds, and under the
        # bar that says the paper's non-learner does not learn
        claim = ("best", "ODEtoODE is the best; DeepNet does not learn", ("deepnet",))
        module.PAPER_CLAIMS[env] = claim
        close = [_row(env, "iso_odetoode", 1, 200.0, threshold=900.0),
                 _row(env, "deepnet", 2, 199.5, threshold=900.0),
                 _row(env, "iso_odetoode_skip", 3, 100.0, threshold=900.0)]  # fmt: skip
        text = _claim_paragraph(env, close, done, campaign)
        assert (
            "iso_odetoode, ranks 1 of 3, ahead of deepnet by 0.5, less than the larger of their "
            "spreads over seeds (1.0): the claim holds here by rank, not by a clear margin. "
            "deepnet ends at 199.5, under a third of ARS's threshold (300): it does not learn "
            "here either. By the same bar, iso_odetoode (200.0) does not learn here either: the "
            "contrast the paper draws with deepnet is not seen."
        ) in text, text
        close[1]["final_return_mean"] = 198.5  # a clear margin; ODEtoODE past the bar
        close[0]["final_return_mean"] = 300.0
        text = _claim_paragraph(env, close, done, campaign)
        assert "iso_odetoode, ranks 1 of 3: the claim holds here. deepnet ends" in text, text
        assert text.endswith("it does not learn here either."), text
        module.PAPER_CLAIMS[env] = ("top2", "ODEtoODE is one of the two best", ("deepnet",))
        # runs not above the zero action on their own episodes are named, with their count
        zero = [
            {"task": env, "method": "deepnet", "seed": s, "final": f, "zero": z}
            for s, f, z in ((100, 5.0, 6.0), (101, 7.0, 6.0), (102, 6.0, 6.0))
        ] + [{"task": env, "method": "iso_odetoode", "seed": 100, "final": 7.0, "zero": 6.0}]
        text = _claim_paragraph(env, rows, done, campaign, zero)
        assert text.endswith(
            "Not above the zero action on every seed's evaluation episodes: deepnet (1 of 3 "
            "seeds above it)."
        ), text
        assert "iso_odetoode, ranks 2 of 3 (iso_odetoode_skip above it): the claim holds" in text
        # An ODEtoODE form ranked in the top two without ending above the zero action, while
        # another method does: the claim does not hold. No method above it: nothing is decided.
        zero[3]["final"] = 5.0
        zero.append({"task": env, "method": "iso_odetoode_skip", "seed": 100, "final": 9.0,
                     "zero": 6.0})  # fmt: skip
        head = "iso_odetoode, ranks 2 of 3 (iso_odetoode_skip above it), but "
        for skip_final, says in [
            (9.0, "it does not end above the zero action on every seed's evaluation episodes, "
             "and iso_odetoode_skip does: the claim does not hold here."),
            (6.0, "no method ends above the zero action on every seed's evaluation episodes: "
             "the order is among policies that learned nothing, and the claim is undecided "
             "here."),
        ]:  # fmt: skip
            zero[-1]["final"] = skip_final
            text = _claim_paragraph(env, rows, done, campaign, zero)
            assert head + says in text, text
    finally:
        module.PAPER_CLAIMS.clear()
        module.PAPER_CLAIMS.update(original)


def test_atomic_writes_from_two_threads_of_one_process(tmp_path):
    """Two campaign workers (threads of one process) finishing a method's last confirm runs at
    once both write its pick.yaml: neither write may fail, and the file is always whole."""
    import threading

    from odepolicy.campaign import _write_atomic

    path = tmp_path / "pick.yaml"
    texts = ["a: 1\n" * 2000, "a: 2\n" * 2000]
    errors = []

    def writer(text):
        try:
            for _ in range(300):
                _write_atomic(path, text)
        except Exception as exc:  # noqa: BLE001 - the test reports whatever went wrong
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert path.read_text() in texts
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pick.yaml"]  # no temporary left


def test_climbing_compares_the_last_fifth_of_the_budget_with_the_fifth_before():
    from odepolicy.campaign import climbing

    steps = [100, 500, 650, 750, 850, 1000]
    up, last, before = climbing(steps, [0, 9, 1.0, 3.0, 4.0, 6.0], 1000)
    assert (up, last, before) == (True, 5.0, 2.0)  # (4 + 6) / 2 against (1 + 3) / 2
    assert climbing(steps, [0, 9, 5.0, 5.0, 4.0, 6.0], 1000)[0] is False  # 5.0 is not above 5.0
    assert climbing(steps, [0, 9, 1.0, 3.0, 4.0, 6.0], 2000)[0] is False  # nothing in 1600-2000
    down, last, before = climbing([100, 900], [1.0, 2.0], 1000)  # nothing in 600-800
    assert not down and last == 2.0 and np.isnan(before)


def test_an_extend_run_continues_one_evaluation_run_as_one_straight_run_would(tmp_path, capsys):
    """`tasks.<t>.extend`: after the evaluation run, a copy of it continues to the longer budget
    under `<results>_extended/`, bit for bit a straight run to that budget, and leaves the
    evaluation run and the table as they were; with `if_climbing` it runs only when the curve
    still climbs at the budget."""
    from odepolicy.campaign import climbing
    from odepolicy.plotting import load_run

    fixed = {"base": str(tmp_path / "base.yaml"), "budget": 300, "tune": False, "seeds": [7],
             "methods": {"linear": []}}  # fmt: skip
    always = {**fixed, "methods": {"linear": [], "iso_odetoode": ["policy.kwargs.hidden=2"]},
              "extend": {"method": "linear", "seed": 7, "budget": 600,
                         "if_climbing": False}}  # fmt: skip
    rule = {**fixed, "extend": {"method": "linear", "seed": 7, "budget": 600}}
    path = _campaign(tmp_path, tasks={"always": always, "rule": rule})
    campaign = load_campaign(path)
    rows = {(r["task"], r["stage"]): r for r in status_rows(campaign)}
    assert (rows["always", "extend"]["left"], rows["always", "extend"]["left_steps"]) == (1, 300)
    args = ["campaign", "run", str(path), "--quiet", "--stage", "evaluate"]
    assert main([*args, "--method", "linear"]) == 0
    # The task's other evaluation runs come before its extend run: the comparison first.
    unit, lock, _ = Runner(load_campaign(path), 1, [], STAGES, quiet=True).next_unit()
    lock.release()
    assert unit.name == "evaluate/always/iso_odetoode/s7"
    assert main(args) == 0
    source = tmp_path / "results" / "always" / "linear" / "s7"
    before = {f: (source / f).read_bytes() for f in ("progress.csv", "checkpoints/latest.npz")}
    assert not (tmp_path / "results_extended").exists()
    assert main(["campaign", "run", str(path), "--quiet"]) == 0
    assert {f: (source / f).read_bytes() for f in before} == before  # the source is untouched
    extended = tmp_path / "results_extended" / "always" / "linear" / "s7"
    config = load_config(extended / "config.yaml")
    assert config.max_env_steps == 600 and RunDir(extended).status() == "finished"
    # The continuation is a straight run of the same config to 600 env steps, bit for bit.
    assert main(["train", str(extended / "config.yaml"), "--out", str(tmp_path / "straight"),
                 "--name", "s7", "--quiet"]) == 0  # fmt: skip
    centres = [read_checkpoint(r / "checkpoints" / "latest.npz")[0]
               for r in (extended, tmp_path / "straight" / "s7")]  # fmt: skip
    assert centres[0]["es.center"].tobytes() == centres[1]["es.center"].tobytes()
    straight = RunDir(tmp_path / "straight" / "s7").progress.read()
    steps = [r["env_steps"] for r in RunDir(extended).progress.read()]
    assert steps == [r["env_steps"] for r in straight] and int(steps[-1]) >= 600
    # The rule's task ran its continuation exactly when the evaluation run still climbed.
    base = load_run(tmp_path / "results" / "rule" / "linear" / "s7")
    up = climbing(base.env_steps, base.returns, 300)[0]
    assert (tmp_path / "results_extended" / "rule").exists() == up
    assert _log(tmp_path).count("done extend/always/linear/s7") == 1
    rows = {(r["task"], r["stage"]): r for r in status_rows(load_campaign(path))}
    assert (rows["always", "extend"]["done"], rows["always", "extend"]["left"]) == (1, 0)
    assert rows["always", "extend"]["spent_s"] > 0
    assert main(["campaign", "report", str(path)]) == 0
    reading = (tmp_path / "results.md").read_text()
    assert "- always: linear seed 7 continues to 600 env steps (Past the budget" in reading
    assert "the figure draws the continuation as 'linear s7 to 600'" in reading
    assert ("not continued" in reading.split("**rule**")[-1]) != up
    table = _csv_rows(tmp_path / "results_summary.csv")
    rows = {r["method"]: r for r in table}  # the extension is no row and in no mean
    assert len(table) == 2 and float(rows["linear"]["env_steps_mean"]) < 600
    assert main(["campaign", "run", str(path), "--quiet"]) == 0  # nothing left: nothing repeated
    assert _log(tmp_path).count("start extend/always/linear/s7") == 1
    for extend, message in [
        ({"method": "iso_odetoode", "seed": 7, "budget": 600}, "extend.method must be one of"),
        ({"method": "linear", "seed": 8, "budget": 600}, "extend.seed must be one of"),
        ({"method": "linear", "seed": 7, "budget": 300}, "extend.budget must be above"),
        ({"method": "linear", "seed": 7, "budget": 600, "when": 1}, "'tasks.x.extend.when'"),
    ]:
        bad = _campaign(tmp_path / "bad", tasks={"x": {**fixed, "extend": extend}})
        capsys.readouterr()
        assert main(["campaign", "status", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


def test_status_prices_each_method_at_its_own_measured_rate(tmp_path):
    """Runs of a task price what is left of the same method (ISO-ODEtoODE at h = 64 and linear
    differ several times on Humanoid); a method none of whose runs has started takes the task's
    rate over all its runs."""
    fixed = {"base": str(tmp_path / "base.yaml"), "budget": 600, "tune": False, "seeds": [7]}
    path = _campaign(tmp_path, tasks={"fixed": fixed})
    assert main(["campaign", "run", str(path), "--quiet"]) == 0
    cost = {}
    for method in ("iso_odetoode", "linear"):
        counters = RunDir(tmp_path / "results" / "fixed" / method / "s7").checkpoint_counters()
        cost[method] = (counters["cpu_seconds"], counters["env_steps"])
    rate = {m: s / n for m, (s, n) in cost.items()}
    assert rate["iso_odetoode"] != rate["linear"]
    # One more seed: one unit of each method left, each priced at its own rate.
    more = _campaign(tmp_path, tasks={"fixed": {**fixed, "seeds": [7, 8]}})
    row = {r["stage"]: r for r in status_rows(load_campaign(more))}["evaluate"]
    assert (row["done"], row["left"]) == (2, 2)
    assert row["left_s"] == pytest.approx(600 * (rate["iso_odetoode"] + rate["linear"]), rel=1e-9)
    # A third method with no run takes the task's rate: all its runs' seconds over their steps.
    methods = {**yaml.safe_load(more.read_text())["methods"], "deepnet": {"policy": "deepnet"}}
    third = _campaign(tmp_path, tasks={"fixed": {**fixed, "seeds": [7, 8]}}, methods=methods)
    row = {r["stage"]: r for r in status_rows(load_campaign(third))}["evaluate"]
    task_rate = sum(s for s, _ in cost.values()) / sum(n for _, n in cost.values())
    expected = 600 * (rate["iso_odetoode"] + rate["linear"]) + 2 * 600 * task_rate
    assert row["left"] == 4 and row["left_s"] == pytest.approx(expected, rel=1e-9)
