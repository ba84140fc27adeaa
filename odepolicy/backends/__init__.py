"""Backends move rollout work to workers: `local` (in process) and `ray` (actors)."""

from __future__ import annotations

from .. import OdepolicyError
from .base import Backend
from .local import LocalBackend

__all__ = ["Backend", "LocalBackend", "make_backend", "BACKENDS"]

BACKENDS = ("local", "ray")


def make_backend(
    name: str,
    env_id: str,
    policy_spec: dict,
    max_episode_steps: int | None = None,
    workers: int = 1,
    address: str | None = None,
) -> Backend:
    if name == "local":
        return LocalBackend(env_id, policy_spec, max_episode_steps)
    if name == "ray":
        from .ray_backend import RayBackend

        return RayBackend(env_id, policy_spec, max_episode_steps, workers=workers, address=address)
    raise OdepolicyError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
