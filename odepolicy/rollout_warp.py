"""Evaluate a population on MuJoCo Warp worlds: physics, task, normaliser and policy on one device.

The `physics: warp` counterpart of `rollout.evaluate_population` (DESIGN principle 7). Every
row of `thetas` is one world of a `WarpWorlds` batch; the policy's `prepare` runs once, through
its torch path (`backend = "torch"`, float64 on the worlds' device), and each time step is one
batched policy call, one batched physics step and a handful of tensor operations. Observation
statistics (count, sum, sum of squares per row) and returns accumulate in float64 tensors on the
device; only the per-row totals come back to the host, once, at the end. The only other host
contact is one boolean every `check_every` steps (have all episodes ended?), which lets an
iteration whose episodes all ended early stop early.

Finished worlds are masked, as the CPU engine's lockstep batch drops its finished rows: they
keep stepping with zero controls, and nothing they do is counted. A row whose policy output or
whose observation or reward is not finite is marked failed ("non-finite ..."), as on the CPU.

Start states: row i starts at `noise[i]` (the task's reset noise, drawn on the device by a
`torch.Generator`). `WarpRolloutWorker.run` seeds it per iteration and gives antithetic partners
the same start state, as the CPU engine's `episode_seed` does; evaluation episodes draw theirs
from the run's evaluation seed. Start states are therefore a function of the seeds, but not the
same numbers as Gymnasium's numpy streams (see `odepolicy.envs.warp`).

`WarpRolloutWorker` has `RolloutWorker`'s `run(task, indices)` and returns the same
`PerturbationResult`s, so the trainer, progress.csv, checkpoints and the normaliser see a warp
iteration exactly as they see a CPU one.
"""

from __future__ import annotations

import numpy as np

from .envs import require_warp
from .noise import perturbed_params
from .policies import Policy, policy_for_env
from .rollout import PerturbationResult, PopulationResult, RolloutTask

__all__ = ["evaluate_population_warp", "WarpRolloutWorker", "start_seed"]

# Steps between the checks whether every episode has ended (one boolean to the host each).
CHECK_EVERY = 32


def evaluate_population_warp(
    policy: Policy,
    thetas: np.ndarray,
    worlds,
    noise,
    horizon: int,
    obs_mean: np.ndarray | None = None,
    obs_std: np.ndarray | None = None,
    clip: float | None = None,
    check_every: int = CHECK_EVERY,
) -> PopulationResult:
    """One episode (up to `horizon` steps and the task's own limit) per row of `thetas`, row i
    in world i of `worlds` (a `WarpWorlds` with at least len(thetas) worlds; the rest are
    masked), started at reset noise `noise[i]`. Observations are normalised with the frozen
    (obs_mean, obs_std) and clipped to +-clip. `policy` must use its torch backend on the
    worlds' device."""
    import torch

    P, dev, f64 = len(thetas), worlds.device, torch.float64
    if worlds.nworld < P:
        raise ValueError(f"{P} parameter vectors for {worlds.nworld} worlds")
    n, dim = worlds.nworld, worlds.obs_dim
    horizon = min(int(horizon), worlds.task.max_episode_steps)
    with worlds.stream():
        mean = torch.zeros(dim, dtype=f64, device=dev)
        std = torch.ones(dim, dtype=f64, device=dev)
        if obs_mean is not None:
            mean = torch.as_tensor(np.asarray(obs_mean, dtype=np.float64), device=dev)
        if obs_std is not None:
            std = torch.as_tensor(np.asarray(obs_std, dtype=np.float64), device=dev)
        low, high = worlds.action_low, worlds.action_high
        if n > P:  # spare worlds: their rows repeat row 0 and never count
            thetas = np.concatenate([thetas, np.repeat(thetas[:1], n - P, axis=0)])
        prepared = policy.prepare(thetas)
        obs = worlds.reset(noise[:n] if len(noise) >= n else _pad(noise, n))
        alive = torch.zeros(n, dtype=torch.bool, device=dev)
        alive[:P] = True
        failed = torch.zeros(n, dtype=torch.bool, device=dev)
        bad_action = torch.zeros(n, dtype=torch.bool, device=dev)
        returns = torch.zeros(n, dtype=f64, device=dev)
        lengths = torch.zeros(n, dtype=torch.int64, device=dev)
        obs_sum = torch.zeros(n, dim, dtype=f64, device=dev)
        obs_sumsq = torch.zeros(n, dim, dtype=f64, device=dev)
        for t in range(horizon):
            live = alive[:, None]
            seen = torch.where(live, obs, 0.0)
            obs_sum += seen
            obs_sumsq += seen * seen
            z = (obs - mean) / std
            if clip is not None:
                z = z.clamp(-clip, clip)
            actions = policy._step_torch(prepared, z)
            actions = torch.minimum(torch.maximum(actions, low), high)
            finite = torch.isfinite(actions).all(1)
            bad_action |= alive & ~finite
            failed |= alive & ~finite
            alive &= finite
            obs, reward, terminated = worlds.step(torch.where(alive[:, None], actions, 0.0))
            returns += torch.where(alive, reward, 0.0)
            lengths += alive
            bad = alive & ~(torch.isfinite(reward) & torch.isfinite(obs).all(1))
            failed |= bad
            alive &= ~(terminated | bad)
            if (t + 1) % check_every == 0 and not bool(alive.any()):
                break
        out = [x[:P].cpu().numpy() for x in (returns, lengths, failed, bad_action)]
        sums = obs_sum[:P].cpu().numpy(), obs_sumsq[:P].cpu().numpy()
    returns, lengths, failed, bad_action = out
    why = ("non-finite reward or observation", "non-finite action from the policy")
    reasons = [why[int(bad_action[i])] if failed[i] else "" for i in range(P)]
    returns = np.where(failed, np.nan, returns)
    lengths = lengths.astype(np.int64)
    return PopulationResult(
        returns, lengths, failed, reasons, lengths.astype(np.float64), sums[0], sums[1]
    )


