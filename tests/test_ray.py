"""The Ray backend and the sweep runner, with a real local Ray instance and real processes.

Same results whatever the backend and worker count; a worker killed mid-iteration is replaced
and its perturbations re-run exactly once; a driver joins a separately started cluster through
the real CLI; a sweep skips finished runs and resumes unfinished ones.
"""

import csv
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ray_head import ray_head

from odepolicy.backends import make_backend
from odepolicy.checkpoint import read_checkpoint
from odepolicy.cli import main
from odepolicy.config import config_from_dict, read_yaml
from odepolicy.noise import NoiseSpec
from odepolicy.rollout import RolloutTask
from odepolicy.trainer import train

ROOT = Path(__file__).resolve().parents[1]
PENDULUM = ROOT / "experiments" / "inverted_pendulum.yaml"
POLICY = {"name": "iso_odetoode", "hidden": 4}
TINY = [
    "iterations=3",
    "es.directions=5",
    "horizon=50",
    "eval_every=1",
    "eval_episodes=3",
    "checkpoint_every=1",
    "policy.kwargs.hidden=4",
]

pytestmark = pytest.mark.ray


def _checkpoint(run: Path) -> dict[str, np.ndarray]:
    arrays, _ = read_checkpoint(run / "checkpoints" / "latest.npz")
    return arrays


