"""`odepolicy export`: the ONNX graph and the npz reference compute the library's own actions
from raw observations (real checkpoints written by the trainer's save path, onnxruntime on
CPU), and `odepolicy evaluate policy.onnx` reproduces the run's evaluation in MuJoCo."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported anywhere

import inspect
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from odepolicy import OdepolicyError, export
from odepolicy.checkpoint import load_policy
from odepolicy.cli import main
from odepolicy.config import config_from_dict
from odepolicy.envs import env_spec
from odepolicy.export import export_policy, load_exported, npz_act
from odepolicy.normalizer import RunningStats
from odepolicy.rundir import RunDir
from odepolicy.trainer import Trainer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ENV = "Hopper-v5"  # obs 11, act 3, actions in [-1, 1]

# Every family, plus the options that change the exported graph: the linear skip path, a
# learned output scale, other activations, a residual scale, normalisation off.
CASES = [
    ("linear", {}, True),
    ("linear", {}, False),
    ("iso_odetoode", {}, True),
    ("iso_odetoode", {"linear_skip": True, "learn_output_scale": True, "activation": "tanh"}, True),
    ("gated_odetoode", {"hidden": 8}, True),
    ("base_ode", {}, True),
    ("nanode", {"activation": "relu"}, True),
    ("hypernet", {}, True),
    ("deepnet", {}, True),
    ("deep_resnet", {}, True),
    ("deep_resnet", {"activation": "relu", "residual_scale": 0.04}, True),
]


@pytest.fixture(scope="module")
def hopper_spec():
    return env_spec(ENV)


def _saved_policy(folder: Path, spec, name: str, kwargs: dict, normalize: bool, seed: int) -> Path:
    """A run folder whose latest checkpoint holds a random policy of this family and a
    normaliser with non-trivial statistics, written by the trainer's own save path."""
    config = config_from_dict(
        {"env": ENV, "seed": seed, "policy": {"name": name, "kwargs": kwargs}},
        [f"normalize_obs={str(normalize).lower()}"],
    )
    run = RunDir(folder)
    trainer = Trainer(config, run, spec=spec)
    rng = np.random.default_rng(100 + seed)
    trainer.es.center += 0.3 * rng.standard_normal(trainer.es.center.shape)  # biases non-zero
    dim = spec.obs_dim
    m2 = 49 * rng.uniform(0.05, 4.0, dim) ** 2
    trainer.state.normalizer.merge(RunningStats(dim, 50, 2 * rng.standard_normal(dim), m2))
    run.create(config)
    trainer.save()
    return folder


def _raw_observations(normalizer, rng, n=200) -> np.ndarray:
    """Raw observations around the normaliser's mean, a quarter each at 0.3, 3, 30 and 300
    standard deviations: the larger ones hit the observation clip and push actions into the
    action clip."""
    mean, std = normalizer.mean_std()
    scale = np.repeat([0.3, 3.0, 30.0, 300.0], n // 4)[:, None]
    return mean + std * rng.standard_normal((n, len(mean))) * scale


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name, kwargs, normalize", CASES)
def test_onnx_and_npz_act_as_the_library(tmp_path, hopper_spec, name, kwargs, normalize, seed):
    run = _saved_policy(tmp_path / "run", hopper_spec, name, kwargs, normalize, seed)
    policy, theta, normalizer, _ = load_policy(run)
    obs = _raw_observations(normalizer, np.random.default_rng(seed))
    expected = policy.act(theta[None], normalizer.normalize(obs))  # the library, end to end
    saturated = np.abs(expected) == 1.0
    assert saturated.any()  # the action clip is exercised
    if not (name == "deep_resnet" and not kwargs):  # the paper's form saturates everything
        assert (~saturated).any()

    onnx_file = tmp_path / "policy.onnx"
    export_policy(run, onnx_file)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1]) == ("obs", "tensor(double)", hopper_spec.obs_dim)
    assert (out.name, out.type, out.shape[1]) == ("action", "tensor(double)", hopper_spec.act_dim)
    assert isinstance(inp.shape[0], str)  # a free batch dimension
    actions = session.run(["action"], {"obs": obs})[0]
    np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-6)
    one = session.run(["action"], {"obs": obs[7:8]})[0]  # batch 1 gives the same row
    np.testing.assert_allclose(one, expected[7:8], rtol=0, atol=1e-6)

    npz_file = tmp_path / "policy.npz"
    export_policy(run, npz_file)
    np.testing.assert_allclose(npz_act(npz_file, obs), expected, rtol=0, atol=1e-6)