def _pad(noise, n: int):
    import torch

    return torch.cat([noise, noise[:1].expand(n - len(noise), -1)])


def start_seed(iteration_seed: int) -> int:
    """The seed of an iteration's start states on warp worlds (one draw per direction)."""
    return int(np.random.SeedSequence([iteration_seed, 2]).generate_state(1)[0])


class WarpRolloutWorker:
    """A population's episodes as MuJoCo Warp worlds on one device, with the policy there.

    Holds one `WarpWorlds` per population size it has seen (a run has two: the perturbations
    and the centre's evaluation episodes), so the models and CUDA graphs are built once."""

    def __init__(
        self,
        env_id: str,
        policy_spec: dict,
        max_episode_steps: int | None = None,
        device: str = "cpu",
    ):
        require_warp(env_id)
        from .envs.warp import WarpWorlds, torch_device

        self.env_id = env_id
        self.device = torch_device(device)
        self.max_episode_steps = max_episode_steps
        self._make = lambda n: WarpWorlds(env_id, n, self.device)
        self.worlds: dict[int, object] = {}
        spec = self._worlds(1).spec
        self.policy = policy_for_env(spec, {**policy_spec, "device": self.device})
        self.policy.backend = "torch"

    def _worlds(self, n: int):
        if n not in self.worlds:
            self.worlds[n] = self._make(n)
        return self.worlds[n]

    def run(self, task: RolloutTask, indices) -> list[PerturbationResult]:
        import torch

        indices = [int(k) for k in indices]
        worlds = self._worlds(len(indices))
        if task.noise is not None:
            thetas = perturbed_params(task.noise, task.center, indices)
            rows = [task.noise.direction_of(k)[0] for k in indices]
            seed, count = start_seed(task.noise.iteration_seed), task.noise.directions
        else:
            thetas = np.repeat(task.center[None, :], len(indices), axis=0)
            rows, seed, count = indices, int(task.eval_seed), max(indices) + 1
        with worlds.stream():  # drawn on the stream the rollout then runs on
            gen = torch.Generator(device=self.device).manual_seed(seed)
            noise = worlds.reset_noise(count, gen)[torch.as_tensor(rows, device=self.device)]
        horizon = task.horizon
        if self.max_episode_steps is not None:
            horizon = min(horizon, self.max_episode_steps)
        res = evaluate_population_warp(
            self.policy, thetas, worlds, noise, horizon,
            task.obs_mean, task.obs_std, task.obs_clip,
        )  # fmt: skip
        return res.per_index(indices)

    def close(self) -> None:
        self.worlds = {}
