"""Compiled bookkeeping of one rollout lockstep (numba, float64).

`evaluate_population` pays a fixed cost per lockstep whatever the number of live rows. On tasks
whose episodes end at different times (InvertedPendulum, Hopper early in training) a lockstep
holds a handful of rows, so that cost is paid for few env steps: over the shipped
InvertedPendulum run a lockstep averages 4.4 rows. These kernels fold the per-lockstep numpy
calls (observation statistics, normalisation, clipping, finiteness checks) into one call each.
They do the same floating-point operations in the same order as the numpy expressions they
replace (no fastmath, so no fused multiply-add), so results are bit for bit unchanged.
"""

from __future__ import annotations

import math

from numba import njit

__all__ = ["observe", "all_finite", "rows_finite"]


@njit(cache=True)
def observe(cur, mean, std, clip, run_sum, run_sumsq, z):
    """For the live rows: run_sum += cur, run_sumsq += cur * cur, and
    z = clip((cur - mean) / std, -clip, clip) (no clipping when clip < 0)."""
    rows, dim = cur.shape
    for i in range(rows):
        for j in range(dim):
            v = cur[i, j]
            run_sum[i, j] += v
            run_sumsq[i, j] += v * v
            w = (v - mean[j]) / std[j]
            if clip >= 0.0:
                # np.clip(w, -c, c) = minimum(maximum(w, -c), c); NaN passes through both.
                if w < -clip:
                    w = -clip
                if w > clip:
                    w = clip
            z[i, j] = w


@njit(cache=True)
def all_finite(a):
    """Every entry of the 2-D array `a` finite."""
    rows, cols = a.shape
    for i in range(rows):
        for j in range(cols):
            if not math.isfinite(a[i, j]):
                return False
    return True


@njit(cache=True)
def rows_finite(rewards, cur):
    """Every reward and every observation entry finite."""
    for i in range(rewards.shape[0]):
        if not math.isfinite(rewards[i]):
            return False
    return all_finite(cur)
