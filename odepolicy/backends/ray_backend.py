"""The Ray backend: long-lived rollout actors, a dynamic work queue, dead actors replaced.

Each actor holds one `RolloutWorker` (its environment pool and policy) for the whole run and
uses one thread for torch and BLAS (DESIGN principle 4); parallelism comes from the actors.
Per call of `evaluate` the task (centre parameters, normaliser, noise seed) is `ray.put` once
and the actors receive only a reference to it plus a chunk of perturbation indices (principle
3). Chunks are handed to actors as they free up, so a slow node or a long episode does not stall
the others; results come back tagged by index and are returned sorted, so the trainer's update
does not depend on which actor ran what (the policy's rows are bitwise independent of the batch
they are computed in, see `odepolicy.policies.base`).

Fault tolerance: an actor that dies mid-iteration (node lost, process killed, out of memory)
surfaces as `RayActorError` on its pending chunk. The chunk goes back to the queue, a
replacement actor is started and `counters["worker_restarts"]` grows by one; every index is
still evaluated exactly once. Only when no actor is left and none can be started does
`evaluate` raise `OdepolicyError`, and the trainer then keeps the last finished iteration's
checkpoint.

`address=None` starts a private local Ray instance (or reuses one already initialised in this
process); `"auto"` or `HOST:PORT` joins a running cluster. With token authentication on (the
default of clusters started by Ray >= 2.5x) a driver joining by address needs
`RAY_AUTH_MODE=token` and the cluster's token (`RAY_AUTH_TOKEN` or `~/.ray/auth_token`).
"""

from __future__ import annotations

import math
import os
import time
from collections import deque

import numpy as np

from .. import OdepolicyError
from ..rollout import PerturbationResult, RolloutTask
from .base import Backend

__all__ = ["RayBackend"]

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class _RolloutActor:
    """One Ray actor process: a RolloutWorker reused across iterations."""

    def __init__(self, env_id: str, policy_spec: dict, max_episode_steps: int | None):
        for var in _THREAD_VARS:
            os.environ[var] = "1"
        import torch

        torch.set_num_threads(1)
        from odepolicy.rollout import RolloutWorker

        self.worker = RolloutWorker(env_id, policy_spec, max_episode_steps)

    def pid(self) -> int:
        return os.getpid()

    def run(self, task: RolloutTask, indices: list[int]) -> list[PerturbationResult]:
        return self.worker.run(task, indices)

    def peak_memory_mb(self) -> float:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class _Slot:
    """Driver-side record of one actor: its handle and what it is doing."""

    def __init__(self, handle, ready_ref):
        self.handle = handle
        self.ready_ref = ready_ref  # pending until the actor's constructor has run
        self.pid: int | None = None
        self.chunk: list[int] | None = None  # the chunk in flight, if any
        self.started = time.monotonic()


