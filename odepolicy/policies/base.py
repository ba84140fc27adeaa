"""The Policy base class: parameters as a flat vector, a batched `prepare` / `step` split.

Every policy maps a population of flat parameter vectors `thetas` [P, m] (the ES population)
and one observation per row [P, obs_dim] to one action per row [P, act_dim]. The work that
depends on the parameters alone (for the ODE families: the matrix flow W_1..W_N, DESIGN.md
principle 1) happens once per rollout in `prepare`; `step` is then called once per environment
step. Numpy goes in and comes out.

Two backends compute the same function in float64:

* `kernels` (the default on CPU): each of `prepare` and `step` is one call into the compiled
  per-row kernels of `policies.kernels` (DESIGN.md principle 6). A row's result never depends
  on the other rows of the batch, bit for bit, so results do not depend on how a population is
  split across workers. `prepare` computes each distinct parameter row once: the centre
  policy's evaluation episodes, P copies of one vector, share one matrix flow. The prepared
  state is a dict of numpy arrays.
* `torch` (the default on CUDA): batched torch operations on `device`; the prepared state is a
  dict of tensors. No bitwise promise is made across batch sizes (torch picks different
  kernels for a batch of one). Setting `policy.backend = "torch"` on a CPU policy runs this
  path on CPU, the reference the kernels are tested and benchmarked against.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .. import OdepolicyError
from ..params import ParamLayout
from . import kernels
from ._torch import torch

__all__ = [
    "Policy",
    "ODEPolicy",
    "ACTIVATIONS",
    "BACKENDS",
    "matvec",
    "resolve_device",
    "select_rows",
]

BACKENDS = ("kernels", "torch")

# torch is imported on first use (`._torch`), so these look it up when called.
ACTIVATIONS = {
    "abs": lambda x: torch.abs(x),
    "tanh": lambda x: torch.tanh(x),
    "relu": lambda x: torch.relu(x),
}
INPLACE_ACTIVATIONS = {
    "abs": lambda y: y.abs_(),
    "tanh": lambda y: y.tanh_(),
    "relu": lambda y: y.relu_(),
}
NUMPY_INPLACE_ACTIVATIONS = {
    "abs": lambda y: np.abs(y, out=y),
    "tanh": lambda y: np.tanh(y, out=y),
    "relu": lambda y: np.maximum(y, 0.0, out=y),
}


class _CPU(str):
    """The CPU as a device without importing torch: the string 'cpu' (which torch accepts
    wherever a device goes) with torch.device's `type`."""

    type = "cpu"
    index = None


CPU = _CPU("cpu")


