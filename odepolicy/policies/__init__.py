"""The policy zoo: ODEtoODE (ISO and gated) and the baselines of "Ode to an ODE" (BaseODE,
NANODE, HyperNet, DeepNet, DeepResNet) plus a linear ARS policy, by registry name.

    pol = make_policy("iso_odetoode", obs_dim, act_dim, hidden=16)
    theta = pol.init(rng)
    actions = pol.act(thetas, obs)   # [P, m], [P, obs_dim] -> [P, act_dim]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import OdepolicyError
from .base import ODEPolicy, Policy
from .base_ode import BaseODE
from .deepnet import DeepNet, DeepResNet
from .hypernet import HyperNet
from .linear import Linear
from .nanode import NANODE
from .odetoode import GatedODEtoODE, ISOODEtoODE

__all__ = [
    "POLICIES",
    "make_policy",
    "policy_for_env",
    "Policy",
    "ODEPolicy",
    "ISOODEtoODE",
    "GatedODEtoODE",
    "BaseODE",
    "NANODE",
    "HyperNet",
    "DeepNet",
    "DeepResNet",
    "Linear",
]

POLICIES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (
        ISOODEtoODE,
        GatedODEtoODE,
        BaseODE,
        NANODE,
        HyperNet,
        DeepNet,
        DeepResNet,
        Linear,
    )
}


def make_policy(name: str, obs_dim: int, act_dim: int, **kwargs: Any) -> Policy:
    """Build the policy registered as `name`. Besides the family's own options, kwargs may hold
    action_low, action_high and device. Unknown names or options raise OdepolicyError."""
    try:
        cls = POLICIES[name]
    except (KeyError, TypeError):
        raise OdepolicyError(
            f"unknown policy {name!r}; valid: {', '.join(sorted(POLICIES))}"
        ) from None
    return cls(obs_dim, act_dim, **kwargs)


def policy_for_env(spec, policy_spec: dict) -> Policy:
    """The policy named by `policy_spec` ({"name": ..., **kwargs}) sized to an environment's
    spec (anything with obs_dim, act_dim, action_low, action_high, such as `envs.EnvSpec`), its
    actions clipped to the environment's action box."""
    return make_policy(
        obs_dim=spec.obs_dim,
        act_dim=spec.act_dim,
        action_low=np.asarray(spec.action_low),
        action_high=np.asarray(spec.action_high),
        **policy_spec,
    )
