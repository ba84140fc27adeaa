"""ODEtoODE policies ("Ode to an ODE", Choromanski et al. 2020, eq. 5-6).

The hidden state follows x' = f(W_t x + b) while the weight matrix flows on the orthogonal
group, W' = W_t b_psi(t, W_t) with b_psi skew-symmetric. Both flows use Euler steps; the matrix
step is the exact exponential W_i = W_{i-1} expm(eta b_psi(t_{i-1}, W_{i-1})), so W_i is
orthogonal whenever W_0 is:

    x_0 = Omega_in s,   x_i = x_{i-1} + eta f(W_i x_{i-1} + b),   a = Omega_out x_N.

* ISO-ODEtoODE: b(W) = [W^T Q W, N] = W^T Q W N - N W^T Q W, Q and N symmetric.
* Gated-ODEtoODE: b(t, W) = sum_i a_i (F_i - F_i^T), F_i = tanh(W U_i + t V_i).

W_1..W_N depend only on the parameters, so `prepare` computes them once per rollout (DESIGN.md
principle 1): on CPU with the compiled `kernels.iso_flow` / `kernels.gated_flow` (Pade scaling
and squaring sized to the norm of eta b_psi), on CUDA with batched `torch.linalg.matrix_exp`.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from ..manifolds import Euclidean, Stiefel, Symmetric
from . import kernels
from ._torch import torch
from .base import (
    ODEPolicy,
    _bool_option,
    _positive_float,
    _positive_int,
    contiguous,
    matvec,
    transposed,
)

__all__ = ["ISOODEtoODE", "GatedODEtoODE"]


def _sym(X: torch.Tensor) -> torch.Tensor:
    return 0.5 * (X + X.mT)


def batch_matrix_exp(A: torch.Tensor) -> torch.Tensor:
    """torch.linalg.matrix_exp over a batch [P, h, h] (torch backend), a lone matrix sent as a
    batch of two copies: torch's path for a single matrix loses accuracy for norms near 0.04,
    the typical ||eta b_psi|| of ISO-ODEtoODE (errors up to 5.5e-13 per exponential at h = 16
    against scipy, 25 of them compounding to 2e-11 in the actions; batches stay within 1e-15).
    """
    if A.shape[0] == 1:
        return torch.linalg.matrix_exp(A.expand(2, -1, -1))[:1]
    return torch.linalg.matrix_exp(A)


class ODEtoODE(ODEPolicy):
    """Shared skeleton: Stiefel projections, a Euclidean bias and W_0 in O(h); subclasses give
    the skew generator b_psi(t, W) and its parameter blocks.

    `output_scale` c (default 1, the paper's form) makes the action c * Omega_out x_N. Omega_out
    and Omega_in have orthonormal rows, and the |.| flow never shrinks x, so ES cannot make the
    actions smaller through the parameters: with normalised observations of dimension ~17,
    HalfCheetah's actions start at the bounds 82-91% of the time (benchmarks/learning.md,
    section 2). A fixed c < 1 gives the policy room inside the action box."""

    defaults: ClassVar[dict[str, Any]] = {
        **ODEPolicy.defaults,
        "output_scale": 1.0,
        "learn_output_scale": False,
        "linear_skip": False,
    }

    def _configure(self) -> None:
        super()._configure()
        kw = self.kwargs
        self.output_scale = kw["output_scale"] = _positive_float(
            self.name, "output_scale", kw["output_scale"]
        )
        self.learn_output_scale = _bool_option(
            self.name, "learn_output_scale", kw["learn_output_scale"]
        )
        self.linear_skip = _bool_option(self.name, "linear_skip", kw["linear_skip"])
        if self.linear_skip:  # the ODE part's actions stay unclipped until the skip term is added
            self._no_low = np.full(self.act_dim, -np.inf)
            self._no_high = np.full(self.act_dim, np.inf)

    def _scale_blocks(self) -> list:
        """With `learn_output_scale`, a Euclidean scalar l (starting at 0) makes the scale
        c * exp(l): ES can then grow the actions' gain from a small, unsaturated start."""
        return [("log_output_scale", Euclidean(1))] if self.learn_output_scale else []

    def _out_scale(self, p: dict) -> float | np.ndarray | None:
        """What multiplies Omega_out: None for the paper's c = 1, the float c, or with
        `learn_output_scale` the per-row c * exp(l) as [P, 1, 1]. exp is taken row by row in
        Python floats, so a row's scale does not depend on its batch (numpy's vector exp may
        round its loop tail differently)."""
        if not self.learn_output_scale:
            return None if self.output_scale == 1.0 else self.output_scale
        logs = p["log_output_scale"]
        logs = logs.detach().cpu().numpy() if not isinstance(logs, np.ndarray) else logs
        return np.array([self.output_scale * math.exp(v) for v in logs[:, 0]])[:, None, None]

    def _skip_blocks(self) -> list:
        """With `linear_skip`, a Euclidean matrix S [act_dim, obs_dim], starting at 0, adds
        S s to the action: a = c Omega_out x_N + S s. It is not part of the paper's policy."""
        return [("skip", Euclidean(self.act_dim, self.obs_dim))] if self.linear_skip else []

    def _prepare_kernels(self, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prepared = super()._prepare_kernels(p)
        scale = self._out_scale(p)
        if scale is not None:
            prepared["omega_out_t"] = prepared["omega_out_t"] * scale
        if self.linear_skip:
            prepared["skip_t"] = transposed(p["skip"])
        return prepared

    def _step_kernels(self, prepared: dict[str, np.ndarray], s: np.ndarray) -> np.ndarray:
        if not self.linear_skip:
            return super()._step_kernels(prepared, s)
        a = self._ode_step(prepared, s, self._no_low, self._no_high)
        return kernels.add_linear_clip(a, prepared["skip_t"], s, self._low, self._high)

    def _prepare_torch(self, p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        prepared = super()._prepare_torch(p)
        scale = self._out_scale(p)
        if scale is not None:
            out = prepared["omega_out"]
            prepared["omega_out"] = out * torch.as_tensor(scale, dtype=out.dtype, device=out.device)
        if self.linear_skip:
            prepared["skip"] = p["skip"]
        return prepared

    def _step_torch(self, prepared: dict[str, torch.Tensor], s: torch.Tensor) -> torch.Tensor:
        a = super()._step_torch(prepared, s)
        return a + matvec(prepared["skip"], s) if self.linear_skip else a

    def _blocks(self) -> list:
        h = self.hidden
        return [
            ("omega_in", Stiefel(h, self.obs_dim)),
            ("omega_out", Stiefel(self.act_dim, h)),
            ("bias", Euclidean(h)),
            *self._generator_blocks(),
            ("W0", Stiefel(h, h)),
            *self._scale_blocks(),
            *self._skip_blocks(),
        ]

    def _flow_torch(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """W_1..W_N as [P, N, h, h]."""
        W = p["W0"]
        Ws = []
        for i in range(self.n_steps):
            B = self._generator(i * self.eta, W, p)
            W = W @ batch_matrix_exp(self.eta * B)
            Ws.append(W)
        return torch.stack(Ws, dim=1)

    def matrix_flow(self, theta: np.ndarray) -> np.ndarray:
        """W_0, W_1, ..., W_N of one parameter vector, as [N+1, h, h]."""
        theta = np.asarray(theta, dtype=np.float64)
        prepared = self.prepare(theta[None, :])
        if self.backend == "torch":
            Ws = prepared["W"][0].cpu().numpy()
        else:
            Ws = prepared["W_t"][0].swapaxes(-1, -2)
        W0 = self.layout.unflatten(theta)["W0"]
        return np.concatenate([W0[None], Ws])


class ISOODEtoODE(ODEtoODE):
    """ISO-ODEtoODE: b(W) = W^T Q W N - N W^T Q W (an isospectral flow of W^T Q W).

    ES perturbs Q and N as full matrices; the forward pass uses their symmetric parts, so the
    generator is skew for any parameter vector. Q and N start as small random symmetric matrices
    (entries ~ N(0, init_scale^2 / h) before symmetrising; spectral norms ~ init_scale), so
    W_t starts moving but not wildly; with Q = 0 or N = 0 the flow is constant, W_i = W_0."""

    name: ClassVar[str] = "iso_odetoode"
    defaults: ClassVar[dict[str, Any]] = {**ODEtoODE.defaults, "init_scale": 0.5}

    def _generator_blocks(self) -> list:
        scale = float(self.kwargs["init_scale"]) / math.sqrt(self.hidden)
        return [("N", Symmetric(self.hidden, scale)), ("Q", Symmetric(self.hidden, scale))]

    def _flow_kernels(self, p: dict[str, np.ndarray]) -> np.ndarray:
        return kernels.iso_flow(
            contiguous(p["W0"]), contiguous(p["Q"]), contiguous(p["N"]), self.eta, self.n_steps
        )

    def _generator(self, t: float, W: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        # M = W^T Q W is symmetrised so that C - C^T below is exactly [M, N] and exactly skew.
        M = _sym(W.mT @ _sym(p["Q"]) @ W)
        C = M @ _sym(p["N"])
        return C - C.mT


class GatedODEtoODE(ODEtoODE):
    """Gated-ODEtoODE: b(t, W) = sum_i a_i (F_i - F_i^T), F_i = tanh(W U_i + t V_i).

    Blocks `a` [g], `U` [g, h, h], `V` [g, h, h] hold the g gates stacked. Init: U_i, V_i
    ~ N(0, 1/h) entries, a_i ~ N(0, init_scale^2)."""

    name: ClassVar[str] = "gated_odetoode"
    defaults: ClassVar[dict[str, Any]] = {**ODEtoODE.defaults, "gates": 2, "init_scale": 0.5}

    def _configure(self) -> None:
        super()._configure()
        self.gates = self.kwargs["gates"] = _positive_int(self.name, "gates", self.kwargs["gates"])

    def _generator_blocks(self) -> list:
        g, h = self.gates, self.hidden
        return [
            ("a", Euclidean(g, scale=float(self.kwargs["init_scale"]))),
            ("U", Euclidean(g, h, h, scale=1.0 / math.sqrt(h))),
            ("V", Euclidean(g, h, h, scale=1.0 / math.sqrt(h))),
        ]

    def _flow_kernels(self, p: dict[str, np.ndarray]) -> np.ndarray:
        return kernels.gated_flow(
            contiguous(p["W0"]),
            contiguous(p["a"]),
            contiguous(p["U"]),
            contiguous(p["V"]),
            self.eta,
            self.n_steps,
        )

    def _generator(self, t: float, W: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        F = torch.tanh(W.unsqueeze(1) @ p["U"] + t * p["V"])  # [P, g, h, h]
        return (p["a"][:, :, None, None] * (F - F.mT)).sum(1)
