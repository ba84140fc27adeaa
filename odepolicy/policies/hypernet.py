"""HyperNet baseline ("Ode to an ODE", Sec. 5): x' = f(W_t x + b), where W_t is the h x h
reshaped state w_t of an "entangled" Neural ODE w' = MLP(w) (two tanh hidden layers of
`hyper_width` units), started from a learned w_0.

Both flows take the same N Euler steps; like ODEtoODE, x_i uses the freshly updated W_i:
w_i = w_{i-1} + eta MLP(w_{i-1}), x_i = x_{i-1} + eta f(W_i x_{i-1} + b). The w-flow depends only
on the parameters, so `prepare` computes W_1..W_N once for the population
(`kernels.hypernet_flow` on CPU). Init: projections and w_0 ~ N(0, 1/fan_in), MLP weights
~ N(0, 1/fan_in), biases zero.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from ..manifolds import Euclidean
from . import kernels
from ._torch import torch
from .base import ODEPolicy, _positive_int, contiguous
from .base_ode import mlp_blocks, mlp_forward

__all__ = ["HyperNet"]


class HyperNet(ODEPolicy):
    name: ClassVar[str] = "hypernet"
    defaults: ClassVar[dict[str, Any]] = {**ODEPolicy.defaults, "hyper_width": 16}

    def _configure(self) -> None:
        super()._configure()
        self.hyper_width = self.kwargs["hyper_width"] = _positive_int(
            self.name, "hyper_width", self.kwargs["hyper_width"]
        )

    def _blocks(self) -> list:
        h = self.hidden
        return [
            ("omega_in", Euclidean(h, self.obs_dim, scale=1 / math.sqrt(self.obs_dim))),
            ("omega_out", Euclidean(self.act_dim, h, scale=1 / math.sqrt(h))),
            ("bias", Euclidean(h)),
            ("w0", Euclidean(h, h, scale=1 / math.sqrt(h))),
            *mlp_blocks("hyper_", h * h, self.hyper_width, h * h),
        ]

    def _flow_kernels(self, p: dict[str, np.ndarray]) -> np.ndarray:
        mlp = [contiguous(p[f"hyper_{k}"]) for k in ("w1", "b1", "w2", "b2", "w3", "b3")]
        return kernels.hypernet_flow(contiguous(p["w0"]), *mlp, self.eta, self.n_steps)

    def _flow_torch(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        P, h = p["w0"].shape[0], self.hidden
        w = p["w0"].reshape(P, h * h)
        ws = []
        for _ in range(self.n_steps):
            w = w + self.eta * mlp_forward(p, "hyper_", w)
            ws.append(w)
        return torch.stack(ws, dim=1).reshape(P, self.n_steps, h, h)
