"""Linear policy a = M s + c, as in Augmented Random Search (Mania et al. 2018); M and c start
at zero, so the first policy outputs the zero action."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..manifolds import Euclidean
from . import kernels
from ._torch import torch
from .base import Policy, contiguous, matvec, transposed

__all__ = ["Linear"]


class Linear(Policy):
    name: ClassVar[str] = "linear"
    defaults: ClassVar[dict[str, Any]] = {}

    def _blocks(self) -> list:
        return [("M", Euclidean(self.act_dim, self.obs_dim)), ("c", Euclidean(self.act_dim))]

    def _prepare_kernels(self, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"M_t": transposed(p["M"]), "c": contiguous(p["c"])}

    def _step_kernels(self, p: dict[str, np.ndarray], s: np.ndarray) -> np.ndarray:
        return kernels.linear_step(p["M_t"], p["c"], s, self._low, self._high)

    def _step_torch(self, p: dict[str, torch.Tensor], s: torch.Tensor) -> torch.Tensor:
        return matvec(p["M"], s) + p["c"]
