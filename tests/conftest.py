"""Shared fixtures. `ray_session` starts one small local Ray instance for the whole test session;
only tests that request it pay for it."""

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(
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
