"""Fitness shaping: turn raw returns into the weights of the ES gradient estimate.

All shapers see only finite returns (failed perturbations are removed before, in one place:
`strategy.RiemannianES.tell`). Each returns per-direction weights w_j and the number of
directions n the estimate averages over, so that grad = sum_j w_j eps_j / (n * sigma).
"""

from __future__ import annotations

import numpy as np

__all__ = ["SHAPINGS", "centered_ranks", "direction_weights"]

SHAPINGS = ("none", "centered_ranks", "zscore", "topb")


def centered_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks scaled to [-0.5, 0.5] (Salimans et al. 2017); ties broken by position."""
    ranks = np.empty(len(x))
    ranks[np.argsort(x, kind="stable")] = np.arange(len(x))
    return ranks / max(len(x) - 1, 1) - 0.5


def _shape(values: np.ndarray, shaping: str) -> np.ndarray:
    if shaping in ("none", "topb"):
        return values.astype(np.float64)
    if shaping == "centered_ranks":
        return centered_ranks(values)
    if shaping == "zscore":
        std = values.std()
        return (values - values.mean()) / (std if std > 0 else 1.0)
    raise ValueError(f"unknown fitness shaping {shaping!r}; choose one of {', '.join(SHAPINGS)}")


def direction_weights(
    plus: np.ndarray, minus: np.ndarray | None, shaping: str, top_b: int | None = None
) -> tuple[np.ndarray, int]:
    """Weights per direction and the divisor count.

    Antithetic (minus given): w_j = (s(F+_j) - s(F-_j)) / 2 over jointly shaped returns.
    One-sided: w_j = s(F_j) - mean(s(F)), the mean acting as a baseline.
    `topb` (ARS, antithetic only): keep the b directions with the largest max(F+, F-) and scale
    by the std of their returns.
    """
    if minus is None:
        if shaping == "topb":
            raise ValueError("topb shaping needs antithetic sampling")
        s = _shape(plus, shaping)
        return s - s.mean(), len(plus)
    if shaping == "topb":
        b = len(plus) if top_b is None else max(1, min(int(top_b), len(plus)))
        keep = np.argsort(-np.maximum(plus, minus), kind="stable")[:b]
        std = np.concatenate([plus[keep], minus[keep]]).std()
        w = np.zeros(len(plus))
        w[keep] = (plus[keep] - minus[keep]) / 2.0 / (std if std > 0 else 1.0)
        return w, b
    s = _shape(np.concatenate([plus, minus]), shaping)
    n = len(plus)
    return (s[:n] - s[n:]) / 2.0, n
