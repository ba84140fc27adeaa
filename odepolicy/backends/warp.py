"""The warp backend: a whole population as MuJoCo Warp worlds on one device, in this process.

`physics: warp` (see `odepolicy.rollout_warp`): one `WarpRolloutWorker` steps every index of a
task at once, physics and policy on the run's device (`device: cpu` is Warp's CPU device,
`cuda` a GPU). Results come back sorted by index, like every backend's.
"""

from __future__ import annotations

from ..rollout_warp import WarpRolloutWorker
from .base import Backend
from .local import LocalBackend

__all__ = ["WarpBackend"]


class WarpBackend(LocalBackend):
    """The local backend's bookkeeping around a `WarpRolloutWorker` instead of CPU envs."""

    name = "warp"

    def __init__(
        self,
        env_id: str,
        policy_spec: dict,
        max_episode_steps: int | None = None,
        device: str = "cpu",
    ):
        Backend.__init__(self)
        self.worker = WarpRolloutWorker(env_id, policy_spec, max_episode_steps, device=device)
