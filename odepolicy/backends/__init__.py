"""Backends move rollout work to workers: `local` (in process) and `ray` (actors); with
`physics: warp`, the `warp` backend (every world on one device, in process)."""

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
    physics: str = "mujoco",
    device: str = "cpu",
) -> Backend:
    """A backend by name. `policy`: an already built policy the local backend may step itself
    (Ray actors always build their own from `policy_spec`). `physics="warp"` steps the whole
    population as MuJoCo Warp worlds on `device` in this process (backend `local` only)."""
    if physics == "warp":
        if name != "local":
            raise OdepolicyError(
                f"physics: warp runs every world on one device in this process; "
                f"use backend.name local (got {name!r})"
            )
        from .warp import WarpBackend

        return WarpBackend(env_id, policy_spec, max_episode_steps, device=device)
    if name == "local":
        return LocalBackend(env_id, policy_spec, max_episode_steps, policy=policy)
    if name == "ray":
        from .ray_backend import RayBackend

        return RayBackend(env_id, policy_spec, max_episode_steps, workers=workers, address=address)
    raise OdepolicyError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
