"""A trained policy outside odepolicy: one ONNX graph, or plain arrays run by a numpy function.

Both forms hold what the library computes from a raw observation to the action the environment
gets (`rollout.evaluate_population` stepping a policy's kernels), for one parameter vector:

    s = clip((obs - mean) / std, -c, c)     the frozen observation normaliser; without
                                            normalisation mean 0, std 1 and no clip
    x = s
    for each layer, `repeat` times:
        y = act_J(... act_1(x @ w_1 + b_1) ... @ w_J + b_J)
        x = y, or x = x + scale * y          (a residual layer: an Euler step)
    a = clip(x [+ s @ skip], action_low, action_high)

Everything that depends on the parameters alone is computed once, here, by the policy's own
`prepare` (DESIGN principle 1): ISO- and gated-ODEtoODE's W_1..W_N, NANODE's W(t_i) and
HyperNet's W(t_i) become the weights of N residual layers x + eta f(x W_i^T + b), so the
exported policy has no matrix exponential, trigonometric basis or hyper-network left in it.
BaseODE is one residual layer (its tanh MLP) repeated N times; DeepNet and DeepResNet are
their layers; Linear is one layer. Weights are stored for row vectors (y = x @ w, w = W^T),
everything in float64: the ONNX graph takes `obs` [batch, obs_dim] float64 and gives `action`
[batch, act_dim] float64, its batch dimension free, and agrees with the library to rounding
(1e-15 relative per operation), so an exported policy reproduces the library's evaluation.

The ONNX graph is built with `onnx.helper` from the same layers the npz holds (opset 17, IR
version 8, so any onnxruntime since 1.13 runs it); the npz holds the layers' arrays plus a JSON
document, and `npz_act` (also printed in the README) runs it with numpy alone. Both carry the
run's env id, action box, evaluation seeds and horizon, so `odepolicy evaluate policy.onnx`
plays the run's own evaluation episodes through onnxruntime (`load_exported`).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import OdepolicyError, __version__
from .checkpoint import atomic_write, load_policy, resolve_checkpoint
from .normalizer import ObsNormalizer
from .policies import BaseODE, DeepNet, DeepResNet, Linear, ODEPolicy, Policy
from .policies.base import select_rows

__all__ = [
    "EXPORT_FORMATS",
    "FORMAT",
    "Dense",
    "Layer",
    "ExportedProgram",
    "export_program",
    "export_policy",
    "onnx_model",
    "npz_arrays",
    "npz_act",
    "exported_format",
    "load_exported",
]

EXPORT_FORMATS = ("onnx", "npz")
FORMAT = "odepolicy-export-1"
OPSET = 17
IR_VERSION = 8  # the IR of opset 17: older runtimes refuse a newer IR they could run
_ONNX_ACTIVATIONS = {"abs": "Abs", "tanh": "Tanh", "relu": "Relu"}
_PIP = "pip install 'odepolicy[export]'"


# -- the program -------------------------------------------------------------------------------
@dataclass
class Dense:
    """y = act(x @ w + b): w [n_in, n_out], b [n_out] or None, act abs | tanh | relu | None."""

    w: np.ndarray
    b: np.ndarray | None = None
    act: str | None = None


@dataclass
class Layer:
    """`branch` (Dense maps in turn) applied `repeat` times: x = branch(x), or with a `scale`
    the residual x = x + scale * branch(x)."""

    branch: list[Dense]
    scale: float | None = None
    repeat: int = 1


@dataclass
class ExportedProgram:
    """One policy as normaliser, layers, optional linear skip and action box (module doc)."""

    obs_mean: np.ndarray
    obs_std: np.ndarray
    obs_clip: float | None
    layers: list[Layer]
    action_low: np.ndarray
    action_high: np.ndarray
    skip: np.ndarray | None = None
    info: dict = field(default_factory=dict)  # what the run was: env, policy, seeds

    def layer_specs(self) -> list[dict]:
        return [
            {"acts": [d.act for d in layer.branch], "scale": layer.scale, "repeat": layer.repeat}
            for layer in self.layers
        ]


def _policy_layers(policy: Policy, theta: np.ndarray) -> tuple[list[Layer], np.ndarray | None]:
    """The layers (and linear skip) of `policy` at `theta`, from its kernels' `prepare`."""
    if policy.backend != "kernels":
        raise OdepolicyError("export reads the CPU kernels' prepared state: load the policy on cpu")
    q = {k: v[0] for k, v in policy.prepare(np.asarray(theta, dtype=np.float64)[None]).items()}
    if isinstance(policy, Linear):
        return [Layer([Dense(q["M_t"], q["c"])])], None
    if isinstance(policy, DeepNet):
        hidden = [Layer([Dense(W, b, "tanh")]) for W, b in zip(q["W_t"], q["b"])]
        first, last = Dense(q["w_in_t"], q["b_in"], "tanh"), Dense(q["w_out_t"], q["b_out"])
        return [Layer([first]), *hidden, Layer([last])], None
    act = policy.kwargs.get("activation")
    if isinstance(policy, DeepResNet):
        c = policy.residual_scale
        middle = [Layer([Dense(W, b, act)], c) for W, b in zip(q["W_t"], q["b"])]
    elif isinstance(policy, BaseODE):
        mlp = [
            Dense(q["g_w1_t"], q["g_b1"], "tanh"),
            Dense(q["g_w2_t"], q["g_b2"], "tanh"),
            Dense(q["g_w3_t"], q["g_b3"]),
        ]
        middle = [Layer(mlp, policy.eta, repeat=policy.n_steps)]
    elif isinstance(policy, ODEPolicy) and "W_t" in q:  # ISO, gated, NANODE, HyperNet
        middle = [Layer([Dense(W, q["bias"], act)], policy.eta) for W in q["W_t"]]
    else:
        raise OdepolicyError(f"policy {policy.name!r} has no export")
    layers = [Layer([Dense(q["omega_in_t"])]), *middle, Layer([Dense(q["omega_out_t"])])]
    return layers, q.get("skip_t")


