"""ParamLayout: the ordered, named blocks of a policy's parameters and the flat vector ES sees.

ES perturbs and updates one flat float64 vector. The layout maps it to named blocks, each with a
shape and a manifold, and applies the per-block Riemannian gradient and retraction of
"Ode to an ODE" eq. 8-9: constrained blocks move by their manifold's exact step, Euclidean
blocks by a plain step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .manifolds import Manifold, Stiefel

__all__ = ["Block", "ParamLayout"]


@dataclass(frozen=True)
class Block:
    name: str
    manifold: Manifold
    offset: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.manifold.shape

    @property
    def size(self) -> int:
        return self.manifold.size

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.size)


class ParamLayout:
    """Ordered named blocks <-> flat vector (or a population of them, shape [P, m])."""

    def __init__(self, blocks: list[tuple[str, Manifold]]):
        self.blocks: list[Block] = []
        offset = 0
        seen: set[str] = set()
        for name, manifold in blocks:
            if name in seen:
                raise ValueError(f"duplicate parameter block name {name!r}")
            seen.add(name)
            self.blocks.append(Block(name, manifold, offset))
            offset += manifold.size
        self.size = offset
        self._by_name = {b.name: b for b in self.blocks}

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, name: str) -> Block:
        return self._by_name[name]

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def __repr__(self) -> str:
        inner = ", ".join(f"{b.name}: {b.manifold!r}" for b in self.blocks)
        return f"ParamLayout({inner}; size={self.size})"

    # -- flat <-> blocks ----------------------------------------------------------------
    def unflatten(self, theta: np.ndarray) -> dict[str, np.ndarray]:
        """Views into `theta`: shape [m] -> block shapes, [P, m] -> [P, *block shape]."""
        theta = np.asarray(theta)
        if theta.shape[-1] != self.size:
            raise ValueError(f"expected parameter vectors of length {self.size}, got {theta.shape}")
        lead = theta.shape[:-1]
        return {b.name: theta[..., b.slice].reshape(*lead, *b.shape) for b in self.blocks}

    def flatten(self, parts: dict[str, np.ndarray]) -> np.ndarray:
        """Inverse of `unflatten`, for a single vector or a population (leading dims kept)."""
        missing = set(self.names) - set(parts)
        if missing:
            raise ValueError(f"missing parameter blocks: {sorted(missing)}")
        first = np.asarray(parts[self.blocks[0].name])
        lead = first.shape[: first.ndim - len(self.blocks[0].shape)]
        out = np.empty((*lead, self.size), dtype=np.float64)
        for b in self.blocks:
            out[..., b.slice] = np.asarray(parts[b.name], dtype=np.float64).reshape(*lead, b.size)
        return out

    # -- geometry --------------------------------------------------------------------------
    def init(self, rng: np.random.Generator) -> np.ndarray:
        """A random point: each block drawn by its manifold (Haar for Stiefel)."""
        return self.flatten({b.name: b.manifold.random(rng) for b in self.blocks})

    def project(self, theta: np.ndarray) -> np.ndarray:
        parts = self.unflatten(theta)
        return self.flatten({b.name: b.manifold.project(parts[b.name]) for b in self.blocks})

    def riemannian_grad(self, theta: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """Per-block Riemannian gradient of a flat Euclidean gradient."""
        x, g = self.unflatten(theta), self.unflatten(grad)
        return self.flatten(
            {b.name: b.manifold.riemannian_grad(x[b.name], g[b.name]) for b in self.blocks}
        )

    def retract(self, theta: np.ndarray, direction: np.ndarray, lr: float) -> np.ndarray:
        """Per-block step of size lr along a flat tangent direction (ascent)."""
        x, d = self.unflatten(theta), self.unflatten(direction)
        return self.flatten(
            {b.name: b.manifold.retract(x[b.name], d[b.name], lr) for b in self.blocks}
        )

    def distances(self, theta: np.ndarray) -> dict[str, float]:
        parts = self.unflatten(theta)
        return {
            b.name: b.manifold.distance(parts[b.name])
            for b in self.blocks
            if b.manifold.constrained
        }

    def max_distance(self, theta: np.ndarray) -> float:
        """Largest distance from its manifold of any constrained block (0.0 if none)."""
        return max(self.distances(theta).values(), default=0.0)

    def euclidean_mask(self) -> np.ndarray:
        """Boolean mask of entries that live in a linear space (Euclidean or symmetric blocks):
        those an elementwise optimiser such as Adam may move."""
        mask = np.zeros(self.size, dtype=bool)
        for b in self.blocks:
            if not isinstance(b.manifold, Stiefel):
                mask[b.slice] = True
        return mask

    def curved_blocks(self) -> list[Block]:
        return [b for b in self.blocks if isinstance(b.manifold, Stiefel)]