def resolve_device(device: str | torch.device) -> torch.device | _CPU:
    """'auto' means CUDA when available, else CPU. The CPU comes back as `CPU`, so a CPU policy
    never imports torch."""
    if str(device) == "cpu":
        return CPU
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise OdepolicyError(f"unknown device {device!r} (use cpu, cuda or auto)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OdepolicyError("device 'cuda' requested but CUDA is not available")
    return dev


def matvec(W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Row-wise W x for W [P, r, c], x [P, c] -> [P, r] (torch backend)."""
    return torch.bmm(W, x.unsqueeze(-1))[:, :, 0]


def contiguous(x: np.ndarray) -> np.ndarray:
    """A C-contiguous float64 copy of a block view, as the kernels take (a strided view would
    compile a second, slower specialisation)."""
    return np.ascontiguousarray(x, dtype=np.float64)


def transposed(x: np.ndarray) -> np.ndarray:
    """The last two axes swapped, C-contiguous: the kernels' mat-vecs take A^T (see
    `policies.kernels`)."""
    return np.ascontiguousarray(np.swapaxes(x, -1, -2), dtype=np.float64)


def distinct_rows(thetas: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(first, inverse) with thetas == thetas[first][inverse] when some rows of thetas are
    byte-for-byte equal, else None. The usual populations (all distinct: perturbations; all
    equal: the centre's evaluation episodes) are settled by cheap checks before any sort."""
    P = len(thetas)
    if P < 2 or np.unique(thetas[:, 0]).size == P:
        return None
    bits = np.ascontiguousarray(thetas).view(np.int64)  # compare bits: -0.0 is not 0.0 here
    if (bits == bits[0]).all():
        return np.zeros(1, dtype=np.int64), np.zeros(P, dtype=np.int64)
    rows = bits.view(np.dtype((np.void, bits.shape[1] * 8)))[:, 0]
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    if len(first) == P:
        return None
    return first.astype(np.int64), inverse.reshape(P).astype(np.int64)


def activation(policy: str, name: str):
    """The elementwise nonlinearity called `name` (abs, tanh or relu)."""
    if name not in ACTIVATIONS:
        raise OdepolicyError(
            f"policy {policy!r}: unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]


def _positive_int(policy: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise OdepolicyError(f"policy {policy!r}: {key} must be a positive integer, got {value!r}")
    return int(value)


def _positive_float(policy: str, key: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(value, bool) or not np.isfinite(v) or v <= 0:
        raise OdepolicyError(f"policy {policy!r}: {key} must be a positive number, got {value!r}")
    return v


def _bool_option(policy: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise OdepolicyError(f"policy {policy!r}: {key} must be true or false, got {value!r}")
    return value


def select_rows(
    prepared: dict[str, np.ndarray | torch.Tensor], idx
) -> dict[str, np.ndarray | torch.Tensor]:
    """Keep rows `idx` (integer array) of every prepared array or tensor."""
    idx = np.asarray(idx, dtype=np.int64)
    out = {}
    for k, v in prepared.items():
        if isinstance(v, np.ndarray):
            out[k] = v[idx]
        else:
            out[k] = v[torch.as_tensor(idx, device=v.device)]
    return out


def _action_bound(bound, act_dim: int) -> np.ndarray | None:
    if bound is None:
        return None
    b = np.asarray(bound, dtype=np.float64)
    try:
        return np.broadcast_to(b, (act_dim,)).copy()
    except ValueError:
        raise OdepolicyError(
            f"action bound of shape {b.shape} does not match act_dim {act_dim}"
        ) from None


def _torch_step(policy, prepared: dict[str, torch.Tensor], obs: np.ndarray) -> np.ndarray:
    """The torch backend's step: tensors on the policy's device, numpy actions, clipped."""
    s = torch.as_tensor(np.asarray(obs, dtype=np.float64), device=policy.device)
    if s.ndim != 2 or s.shape[1] != policy.obs_dim:
        raise ValueError(f"{policy.name}: expected obs [P, {policy.obs_dim}], got {tuple(s.shape)}")
    a = policy._step_torch(prepared, s).cpu().numpy()
    if policy.action_low is not None or policy.action_high is not None:
        a = np.clip(a, policy.action_low, policy.action_high)
    return a


class Policy:
    """Base class. Subclasses set `name` and `defaults` (their keyword options and default
    values), implement `_configure` (validate options, set attributes), `_blocks` (the parameter
    layout), and for each backend the per-batch work on the parameter blocks and the step:
    `_prepare_kernels` / `_step_kernels` (numpy blocks, compiled kernels) and `_prepare_torch`
    / `_step_torch` (tensors)."""

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        *,
        action_low: np.ndarray | float | None = None,
        action_high: np.ndarray | float | None = None,
        device: str | torch.device = "cpu",
        **kwargs: Any,
    ):
        unknown = sorted(set(kwargs) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise OdepolicyError(
                f"policy {self.name!r} got unknown option(s) {', '.join(unknown)}; valid: {valid}"
            )
        self.obs_dim = _positive_int(self.name, "obs_dim", obs_dim)
        self.act_dim = _positive_int(self.name, "act_dim", act_dim)
        self.device = resolve_device(device)
        self.backend = "kernels" if self.device.type == "cpu" else "torch"
        self.action_low = _action_bound(action_low, self.act_dim)
        self.action_high = _action_bound(action_high, self.act_dim)
        # The kernels clip every row; an infinite bound clips nothing, as None does.
        self._low = np.full(self.act_dim, -np.inf) if action_low is None else self.action_low
        self._high = np.full(self.act_dim, np.inf) if action_high is None else self.action_high
        self.kwargs: dict[str, Any] = {**self.defaults, **kwargs}
        self._configure()
        self.layout = ParamLayout(self._blocks())
        self.num_params = self.layout.size

    @property
    def backend(self) -> str:
        """'kernels' (compiled, CPU) or 'torch' (on `device`); see the module doc."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        if value not in BACKENDS:
            raise OdepolicyError(f"unknown policy backend {value!r}; valid: {', '.join(BACKENDS)}")
        self._backend = value

    # -- for subclasses ----------------------------------------------------------------
    def _configure(self) -> None:
        pass

    def _blocks(self) -> list:
        raise NotImplementedError

    def _prepare_kernels(self, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _step_kernels(self, prepared: dict[str, np.ndarray], s: np.ndarray) -> np.ndarray:
        """Clipped actions [P, act_dim] for C-contiguous float64 obs s [P, obs_dim]."""
        raise NotImplementedError

    def _prepare_torch(self, p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return p

    def _step_torch(self, prepared: dict[str, torch.Tensor], s: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- public API ----------------------------------------------------------------------
    def init(self, rng: np.random.Generator) -> np.ndarray:
        """A starting parameter vector [m]: each block drawn by its manifold (Stiefel blocks
        Haar-random, other blocks Gaussian with the scale the family chose, biases zero)."""
        return self.layout.init(rng)

    def prepared_bytes(self) -> int:
        """Bytes of one row's `prepare` output: what every policy step of that row reads. Found
        once per policy by preparing one row of `init` parameters."""
        if getattr(self, "_prepared_bytes", None) is None:
            row = self.init(np.random.default_rng(0))[None, :]
            total = 0
            for v in self.prepare(row).values():
                total += v.nbytes if isinstance(v, np.ndarray) else v.element_size() * v.numel()
            self._prepared_bytes = int(total)
        return self._prepared_bytes

    def prepare(self, thetas: np.ndarray) -> dict[str, np.ndarray | torch.Tensor]:
        """Per-rollout work for a population thetas [P, m]; every array or tensor of the
        result has leading dim P."""
        thetas = np.asarray(thetas, dtype=np.float64)
        if thetas.ndim != 2 or thetas.shape[1] != self.num_params:
            raise ValueError(
                f"{self.name}: expected thetas of shape [P, {self.num_params}], got {thetas.shape}"
            )
        if self.backend == "torch":
            t = torch.as_tensor(np.ascontiguousarray(thetas), device=self.device)
            P = t.shape[0]
            blocks = {b.name: t[:, b.slice].reshape(P, *b.shape) for b in self.layout.blocks}
            return self._prepare_torch(blocks)
        # A row's prepared state depends on that row alone (bit for bit), so equal rows can
        # share one computation and the copies are exactly what each would have computed.
        shared = distinct_rows(thetas)
        if shared is None:
            return self._prepare_kernels(self.layout.unflatten(thetas))
        first, inverse = shared
        return self.select(self._prepare_kernels(self.layout.unflatten(thetas[first])), inverse)

    def step(self, prepared: dict[str, np.ndarray | torch.Tensor], obs: np.ndarray) -> np.ndarray:
        """Actions [P, act_dim] (float64 numpy, clipped to the action box) for obs [P, obs_dim]."""
        if self.backend == "torch":
            return _torch_step(self, prepared, obs)
        s = np.ascontiguousarray(obs, dtype=np.float64)
        if s.ndim != 2 or s.shape[1] != self.obs_dim:
            raise ValueError(f"{self.name}: expected obs [P, {self.obs_dim}], got {s.shape}")
        rows = len(next(iter(prepared.values())))
        if len(s) != rows:  # the kernels index prepared rows by observation row, unchecked
            raise ValueError(f"{self.name}: {len(s)} observations for {rows} prepared rows")
        return self._step_kernels(prepared, s)

    select = staticmethod(select_rows)  # rows `idx` of every prepared array or tensor

    def act(self, thetas: np.ndarray, obs: np.ndarray) -> np.ndarray:
        """step(prepare(thetas), obs). A single theta [m] with a single obs [obs_dim] gives
        [act_dim]; a single theta with obs [P, obs_dim] is used for every row."""
        thetas = np.asarray(thetas, dtype=np.float64)
        obs = np.asarray(obs, dtype=np.float64)
        single = thetas.ndim == 1 and obs.ndim == 1
        thetas = np.atleast_2d(thetas)
        obs = np.atleast_2d(obs)
        prepared = self.prepare(thetas)
        if len(thetas) == 1 and len(obs) > 1:
            prepared = self.select(prepared, np.zeros(len(obs), dtype=np.int64))
        a = self.step(prepared, obs)
        return a[0] if single else a

    def describe(self) -> dict[str, Any]:
        """JSON-able description; make_policy(**describe() minus num_params) rebuilds it."""
        return {
            "name": self.name,
            "kwargs": dict(self.kwargs),
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "num_params": self.num_params,
        }

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        return f"{type(self).__name__}({self.obs_dim}, {self.act_dim}, {args}; m={self.num_params})"


class ODEPolicy(Policy):
    """Shared options of the continuous-depth families: hidden size h, horizon T, Euler step
    eta (N = round(T / eta) steps) and the activation f of x' = f(W x + b).

    Families whose matrix flow W_1..W_N depends on the parameters alone implement
    `_flow_kernels` (W_1^T..W_N^T as [P, N, h, h]) and `_flow_torch` (W_1..W_N); the prepared
    state and the step are shared."""

    defaults: ClassVar[dict[str, Any]] = {
        "hidden": 16,
        "T": 1.0,
        "eta": 0.04,
        "activation": "abs",
    }

    def _configure(self) -> None:
        kw = self.kwargs
        self.hidden = kw["hidden"] = _positive_int(self.name, "hidden", kw["hidden"])
        self.T = kw["T"] = _positive_float(self.name, "T", kw["T"])
        self.eta = kw["eta"] = _positive_float(self.name, "eta", kw["eta"])
        self.n_steps = int(round(self.T / self.eta))
        if self.n_steps < 1:
            raise OdepolicyError(f"policy {self.name!r}: T / eta must be at least 1")
        if "activation" in kw:
            self.f = activation(self.name, kw["activation"])
            self._code = kernels.ACTIVATION_CODES[kw["activation"]]

    def _flow_kernels(self, p: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def _flow_torch(self, p: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _prepare_kernels(self, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {
            "omega_in_t": transposed(p["omega_in"]),
            "omega_out_t": transposed(p["omega_out"]),
            "bias": contiguous(p["bias"]),
            "W_t": self._flow_kernels(p),
        }

    def _step_kernels(self, prepared: dict[str, np.ndarray], s: np.ndarray) -> np.ndarray:
        return self._ode_step(prepared, s, self._low, self._high)

    def _ode_step(
        self, prepared: dict[str, np.ndarray], s: np.ndarray, low: np.ndarray, high: np.ndarray
    ) -> np.ndarray:
        """The Euler loop and Omega_out x_N, clipped to [low, high] (kernels backend)."""
        return kernels.ode_step(
            prepared["omega_in_t"],
            prepared["bias"],
            prepared["W_t"],
            prepared["omega_out_t"],
            s,
            self.eta,
            self._code,
            low,
            high,
        )

    def _prepare_torch(self, p: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "omega_in": p["omega_in"],
            "omega_out": p["omega_out"],
            "bias": p["bias"],
            "W": self._flow_torch(p),
        }

    def _euler(self, Ws: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x_i = x_{i-1} + eta f(W_i x_{i-1} + b), i = 1..N, for Ws [P, N, h, h] (torch
        backend). On CPU tensors it runs in numpy on the tensors' memory (4 numpy calls per
        Euler step cost less than torch's per-call dispatch: this was the CPU path before the
        kernels, kept so that benchmarks compare against it); elsewhere one `baddbmm` and
        in-place ops per step."""
        if x.device.type == "cpu":
            return torch.from_numpy(self._euler_numpy(Ws.numpy(), bias.numpy(), x.numpy()))
        return self._euler_batched(Ws, bias, x)

    def _euler_batched(self, Ws: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The Euler loop off CPU: one `baddbmm` and in-place ops per step."""
        x = x.unsqueeze(-1).clone()
        b = bias.unsqueeze(-1)
        f_ = INPLACE_ACTIVATIONS[self.kwargs.get("activation", "abs")]
        for i in range(self.n_steps):
            y = torch.baddbmm(b, Ws[:, i], x)
            f_(y)
            y.mul_(self.eta)
            x.add_(y)
        return x[:, :, 0]

    def _euler_numpy(self, Ws: np.ndarray, bias: np.ndarray, x: np.ndarray) -> np.ndarray:
        f_ = NUMPY_INPLACE_ACTIVATIONS[self.kwargs.get("activation", "abs")]
        x = x[:, :, None].copy()
        b = bias[:, :, None]
        y = np.empty_like(x)
        for i in range(self.n_steps):
            np.matmul(Ws[:, i], x, out=y)
            y += b
            f_(y)
            y *= self.eta
            x += y
        return x[:, :, 0]

    def _step_torch(self, prepared: dict[str, torch.Tensor], s: torch.Tensor) -> torch.Tensor:
        x = matvec(prepared["omega_in"], s)
        x = self._euler(prepared["W"], prepared["bias"], x)
        return matvec(prepared["omega_out"], x)