def export_program(
    policy: Policy, theta: np.ndarray, normalizer: ObsNormalizer, info: dict | None = None
) -> ExportedProgram:
    """The exported form of `policy` at `theta` with `normalizer`'s frozen statistics and
    clip, its actions clipped to the policy's action box (the env's, as in training)."""
    layers, skip = _policy_layers(policy, theta)
    mean, std = normalizer.mean_std()
    return ExportedProgram(
        obs_mean=np.asarray(mean, dtype=np.float64),
        obs_std=np.asarray(std, dtype=np.float64),
        obs_clip=normalizer.active_clip,
        layers=layers,
        action_low=np.asarray(policy._low, dtype=np.float64),
        action_high=np.asarray(policy._high, dtype=np.float64),
        skip=skip,
        info={
            "format": FORMAT,
            "odepolicy": __version__,
            "dtype": "float64",
            "obs_dim": policy.obs_dim,
            "act_dim": policy.act_dim,
            "obs_clip": normalizer.active_clip,
            **(info or {}),
        },
    )


# -- ONNX --------------------------------------------------------------------------------------
def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise OdepolicyError(f"--format onnx needs the onnx package: {_PIP}") from None
    return onnx


class _Graph:
    """The nodes and initializers of an ONNX graph being built."""

    def __init__(self):
        self.nodes, self.inits, self.names = [], [], {}

    def const(self, name: str, value) -> str:
        """An initializer; an array used again (BaseODE's repeated MLP, ODEtoODE's bias)
        keeps its first name."""
        from onnx import numpy_helper

        if isinstance(value, np.ndarray) and id(value) in self.names:
            return self.names[id(value)][0]
        if isinstance(value, np.ndarray):
            self.names[id(value)] = (name, value)  # holding it keeps its id unique
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.float64), name))
        return name

    def op(self, kind: str, inputs: list[str], out: str) -> str:
        from onnx import helper

        self.nodes.append(helper.make_node(kind, inputs, [out], name=out))
        return out


def _emit(g: _Graph, program: ExportedProgram) -> None:
    """The program's nodes, from `obs` to `action` (module doc)."""
    s = g.op("Sub", ["obs", g.const("obs_mean", program.obs_mean)], "obs_centred")
    s = g.op("Div", [s, g.const("obs_std", program.obs_std)], "obs_scaled")
    if program.obs_clip is not None:
        c = float(program.obs_clip)
        bounds = [g.const("obs_clip_low", -c), g.const("obs_clip_high", c)]
        s = g.op("Clip", [s, *bounds], "obs_clipped")
    x = s
    for k, layer in enumerate(program.layers):
        for r in range(layer.repeat):
            y, tag = x, f"layer{k}" + (f"_{r}" if layer.repeat > 1 else "")
            for j, d in enumerate(layer.branch):
                y = g.op("MatMul", [y, g.const(f"layer{k}_w{j}", d.w)], f"{tag}_matmul{j}")
                if d.b is not None:
                    y = g.op("Add", [y, g.const(f"layer{k}_b{j}", d.b)], f"{tag}_add{j}")
                if d.act is not None:
                    y = g.op(_ONNX_ACTIVATIONS[d.act], [y], f"{tag}_{d.act}{j}")
            if layer.scale is not None:
                if r == 0:
                    g.const(f"layer{k}_scale", float(layer.scale))
                y = g.op("Mul", [y, f"layer{k}_scale"], f"{tag}_scaled")
                y = g.op("Add", [x, y], f"{tag}_residual")
            x = y
    if program.skip is not None:
        linear = g.op("MatMul", [s, g.const("skip", program.skip)], "skip_matmul")
        x = g.op("Add", [x, linear], "skip_add")
    x = g.op("Max", [x, g.const("action_low", program.action_low)], "action_above_low")
    g.op("Min", [x, g.const("action_high", program.action_high)], "action")


