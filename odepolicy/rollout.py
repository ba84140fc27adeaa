"""Evaluate a population of parameter vectors: environments in lockstep, one batched policy call.

`evaluate_population` keeps one environment per parameter vector, pays the policy's `prepare`
(the parameter-only matrix flow) once, then steps every live environment with a single batched
`step` per time step; finished episodes drop out of the batch (DESIGN principles 1 and 2). An
environment that raises, or yields a non-finite observation or reward, marks that perturbation
failed with its reason; the others go on.

`RolloutWorker` is what a backend holds in each process: a pool of environments reused across
iterations and the policy; `run(task, indices)` regenerates the perturbations from their seeds
and returns per-perturbation results tagged by index. It knows nothing of ES updates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _rollout_kernels as _rk
from .envs import Env, make_env
from .noise import NoiseSpec, perturbed_params
from .normalizer import RunningStats
from .policies import Policy, policy_for_env

__all__ = [
    "PopulationResult",
    "PerturbationResult",
    "RolloutTask",
    "RolloutWorker",
    "evaluate_population",
    "episode_seed",
    "lockstep_for",
]


@dataclass
class PopulationResult:
    returns: np.ndarray  # [P], NaN where failed
    lengths: np.ndarray  # [P] env steps taken
    failed: np.ndarray  # [P] bool
    reasons: list[str]
    obs_count: np.ndarray  # [P]
    obs_sum: np.ndarray  # [P, obs_dim]
    obs_sumsq: np.ndarray  # [P, obs_dim]

    def per_index(self, indices) -> list[PerturbationResult]:
        """Row r's result as `PerturbationResult` index indices[r] (what a worker returns)."""
        return [
            PerturbationResult(
                index=k,
                ret=float(self.returns[row]),
                length=int(self.lengths[row]),
                failed=bool(self.failed[row]),
                reason=self.reasons[row],
                stats=self.stats(row).state(),
            )
            for row, k in enumerate(indices)
        ]

    def stats(self, row: int) -> RunningStats:
        """Observation statistics seen by one row, as a mergeable delta."""
        n = float(self.obs_count[row])
        dim = self.obs_sum.shape[1]
        if n == 0:
            return RunningStats(dim)
        mean = self.obs_sum[row] / n
        m2 = np.maximum(self.obs_sumsq[row] - n * mean * mean, 0.0)
        return RunningStats(dim, n, mean, m2)


