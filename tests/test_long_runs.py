"""Long runs are safe and tidy: a bounded number of periodic checkpoints, the best centre kept
apart, a write the file system refuses ends the run cleanly and resumably, and budgets that one
iteration overshoots are announced. Real files and real file-system errors (a file-size limit
set with setrlimit in a child process), no mocks."""

import csv
import json
import resource
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from odepolicy import OdepolicyError
from odepolicy.checkpoint import load_policy, read_checkpoint, save_checkpoint
from odepolicy.cli import main
from odepolicy.config import config_from_dict
from odepolicy.loggers import ProgressBarLogger
from odepolicy.rundir import ProgressFile, ProgressWriter
from odepolicy.state import Counters
from odepolicy.trainer import budget_warning

ROOT = Path(__file__).resolve().parents[1]
PENDULUM = str(ROOT / "experiments" / "inverted_pendulum.yaml")
# Seed 0 evaluates 27.0, 23.0, 28.5, 11.0, 18.5, 25.0 at iterations 1-6: the best is not the last.
TINY = [
    "--set", "es.directions=3",
    "--set", "horizon=60",
    "--set", "eval_every=1",
    "--set", "eval_episodes=2",
    "--set", "checkpoint_every=1",
    "--set", "policy.kwargs.hidden=4",
    "--quiet",
]  # fmt: skip
# Run in a child: the CLI under a file-size limit. SIGXFSZ ignored, so a write past the limit
# fails with EFBIG (what a full disk's ENOSPC does too) instead of killing the process.
LIMITED = (
    "import resource, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "limit = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
    "from odepolicy.cli import main\n"
    "sys.exit(main(sys.argv[2:]))\n"
)


def _train(out: Path, name: str, iterations: int, *extra: str) -> Path:
    argv = ["train", PENDULUM, "--out", str(out), "--name", name, *TINY]
    assert main([*argv, "--set", f"iterations={iterations}", *extra]) == 0
    return out / name


def _resume(run: Path, *sets: str) -> int:
    sets_argv = [a for s in sets for a in ("--set", s)]
    return main(["train", "--resume", str(run), *sets_argv, "--quiet"])