def onnx_model(program: ExportedProgram):
    """The program as an `onnx.ModelProto`: input `obs` [batch, obs_dim] float64, output
    `action` [batch, act_dim] float64, the run's info as the metadata `odepolicy` (JSON),
    checked by `onnx.checker`."""
    onnx = _import_onnx()
    from onnx import TensorProto, helper

    g, info = _Graph(), program.info
    _emit(g, program)
    graph = helper.make_graph(
        g.nodes,
        f"odepolicy_{info.get('policy', {}).get('name', 'policy')}",
        [helper.make_tensor_value_info("obs", TensorProto.DOUBLE, ["batch", info["obs_dim"]])],
        [helper.make_tensor_value_info("action", TensorProto.DOUBLE, ["batch", info["act_dim"]])],
        initializer=g.inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="odepolicy",
        producer_version=__version__,
        doc_string="raw observation (float64) -> clipped action (float64); see odepolicy.export",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"odepolicy": json.dumps(info, sort_keys=True)})
    onnx.checker.check_model(model)
    return model


# -- npz and its numpy reference ---------------------------------------------------------------
def npz_arrays(program: ExportedProgram) -> dict[str, np.ndarray]:
    """The arrays `--format npz` writes: normaliser, layer weights, action box and `meta`
    (JSON as uint8: the program's info plus each layer's activations, scale and repeat)."""
    arrays = {
        "obs_mean": program.obs_mean,
        "obs_std": program.obs_std,
        "action_low": program.action_low,
        "action_high": program.action_high,
    }
    for k, layer in enumerate(program.layers):
        for j, d in enumerate(layer.branch):
            arrays[f"layer{k}_w{j}"] = d.w
            if d.b is not None:
                arrays[f"layer{k}_b{j}"] = d.b
    if program.skip is not None:
        arrays["skip"] = program.skip
    meta = {**program.info, "layers": program.layer_specs()}
    arrays = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in arrays.items()}
    arrays["meta"] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    return arrays


# The README's "Use a trained policy elsewhere" prints these lines verbatim (a test checks).
ACTIVATIONS = {
    None: lambda y: y,
    "abs": np.abs,
    "tanh": np.tanh,
    "relu": lambda y: np.maximum(y, 0.0),
}


def npz_act(npz, obs):
    """Actions [batch, act_dim] of a policy saved by `odepolicy export --format npz`, for raw
    observations obs [batch, obs_dim]. npz: the file, or its arrays as a dict (load once)."""
    if not isinstance(npz, dict):
        with np.load(npz, allow_pickle=False) as f:
            npz = {k: f[k] for k in f.files}
    meta = json.loads(npz["meta"].tobytes())
    s = (np.asarray(obs, dtype=np.float64) - npz["obs_mean"]) / npz["obs_std"]
    if meta["obs_clip"] is not None:
        s = np.clip(s, -meta["obs_clip"], meta["obs_clip"])
    x = s
    for k, layer in enumerate(meta["layers"]):
        for _ in range(layer["repeat"]):
            y = x
            for j, act in enumerate(layer["acts"]):
                y = y @ npz[f"layer{k}_w{j}"]
                if f"layer{k}_b{j}" in npz:
                    y = y + npz[f"layer{k}_b{j}"]
                y = ACTIVATIONS[act](y)
            x = y if layer["scale"] is None else x + layer["scale"] * y
    if "skip" in npz:
        x = x + s @ npz["skip"]
    return np.clip(x, npz["action_low"], npz["action_high"])


# -- the command -------------------------------------------------------------------------------
def _export_format(fmt: str | None, out: Path) -> str:
    if fmt is None:
        fmt = out.suffix.lower().lstrip(".")
        if fmt not in EXPORT_FORMATS:
            raise OdepolicyError(
                f"cannot tell the export format from {out.name!r}: give --format "
                f"{' or '.join(EXPORT_FORMATS)} (or an --out ending in .onnx or .npz)"
            )
    if fmt not in EXPORT_FORMATS:
        raise OdepolicyError(f"unknown export format {fmt!r}; valid: {', '.join(EXPORT_FORMATS)}")
    return fmt


