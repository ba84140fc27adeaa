"""The in-process backend: one RolloutWorker, the whole population in one lockstep batch."""

from __future__ import annotations

from ..rollout import PerturbationResult, RolloutTask, RolloutWorker
from .base import Backend

__all__ = ["LocalBackend"]


class LocalBackend(Backend):
    name = "local"

    def __init__(
        self, env_id: str, policy_spec: dict, max_episode_steps: int | None = None, policy=None
    ):
        super().__init__()
        self.worker = RolloutWorker(env_id, policy_spec, max_episode_steps, policy=policy)

    @property
    def num_workers(self) -> int:
        return 1

    def evaluate(self, task: RolloutTask, indices: list[int]) -> list[PerturbationResult]:
        results = self.worker.run(task, sorted(indices))
        return sorted(results, key=lambda r: r.index)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
