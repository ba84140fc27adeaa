"""A real Ray head for the tests that join a running cluster: `ray start --head --block` on
127.0.0.1, in its own temp folder and its own process group, ended by its own pid (never
`ray stop`, which would end every Ray on the machine)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def ray_head(env: dict):
    """Start a one-CPU head with environment `env`; yield its port once it accepts connections."""
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayh")  # short: Ray's socket paths have a length limit
    head_cmd = [
        str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--include-dashboard=false",
        f"--dashboard-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]  # fmt: skip
    head = subprocess.Popen(
        head_cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, ended below by its pid
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert head.poll() is None, "ray start --head exited"
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "Ray head did not come up"
            time.sleep(0.2)
        yield port, temp_dir
    finally:
        try:  # SIGINT: `ray start --block` stops its GCS, raylet and workers at once
            os.killpg(head.pid, signal.SIGINT)
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)
