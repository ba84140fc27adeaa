"""BaseODE baseline ("Ode to an ODE", Sec. 5): a plain Neural ODE policy x' = g(x).

g is an MLP with two hidden layers of `width` units (tanh) and a linear output, integrated with
N = round(T / eta) Euler steps from x_0 = Omega_in s; a = Omega_out x_N. As in the paper's
baselines, the projections are unconstrained. Init: weights ~ N(0, 1/fan_in), biases zero.
Nothing depends on the parameters alone beyond the weights themselves, so on CPU `prepare`
only lays them out (transposed) for `kernels.base_ode_step`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from ..manifolds import Euclidean
from . import kernels
from ._torch import torch
from .base import ODEPolicy, _positive_int, contiguous, matvec, transposed

__all__ = ["BaseODE", "mlp_blocks", "mlp_forward"]


def mlp_blocks(prefix: str, n_in: int, width: int, n_out: int) -> list:
    """Blocks of an n_in -> width -> width -> n_out MLP; weights ~ N(0, 1/fan_in)."""
    return [
        (f"{prefix}w1", Euclidean(width, n_in, scale=1 / math.sqrt(n_in))),
        (f"{prefix}b1", Euclidean(width)),
        (f"{prefix}w2", Euclidean(width, width, scale=1 / math.sqrt(width))),
        (f"{prefix}b2", Euclidean(width)),
        (f"{prefix}w3", Euclidean(n_out, width, scale=1 / math.sqrt(width))),
        (f"{prefix}b3", Euclidean(n_out)),
    ]


def mlp_forward(p: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    """Row-wise tanh MLP with per-row weights (each row of the batch has its own network)."""
    z = torch.tanh(matvec(p[f"{prefix}w1"], x) + p[f"{prefix}b1"])
    z = torch.tanh(matvec(p[f"{prefix}w2"], z) + p[f"{prefix}b2"])
    return matvec(p[f"{prefix}w3"], z) + p[f"{prefix}b3"]


class BaseODE(ODEPolicy):
    """x' = MLP(x) (tanh inside the MLP; no `activation` option)."""

    name: ClassVar[str] = "base_ode"
    defaults: ClassVar[dict[str, Any]] = {
        "hidden": 16,
        "T": 1.0,
        "eta": 0.04,
        "width": 16,
    }

    def _configure(self) -> None:
        super()._configure()
        self.width = self.kwargs["width"] = _positive_int(self.name, "width", self.kwargs["width"])

    def _blocks(self) -> list:
        h = self.hidden
        return [
            ("omega_in", Euclidean(h, self.obs_dim, scale=1 / math.sqrt(self.obs_dim))),
            ("omega_out", Euclidean(self.act_dim, h, scale=1 / math.sqrt(h))),
            *mlp_blocks("g_", h, self.width, h),
        ]

    def _prepare_kernels(self, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {
            k + "_t": transposed(p[k]) for k in ("omega_in", "omega_out", "g_w1", "g_w2", "g_w3")
        }
        out.update({k: contiguous(p[k]) for k in ("g_b1", "g_b2", "g_b3")})
        return out

    def _step_kernels(self, prepared: dict[str, np.ndarray], s: np.ndarray) -> np.ndarray:
        q = prepared
        return kernels.base_ode_step(
            q["omega_in_t"],
            q["omega_out_t"],
            q["g_w1_t"],
            q["g_b1"],
            q["g_w2_t"],
            q["g_b2"],
            q["g_w3_t"],
            q["g_b3"],
            s,
            self.eta,
            self.n_steps,
            self._low,
            self._high,
        )

    def _prepare_torch(self, p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return p  # no matrix flow: the step reads the blocks

    def _step_torch(self, prepared: dict[str, torch.Tensor], s: torch.Tensor) -> torch.Tensor:
        x = matvec(prepared["omega_in"], s)
        for _ in range(self.n_steps):
            x = x + self.eta * mlp_forward(prepared, "g_", x)
        return matvec(prepared["omega_out"], x)
