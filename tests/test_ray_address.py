"""Which Ray a run uses must not depend on what the machine ran before (issue 13).

A `ray start` long ago leaves an address file that a bare `ray.init()` would join; a Ray job's
driver has `RAY_ADDRESS` set. Here with real Ray and the real CLI: a run without an address
starts a local instance whatever the address file says; a dead address fails fast with one line
that names where it came from; a live head named by `RAY_ADDRESS` is joined, and the run says
so. The machine's own Ray folder is never touched: the address file lives under a private
`RAY_TMPDIR`, and the head this file starts is ended by its own process group, never `ray stop`.
"""

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from ray_head import free_port, ray_head

from odepolicy import OdepolicyError
from odepolicy.backends import make_backend
from odepolicy.backends.ray_backend import address_file, resolve_address

ROOT = Path(__file__).resolve().parents[1]
PENDULUM = ROOT / "experiments" / "inverted_pendulum.yaml"
TINY = ["iterations=1", "es.directions=2", "eval_episodes=1", "horizon=50", "backend.name=ray"]

pytestmark = pytest.mark.ray


@pytest.fixture
def dead_address_file():
    """A private RAY_TMPDIR whose address file names a port nothing listens on.

    Short, from mkdtemp: a local instance puts its session (with Unix sockets, whose paths
    have a length limit) under RAY_TMPDIR too."""
    folder = tempfile.mkdtemp(prefix="rayt")
    dead = f"127.0.0.1:{free_port()}"
    (Path(folder) / "ray").mkdir()
    (Path(folder) / "ray" / "ray_current_cluster").write_text(dead + "\n")
    try:
        yield folder, dead
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _env(**extra: str) -> dict[str, str]:
    """The test's environment without any Ray setting, plus `extra`.

    A token of its own in RAY_AUTH_TOKEN keeps a local instance from writing ~/.ray/auth_token
    (a driver joining by address ignores it unless RAY_AUTH_MODE=token)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    env.update(extra)
    return env


def _train(out: Path, env: dict, *sets: str, timeout: float = 240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "odepolicy.cli", "train", str(PENDULUM)]
    cmd += [arg for s in [*TINY, *sets] for arg in ("--set", s)]
    cmd += ["--out", str(out), "--name", "run", "--quiet"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _ray_meta(run: Path) -> dict | None:
    """meta.json's "ray" entry: the backend's cluster_info, which the trainer records."""
    return json.loads((run / "meta.json").read_text()).get("ray")


def test_address_rules(monkeypatch, dead_address_file):
    folder, dead = dead_address_file
    monkeypatch.setenv("RAY_TMPDIR", folder)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert address_file() == Path(folder) / "ray" / "ray_current_cluster"
    assert resolve_address(None) == ("local", "local")  # the address file does not count
    assert resolve_address("local") == ("local", "local")
    assert resolve_address("auto") == (dead, "address file")
    assert resolve_address("10.0.0.1:6379") == ("10.0.0.1:6379", "config")

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")  # a Ray job's driver
    assert resolve_address(None) == ("10.0.0.2:6379", "RAY_ADDRESS")
    assert resolve_address("auto") == ("10.0.0.2:6379", "RAY_ADDRESS")
    assert resolve_address("local") == ("local", "local")
    assert resolve_address("10.0.0.1:6379") == ("10.0.0.1:6379", "config")

    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setenv("RAY_TMPDIR", str(Path(folder) / "nothing"))
    with pytest.raises(OdepolicyError, match="no Ray cluster was started on this machine"):
        resolve_address("auto")


def test_session_ray_is_a_fresh_local_instance(ray_session):
    backend = make_backend("ray", "InvertedPendulum-v5", {"name": "linear"}, workers=1)
    try:
        assert backend.cluster_info == {"address": "local", "source": "reused"}
    finally:
        backend.close()
    assert ray_session.is_initialized()


def test_local_run_ignores_a_dead_address_file(tmp_path, dead_address_file):
    folder, dead = dead_address_file
    proc = _train(tmp_path, _env(RAY_TMPDIR=folder))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ": 1 iterations" in proc.stdout
    assert "joining" not in proc.stderr and dead not in proc.stderr
    info = _ray_meta(tmp_path / "run")
    assert info == {"address": "local", "source": "local"}


@pytest.mark.parametrize(
    "how, expected",
    [
        ("RAY_ADDRESS", "from RAY_ADDRESS"),
        ("config", "backend.address="),
        ("auto", "backend.address=auto, read from"),
        ("dashboard", "dashboard"),
    ],
)
def test_dead_address_fails_fast_and_names_its_source(tmp_path, dead_address_file, how, expected):
    folder, dead = dead_address_file
    env, sets = _env(RAY_TMPDIR=folder), []
    if how == "RAY_ADDRESS":
        env["RAY_ADDRESS"] = dead
    elif how == "config":
        sets = [f"backend.address={dead}"]
    elif how == "auto":
        sets = ["backend.address=auto"]  # the address file's dead cluster
    else:  # the dashboard URL that `ray job submit` wants, mistaken for a cluster address
        env["RAY_ADDRESS"] = "http://127.0.0.1:8265"
    started = time.monotonic()
    proc = _train(tmp_path, env, *sets, timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("odepolicy: error: "), proc.stderr
    assert expected in lines[0]
    if how != "dashboard":
        assert dead in lines[0]
    if how == "auto":
        assert str(Path(folder) / "ray" / "ray_current_cluster") in lines[0]
    assert took < 60, f"took {took:.0f} s"
    assert not (tmp_path / "run" / "checkpoints" / "latest.npz").exists()


def test_run_joins_the_cluster_named_by_ray_address(tmp_path, dead_address_file):
    folder, dead = dead_address_file
    # Token authentication, as Ray >= 2.5x clusters have it: the head and the drivers share
    # RAY_AUTH_MODE=token and the token (here RAY_AUTH_TOKEN, so ~/.ray is neither read nor
    # written and the result does not depend on it).
    auth = dict(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    with ray_head(_env(**auth)) as (port, temp_dir):
        address = f"127.0.0.1:{port}"

        # The address file (dead) is not consulted: RAY_ADDRESS names the cluster to join.
        env = _env(RAY_TMPDIR=folder, RAY_ADDRESS=address, **auth)
        proc = _train(tmp_path, env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        joined = f"odepolicy: joining the Ray cluster at {address} given by RAY_ADDRESS"
        assert joined in proc.stderr.splitlines()
        info = _ray_meta(tmp_path / "run")
        assert info == {"address": address, "source": "RAY_ADDRESS"}
        # The actors ran on that head: their logs are in its session folder, and the driver
        # started no instance of its own under RAY_TMPDIR.
        logs = Path(temp_dir) / "session_latest" / "logs"
        assert any(logs.glob("worker-*")), sorted(p.name for p in logs.iterdir())
        assert sorted(p.name for p in (Path(folder) / "ray").iterdir()) == ["ray_current_cluster"]

        # "auto" reads the address file, here one naming the live head (as `ray start` would
        # write it), and, like Ray's own "auto", turns token mode on for this machine's token.
        live = tempfile.mkdtemp(prefix="rayl")
        try:
            (Path(live) / "ray").mkdir()
            (Path(live) / "ray" / "ray_current_cluster").write_text(address + "\n")
            env = _env(RAY_TMPDIR=live, RAY_AUTH_TOKEN=auth["RAY_AUTH_TOKEN"])
            proc = _train(tmp_path / "auto", env, "backend.address=auto")
        finally:
            shutil.rmtree(live, ignore_errors=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "joining" not in proc.stderr
        info = _ray_meta(tmp_path / "auto" / "run")
        assert info == {"address": address, "source": "address file"}

        # Without RAY_AUTH_MODE a driver joining by address sends no token: one clear line, exit
        # 2. (Ray retries for ~20 s by default; RAY_gcs_server_port_wait_time_s shortens it.)
        env = _env(RAY_ADDRESS=address, RAY_gcs_server_port_wait_time_s="2")
        proc = _train(tmp_path / "noauth", env, timeout=120)
        assert proc.returncode == 2, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("odepolicy: error")]
        assert len(errors) == 1 and "RAY_AUTH_MODE=token" in errors[0], proc.stderr[-3000:]
        assert address in errors[0] and "RAY_ADDRESS" in errors[0]
