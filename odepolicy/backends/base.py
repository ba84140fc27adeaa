"""The backend interface: move rollout work to workers and results back, nothing more.

A backend owns workers that each hold a `RolloutWorker` (environments + policy). The trainer
hands it a `RolloutTask` and the indices to run; it returns one `PerturbationResult` per index,
sorted by index, whatever order the workers finished in. The same task gives the same results on
every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from ..rollout import PerturbationResult, RolloutTask

__all__ = ["Backend"]


class Backend(ABC):
    name: str = "base"

    def __init__(self) -> None:
        # Events a run should log (e.g. actor restarts); counters only ever grow.
        self.counters: dict[str, int] = {"worker_restarts": 0}
        # CPU seconds workers in other processes spent on this backend's rollouts (0 for a
        # backend that runs them in the calling process, whose own CPU time counts them).
        self.remote_cpu_seconds = 0.0

    @property
    @abstractmethod
    def num_workers(self) -> int: ...

    @abstractmethod
    def evaluate(self, task: RolloutTask, indices: list[int]) -> list[PerturbationResult]:
        """Run `indices` of `task`; results sorted by index, each index exactly once."""

    @abstractmethod
    def close(self) -> None:
        """Release workers. Safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
