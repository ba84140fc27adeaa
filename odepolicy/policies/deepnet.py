"""Discrete-depth baselines ("Ode to an ODE", Sec. 5): DeepNet and DeepResNet, each with
`layers` (default 25) hidden layers of width h and separate weights per layer.

* DeepNet: z_1 = tanh(W_1 s + b_1), z_l = tanh(W_l z_{l-1} + b_l), a = W_out z_L + b_out.
  Init: weights ~ N(0, 1/fan_in), biases zero.
* DeepResNet: x_0 = Omega_in s, x_l = x_{l-1} + c f(W_l x_{l-1} + b_l), a = Omega_out x_L,
  with c = `residual_scale` (default 1, the paper's form).
  With f = |.| every residual adds a non-negative vector, so N(0, 1/h) weights would grow x
  by up to (1 + 2)^25; the residual weights start at N(0, 1/(h L^2)) (spectral norm ~ 2/L),
  which bounds the growth by about e^2. Projections ~ N(0, 1/fan_in), biases zero.

On CPU `prepare` only lays the weights out (transposed) for `kernels.deepnet_step` /
`kernels.deep_resnet_step`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from ..manifolds import Euclidean
from . import kernels
from ._torch import torch
from .base import Policy, _positive_float, _positive_int, activation, contiguous, matvec, transposed

__all__ = ["DeepNet", "DeepResNet"]


class _Deep(Policy):
    defaults: ClassVar[dict[str, Any]] = {"hidden": 16, "layers": 25}

    def _configure(self) -> None:
        kw = self.kwargs
        self.hidden = kw["hidden"] = _positive_int(self.name, "hidden", kw["hidden"])
        self.layers = kw["layers"] = _positive_int(self.name, "layers", kw["layers"])


class DeepNet(_Deep):
    name: ClassVar[str] = "deepnet"

    def _blocks(self) -> list:
        h, L = self.hidden, self.layers
        return [
            ("w_in", Euclidean(h, self.obs_dim, scale=1 / math.sqrt(self.obs_dim))),
            ("b_in", Euclidean(h)),
            ("W", Euclidean(L - 1, h, h, scale=1 / math.sqrt(h))),
            ("b", Euclidean(L - 1, h)),
            ("w_out", Euclidean(self.act_dim, h, scale=1 / math.sqrt(h))),
            ("b_out", Euclidean(self.act_dim)),
        ]

    def _prepare_kernels(self, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k + "_t": transposed(p[k]) for k in ("w_in", "W", "w_out")}
        out.update({k: contiguous(p[k]) for k in ("b_in", "b", "b_out")})
        return out

    def _step_kernels(self, p: dict[str, np.ndarray], s: np.ndarray) -> np.ndarray:
        return kernels.deepnet_step(
            p["w_in_t"],
            p["b_in"],
            p["W_t"],
            p["b"],
            p["w_out_t"],
            p["b_out"],
            s,
            self._low,
            self._high,
        )

    def _step_torch(self, p: dict[str, torch.Tensor], s: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(matvec(p["w_in"], s) + p["b_in"])
        for l in range(self.layers - 1):
            z = torch.tanh(matvec(p["W"][:, l], z) + p["b"][:, l])
        return matvec(p["w_out"], z) + p["b_out"]


class DeepResNet(_Deep):
    """x_0 = Omega_in s, x_l = x_{l-1} + c f(W_l x_{l-1} + b_l), a = Omega_out x_L.

    `residual_scale` c (default 1, the paper's form) scales every residual branch. With c = 1
    and f = |.| an ES perturbation of the 25 biases adds sigma |eps_l| to x in every layer, the
    same for both halves of an antithetic pair: the actions drift by O(25 sigma) whatever the
    direction, InvertedPendulum falls in 2-3 steps for every perturbation and the returns carry
    no signal (benchmarks/learning.md). c ~ 1/L, as in an Euler step or a Fixup-style ResNet,
    keeps a perturbation's effect at O(sigma)."""

    name: ClassVar[str] = "deep_resnet"
    defaults: ClassVar[dict[str, Any]] = {
        **_Deep.defaults,
        "activation": "abs",
        "residual_scale": 1.0,
    }

    def _configure(self) -> None:
        super()._configure()
        self.f = activation(self.name, self.kwargs["activation"])
        self._code = kernels.ACTIVATION_CODES[self.kwargs["activation"]]
        c = _positive_float(self.name, "residual_scale", self.kwargs["residual_scale"])
        self.residual_scale = self.kwargs["residual_scale"] = c

    def _blocks(self) -> list:
        h, L = self.hidden, self.layers
        return [
            ("omega_in", Euclidean(h, self.obs_dim, scale=1 / math.sqrt(self.obs_dim))),
            ("omega_out", Euclidean(self.act_dim, h, scale=1 / math.sqrt(h))),
            ("W", Euclidean(L, h, h, scale=1 / (L * math.sqrt(h)))),
            ("b", Euclidean(L, h)),
        ]

    def _prepare_kernels(self, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {k + "_t": transposed(p[k]) for k in ("omega_in", "W", "omega_out")}
        out["b"] = contiguous(p["b"])
        return out

    def _step_kernels(self, p: dict[str, np.ndarray], s: np.ndarray) -> np.ndarray:
        return kernels.deep_resnet_step(
            p["omega_in_t"],
            p["W_t"],
            p["b"],
            p["omega_out_t"],
            s,
            self._code,
            self._low,
            self._high,
            self.residual_scale,
        )

    def _step_torch(self, p: dict[str, torch.Tensor], s: torch.Tensor) -> torch.Tensor:
        x = matvec(p["omega_in"], s)
        c = self.residual_scale
        for l in range(self.layers):
            x = x + c * self.f(matvec(p["W"][:, l], x) + p["b"][:, l])
        return matvec(p["omega_out"], x)