class RayBackend(Backend):
    name = "ray"
    # Seconds to wait for a (replacement) actor when no actor at all is running, e.g. while an
    # autoscaler brings up nodes; after that `evaluate` gives up with an OdepolicyError.
    startup_timeout = 600.0
    # Chunks per worker and iteration: enough for dynamic balancing, few enough to keep the
    # lockstep batches of the workers large.
    chunks_per_worker = 4

    def __init__(
        self,
        env_id: str,
        policy_spec: dict,
        max_episode_steps: int | None = None,
        workers: int = 1,
        address: str | None = None,
    ):
        super().__init__()
        import ray

        if int(workers) < 1:
            raise OdepolicyError(f"Ray backend needs at least 1 worker, got {workers}")
        self._ray = ray
        self.env_id = env_id
        self.policy_spec = dict(policy_spec)
        self.max_episode_steps = max_episode_steps
        self.workers = int(workers)
        self.address = address
        self._started_ray = False
        self._slots: list[_Slot] = []
        self._closed = False
        self._connect()
        self._actor_cls = ray.remote(num_cpus=1, max_restarts=0, max_task_retries=0)(
            _RolloutActor
        ).options(runtime_env={"env_vars": {var: "1" for var in _THREAD_VARS}})
        try:
            self._slots = [self._start_actor() for _ in range(self.workers)]
            self._wait_ready(self._slots)
        except BaseException:
            self.close()
            raise

    # -- Ray and actors ---------------------------------------------------------------------
    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            return
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            if self.address is None:
                ray.init(
                    num_cpus=max(os.cpu_count() or 1, self.workers),
                    object_store_memory=100 * 1024 * 1024,
                    **kwargs,
                )
            else:
                ray.init(address=self.address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = "a local Ray instance" if self.address is None else self.address
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OdepolicyError(f"cannot start or join Ray ({where}): {msg}") from None
        self._started_ray = True

    def _start_actor(self) -> _Slot:
        handle = self._actor_cls.remote(self.env_id, self.policy_spec, self.max_episode_steps)
        return _Slot(handle, handle.pid.remote())

    def _wait_ready(self, slots: list[_Slot]) -> None:
        """Block until the first actors are up; their constructor errors surface here."""
        ray = self._ray
        try:
            pids = ray.get([s.ready_ref for s in slots])
        except ray.exceptions.RayActorError as exc:
            raise OdepolicyError(f"Ray rollout workers could not start: {_why(exc)}") from None
        for slot, pid in zip(slots, pids):
            slot.pid, slot.ready_ref = int(pid), None

    @property
    def num_workers(self) -> int:
        return len(self._slots)

    def actor_pids(self) -> list[int]:
        """Process ids of the rollout actors (all on this machine for a local instance)."""
        ray = self._ray
        return [int(p) for p in ray.get([s.handle.pid.remote() for s in self._slots])]

    def peak_memory_mb(self) -> dict[str, float]:
        """Peak resident memory (ru_maxrss) of each actor process, in MB."""
        ray = self._ray
        mbs = ray.get([s.handle.peak_memory_mb.remote() for s in self._slots])
        return {f"worker {i}": float(mb) for i, mb in enumerate(mbs)}

    # -- evaluation -------------------------------------------------------------------------
    def _chunks(self, indices: list[int]) -> deque[list[int]]:
        n = len(indices)
        size = max(1, math.ceil(n / (self.chunks_per_worker * max(1, len(self._slots)))))
        size += size % 2  # even: antithetic partners (2j, 2j+1) travel together
        return deque(indices[i : i + size] for i in range(0, n, size))

    def evaluate(self, task: RolloutTask, indices: list[int]) -> list[PerturbationResult]:
        if self._closed:
            raise RuntimeError("RayBackend is closed")
        ray = self._ray
        indices = sorted(int(k) for k in indices)
        if not indices:
            return []
        task_ref = ray.put(task)
        queue = self._chunks(indices)
        results: dict[int, PerturbationResult] = {}
        # object ref -> (slot, is_probe): a chunk's results, or a new actor's readiness probe
        pending: dict = {}
        for slot in self._slots:
            if slot.ready_ref is not None:
                pending[slot.ready_ref] = (slot, True)
        restarts_left = max(3, 2 * self.workers)
        last_error = "no rollout worker"
        idle_since = time.monotonic()

        def dispatch() -> None:
            for slot in self._slots:
                if queue and slot.ready_ref is None and slot.chunk is None:
                    slot.chunk = queue.popleft()
                    pending[slot.handle.run.remote(task_ref, slot.chunk)] = (slot, False)

        def replace(slot: _Slot, error: str) -> None:
            nonlocal restarts_left, last_error
            last_error = error
            if slot.chunk is not None:
                queue.appendleft(slot.chunk)  # re-run elsewhere, exactly once
                slot.chunk = None
            try:
                ray.kill(slot.handle, no_restart=True)
            except Exception:  # already gone
                pass
            self._slots.remove(slot)
            if restarts_left > 0:
                restarts_left -= 1
                new = self._start_actor()
                self._slots.append(new)
                pending[new.ready_ref] = (new, True)
                self.counters["worker_restarts"] = self.counters.get("worker_restarts", 0) + 1

        while len(results) < len(indices):
            dispatch()
            if not self._slots:
                raise OdepolicyError(f"all Ray rollout workers are gone: {last_error}")
            if not pending:  # pragma: no cover - every live slot is busy or starting
                raise RuntimeError("Ray backend: work left but nothing in flight")
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
            if not ready:
                running = any(s.ready_ref is None for s in self._slots)
                if not running and time.monotonic() - idle_since > self.startup_timeout:
                    raise OdepolicyError(
                        f"all Ray rollout workers are gone: no worker could be started in "
                        f"{self.startup_timeout:.0f} s (last error: {last_error})"
                    )
                continue
            slot, is_probe = pending.pop(ready[0])
            try:
                value = ray.get(ready[0])
            except ray.exceptions.RayActorError as exc:
                replace(slot, _why(exc))
                continue
            idle_since = time.monotonic()
            if is_probe:
                slot.pid, slot.ready_ref = int(value), None
                continue
            for r in value:
                if r.index in results:  # pragma: no cover - would be a scheduling bug
                    raise RuntimeError(f"perturbation {r.index} evaluated twice")
                results[r.index] = _own(r)
            slot.chunk = None
        return [results[k] for k in indices]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        ray = self._ray
        if ray.is_initialized():
            for slot in self._slots:
                try:
                    ray.kill(slot.handle, no_restart=True)
                except Exception:  # an actor already gone
                    pass
        self._slots = []
        if self._started_ray and ray.is_initialized():
            ray.shutdown()


def _own(r: PerturbationResult) -> PerturbationResult:
    """A copy whose arrays are writable and not backed by Ray's shared-memory store."""
    r.stats = {
        k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v) for k, v in r.stats.items()
    }
    return r


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
