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

Where the actors run (`backend.address`, resolved by `resolve_address`). A run must not depend
on what the machine ran before, so Ray's own fallbacks (a bare `ray.init()` joins whatever
cluster `/tmp/ray/ray_current_cluster` names, even one that died long ago) are not used:

* unset (None): a new private local instance, `ray.init(address="local", num_cpus=...)`, whatever
  address file the machine holds. The one exception is a Ray job's driver: `ray job submit`
  sets `RAY_ADDRESS`, and a run that finds it set joins that cluster and says so on stderr.
* `"local"`: a new private local instance even where `RAY_ADDRESS` is set.
* `"auto"`: the cluster this machine runs, i.e. `RAY_ADDRESS` if set, else the address file that
  `ray start` wrote (`$RAY_TMPDIR/ray/ray_current_cluster`, by default under /tmp).
* `"HOST:PORT"`: that cluster (its GCS port, 6379 unless `ray start --port` said otherwise).

Joining never passes `num_cpus` (the cluster's nodes own their resources). Before `ray.init`
joins, a short TCP connect to the GCS port checks that something answers there: Ray itself
retries a dead address for minutes. A dead, unreachable or malformed address is an
`OdepolicyError` that names where the address came from. `RayBackend.cluster_info` records the
address used and its source (the trainer stores it in meta.json). A Ray instance already
initialised in this process (a library caller's, or the test session's) is reused as it is.

Token authentication (Ray >= 2.5x): a local `ray.init` turns it on by default (it sets
`RAY_AUTH_MODE=token` in its own process and creates `~/.ray/auth_token` if no token exists),
and `ray start --head` turns it on when a token exists. A driver that joins by an explicit
address (HOST:PORT, `RAY_ADDRESS`) never turns it on by itself, so joining such a cluster needs
`RAY_AUTH_MODE=token` and the cluster's token in `RAY_AUTH_TOKEN`, `RAY_AUTH_TOKEN_PATH` or
`~/.ray/auth_token`; without them `ray.init` fails after about 20 s with a bare
"Failed to connect", which the error here completes with that hint. "auto" read from the
address file does what Ray's own `ray.init("auto")` does: with RAY_AUTH_MODE unset it turns
token mode on where this machine has a token, since `ray start` made that cluster here.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

import numpy as np

from .. import OdepolicyError
from ..rollout import PerturbationResult, RolloutTask
from .base import Backend

__all__ = ["RayBackend", "init_ray", "resolve_address"]

_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

# Seconds the TCP check of a cluster's GCS port may take before the address counts as
# unreachable: long enough for a far-away head, short next to Ray's own minutes of retries.
PROBE_TIMEOUT = 5.0


# -- where Ray runs -----------------------------------------------------------------------------
def address_file() -> Path:
    """The file in which `ray start` records the cluster it started ("auto" reads it)."""
    try:
        from ray._common.utils import get_ray_address_file
    except ImportError:  # pragma: no cover - Ray moved it; same rule as Ray's own
        tmp = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or tempfile.gettempdir()
        return Path(tmp) / "ray" / "ray_current_cluster"
    return Path(get_ray_address_file(None))


def resolve_address(address: str | None) -> tuple[str, str]:
    """The Ray address a run uses and where it came from; reads the environment, not Ray.

    Returns `(address, source)`: `("local", "local")` for a new private instance, otherwise a
    HOST:PORT (or a `ray://` client address) and the source that named it: "config"
    (`backend.address`), "RAY_ADDRESS", or "address file" (for "auto"). The rules are in the
    module docstring; the point is that an address file left on the machine never redirects a
    run that asked for nothing.
    """
    given = (address or "").strip()
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if given == "local":
        return "local", "local"
    if not given or given == "auto":
        # As in Ray, a set RAY_ADDRESS stands for an unset or "auto" address; its values
        # "local" and "auto" keep Ray's meanings. Only an unset address ignores the file.
        if env == "local" or (not env and not given):
            return "local", "local"
        if env and env != "auto":
            return env, "RAY_ADDRESS"
        path = address_file()
        try:
            found = path.read_text().strip()
        except OSError:
            found = ""
        if not found:
            raise OdepolicyError(
                f"Ray address 'auto': no Ray cluster was started on this machine (no address "
                f"file {path}); start one with `ray start --head`, or set "
                f"backend.address=HOST:PORT"
            )
        return found, "address file"
    return given, "config"


def _origin(source: str, address: str) -> str:
    """Where an address came from, worded for an error message: the thing to fix."""
    if source == "RAY_ADDRESS":
        return "from RAY_ADDRESS; unset it, or set backend.address=local, for a local Ray instance"
    if source == "address file":
        return (
            f"backend.address=auto, read from {address_file()}, written by an earlier `ray start`"
        )
    return f"backend.address={address}"


def _check_reachable(address: str, origin: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Fail fast where no cluster can answer: ray.init would retry a dead address for minutes."""
    target = address
    if "://" in target:
        scheme, _, rest = target.partition("://")
        if scheme.lower() in ("http", "https"):
            raise OdepolicyError(
                f"Ray address {address} ({origin}) is a dashboard / job-submission address; a run "
                f"joins a cluster by its GCS address HOST:PORT (default port 6379)"
            )
        if scheme.lower() != "ray":
            return  # another Ray Client scheme: leave it to ray.init
        target = rest.split("/", 1)[0]
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise OdepolicyError(
            f"Ray address {address!r} ({origin}) is not HOST:PORT; use HOST:PORT, 'auto' or 'local'"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        if isinstance(exc, ConnectionRefusedError):
            reason = "connection refused, nothing listens there"
        elif isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError since 3.10
            reason = f"no answer within {timeout:g} s"
        elif isinstance(exc, socket.gaierror):
            reason = f"unknown host {host!r}"
        else:
            reason = exc.strerror or type(exc).__name__
        raise OdepolicyError(f"no Ray cluster at {address} ({origin}): {reason}") from None


def init_ray(
    address: str | None,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
) -> dict:
    """Start or join Ray as `resolve_address` decides and return `{"address", "source"}`.

    `num_cpus` and `object_store_memory` size a new local instance only: Ray refuses them when
    joining, since the cluster's nodes own their resources. Every failure is an
    OdepolicyError naming the address and where it came from.
    """
    import ray

    target, source = resolve_address(address)
    kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
    if source == "local":
        try:
            ray.init(
                address="local",  # never the address file or RAY_ADDRESS
                num_cpus=num_cpus or os.cpu_count() or 1,
                object_store_memory=object_store_memory,
                **kwargs,
            )
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
            raise OdepolicyError(f"cannot start a local Ray instance: {_why(exc)}") from None
        return {"address": "local", "source": "local"}
    origin = _origin(source, target)
    _check_reachable(target, origin)
    if source == "address file":
        _trust_local_token()
    if source == "RAY_ADDRESS":  # implicit, so say it: a stray RAY_ADDRESS is easy to miss
        print(
            f"odepolicy: joining the Ray cluster at {target} given by RAY_ADDRESS",
            file=sys.stderr,
            flush=True,
        )
    try:
        ray.init(address=target, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
        raise OdepolicyError(
            f"cannot join the Ray cluster at {target} ({origin}): {_why(exc)}; {_join_hint()}"
        ) from None
    return {"address": target, "source": source}


def _trust_local_token() -> None:
    """Token auth for a cluster this machine started, as Ray's own `ray.init("auto")` does.

    The address file names a cluster that `ray start` started here, so a token on this machine
    is meant for it: where RAY_AUTH_MODE is unset and a token exists, turn token mode on. An
    explicit address never gets this (Ray's rule too): the token would go to whoever that is."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # pragma: no cover - a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _join_hint() -> str:
    """What to check when the GCS port answers but ray.init cannot join.

    Ray reports only "Failed to connect" (the cause, e.g. a missing token, goes to its C++ log),
    so name the usual causes: token authentication, which a driver joining by address does not
    turn on by itself, and a port that is not a Ray GCS of this Ray version."""
    import ray

    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        auth = "check that the token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
        auth += " is the cluster's"
    else:
        auth = "if the cluster uses token authentication, set RAY_AUTH_MODE=token and its token"
        auth += " (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
    return f"{auth}; check that the address is the GCS port of a Ray {ray.__version__} cluster"


def _current_cluster(ray) -> dict:
    """cluster_info for a Ray instance this process had initialised before the backend."""
    try:
        node = ray._private.worker._global_node
        if node is not None and node.head:  # this process started it: a local instance
            return {"address": "local", "source": "reused"}
        return {"address": ray.get_runtime_context().gcs_address, "source": "reused"}
    except Exception:  # pragma: no cover - private Ray API moved
        return {"address": "unknown", "source": "reused"}


class _RolloutActor:
    """One Ray actor process: a RolloutWorker reused across iterations."""

    def __init__(self, env_id: str, policy_spec: dict, max_episode_steps: int | None):
        for var in _THREAD_VARS:
            os.environ[var] = "1"
        # torch is imported only by policies that run on it (odepolicy.policies._torch); the
        # variables above give it one thread then.
        from odepolicy.rollout import RolloutWorker

        self.worker = RolloutWorker(env_id, policy_spec, max_episode_steps)

    def pid(self) -> int:
        return os.getpid()

    def run(self, task: RolloutTask, indices: list[int]) -> tuple[list[PerturbationResult], float]:
        """The chunk's results and the CPU seconds this process spent on them."""
        cpu = time.process_time()
        results = self.worker.run(task, indices)
        return results, time.process_time() - cpu

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
        # {"address": "local" or the address joined, "source": "local" | "config" |
        # "RAY_ADDRESS" | "address file" | "reused"}; recorded in the run's meta.json
        self.cluster_info: dict = {}
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
            self.cluster_info = _current_cluster(ray)
            return
        self.cluster_info = init_ray(
            self.address,
            num_cpus=max(os.cpu_count() or 1, self.workers),
            object_store_memory=100 * 1024 * 1024,
        )
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
        indices = sorted(int(k) for k in indices)
        if not indices:
            return []
        return _Round(self, self._ray.put(task), indices).run()

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


class _Round:
    """One call of `RayBackend.evaluate`: chunks handed to actors as they free up, a dead
    actor's chunk queued again (exactly once) and the actor replaced, results kept by index."""

    def __init__(self, backend: RayBackend, task_ref, indices: list[int]):
        self.backend, self.ray, self.task_ref = backend, backend._ray, task_ref
        self.indices = indices
        self.queue = backend._chunks(indices)
        self.results: dict[int, PerturbationResult] = {}
        # object ref -> (slot, is_probe): a chunk's results, or a new actor's readiness probe
        self.pending: dict = {
            s.ready_ref: (s, True) for s in backend._slots if s.ready_ref is not None
        }
        self.restarts_left = max(3, 2 * backend.workers)
        self.last_error = "no rollout worker"

    def dispatch(self) -> None:
        for slot in self.backend._slots:
            if self.queue and slot.ready_ref is None and slot.chunk is None:
                slot.chunk = self.queue.popleft()
                ref = slot.handle.run.remote(self.task_ref, slot.chunk)
                self.pending[ref] = (slot, False)

    def replace(self, slot: _Slot, error: str) -> None:
        backend = self.backend
        self.last_error = error
        if slot.chunk is not None:
            self.queue.appendleft(slot.chunk)  # re-run elsewhere, exactly once
            slot.chunk = None
        try:
            self.ray.kill(slot.handle, no_restart=True)
        except Exception:  # already gone
            pass
        backend._slots.remove(slot)
        if self.restarts_left > 0:
            self.restarts_left -= 1
            new = backend._start_actor()
            backend._slots.append(new)
            self.pending[new.ready_ref] = (new, True)
            backend.counters["worker_restarts"] = backend.counters.get("worker_restarts", 0) + 1

    def run(self) -> list[PerturbationResult]:
        ray, backend = self.ray, self.backend
        idle_since = time.monotonic()
        while len(self.results) < len(self.indices):
            self.dispatch()
            if not backend._slots:
                raise OdepolicyError(f"all Ray rollout workers are gone: {self.last_error}")
            if not self.pending:  # pragma: no cover - every live slot is busy or starting
                raise RuntimeError("Ray backend: work left but nothing in flight")
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=5.0)
            if not ready:
                running = any(s.ready_ref is None for s in backend._slots)
                if not running and time.monotonic() - idle_since > backend.startup_timeout:
                    raise OdepolicyError(
                        f"all Ray rollout workers are gone: no worker could be started in "
                        f"{backend.startup_timeout:.0f} s (last error: {self.last_error})"
                    )
                continue
            slot, is_probe = self.pending.pop(ready[0])
            try:
                value = ray.get(ready[0])
            except ray.exceptions.RayActorError as exc:
                self.replace(slot, _why(exc))
                continue
            idle_since = time.monotonic()
            if is_probe:
                slot.pid, slot.ready_ref = int(value), None
                continue
            results, cpu = value
            backend.remote_cpu_seconds += cpu
            for r in results:
                if r.index in self.results:  # pragma: no cover - would be a scheduling bug
                    raise RuntimeError(f"perturbation {r.index} evaluated twice")
                self.results[r.index] = _own(r)
            slot.chunk = None
        return [self.results[k] for k in self.indices]


def _own(r: PerturbationResult) -> PerturbationResult:
    """A copy whose arrays are writable and not backed by Ray's shared-memory store."""
    r.stats = {
        k: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v) for k, v in r.stats.items()
    }
    return r


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