def test_exported_metadata_and_precomputed_flow(tmp_path, hopper_spec):
    """The graph holds the precomputed W_1..W_N (no expm left) and the run's evaluation
    settings; the npz holds the same weights."""
    run = _saved_policy(tmp_path / "run", hopper_spec, "iso_odetoode", {"hidden": 8}, True, 0)
    policy, theta, _, meta = load_policy(run)
    export_policy(run, tmp_path / "p.onnx")
    model = onnx.load(str(tmp_path / "p.onnx"))
    info = json.loads({p.key: p.value for p in model.metadata_props}["odepolicy"])
    assert info["env"]["env_id"] == ENV and info["policy"]["name"] == "iso_odetoode"
    assert info["eval_seed"] == meta["eval_seed"] and info["config"]["horizon"] == 1000
    assert info["dtype"] == "float64"
    kinds = {node.op_type for node in model.graph.node}
    assert kinds <= {"Sub", "Div", "Clip", "MatMul", "Add", "Abs", "Mul", "Max", "Min"}
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    flow = policy.matrix_flow(theta)  # W_0..W_N
    for i in range(1, policy.n_steps + 1):  # layer i holds W_i^T (row vectors)
        np.testing.assert_array_equal(weights[f"layer{i}_w0"], flow[i].T)
    export_policy(run, tmp_path / "p.npz")
    with np.load(tmp_path / "p.npz") as f:
        np.testing.assert_array_equal(f["layer25_w0"], flow[25].T)
        assert json.loads(f["meta"].tobytes())["layers"][1] == {
            "acts": ["abs"],
            "scale": 0.04,
            "repeat": 1,
        }


def test_readme_numpy_reference_is_the_packages_and_runs(tmp_path, hopper_spec):
    text = README.read_text()
    source = inspect.getsource(npz_act)
    assert source in text  # the README shows the package's function, verbatim
    (table,) = re.findall(r"^ACTIVATIONS = \{.*?^\}$", inspect.getsource(export), re.S | re.M)
    assert table in text
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if source in b]
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    run = _saved_policy(tmp_path / "run", hopper_spec, "base_ode", {"width": 8}, True, 1)
    policy, theta, normalizer, _ = load_policy(run)
    obs = _raw_observations(normalizer, np.random.default_rng(3))
    export_policy(run, tmp_path / "p.npz")
    expected = policy.act(theta[None], normalizer.normalize(obs))
    np.testing.assert_allclose(scope["npz_act"](tmp_path / "p.npz", obs), expected, atol=1e-6)


PENDULUM = [
    "--set", "iterations=2", "--set", "es.directions=2", "--set", "horizon=100",
    "--set", "eval_every=1", "--set", "eval_episodes=3", "--set", "checkpoint_every=1",
    "--quiet",
]  # fmt: skip


