"""The training state and its checkpoint form, in one place.

`TrainState` gathers everything a run needs to continue exactly: the ES strategy (centre,
iteration, optimiser state), the observation normaliser and the counters. The run's randomness
is a pure function of (seed, iteration) (`es.iteration_seed`), so the seed in the config and the
iteration here are its whole RNG state. `to_checkpoint` turns the state into the flat arrays and
JSON metadata that `checkpoint.save_checkpoint` writes; `restore` and `policy_from_checkpoint`
read them back. The key naming (`es.*`, `norm.*`) exists only here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from . import OdepolicyError
from .es import RiemannianES
from .normalizer import ObsNormalizer
from .policies import Policy, policy_for_env

__all__ = [
    "Counters",
    "TrainState",
    "policy_from_checkpoint",
    "eval_seed_base",
    "env_meta",
    "budget_spent",
    "evaluation_due",
]

_ES, _NORM = "es.", "norm."
# Checkpoints written before optimisers were objects kept Adam's moments as es.adam_*.
_LEGACY_OPT = {"es.adam_m": "es.opt.m", "es.adam_v": "es.opt.v", "es.adam_t": "es.opt.t"}


def _with_prefix(prefix: str, state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {prefix + k: v for k, v in state.items()}


def _strip_prefix(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def eval_seed_base(config) -> int:
    """Seeds of the centre-policy evaluation episodes: the same at every evaluation."""
    return 1_000_000 + 1000 * int(config.seed)


def env_meta(spec) -> dict:
    """What a checkpoint records of its environment, enough to rebuild the policy."""
    return {
        "env_id": spec.env_id,
        "obs_dim": spec.obs_dim,
        "act_dim": spec.act_dim,
        "action_low": list(spec.action_low),
        "action_high": list(spec.action_high),
        "obs_keys": list(spec.obs_keys),
    }


@dataclass
class Counters:
    iteration: int = 0
    env_steps: int = 0
    episodes: int = 0
    wall_seconds: float = 0.0
    # CPU time over the iterations: the training process's, and a Ray run's actors' on its
    # rollouts (time an actor spends idle or starting is not counted). Unlike wall_seconds, not
    # inflated by a process stopped or sharing its core. A checkpoint from before this counter
    # starts it at its wall_seconds.
    cpu_seconds: float = 0.0
    failed_total: int = 0
    target_reached: bool = False  # the last evaluation reached config.target_return
    best_eval: float | None = None  # the best evaluation mean so far (best.npz's centre)
    evaluations: int = 0  # centre-policy evaluations so far (`max_evals` limits them)


def budget_spent(config, counters) -> bool:
    """Whether a run with these counters (a Counters or its dict) has finished its config's
    budget: `iterations`, `max_env_steps`, or an evaluation that reached `target_return`."""
    c = counters if isinstance(counters, dict) else vars(counters)
    return (
        int(c.get("iteration", 0)) >= config.iterations
        or (config.max_env_steps is not None and int(c.get("env_steps", 0)) >= config.max_env_steps)
        or (config.target_return is not None and bool(c.get("target_reached", False)))
    )


def evaluation_due(config, counters: Counters) -> bool:
    """Whether the iteration just finished (the counters after it) evaluates the centre: every
    `eval_every` iterations and at the end. With `max_evals` M (and `max_env_steps`), a periodic
    evaluation is skipped while the run has made more than M * (env_steps / max_env_steps) +
    M / 10 of them, so a run whose iterations shrink (a policy that learned to fall at once)
    evaluates at most about 1.1 M times."""
    c = counters
    if budget_spent(config, c):
        return True
    if c.iteration % config.eval_every:
        return False
    if config.max_evals is None or config.max_env_steps is None:
        return True
    return c.evaluations < config.max_evals * (c.env_steps / config.max_env_steps + 0.1)


@dataclass
class TrainState:
    es: RiemannianES
    normalizer: ObsNormalizer
    counters: Counters = field(default_factory=Counters)

    def to_checkpoint(
        self, config, env_spec, versions: dict, policy_kwargs: dict | None = None
    ) -> tuple[dict, dict]:
        """(arrays, metadata) for `checkpoint.save_checkpoint`. `policy_kwargs`: the policy's
        options with its defaults filled in (`Policy.kwargs`), so that the checkpoint rebuilds
        the same policy even if a later version changes a default (else the config's own)."""
        arrays = _with_prefix(_ES, self.es.state_dict())
        arrays.update(_with_prefix(_NORM, self.normalizer.state()))
        meta = {
            "iteration": self.counters.iteration,
            "counters": vars(self.counters).copy(),
            "config": config.to_dict(),
            "env": env_meta(env_spec),
            "policy": {
                "name": config.policy.name,
                "kwargs": dict(config.policy.kwargs if policy_kwargs is None else policy_kwargs),
            },
            "eval_seed": eval_seed_base(config),
            "versions": versions,
        }
        return arrays, meta

    def restore(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Load a checkpoint's arrays and metadata into this state (same config and policy)."""
        arrays = {_LEGACY_OPT.get(k, k): v for k, v in arrays.items()}
        try:
            self.es.load_state_dict(_strip_prefix(_ES, arrays))
            self.normalizer = ObsNormalizer.from_state(_strip_prefix(_NORM, arrays))
            counters = dict(meta["counters"])
            counters.setdefault("cpu_seconds", counters.get("wall_seconds", 0.0))
            self.counters = Counters(**counters)
        except (KeyError, TypeError, ValueError) as exc:
            raise OdepolicyError(f"checkpoint state does not fit this run ({exc})") from None
        if self.es.center.shape != (self.es.layout.size,):
            raise OdepolicyError(
                f"checkpoint parameters have shape {self.es.center.shape}, "
                f"policy expects {self.es.layout.size}"
            )


def policy_from_checkpoint(
    arrays: dict[str, np.ndarray], meta: dict, device: str = "cpu"
) -> tuple[Policy, np.ndarray, ObsNormalizer]:
    """(policy, centre parameters, normaliser) of a checkpoint's arrays and metadata."""
    spec = SimpleNamespace(**meta["env"])  # the EnvSpec fields env_meta recorded
    policy_spec = {"name": meta["policy"]["name"], **meta["policy"]["kwargs"], "device": device}
    policy = policy_for_env(spec, policy_spec)
    theta = arrays.get(_ES + "center")
    if theta is None or theta.shape != (policy.num_params,):
        shape = None if theta is None else theta.shape
        raise OdepolicyError(
            f"checkpoint parameters have shape {shape}, policy expects {policy.num_params}"
        )
    normalizer = ObsNormalizer.from_state(_strip_prefix(_NORM, arrays))
    return policy, theta, normalizer
