"""Shared fixtures. `ray_session` starts one small local Ray instance for the whole test session;
only tests that request it pay for it.

The suite must not depend on what the machine ran before: a `ray start` long ago leaves an
address file (`/tmp/ray/ray_current_cluster`) that a bare `ray.init()` would try to join, and a
shell inside a Ray job has `RAY_ADDRESS` set. So the session clears `RAY_ADDRESS` and every Ray
instance the tests start is a fresh local one (`address="local"`). It also gives the session a
token of its own (`RAY_AUTH_TOKEN`), so that local instances do not write `~/.ray/auth_token`,
whose presence would change what a later `ray start --head` on this machine does.
"""

import os
import secrets

import pytest

import odepolicy  # noqa: F401  (first: it pins OpenBLAS's kernels before numpy loads them)


@pytest.fixture(scope="session", autouse=True)
def _ray_isolated_from_machine():
    """RAY_ADDRESS cleared and a session token set for the whole run; restored at its end."""
    names = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.pop("RAY_ADDRESS", None)
    if "RAY_AUTH_TOKEN" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ:
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    try:
        yield
    finally:
        for name, value in saved.items():  # a local ray.init sets RAY_AUTH_MODE=token itself
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def ray_session(_ray_isolated_from_machine):
    import ray

    ray.init(
        address="local",  # never the machine's address file or a cluster
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=80 * 1024 * 1024,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