def _rows(run: Path) -> list[dict]:
    with open(run / "progress.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_local_and_ray_give_identical_parameters(ray_session, tmp_path):
    # Population 10: the local backend steps all 10 in one batch; Ray with 1 worker gets chunks
    # of 4, 4, 2 and with 2 workers chunks of 2; 3 evaluation episodes make a chunk of one.
    runs = {}
    for name, sets in [
        ("local", []),
        ("ray1", ["backend.name=ray", "backend.workers=1"]),
        ("ray2", ["backend.name=ray", "backend.workers=2"]),
    ]:
        config = config_from_dict(read_yaml(PENDULUM), TINY + sets)
        train(config, tmp_path, name, show_progress=False)
        runs[name] = tmp_path / name
    ref = _checkpoint(runs["local"])
    assert ray_session.is_initialized()  # the backend reused the session's Ray, left it up
    for name in ("ray1", "ray2"):
        got = _checkpoint(runs[name])
        assert sorted(got) == sorted(ref)
        for key in ref:
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{name}: {key}")
        local_rows, ray_rows = _rows(runs["local"]), _rows(runs[name])
        for col in ("env_steps", "eval_return_mean", "pert_return_mean", "worker_restarts"):
            assert [r[col] for r in ray_rows] == [r[col] for r in local_rows], col
    assert len(_rows(runs["ray2"])) == 3


def test_killed_actor_is_replaced_and_its_work_rerun(ray_session):
    horizon, directions = 1000, 12  # Swimmer never terminates early: ~2 s of work per actor
    backend = make_backend("ray", "Swimmer-v5", POLICY, workers=2)
    local = make_backend("local", "Swimmer-v5", POLICY)
    try:
        theta = local.worker.policy.init(np.random.default_rng(0))
        noise = NoiseSpec(11, len(theta), directions, 0.1)
        task = RolloutTask(theta, horizon, noise)
        indices = list(range(noise.population))
        pids = backend.actor_pids()
        assert len(set(pids)) == 2 and os.getpid() not in pids
        victim = pids[1]
        killed_at = []

        def kill() -> None:
            time.sleep(0.5)
            os.kill(victim, signal.SIGKILL)
            killed_at.append(time.monotonic())

        killer = threading.Thread(target=kill)
        killer.start()
        results = backend.evaluate(task, indices)
        finished_at = time.monotonic()
        killer.join()
        assert killed_at and killed_at[0] < finished_at  # the kill really hit mid-iteration
        assert [r.index for r in results] == indices  # every perturbation exactly once
        assert backend.counters["worker_restarts"] == 1
        expected = local.evaluate(task, indices)
        assert [r.ret for r in results] == [r.ret for r in expected]
        assert all(r.length == horizon and not r.failed for r in results)

        # The replacement is a new process, and the backend keeps working at full strength.
        new_pids = backend.actor_pids()
        assert len(new_pids) == 2 and victim not in new_pids and pids[0] in new_pids
        short = RolloutTask(theta, 20, noise)
        again = backend.evaluate(short, indices[:6])
        assert [r.index for r in again] == indices[:6]
        assert all(r.length == 20 for r in again)
        assert backend.counters["worker_restarts"] == 1
        assert set(backend.peak_memory_mb()) == {"worker 0", "worker 1"}
    finally:
        backend.close()
        local.close()
    assert ray_session.is_initialized()


def test_ray_actors_cpu_time_is_counted(ray_session):
    """A Ray run's core-hours include its actors' CPU time on rollouts: the same rollouts cost
    the actors about what they cost a local backend in this process, and the driver's own CPU
    time (mostly waiting) is far less. A local backend reports no CPU time elsewhere."""
    horizon, directions = 1000, 8  # Swimmer never terminates early: about 1 s of work
    backend = make_backend("ray", "Swimmer-v5", POLICY, workers=2)
    local = make_backend("local", "Swimmer-v5", POLICY)
    try:
        theta = local.worker.policy.init(np.random.default_rng(0))
        task = RolloutTask(theta, horizon, NoiseSpec(3, len(theta), directions, 0.1))
        indices = list(range(2 * directions))
        warm = RolloutTask(theta, 20, NoiseSpec(4, len(theta), directions, 0.1))
        backend.evaluate(warm, indices)  # imports and compiled kernels loaded, not counted
        local.evaluate(warm, indices)
        before, driver = backend.remote_cpu_seconds, time.process_time()
        backend.evaluate(task, indices)
        remote, driver = backend.remote_cpu_seconds - before, time.process_time() - driver
        cpu = time.process_time()
        local.evaluate(task, indices)
        alone = time.process_time() - cpu
        assert local.remote_cpu_seconds == 0.0
        assert 0.5 * alone < remote < 2.0 * alone, (remote, alone)
        assert driver < 0.5 * remote, (driver, remote)
    finally:
        backend.close()
        local.close()


def test_cli_joins_an_existing_cluster(tmp_path):
    # Ray >= 2.5x clusters use token authentication: a driver joining by address needs
    # RAY_AUTH_MODE=token and the cluster's token (here in RAY_AUTH_TOKEN, not ~/.ray).
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    with ray_head(env) as (port, _):
        sets = [
            "iterations=2",
            "es.directions=2",
            "horizon=20",
            "eval_episodes=2",
            "policy.kwargs.hidden=4",
            "backend.name=ray",
            f"backend.address=127.0.0.1:{port}",
        ]
        cmd = [sys.executable, "-m", "odepolicy.cli", "train", str(PENDULUM)]
        cmd += [arg for s in sets for arg in ("--set", s)]
        cmd += ["--out", str(tmp_path), "--name", "joined", "--quiet"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "2 iterations" in proc.stdout
        run = tmp_path / "joined"
        assert [r["iteration"] for r in _rows(run)] == ["1", "2"]
        assert read_checkpoint(run / "checkpoints" / "latest.npz")[1]["iteration"] == 2


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_sweep(folder: Path) -> Path:
    for name, env in [("pendulum", "InvertedPendulum-v5"), ("swimmer", "Swimmer-v5")]:
        (folder / f"{name}.yaml").write_text(
            f"env: {env}\npolicy: {{name: iso_odetoode, kwargs: {{hidden: 4}}}}\n"
            "es: {directions: 2}\nhorizon: 20\neval_every: 1\neval_episodes: 2\n"
            "checkpoint_every: 1\n"
        )
    sweep = folder / "sweep.yaml"
    sweep.write_text(
        "out: runs\nseeds: 2\nparallel: 2\nset: ['iterations=3']\n"
        "configs:\n  - pendulum.yaml\n  - {path: swimmer.yaml, set: ['horizon=15']}\n"
    )
    return sweep


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "sweep_summary.csv", newline="") as fh:
        return {r["run"]: r for r in csv.DictReader(fh)}


def test_sweep_skips_finished_and_resumes_unfinished_runs(tmp_path, capsys):
    sweep, out = _write_sweep(tmp_path), tmp_path / "runs"
    names = ["pendulum_s0", "pendulum_s1", "swimmer_s0", "swimmer_s1"]
    args = ["sweep", str(sweep), "--out", str(out), "--quiet"]

    # A first launch with one seed, then the whole sweep: only the new seed's runs train.
    assert main(args + ["--seeds", "1"]) == 0
    assert {k: r["status"] for k, r in _summary(out).items()} == {
        "pendulum_s0": "trained",
        "swimmer_s0": "trained",
    }
    assert main(args) == 0
    summary = _summary(out)
    assert [summary[n]["status"] for n in names] == ["skipped", "trained", "skipped", "trained"]
    assert all(summary[n]["iterations"] == "3" for n in names)
    assert all(summary[n]["eval_return"] != "" for n in names)
    assert [r["iteration"] for r in _rows(out / "swimmer_s1")] == ["1", "2", "3"]

    # Re-launching does no work at all.
    digests = {n: _digest(out / n / "progress.csv") for n in names}
    assert main(args) == 0
    assert all(r["status"] == "skipped" for r in _summary(out).values())
    assert digests == {n: _digest(out / n / "progress.csv") for n in names}
    assert "skipped" in capsys.readouterr().out

    # A run interrupted after its first iteration is resumed, and ends where it would have.
    victim = out / "pendulum_s1"
    final = _checkpoint(victim)
    shutil.copy(victim / "checkpoints" / "iter_000001.npz", victim / "checkpoints" / "latest.npz")
    assert main(args) == 0
    summary = _summary(out)
    assert summary["pendulum_s1"]["status"] == "resumed"
    assert [summary[n]["status"] for n in names if n != "pendulum_s1"] == ["skipped"] * 3
    assert [r["iteration"] for r in _rows(victim)] == ["1", "2", "3"]
    resumed = _checkpoint(victim)
    np.testing.assert_array_equal(resumed["es.center"], final["es.center"])


def test_sweep_reports_bad_files_and_failed_runs(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("configs: [nowhere.yaml]\n")
    assert main(["sweep", str(bad)]) == 2
    assert "nowhere.yaml" in capsys.readouterr().err
    bad.write_text("configs: []\nseed: 3\n")
    assert main(["sweep", str(bad)]) == 2
    assert "seed" in capsys.readouterr().err

    # A run whose training fails (unknown policy) is reported, and the sweep exits with 1.
    sweep = _write_sweep(tmp_path)
    (tmp_path / "broken.yaml").write_text("env: Swimmer-v5\npolicy: {name: no_such_policy}\n")
    sweep.write_text("out: runs\nseeds: 1\nconfigs: [broken.yaml]\n")
    out = tmp_path / "runs"
    assert main(["sweep", str(sweep), "--out", str(out), "--quiet"]) == 1
    row = _summary(out)["broken_s0"]
    assert row["status"] == "failed" and "no_such_policy" in row["error"]


def test_pinned_centre_is_bit_identical_on_ray(ray_session, tmp_path):
    """The pinned run of tests/test_structure.py, on two Ray workers: the centre the code before
    the restructuring wrote, bit for bit (speed changes to the kernels and the lockstep batch
    size must not move it, locally or on Ray)."""
    from test_structure import DATA, _cpu_kind
    from test_structure import TINY as PINNED

    config = config_from_dict(
        read_yaml(DATA / "inverted_pendulum_paper.yaml"),
        [*PINNED, "es.optimizer=sgd", "backend.name=ray", "backend.workers=2"],
    )
    train(config, tmp_path, "run", show_progress=False)
    expected = np.load(DATA / "expected_centres.npz")[f"sgd_center{_cpu_kind()}"]
    assert np.array_equal(_checkpoint(tmp_path / "run")["es.center"], expected)
