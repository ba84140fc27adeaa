"""Riemannian evolution strategies (paper eq. 8-9, Theorem 1) as ask / tell over explicit state.

`ask` names the iteration's perturbations (a NoiseSpec: seeds, not vectors). `tell` takes their
returns, drops failed ones, shapes the rest, forms the Monte Carlo estimate of the gradient of the
Gaussian smoothing, and moves the centre: Stiefel / orthogonal blocks along their Riemannian
gradient by the exact exponential map, symmetric and Euclidean blocks as the optimiser says
(SGD, Adam, ClipUp: `optimizers.py`; the optimiser owns its own state). The strategy knows nothing
of environments or workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..noise import NoiseSpec, direction_matrix
from ..params import ParamLayout
from .optimizers import OPTIMIZERS, Optimizer, make_optimizer
from .shaping import SHAPINGS, direction_weights

__all__ = ["ESSettings", "RiemannianES", "iteration_seed"]


@dataclass
class ESSettings:
    """Paper defaults: sigma 0.1, step 0.01, 200 directions."""

    sigma: float = 0.1
    lr: float = 0.01
    directions: int = 200
    antithetic: bool = True
    orthogonal: bool = False
    shaping: str = "centered_ranks"
    top_b: int | None = None
    reward_shift: float = 0.0
    optimizer: str = "sgd"  # sgd | adam | clipup
    momentum: float = 0.9  # clipup
    max_speed: float | None = None  # clipup; None means 2 * lr
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8

    @property
    def population(self) -> int:
        """Perturbed parameter vectors evaluated per iteration (NoiseSpec.population)."""
        return 2 * self.directions if self.antithetic else self.directions

    def validate(self) -> None:
        if not self.sigma > 0:
            raise ValueError("es.sigma must be positive")
        if not self.lr > 0:
            raise ValueError("es.lr must be positive")
        if self.directions < 1:
            raise ValueError("es.directions must be at least 1")
        if self.shaping not in SHAPINGS:
            raise ValueError(f"es.shaping must be one of {', '.join(SHAPINGS)}")
        if self.shaping == "topb" and not self.antithetic:
            raise ValueError("es.shaping=topb needs es.antithetic=true")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"es.optimizer must be one of {', '.join(OPTIMIZERS)}")
        if not 0 <= self.momentum < 1:
            raise ValueError("es.momentum must be in [0, 1)")
        if self.max_speed is not None and not self.max_speed > 0:
            raise ValueError("es.max_speed must be positive")


def iteration_seed(run_seed: int, iteration: int) -> int:
    """A 63-bit seed for one iteration, a pure function of the run seed and iteration."""
    ss = np.random.SeedSequence([int(run_seed), int(iteration), 0x0DE])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


class RiemannianES:
    """Explicit-state ES over a ParamLayout. `center` is the current parameter vector."""

    def __init__(self, layout: ParamLayout, center: np.ndarray, settings: ESSettings, seed: int):
        settings.validate()
        self.layout = layout
        self.settings = settings
        self.seed = int(seed)
        self.center = np.array(center, dtype=np.float64)
        self.iteration = 0
        self.optimizer: Optimizer = make_optimizer(settings, layout.size, layout.euclidean_mask())

    def ask(self) -> NoiseSpec:
        s = self.settings
        return NoiseSpec(
            iteration_seed=iteration_seed(self.seed, self.iteration),
            num_params=self.layout.size,
            directions=s.directions,
            sigma=s.sigma,
            antithetic=s.antithetic,
            orthogonal=s.orthogonal,
        )

    def gradient(self, spec: NoiseSpec, returns: np.ndarray) -> tuple[np.ndarray, int]:
        """Euclidean ES gradient estimate and the number of directions it used.

        returns[k] is the (shifted) return of perturbation k; NaN marks a failed one, which is
        left out (for antithetic sampling, with its partner)."""
        s = self.settings
        returns = np.asarray(returns, dtype=np.float64)
        if spec.antithetic:
            plus, minus = returns[0::2], returns[1::2]
            ok = np.isfinite(plus) & np.isfinite(minus)
            js = np.flatnonzero(ok)
            if len(js) == 0:
                return np.zeros(spec.num_params), 0
            w, n = direction_weights(plus[ok], minus[ok], s.shaping, s.top_b)
        else:
            ok = np.isfinite(returns)
            js = np.flatnonzero(ok)
            if len(js) < 2:
                return np.zeros(spec.num_params), 0
            w, n = direction_weights(returns[ok], None, s.shaping)
        nz = np.flatnonzero(w)
        eps = direction_matrix(spec, js[nz])
        return (w[nz] @ eps) / (n * spec.sigma), int(len(js))

    def step(self, grad: np.ndarray) -> None:
        """Move the centre along the optimiser's step for `grad` (ascent)."""
        direction, scale = self.optimizer.update(grad)
        tangent = self.layout.riemannian_grad(self.center, direction)
        self.center = self.layout.retract(self.center, tangent, scale)

    def tell(self, spec: NoiseSpec, returns: np.ndarray, lengths: np.ndarray | None = None) -> dict:
        """Update from the returns of the perturbations named by `spec`; returns a summary."""
        returns = np.asarray(returns, dtype=np.float64)
        if len(returns) != spec.population:
            raise ValueError(f"expected {spec.population} returns, got {len(returns)}")
        if self.settings.reward_shift and lengths is not None:
            returns = returns - self.settings.reward_shift * np.asarray(lengths, dtype=np.float64)
        grad, used = self.gradient(spec, returns)
        if used > 0:
            self.step(grad)
        self.iteration += 1
        return {
            "directions_used": used,
            "failed": int(np.sum(~np.isfinite(returns))),
            "grad_norm": float(np.linalg.norm(grad)),
        }

    def state_dict(self) -> dict[str, np.ndarray]:
        """Centre, iteration and the optimiser's state (under `opt.`)."""
        state = {"center": self.center.copy(), "iteration": np.array([self.iteration])}
        state.update({f"opt.{k}": v for k, v in self.optimizer.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.center = np.array(state["center"], dtype=np.float64)
        self.iteration = int(np.asarray(state["iteration"]).ravel()[0])
        self.optimizer.load_state_dict(
            {k[len("opt.") :]: v for k, v in state.items() if k.startswith("opt.")}
        )
