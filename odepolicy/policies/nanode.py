"""NANODE baseline ("Ode to an ODE", Sec. 5): a non-autonomous Neural ODE x' = f(W_t x + b)
whose weight matrix is a trigonometric polynomial of degree d in time,

    W_t = A_0 + sum_{k=1..d} (A_k cos(2 pi k t / T) + B_k sin(2 pi k t / T)).

W_t depends only on the parameters, so `prepare` evaluates W_1..W_N (W_i = W_{t_i}, t_i = i eta,
the same indexing as ODEtoODE) once for the population (`kernels.nanode_flow` on CPU).
Init: projections ~ N(0, 1/fan_in), A_0 ~ N(0, 1/h), harmonics A_k, B_k ~ N(0, 0.01/h) (a
near-autonomous start), bias zero.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from ..manifolds import Euclidean
from . import kernels
from ._torch import torch
from .base import ODEPolicy, _positive_int, contiguous

__all__ = ["NANODE"]


class NANODE(ODEPolicy):
    name: ClassVar[str] = "nanode"
    defaults: ClassVar[dict[str, Any]] = {**ODEPolicy.defaults, "degree": 5}

    def _configure(self) -> None:
        super()._configure()
        self.degree = self.kwargs["degree"] = _positive_int(
            self.name, "degree", self.kwargs["degree"]
        )

    def _blocks(self) -> list:
        h, d = self.hidden, self.degree
        return [
            ("omega_in", Euclidean(h, self.obs_dim, scale=1 / math.sqrt(self.obs_dim))),
            ("omega_out", Euclidean(self.act_dim, h, scale=1 / math.sqrt(h))),
            ("bias", Euclidean(h)),
            ("A0", Euclidean(h, h, scale=1 / math.sqrt(h))),
            ("A", Euclidean(d, h, h, scale=0.1 / math.sqrt(h))),
            ("B", Euclidean(d, h, h, scale=0.1 / math.sqrt(h))),
        ]

    def basis(self) -> tuple[np.ndarray, np.ndarray]:
        """cos(2 pi k t_i / T), sin(2 pi k t_i / T) for t_i = i eta, i = 1..N, k = 1..d: [N, d]."""
        t = self.eta * np.arange(1, self.n_steps + 1)
        arg = 2 * np.pi * np.outer(t, np.arange(1, self.degree + 1)) / self.T
        return np.cos(arg), np.sin(arg)

    def _flow_kernels(self, p: dict[str, np.ndarray]) -> np.ndarray:
        cos, sin = self.basis()
        return kernels.nanode_flow(
            contiguous(p["A0"]), contiguous(p["A"]), contiguous(p["B"]), cos, sin
        )

    def _flow_torch(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        cos, sin = (torch.as_tensor(c, device=self.device) for c in self.basis())
        # Elementwise sums over k (not einsum, which may fold the batch into one GEMM whose
        # blocking depends on P) keep each row's result independent of the batch.
        W = p["A0"].unsqueeze(1).expand(-1, self.n_steps, -1, -1)
        for k in range(self.degree):
            W = W + cos[None, :, k, None, None] * p["A"][:, None, k]
            W = W + sin[None, :, k, None, None] * p["B"][:, None, k]
        return W
