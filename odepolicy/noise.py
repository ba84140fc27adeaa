"""Perturbations named by seeds: a worker regenerates its noise instead of receiving it.

This module is neutral ground: the strategy (`es/`) names perturbations with it and the rollout
workers regenerate them with it, so neither needs to import the other.

An iteration is named by one integer (`NoiseSpec.iteration_seed`); direction j of that iteration
is regenerated from (iteration_seed, j), so only integers cross the network (DESIGN principle 3).
With `orthogonal=True` the directions of an iteration are orthogonalised jointly (Choromanski et
al. 2018, "Structured evolution with compact architectures"): the Gaussian block is replaced by an
orthonormal block rescaled row by row to the norms of the Gaussian rows, so each direction keeps
its marginal length distribution. Antithetic sampling evaluates +eps_j and -eps_j.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = ["NoiseSpec", "direction", "perturbed_params", "direction_matrix"]


@dataclass(frozen=True)
class NoiseSpec:
    iteration_seed: int
    num_params: int
    directions: int
    sigma: float
    antithetic: bool = True
    orthogonal: bool = False

    @property
    def population(self) -> int:
        """Number of perturbed parameter vectors evaluated in the iteration."""
        return 2 * self.directions if self.antithetic else self.directions

    def direction_of(self, k: int) -> tuple[int, float]:
        """(direction index, sign) of perturbation k."""
        if self.antithetic:
            return k // 2, (1.0 if k % 2 == 0 else -1.0)
        return k, 1.0


def _gaussian_row(seed: int, j: int, m: int) -> np.ndarray:
    return np.random.default_rng([seed, j]).standard_normal(m)


@lru_cache(maxsize=2)
def _orthogonal_block(seed: int, directions: int, m: int) -> np.ndarray:
    rows = np.stack([_gaussian_row(seed, j, m) for j in range(directions)])
    out = np.empty_like(rows)
    for start in range(0, directions, m):  # more directions than dimensions: blocks of m
        block = rows[start : start + m]
        q, r = np.linalg.qr(block.T)
        q = q * np.where(np.diag(r) < 0, -1.0, 1.0)
        out[start : start + m] = q.T * np.linalg.norm(block, axis=1, keepdims=True)
    out.setflags(write=False)
    return out


def direction(spec: NoiseSpec, j: int) -> np.ndarray:
    """Unscaled direction eps_j (standard Gaussian, or its orthogonalised version)."""
    if spec.orthogonal:
        return _orthogonal_block(spec.iteration_seed, spec.directions, spec.num_params)[j]
    return _gaussian_row(spec.iteration_seed, j, spec.num_params)


def direction_matrix(spec: NoiseSpec, js) -> np.ndarray:
    return (
        np.stack([direction(spec, int(j)) for j in js])
        if len(js)
        else np.zeros((0, spec.num_params))
    )


def perturbed_params(spec: NoiseSpec, center: np.ndarray, ks) -> np.ndarray:
    """Parameter vectors [len(ks), m] of perturbations ks: center + sign * sigma * eps_j."""
    out = np.empty((len(ks), spec.num_params))
    for row, k in enumerate(ks):
        j, sign = spec.direction_of(int(k))
        out[row] = center + (sign * spec.sigma) * direction(spec, j)
    return out