def export_policy(
    path: str | Path, out: str | Path, fmt: str | None = None, checkpoint: str | None = None
) -> dict:
    """Export the centre policy of a checkpoint (a file, or a run folder's `checkpoint`:
    latest by default, or best) to `out` as `fmt` (onnx or npz; default: from out's suffix).
    The file is written atomically. Returns what was written."""
    out = Path(out)
    fmt = _export_format(fmt, out)
    if fmt == "onnx":
        _import_onnx()  # before any work: a missing package is the first thing to say
    if out.is_dir():
        raise OdepolicyError(f"--out {out} is a folder; give the file to write")
    file = resolve_checkpoint(path, checkpoint)
    if out.exists() and out.resolve() == file.resolve():
        raise OdepolicyError(f"--out {out} is the checkpoint being exported")
    policy, theta, normalizer, meta = load_policy(file)
    config = meta.get("config", {})
    info = {
        "policy": meta["policy"],
        "env": meta["env"],
        "eval_seed": meta.get("eval_seed", 0),
        "config": {k: config[k] for k in ("seed", "eval_episodes", "horizon") if k in config},
        "iteration": meta.get("iteration"),
        "checkpoint": str(file),
    }
    program = export_program(policy, theta, normalizer, info)
    if fmt == "onnx":
        data = onnx_model(program).SerializeToString()
    else:
        buf = io.BytesIO()
        np.savez(buf, **npz_arrays(program))
        data = buf.getvalue()
    try:
        atomic_write(out, lambda fh: fh.write(data))
    except OSError as exc:
        raise OdepolicyError(f"cannot write {out}: {exc.strerror or exc}") from None
    return {
        "path": str(out),
        "format": fmt,
        "bytes": len(data),
        "checkpoint": str(file),
        "policy": meta["policy"]["name"],
        "env_id": meta["env"]["env_id"],
        "iteration": meta.get("iteration"),
        "obs_dim": policy.obs_dim,
        "act_dim": policy.act_dim,
        "layers": sum(layer.repeat for layer in program.layers),
    }


# -- running an exported policy ----------------------------------------------------------------
def exported_format(path: str | Path) -> str | None:
    """'onnx' for a .onnx file, 'npz' for an npz written by `export_policy`, else None (a
    checkpoint, a run folder, anything else)."""
    path = Path(path)
    if not path.is_file():
        return None
    if path.suffix.lower() == ".onnx":
        return "onnx"
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files") or "meta" not in f.files:
                return None
            meta = json.loads(f["meta"].tobytes())
    except Exception:  # not an npz, or not ours: the checkpoint reader says what is wrong
        return None
    return "npz" if isinstance(meta, dict) and meta.get("format") == FORMAT else None


class _ExportedPolicy:
    """An exported policy with the interface `rollout.evaluate_population` steps (`prepare`,
    `step`, `select`). It takes raw observations (its normaliser is inside), so the rollout
    is given mean 0, std 1 and no clip; the parameter rows are placeholders."""

    meta: dict

    def act(self, obs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def prepare(self, thetas: np.ndarray) -> dict[str, np.ndarray]:
        return {"rows": np.arange(len(thetas))}

    select = staticmethod(select_rows)

    def step(self, prepared: dict, obs: np.ndarray) -> np.ndarray:
        return self.act(obs)


class _OnnxPolicy(_ExportedPolicy):
    def __init__(self, path: Path):
        try:
            import onnxruntime as ort
        except ImportError:
            raise OdepolicyError(f"running an ONNX policy needs onnxruntime: {_PIP}") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # parallelism comes from processes (DESIGN 4)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise OdepolicyError(f"cannot load ONNX model {path}: {reason}") from None
        text = self.session.get_modelmeta().custom_metadata_map.get("odepolicy")
        if text is None:
            raise OdepolicyError(f"{path} is not an odepolicy export (no odepolicy metadata)")
        self.meta = json.loads(text)

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.ascontiguousarray(obs, dtype=np.float64)
        return self.session.run(["action"], {"obs": obs})[0]


class _NpzPolicy(_ExportedPolicy):
    def __init__(self, path: Path):
        with np.load(path, allow_pickle=False) as f:
            self.arrays = {k: f[k] for k in f.files}
        self.meta = json.loads(self.arrays["meta"].tobytes())

    def act(self, obs: np.ndarray) -> np.ndarray:
        return npz_act(self.arrays, obs)


def load_exported(path: str | Path) -> _ExportedPolicy:
    """An exported policy (.onnx through onnxruntime on CPU, or an export npz through
    `npz_act`) ready for `rollout.evaluate_population`; `.meta` holds the run's env, policy,
    evaluation seed and config."""
    path = Path(path)
    fmt = exported_format(path)
    if fmt == "onnx":
        return _OnnxPolicy(path)
    if fmt == "npz":
        return _NpzPolicy(path)
    raise OdepolicyError(f"{path} is not an exported policy (.onnx, or an npz of odepolicy export)")
