"""Evolution strategies: seed-named noise, fitness shaping and the Riemannian update."""

from ..noise import NoiseSpec, direction, perturbed_params
from .optimizers import OPTIMIZERS, SGD, Adam, ClipUp, Optimizer, make_optimizer
from .shaping import SHAPINGS, centered_ranks, direction_weights
from .strategy import ESSettings, RiemannianES, iteration_seed

__all__ = [
    "NoiseSpec",
    "direction",
    "perturbed_params",
    "SHAPINGS",
    "centered_ranks",
    "direction_weights",
    "ESSettings",
    "RiemannianES",
    "iteration_seed",
    "OPTIMIZERS",
    "Optimizer",
    "SGD",
    "Adam",
    "ClipUp",
    "make_optimizer",
]
