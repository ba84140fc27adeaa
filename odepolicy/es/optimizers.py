"""Optimisers: turn the ES gradient estimate into the step the strategy takes.

An optimiser is a small object with its own state (as in optax and EvoTorch): `update(grad)`
returns a direction and a scale, and the strategy moves every block by
`layout.retract(center, layout.riemannian_grad(center, direction), scale)`. So the constrained
(Stiefel / orthogonal) blocks always move by an exact exponential-map step along the tangent
projection of the direction, whatever the optimiser does to its length: they never leave their
manifold. `mask` marks the entries that live in a linear space (Euclidean and symmetric blocks);
an elementwise rescaling such as Adam's applies only there.

* `SGD`: the gradient itself, scaled by lr.
* `Adam` (Kingma & Ba 2015): bias-corrected moments on the masked entries; the curved blocks
  keep the plain gradient, as the paper's Riemannian ES does.
* `ClipUp` (Toklu et al. 2020): heavy-ball momentum on the normalised gradient,
  v <- momentum * v + lr * g / |g|, the speed |v| clipped to `max_speed`; the step is v itself
  (scale 1). On curved blocks the velocity is projected onto the current tangent space by the
  strategy before the exponential map, so momentum there is a projection-transported velocity.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

__all__ = ["Optimizer", "SGD", "Adam", "ClipUp", "OPTIMIZERS", "make_optimizer"]


class Optimizer(ABC):
    name: str = "base"

    def __init__(self, size: int, mask: np.ndarray, lr: float):
        self.size = int(size)
        self.mask = np.asarray(mask, dtype=bool)
        self.lr = float(lr)

    @abstractmethod
    def update(self, grad: np.ndarray) -> tuple[np.ndarray, float]:
        """(direction, scale) of the ascent step for the gradient estimate `grad`."""

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        missing = set(self.state_dict()) - set(state)
        if missing:
            raise KeyError(f"{self.name} optimiser state lacks {', '.join(sorted(missing))}")


class SGD(Optimizer):
    name = "sgd"

    def update(self, grad: np.ndarray) -> tuple[np.ndarray, float]:
        return grad.copy(), self.lr


class Adam(Optimizer):
    name = "adam"

    def __init__(self, size, mask, lr, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(size, mask, lr)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.m = np.zeros(self.size)
        self.v = np.zeros(self.size)
        self.t = 0

    def update(self, grad: np.ndarray) -> tuple[np.ndarray, float]:
        b1, b2, lin = self.beta1, self.beta2, self.mask
        direction = grad.copy()
        self.t += 1
        g = grad[lin]
        self.m[lin] = b1 * self.m[lin] + (1 - b1) * g
        self.v[lin] = b2 * self.v[lin] + (1 - b2) * g * g
        m_hat = self.m[lin] / (1 - b1**self.t)
        v_hat = self.v[lin] / (1 - b2**self.t)
        direction[lin] = m_hat / (np.sqrt(v_hat) + self.eps)
        return direction, self.lr

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"m": self.m.copy(), "v": self.v.copy(), "t": np.array([self.t])}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        super().load_state_dict(state)
        self.m = np.array(state["m"], dtype=np.float64)
        self.v = np.array(state["v"], dtype=np.float64)
        self.t = int(np.asarray(state["t"]).ravel()[0])


class ClipUp(Optimizer):
    name = "clipup"

    def __init__(self, size, mask, lr, momentum=0.9, max_speed=None):
        super().__init__(size, mask, lr)
        self.momentum = float(momentum)
        # EvoTorch's default: twice the step size.
        self.max_speed = 2.0 * self.lr if max_speed is None else float(max_speed)
        self.velocity = np.zeros(self.size)

    def update(self, grad: np.ndarray) -> tuple[np.ndarray, float]:
        norm = float(np.linalg.norm(grad))
        step = grad * (self.lr / norm) if norm > 0 else np.zeros_like(grad)
        v = self.momentum * self.velocity + step
        speed = float(np.linalg.norm(v))
        if speed > self.max_speed:
            v = v * (self.max_speed / speed)
        self.velocity = v
        return v.copy(), 1.0

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"velocity": self.velocity.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        super().load_state_dict(state)
        self.velocity = np.array(state["velocity"], dtype=np.float64)


OPTIMIZERS: dict[str, type[Optimizer]] = {cls.name: cls for cls in (SGD, Adam, ClipUp)}


def make_optimizer(settings, size: int, mask: np.ndarray) -> Optimizer:
    """The optimiser named by `settings.optimizer`, configured from an `ESSettings`."""
    s = settings
    if s.optimizer == "adam":
        return Adam(size, mask, s.lr, s.adam_beta1, s.adam_beta2, s.adam_eps)
    if s.optimizer == "clipup":
        return ClipUp(size, mask, s.lr, s.momentum, s.max_speed)
    if s.optimizer == "sgd":
        return SGD(size, mask, s.lr)
    raise ValueError(f"unknown optimizer {s.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
