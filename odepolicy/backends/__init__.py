"""Backends move rollout work to workers: `local` (in process) and `ray` (actors)."""

from __future__ import annotations

from .. import OdepolicyError
from .base import Backend
from .local import LocalBackend

__all__ = ["Backend", "LocalBackend", "make_backend", "BACKENDS"]

# The names make_backend builds; config.BACKENDS (what a config may name) must agree, which
# tests/test_structure.py checks (config cannot import this package: it sits below it).
BACKENDS = ("local", "ray")


def make_backend(
    name: str,
    env_id: str,
    policy_spec: dict,
    max_episode_steps: int | None = None,
    workers: int = 1,
    address: str | None = None,
    policy=None,
) -> Backend:
    """A backend by name. `policy`: an already built policy the local backend may step itself
    (Ray actors always build their own from `policy_spec`)."""
    if name == "local":
        return LocalBackend(env_id, policy_spec, max_episode_steps, policy=policy)
    if name == "ray":
        from .ray_backend import RayBackend

        return RayBackend(env_id, policy_spec, max_episode_steps, workers=workers, address=address)
    raise OdepolicyError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