def evaluate_population(
    policy,
    thetas: np.ndarray,
    envs: list[Env],
    seeds: list[int],
    horizon: int,
    obs_mean: np.ndarray | None = None,
    obs_std: np.ndarray | None = None,
    clip: float | None = None,
) -> PopulationResult:
    """Run one episode (up to `horizon` steps) per row of `thetas`, row i in `envs[i]`,
    reset with `seeds[i]`. Observations are normalised with the frozen (obs_mean, obs_std).

    The live rows are kept compact (positions 0..L-1 of small arrays, updated in place), so a
    lockstep costs a fixed dozen numpy calls plus one `env.step` per live row; a row's totals
    are written to the result when its episode ends. Every row starts at t = 0, so its length
    is the lockstep at which it ended."""
    P = len(thetas)
    if len(envs) < P or len(seeds) < P:
        raise ValueError("need one environment and one seed per parameter vector")
    obs_dim = envs[0].obs_dim
    mean = np.zeros(obs_dim) if obs_mean is None else np.asarray(obs_mean, dtype=np.float64)
    std = np.ones(obs_dim) if obs_std is None else np.asarray(obs_std, dtype=np.float64)
    returns = np.zeros(P)
    lengths = np.zeros(P, dtype=np.int64)
    failed = np.zeros(P, dtype=bool)
    reasons = [""] * P
    obs_sum = np.zeros((P, obs_dim))
    obs_sumsq = np.zeros((P, obs_dim))

    def fail(i: int, why: str) -> None:
        failed[i], reasons[i] = True, why

    start = np.zeros((P, obs_dim))
    for i in range(P):
        try:
            start[i] = envs[i].reset(seed=int(seeds[i]))
            if not np.all(np.isfinite(start[i])):
                fail(i, "non-finite observation at reset")
        except Exception as exc:  # an environment that cannot reset fails its row only
            fail(i, f"reset raised {type(exc).__name__}: {exc}")
    live = np.flatnonzero(~failed)  # original row of each compact position
    prepared = policy.prepare(thetas) if P else None
    if len(live) < P:
        prepared = policy.select(prepared, live)
    # Compact state of the live rows.
    cur = start[live]
    run_env = [envs[i] for i in live]
    run_ret = np.zeros(len(live))
    run_sum = np.zeros_like(cur)
    run_sumsq = np.zeros_like(cur)
    z = np.empty_like(cur)

    def finish(positions, t: int) -> None:
        rows = live[positions]
        returns[rows] = run_ret[positions]
        lengths[rows] = t
        obs_sum[rows] = run_sum[positions]
        obs_sumsq[rows] = run_sumsq[positions]

    t = 0
    clip_at = -1.0 if clip is None else float(clip)
    kernels = getattr(policy, "backend", None) == "kernels"
    while t < int(horizon) and len(live):
        # run_sum += cur; run_sumsq += cur * cur; z = clip((cur - mean) / std): one call.
        _rk.observe(cur, mean, std, clip_at, run_sum, run_sumsq, z)
        if t and kernels:
            # z is our own contiguous float64 [L, obs_dim] and `select` keeps the prepared
            # rows in step with it: after the first, checked, call skip the checks of
            # `policy.step` (a few microseconds per lockstep, a visible share on tasks whose
            # lockstep holds a handful of rows).
            actions = policy._step_kernels(prepared, z)
        else:
            actions = policy.step(prepared, z)
        rewards = np.zeros(len(live))
        ended: set[int] = set()
        # MuJoCo silently resets a simulation given a NaN control; catch it before it does.
        if not _rk.all_finite(actions):
            for pos in np.flatnonzero(~np.isfinite(actions).all(axis=1)):
                fail(live[pos], "non-finite action from the policy")
                ended.add(int(pos))
        for pos, (env, action) in enumerate(zip(run_env, actions)):
            if ended and pos in ended:
                continue
            try:
                cur[pos], rewards[pos], terminated, truncated = env.step(action)
            except Exception as exc:
                fail(live[pos], f"step raised {type(exc).__name__}: {exc}")
                ended.add(pos)
                continue
            if terminated or truncated:
                ended.add(pos)
        run_ret += rewards
        t += 1
        # One compiled check per lockstep rather than one per environment step.
        if not _rk.rows_finite(rewards, cur):
            bad = ~(np.isfinite(rewards) & np.isfinite(cur).all(axis=1)) & ~failed[live]
            for pos in np.flatnonzero(bad):
                fail(live[pos], "non-finite reward or observation")
                ended.add(int(pos))
        if ended:
            done = np.zeros(len(live), dtype=bool)
            done[list(ended)] = True
            finish(np.flatnonzero(done), t)
            keep = np.flatnonzero(~done)
            live, cur, run_ret = live[keep], cur[keep], run_ret[keep]
            run_sum, run_sumsq = run_sum[keep], run_sumsq[keep]
            run_env = [run_env[k] for k in keep]
            z = z[: len(keep)]
            prepared = policy.select(prepared, keep)
    finish(np.arange(len(live)), t)
    returns[failed] = np.nan
    obs_count = lengths.astype(np.float64)
    return PopulationResult(returns, lengths, failed, reasons, obs_count, obs_sum, obs_sumsq)


# A policy step reads the whole of its row's prepared state (ODEtoODE: the 25 matrices of its
# flow). While the rows of a lockstep batch fit in a core's share of cache, that costs what the
# arithmetic costs; once they do not, every step streams them from memory. ISO-ODEtoODE at
# h = 64 keeps 0.8 MB per row: on the development machine (512 KiB L2, 8 MiB L3 for 2 cores)
# its step costs 70 us per env step with one or two rows in the batch and 210-250 us with 4 to
# 64 (benchmarks/es_throughput.md, stop 15). Rows smaller than SMALL_ROW keep the full batch.
LOCKSTEP_MAX = 64
SMALL_ROW = 64 << 10
ROWS_CACHE = 2 << 20


