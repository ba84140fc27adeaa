"""Running observation statistics (Welford), mergeable across workers.

Workers observe states with the statistics frozen for the iteration and send back what they saw
as a `RunningStats` delta; the driver merges deltas in perturbation order with the parallel
variance formula (Chan et al.), so the result does not depend on which worker finished first.
"""

from __future__ import annotations

import numpy as np

__all__ = ["RunningStats", "ObsNormalizer"]


class RunningStats:
    """Count, mean and sum of squared deviations (M2) of a stream of vectors."""

    def __init__(self, dim: int, count: float = 0.0, mean=None, m2=None):
        self.dim = int(dim)
        self.count = float(count)
        self.mean = np.zeros(dim) if mean is None else np.array(mean, dtype=np.float64)
        self.m2 = np.zeros(dim) if m2 is None else np.array(m2, dtype=np.float64)

    def push(self, x: np.ndarray) -> None:
        """Add one vector (Welford's update)."""
        self.count += 1.0
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    def push_batch(self, xs: np.ndarray) -> None:
        """Add the rows of xs at once (merge of their exact batch statistics)."""
        xs = np.asarray(xs, dtype=np.float64).reshape(-1, self.dim)
        if len(xs) == 0:
            return
        mean = xs.mean(axis=0)
        m2 = ((xs - mean) ** 2).sum(axis=0)
        self.merge(RunningStats(self.dim, len(xs), mean, m2))

    def merge(self, other: RunningStats) -> None:
        """Parallel-variance merge of another stream's statistics into this one."""
        if other.count == 0:
            return
        if self.count == 0:
            self.count, self.mean, self.m2 = other.count, other.mean.copy(), other.m2.copy()
            return
        n = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / n)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        self.count = n

    @property
    def var(self) -> np.ndarray:
        if self.count < 2:
            return np.ones(self.dim)
        return self.m2 / (self.count - 1.0)

    def copy(self) -> RunningStats:
        return RunningStats(self.dim, self.count, self.mean, self.m2)

    def state(self) -> dict[str, np.ndarray]:
        return {"count": np.array([self.count]), "mean": self.mean.copy(), "m2": self.m2.copy()}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> RunningStats:
        mean = np.asarray(state["mean"], dtype=np.float64)
        return cls(len(mean), float(np.asarray(state["count"]).ravel()[0]), mean, state["m2"])


class ObsNormalizer:
    """Observation normaliser: (obs - mean) / std with statistics from `stats`.

    `enabled=False` makes it the identity (still counting). The statistics are only changed by
    `merge`; `normalize` never updates them, so evaluation uses frozen statistics by design.
    """

    def __init__(self, dim: int, enabled: bool = True, clip: float = 10.0, eps: float = 1e-8):
        self.stats = RunningStats(dim)
        self.enabled = bool(enabled)
        self.clip = float(clip)
        self.eps = float(eps)

    @property
    def dim(self) -> int:
        return self.stats.dim

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.enabled or self.stats.count < 2:
            return np.zeros(self.dim), np.ones(self.dim)
        return self.stats.mean.copy(), np.sqrt(self.stats.var) + self.eps

    @property
    def active_clip(self) -> float | None:
        """The clip applied to normalised observations; None when normalisation is off."""
        return self.clip if self.enabled else None

    def normalize(self, obs: np.ndarray) -> np.ndarray:
        if not self.enabled:
            return np.asarray(obs, dtype=np.float64)
        mean, std = self.mean_std()
        return np.clip((obs - mean) / std, -self.clip, self.clip)

    def merge(self, delta: RunningStats) -> None:
        self.stats.merge(delta)

    def state(self) -> dict[str, np.ndarray]:
        s = self.stats.state()
        s["enabled"] = np.array([float(self.enabled)])
        return s

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> ObsNormalizer:
        stats = RunningStats.from_state(state)
        norm = cls(stats.dim, enabled=bool(np.asarray(state["enabled"]).ravel()[0]))
        norm.stats = stats
        return norm