def _evaluate(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main(["evaluate", *map(str, argv), "--json", "--quiet"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "config, extra",
    [
        ("inverted_pendulum.yaml", []),  # normalised; episodes end at different steps
        ("swimmer.yaml", ["--set", "max_env_steps=null"]),  # linear skip, no normalisation
    ],
)
def test_evaluating_the_onnx_export_reproduces_the_run(tmp_path, capsys, config, extra):
    run = tmp_path / "run"
    argv = [str(ROOT / "experiments" / config), "--out", str(tmp_path), "--name", "run"]
    assert main(["train", *argv, *PENDULUM, *extra]) == 0
    for checkpoint in ("latest", "best"):
        onnx_file = tmp_path / f"{checkpoint}.onnx"
        capsys.readouterr()
        assert main(["export", str(run), "--out", str(onnx_file), "--checkpoint", checkpoint]) == 0
        assert "float64" in capsys.readouterr().out
        ours = _evaluate(capsys, run, "--checkpoint", checkpoint)
        exported = _evaluate(capsys, onnx_file)
        assert exported["exported"] == "onnx" and ours["exported"] is None
        assert (exported["seed"], exported["episodes"]) == (ours["seed"], ours["episodes"])
        assert exported["mean"] == pytest.approx(ours["mean"], rel=1e-6, abs=1e-9)
        np.testing.assert_allclose(exported["returns"], ours["returns"], rtol=1e-6)
        assert exported["lengths"] == ours["lengths"]
    # other seeds and episode counts pass through alike, and so does the npz
    assert main(["export", str(run), "--out", str(tmp_path / "p.npz")]) == 0
    opts = ["--episodes", 5, "--seed", 7, "--horizon", 60]
    ours = _evaluate(capsys, run, *opts)
    for file in ("latest.onnx", "p.npz"):
        theirs = _evaluate(capsys, tmp_path / file, *opts)
        assert theirs["seed"] == 7 and len(theirs["returns"]) == 5
        np.testing.assert_allclose(theirs["returns"], ours["returns"], rtol=1e-6)
    progress = RunDir(run).progress.read()
    logged = float(progress[-1]["eval_return_mean"])
    assert _evaluate(capsys, tmp_path / "latest.onnx")["mean"] == pytest.approx(logged, rel=1e-6)


def _one_line_error(capsys, argv, needle) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("odepolicy: error:") and needle in err, err


def test_bad_export_input_is_one_line_exit_2(tmp_path, capsys, hopper_spec):
    run = _saved_policy(tmp_path / "run", hopper_spec, "linear", {}, True, 0)
    out = tmp_path / "out" / "p.onnx"
    (tmp_path / "notarun").mkdir()
    _one_line_error(capsys, ["export", str(tmp_path / "notarun"), "--out", str(out)], "not a run")
    _one_line_error(capsys, ["export", str(tmp_path / "nowhere"), "--out", str(out)], "no such")
    _one_line_error(
        capsys, ["export", str(run), "--out", str(out), "--format", "tflite"], "'tflite'"
    )
    _one_line_error(capsys, ["export", str(run), "--out", str(tmp_path / "p.bin")], "--format")
    _one_line_error(
        capsys,
        ["export", str(run), "--out", str(out), "--checkpoint", "best"],
        "has no best checkpoint",
    )
    latest = run / "checkpoints" / "latest.npz"
    _one_line_error(
        capsys, ["export", str(latest), "--out", str(out), "--checkpoint", "latest"], "is a file"
    )
    assert not out.parent.exists()  # nothing was written
    # an exported file is not a checkpoint to export, nor one with a --checkpoint to pick
    assert main(["export", str(run), "--out", str(out)]) == 0
    _one_line_error(capsys, ["evaluate", str(out), "--checkpoint", "best"], "exported policy")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a graph")
    _one_line_error(capsys, ["evaluate", str(junk)], "cannot load ONNX model")
    with pytest.raises(OdepolicyError, match="not an exported policy"):
        load_exported(latest)


def _hide(monkeypatch, package: str) -> None:
    """Make `import package` (and its submodules) fail, as if it were not installed."""
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


def test_without_onnx_the_onnx_paths_say_what_to_install(tmp_path, capsys, hopper_spec):
    run = _saved_policy(tmp_path / "run", hopper_spec, "linear", {}, True, 0)
    assert main(["export", str(run), "--out", str(tmp_path / "p.onnx")]) == 0
    with pytest.MonkeyPatch.context() as mp:
        _hide(mp, "onnx")
        argv = ["export", str(run), "--out", str(tmp_path / "q.onnx")]
        _one_line_error(capsys, argv, "needs the onnx package: pip install 'odepolicy[export]'")
        assert main(["export", str(run), "--out", str(tmp_path / "p.npz")]) == 0  # numpy only
        _hide(mp, "onnxruntime")
        _one_line_error(capsys, ["evaluate", str(tmp_path / "p.onnx")], "needs onnxruntime: pip")
    assert not (tmp_path / "q.onnx").exists()