def lockstep_for(policy) -> int:
    """Environments to step in lockstep for `policy`: LOCKSTEP_MAX, or for a policy whose
    prepared state is over SMALL_ROW bytes a row, as many rows as fit in ROWS_CACHE (at least
    one). A row's result never depends on its batch, so this changes speed only. A policy
    without `prepared_bytes` (an exported one) keeps the full batch."""
    sized = getattr(policy, "prepared_bytes", None)
    per_row = sized() if sized is not None else 0
    if per_row <= SMALL_ROW:
        return LOCKSTEP_MAX
    return max(1, min(LOCKSTEP_MAX, ROWS_CACHE // per_row))


def episode_seed(iteration_seed: int, j: int) -> int:
    """Environment seed of direction j: antithetic partners share a start state."""
    return int(np.random.SeedSequence([iteration_seed, j, 1]).generate_state(1)[0])


@dataclass
class RolloutTask:
    """What the driver sends a worker once per iteration (plus the indices to run).

    With `noise` set, index k is perturbation k of that iteration; without it, index k is
    evaluation episode k of the unperturbed centre, seeded `eval_seed + k`."""

    center: np.ndarray
    horizon: int
    noise: NoiseSpec | None = None
    obs_mean: np.ndarray | None = None
    obs_std: np.ndarray | None = None
    eval_seed: int = 0
    obs_clip: float | None = None
    shared_start: bool = False  # every perturbation starts from direction 0's start state


@dataclass
class PerturbationResult:
    index: int
    ret: float
    length: int
    failed: bool
    reason: str = ""
    stats: dict = field(default_factory=dict)  # RunningStats.state() of the observations seen


class RolloutWorker:
    """Environments and a policy in one process; evaluates chunks of a population."""

    # Environments stepped in lockstep at once (`lockstep_for`). Larger batches amortise the
    # policy's per-call cost, but hundreds of MuJoCo models no longer fit in cache: on
    # HalfCheetah-v5 with ISO-ODEtoODE, 64 at a time is 9% faster per step than all 400 of a
    # paper-sized population, and the worker holds 64 environments instead of 400. Policies
    # with a large prepared state per row (ISO-ODEtoODE at h = 64) get smaller batches.
    lockstep = LOCKSTEP_MAX

    def __init__(
        self,
        env_id: str,
        policy_spec: dict,
        max_episode_steps: int | None = None,
        policy: Policy | None = None,
    ):
        """`policy`: an already built policy for this env (a local run shares the trainer's)."""
        self.env_id = env_id
        self.max_episode_steps = max_episode_steps
        self.envs: list[Env] = [self._new_env()]
        self.policy = policy or policy_for_env(self.envs[0].spec, policy_spec)
        self.lockstep = lockstep_for(self.policy)

    def _new_env(self) -> Env:
        return make_env(self.env_id, max_episode_steps=self.max_episode_steps)

    def _envs(self, n: int) -> list[Env]:
        while len(self.envs) < n:
            self.envs.append(self._new_env())
        return self.envs[:n]

    def run(self, task: RolloutTask, indices) -> list[PerturbationResult]:
        indices = [int(k) for k in indices]
        if task.noise is not None:
            thetas = perturbed_params(task.noise, task.center, indices)
            seeds = [
                episode_seed(
                    task.noise.iteration_seed,
                    0 if task.shared_start else task.noise.direction_of(k)[0],
                )
                for k in indices
            ]
        else:
            thetas = np.repeat(task.center[None, :], len(indices), axis=0)
            seeds = [task.eval_seed + k for k in indices]
        out = []
        for start in range(0, len(indices), self.lockstep):
            rows = slice(start, start + self.lockstep)
            res = evaluate_population(
                self.policy,
                thetas[rows],
                self._envs(len(thetas[rows])),
                seeds[rows],
                task.horizon,
                task.obs_mean,
                task.obs_std,
                task.obs_clip,
            )
            out += res.per_index(indices[rows])
        return out

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []
