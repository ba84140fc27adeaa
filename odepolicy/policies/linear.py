"""Linear policy a = M s + c, as in Augmented Random Search (Mania et al. 2018); M and c start
at zero, so the first policy outputs the zero action."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..manifolds import Euclidean
from .base import Policy, matvec

__all__ = ["Linear"]


class Linear(Policy):
    name: ClassVar[str] = "linear"
    defaults: ClassVar[dict[str, Any]] = {}

    def _blocks(self) -> list:
        return [("M", Euclidean(self.act_dim, self.obs_dim)), ("c", Euclidean(self.act_dim))]

    def _step(self, p: dict[str, torch.Tensor], s: torch.Tensor) -> torch.Tensor:
        return matvec(p["M"], s) + p["c"]