def _rows(run: Path) -> list[dict]:
    with open(run / "progress.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _evals(run: Path) -> list[float]:
    return [float(r["eval_return_mean"]) for r in _rows(run)]


def _checkpoint_names(run: Path) -> set[str]:
    return {p.name for p in (run / "checkpoints").iterdir()}


def _limited(limit: int, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LIMITED, str(limit), *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("odepolicy: error: "), proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def warm(tmp_path_factory) -> Path:
    """A finished 2-iteration run, trained in this process first, so compiled kernels are
    cached on disk before any child runs under a file-size limit."""
    return _train(tmp_path_factory.mktemp("warm"), "run", 2)


def test_keep_checkpoints_keeps_newest_k_and_best_holds_the_best_centre(tmp_path, capsys):
    run = _train(tmp_path, "full", 6, "--set", "keep_checkpoints=2")
    assert _checkpoint_names(run) == {
        "iter_000005.npz", "iter_000006.npz", "latest.npz", "best.npz"
    }  # fmt: skip
    evals = _evals(run)
    best = max(evals)
    k = evals.index(best) + 1  # the first iteration to evaluate best (3 with these settings)
    assert k < len(evals)  # the scenario needs a best centre that is not the latest one
    arrays, meta = read_checkpoint(run / "checkpoints" / "best.npz")
    assert meta["iteration"] == k and meta["counters"]["best_eval"] == best
    capsys.readouterr()
    assert main(["evaluate", str(run), "--checkpoint", "best", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["mean"] == best  # bit for bit, as logged
    assert main(["evaluate", str(run), "--json", "--quiet"]) == 0  # default: latest
    assert json.loads(capsys.readouterr().out)["mean"] == evals[-1]
    _, theta, _, _ = load_policy(run, checkpoint="best")
    assert np.array_equal(theta, arrays["es.center"])

    # A resumed run keeps the best so far: its later, worse evaluations leave best.npz alone.
    part = _train(tmp_path, "part", 3, "--set", "keep_checkpoints=2")
    assert _resume(part, "iterations=6") == 0
    assert _evals(part) == evals
    resumed, _ = read_checkpoint(part / "checkpoints" / "best.npz")
    for key in arrays:
        assert np.array_equal(resumed[key], arrays[key]), key
    assert _checkpoint_names(part) == _checkpoint_names(run)


def test_resume_keeps_a_best_checkpoint_newer_than_latest(tmp_path):
    """best.npz is saved at any evaluation, latest only every checkpoint_every: a run stopped
    between the two resumes from a latest that records a lower best than best.npz holds."""
    run = _train(tmp_path, "r", 6, "--set", "seed=1", "--set", "keep_checkpoints=null")
    assert {f"iter_{i:06d}.npz" for i in range(1, 7)} <= _checkpoint_names(run)  # null: all
    evals = _evals(run)
    assert evals.index(max(evals)) + 1 == 4 and evals[1] > evals[0]
    best, _ = read_checkpoint(run / "checkpoints" / "best.npz")
    checkpoints = run / "checkpoints"
    shutil.copy(checkpoints / "iter_000001.npz", checkpoints / "latest.npz")
    assert _resume(run, "iterations=3") == 0  # evaluations 2 and 3 beat iteration 1's only
    assert _evals(run) == evals[:3]
    kept, meta = read_checkpoint(checkpoints / "best.npz")
    assert meta["iteration"] == 4 and np.array_equal(kept["es.center"], best["es.center"])


def test_a_checkpoint_write_past_the_file_size_limit_stops_cleanly_and_resumes(tmp_path, warm):
    whole = _train(tmp_path, "whole", 4)
    run = _train(tmp_path, "run", 2)
    latest = run / "checkpoints" / "latest.npz"
    before = latest.read_bytes()
    limit = len(before) // 2  # above config.yaml, meta.json and progress.csv, below a checkpoint
    proc = _limited(limit, "train", "--resume", str(run), "--set", "iterations=4", "--quiet")
    err = _one_line_error(proc)
    assert "Traceback" not in proc.stderr
    assert f"cannot write {run / 'checkpoints'}" in err and "File too large (EFBIG)" in err
    assert "last checkpoint (iteration 2) is intact" in err
    assert f"odepolicy train --resume {run}" in err
    # The folder is as the last good checkpoint left it: loadable, nothing half-written.
    assert latest.read_bytes() == before
    assert not list(run.rglob(".tmp-*"))
    assert load_policy(run)[3]["iteration"] == 2
    assert [r["iteration"] for r in _rows(run)] == ["1", "2", "3"]  # 3 logged, not saved

    # With the cause gone, --resume continues: every iteration logged once, same numbers.
    assert _resume(run, "iterations=4") == 0
    assert [r["iteration"] for r in _rows(run)] == ["1", "2", "3", "4"]
    assert _evals(run) == _evals(whole)
    a, _ = read_checkpoint(latest)
    b, _ = read_checkpoint(whole / "checkpoints" / "latest.npz")
    assert all(np.array_equal(a[k], b[k]) for k in b)


def test_a_progress_row_the_file_system_refuses_is_undone(tmp_path):
    path = tmp_path / "progress.csv"
    writer = ProgressWriter(path)
    writer.write({"iteration": 1, "env_steps": 10, "eval_return_mean": 1.5})
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 5, hard))  # room for part of a row
    try:
        with pytest.raises(OdepolicyError, match=r"progress.csv: File too large \(EFBIG\)"):
            writer.write({"iteration": 2, "env_steps": 20, "eval_return_mean": 2.5})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
        writer.close()
    assert path.read_bytes() == before  # the partial row was cut off again
    # A row cut short by a crash (no line end) is dropped when a run resumes.
    with open(path, "ab") as fh:
        fh.write(b"2,20,")
    ProgressFile(path).truncate(5)
    assert path.read_bytes() == before


def test_a_run_that_fails_before_its_first_checkpoint_says_how_to_start_again(
    tmp_path, warm, capsys
):
    size = (warm / "checkpoints" / "latest.npz").stat().st_size
    argv = ["train", PENDULUM, "--out", str(tmp_path), "--name", "new", *TINY]
    err = _one_line_error(_limited(size // 2, *argv, "--set", "iterations=2"))
    run = tmp_path / "new"
    assert "File too large (EFBIG)" in err and "before its first checkpoint" in err
    assert not (run / "checkpoints" / "latest.npz").exists()
    assert not list(run.rglob(".tmp-*"))

    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    resume_err = capsys.readouterr().err.strip().splitlines()
    assert len(resume_err) == 1 and "has no checkpoint yet" in resume_err[0], resume_err
    # The command both messages suggest starts the run again.
    command = shlex.split(resume_err[0].split("`")[1])
    assert command == shlex.split(err.split("`")[1])
    assert command[:2] == ["odepolicy", "train"] and "--overwrite" in command
    assert main([*command[1:], "--quiet"]) == 0
    assert load_policy(run)[3]["iteration"] == 2


def test_keep_checkpoints_is_validated_and_best_must_exist(warm, tmp_path, capsys):
    for value, needle in (("0", "at least 1"), ("many", "int"), ("true", "int")):
        with pytest.raises(OdepolicyError, match=f"'keep_checkpoints'.*{needle}"):
            config_from_dict({}, [f"keep_checkpoints={value}"])
    assert config_from_dict({}).keep_checkpoints == 5
    assert config_from_dict({}, ["keep_checkpoints=null"]).keep_checkpoints is None
    capsys.readouterr()
    assert main(["train", PENDULUM, "--set", "keep_checkpoints=0", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "keep_checkpoints" in err[0]

    old = tmp_path / "old"  # a run folder from before best.npz existed
    shutil.copytree(warm, old)
    (old / "checkpoints" / "best.npz").unlink()
    assert main(["evaluate", str(old), "--checkpoint", "best"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no best checkpoint" in err[0] and "--checkpoint latest" in err[0]
    assert main(["evaluate", str(old / "checkpoints" / "latest.npz"), "--checkpoint", "best"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_a_budget_one_iteration_overshoots_is_announced_before_training(tmp_path, capsys):
    config = config_from_dict({}, ["es.directions=200", "horizon=1000", "max_env_steps=20000"])
    assert budget_warning(config) == (
        "one iteration can use up to 400,000 env steps (400 perturbations x horizon 1000), "
        "more than max_env_steps=20,000"
    )
    one_sided = config_from_dict({}, ["es.directions=10", "es.antithetic=false", "horizon=100"])
    assert budget_warning(one_sided) is None  # no max_env_steps: nothing to overshoot
    fits = config_from_dict({}, ["es.directions=10", "horizon=100", "max_env_steps=2000"])
    assert budget_warning(fits) is None
    capsys.readouterr()
    _train(tmp_path, "over", 3, "--set", "max_env_steps=100")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "odepolicy: warning: one iteration can use up to 360 env steps "
        "(6 perturbations x horizon 60), more than max_env_steps=100"
    ]
    assert len(_rows(tmp_path / "over")) == 1  # the first iteration spends the budget


def test_progress_bar_counts_env_steps_when_max_env_steps_bounds_the_run(capsys):
    def bar_after(config, counters, rows):
        logger = ProgressBarLogger()
        logger.start(SimpleNamespace(config=config, counters=counters))
        seen = []
        for row in rows:
            logger.log({"pert_return_mean": 1.0, **row})
            seen.append(logger.bar.n)
        total, unit = logger.bar.total, logger.bar.unit
        logger.close()
        return total, unit, seen

    rows = [{"iteration": 3, "env_steps": 300}, {"iteration": 4, "env_steps": 620}]
    bounded = config_from_dict({}, ["iterations=100", "max_env_steps=500"])
    assert bar_after(bounded, Counters(iteration=2, env_steps=120), rows) == (
        500, "step", [300, 500]
    )  # fmt: skip
    for sets in ([], ["max_env_steps=4000000"]):  # 10 x 400 x 1000 steps at most: iterations
        by_iterations = config_from_dict({}, ["iterations=10", *sets])
        assert bar_after(by_iterations, Counters(iteration=2, env_steps=120), rows) == (
            10, "it", [3, 4]
        )  # fmt: skip


# A budget of short iterations (the pendulum falls within a few steps at first): with
# progress_rows=5 a row spans at least 3000 / 5 = 600 env steps.
SHORT = ["--set", "max_env_steps=3000", "--set", "eval_every=2", "--set", "checkpoint_every=7"]
SHORT += ["--set", "keep_checkpoints=null"]


def _expected_rows(full: list[dict], rows: int, evals: int | None, budget: int = 3000):
    """From a run's row-per-iteration log, by the rules themselves: (the iterations, evaluated)
    of each row that `progress_rows` rows and `max_evals` evals give (eval_every 2, checkpoint
    every 7)."""
    out, span, start, made = [], [], 0, 0
    for i, r in enumerate(full):
        it, steps, last = int(r["iteration"]), int(r["env_steps"]), i == len(full) - 1
        span.append(r)
        evaluated = last or (
            it % 2 == 0 and (evals is None or made < evals * (steps / budget + 0.1))
        )
        made += evaluated
        if evaluated or it % 7 == 0 or last or steps - start >= budget // rows:
            out.append((span, evaluated))
            span, start = [], steps
    return out


def _check_rows(merged: list[dict], expected: list) -> None:
    """Each row holds its span: the counters of its last iteration, the mean of the mean
    returns, the largest return, the failures summed, and an evaluation only where the rule
    made one (the one the row-per-iteration run made at that iteration)."""
    assert len(merged) == len(expected)
    for row, (span, evaluated) in zip(merged, expected):
        last = span[-1]
        for key in ("iteration", "env_steps", "episodes"):
            assert row[key] == last[key]
        means = [float(r["pert_return_mean"]) for r in span]
        assert float(row["pert_return_mean"]) == float(np.mean(means))
        assert float(row["pert_return_max"]) == max(float(r["pert_return_max"]) for r in span)
        assert int(row["failed"]) == sum(int(r["failed"]) for r in span)
        want = (last["eval_return_mean"], last["eval_return_std"]) if evaluated else ("", "")
        assert (row["eval_return_mean"], row["eval_return_std"]) == want


def _centre(run: Path) -> np.ndarray:
    return read_checkpoint(run / "checkpoints" / "latest.npz")[0]["es.center"]


def test_progress_rows_and_max_evals_follow_the_env_step_budget(tmp_path):
    """progress_rows N: iterations share a row until they add up to budget / N env steps
    (an evaluation, a checkpoint and the end end a row); no number changes. max_evals M: an
    evaluation is skipped while the run has made more than M (steps / budget + 0.1). Training is
    untouched, bit for bit, and a resumed run logs what an uninterrupted one logs."""
    full_run = _train(tmp_path, "full", 100_000, *SHORT)
    full = _rows(full_run)
    rows_only = _train(tmp_path, "rows", 100_000, *SHORT, "--set", "progress_rows=5")
    _check_rows(_rows(rows_only), _expected_rows(full, 5, None))
    evals_full = [r["eval_return_mean"] for r in full if r["eval_return_mean"]]
    assert [r["eval_return_mean"] for r in _rows(rows_only) if r["eval_return_mean"]] == evals_full
    assert len(_rows(rows_only)) < len(full)  # rows of two iterations: evaluations every two

    both = _train(tmp_path, "both", 100_000, *SHORT, "--set", "progress_rows=5",
                  "--set", "max_evals=5")  # fmt: skip
    merged, expected = _rows(both), _expected_rows(full, 5, 5)
    _check_rows(merged, expected)
    made = sum(e for _, e in expected)
    assert len(merged) <= len(full) // 2
    assert made < len(evals_full)  # the limit skipped some
    assert (
        read_checkpoint(both / "checkpoints" / "latest.npz")[1]["counters"]["evaluations"] == made
    )
    for run in (rows_only, both):
        assert np.array_equal(_centre(run), _centre(full_run))

    # Killed after its checkpoint at iteration 7 (rows logged past it), then resumed: the same
    # rows and evaluations as the uninterrupted run, every iteration once; also from a
    # checkpoint written before evaluations were counted (the count is read from the log).
    drop = ("wall_seconds", "steps_per_second")
    for name, legacy in (("resumed", False), ("legacy", True)):
        run = tmp_path / name
        shutil.copytree(both, run)
        arrays, meta = read_checkpoint(run / "checkpoints" / "iter_000007.npz")
        if legacy:
            del meta["counters"]["evaluations"]
        save_checkpoint(run / "checkpoints" / "latest.npz", arrays, meta)
        assert _resume(run) == 0
        assert [{k: v for k, v in r.items() if k not in drop} for r in _rows(run)] == [
            {k: v for k, v in r.items() if k not in drop} for r in merged
        ]
        assert np.array_equal(_centre(run), _centre(full_run))


def test_progress_rows_and_max_evals_are_validated(tmp_path, capsys):
    for key in ("progress_rows", "max_evals"):
        for value in ("0", "-3"):
            with pytest.raises(OdepolicyError, match=f"'{key}'.*at least 1"):
                config_from_dict({}, [f"{key}={value}"])
        assert getattr(config_from_dict({}), key) is None
        assert main(["train", PENDULUM, "--set", f"{key}=0", "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and key in err[0]
        assert not any(tmp_path.iterdir())


def test_a_failed_iteration_logs_the_iterations_before_it_then_checkpoints_them(tmp_path):
    """A backend that fails mid-run (as a Ray cluster that lost every worker does): the
    iterations progress.csv still held back in a row are written, then their state is saved,
    so `--resume` logs every iteration once. The failure is injected around the real local
    backend (MuJoCo rollouts), at iteration 4's population: iteration 3 is in no row yet (rows
    end at evaluations, every 2, and checkpoints, every 7)."""
    from odepolicy.config import load_config
    from odepolicy.rundir import RunDir
    from odepolicy.trainer import Trainer, _loggers, resume

    class LosesItsWorkers(Trainer):
        def open_backend(self):
            backend = super().open_backend()
            evaluate = backend.evaluate

            def failing(task, indices):
                if task.noise is not None and self.counters.iteration == 3:
                    raise OdepolicyError("all Ray rollout workers are gone (injected)")
                return evaluate(task, indices)

            backend.evaluate = failing
            return backend

    full_run = _train(tmp_path, "full", 100_000, *SHORT)
    sets = [s for s in [*TINY, *SHORT] if "=" in s and s != "--quiet"]
    config = load_config(PENDULUM, [*sets, "iterations=100000", "progress_rows=5"])
    run = RunDir(tmp_path / "failed")
    trainer = LosesItsWorkers(config, run, _loggers(config, run, False, None))
    run.create(config)
    with pytest.raises(OdepolicyError, match="workers are gone"):
        trainer.train()
    rows, full = _rows(run.path), _rows(full_run)
    assert [r["iteration"] for r in rows] == ["2", "3"]  # iteration 3: its own row
    assert read_checkpoint(run.latest)[1]["iteration"] == 3
    assert rows[1]["pert_return_mean"] == full[2]["pert_return_mean"]

    resume(run.path, show_progress=False)
    rows = _rows(run.path)
    its = [int(r["iteration"]) for r in rows]
    assert its == sorted(set(its)) and its[-1] == len(full) and 3 in its
    evals = [(r["iteration"], r["eval_return_mean"]) for r in rows if r["eval_return_mean"]]
    assert evals == [(r["iteration"], r["eval_return_mean"]) for r in full if r["eval_return_mean"]]
    assert np.array_equal(_centre(run.path), _centre(full_run))


def test_cpu_seconds_leave_out_the_time_a_run_sat_stopped(tmp_path, warm):
    """`cpu_seconds` (what the campaign counts as core-hours) is the process's CPU time over
    its iterations: a run stopped three times for a second (SIGSTOP, as a campaign paused for
    other work) has them in its wall_seconds and not in its cpu_seconds. A checkpoint from
    before the counter resumes with it at its wall_seconds."""
    import time

    sets = ["es.directions=32", "horizon=200", "eval_every=1000", "checkpoint_every=1000",
            "iterations=30", "target_return=null", "max_env_steps=null"]  # fmt: skip
    argv = ["train", PENDULUM, "--out", str(tmp_path), "--name", "run", *TINY]
    argv += [a for s in sets for a in ("--set", s)]
    proc = subprocess.Popen([sys.executable, "-m", "odepolicy.cli", *argv])
    progress = tmp_path / "run" / "progress.csv"
    deadline = time.monotonic() + 120
    while not (progress.is_file() and len(progress.read_text().splitlines()) > 2):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    for _ in range(3):
        proc.send_signal(signal.SIGSTOP)
        time.sleep(1.0)
        proc.send_signal(signal.SIGCONT)
        time.sleep(0.2)
    assert proc.wait(timeout=300) == 0
    _, meta = read_checkpoint(tmp_path / "run" / "checkpoints" / "latest.npz")
    c = meta["counters"]
    assert c["iteration"] == 30 and 0 < c["cpu_seconds"]
    # Each stop falls inside an iteration unless it hits the moment between two (a write of
    # progress.csv): at least two of the three seconds are in wall time and not in CPU time.
    assert c["wall_seconds"] - c["cpu_seconds"] > 1.8, c
    # An old checkpoint (no cpu_seconds) resumes counting from its wall time.
    old = tmp_path / "old"
    shutil.copytree(warm, old)
    arrays, meta = read_checkpoint(old / "checkpoints" / "latest.npz")
    del meta["counters"]["cpu_seconds"]
    meta["counters"]["wall_seconds"] = 1000.0
    save_checkpoint(old / "checkpoints" / "latest.npz", arrays, meta)
    assert _resume(old, "iterations=3") == 0
    _, after = read_checkpoint(old / "checkpoints" / "latest.npz")
    assert 1000.0 < after["counters"]["cpu_seconds"] < 1000.0 + 60
