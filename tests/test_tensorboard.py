"""`tensorboard: true`: event files that TensorBoard's own reader finds equal to progress.csv,
each iteration once after a resume, and a one-line error without the package."""

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported anywhere

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from odepolicy.checkpoint import read_checkpoint
from odepolicy.cli import main
from odepolicy.loggers import TENSORBOARD_TAGS
from odepolicy.rundir import RunDir

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

ROOT = Path(__file__).resolve().parents[1]
PENDULUM = str(ROOT / "experiments" / "inverted_pendulum.yaml")
TINY = [
    "--set", "es.directions=3",
    "--set", "horizon=30",
    "--set", "eval_episodes=2",
    "--set", "checkpoint_every=1",
    "--set", "policy.kwargs.hidden=4",
    "--quiet",
]  # fmt: skip


def _train(tmp_path, name, *extra) -> Path:
    argv = ["train", PENDULUM, "--out", str(tmp_path), "--name", name, *TINY, *extra]
    assert main(argv) == 0
    return tmp_path / name


def _events(run: Path, purge: bool = True):
    acc = event_accumulator.EventAccumulator(
        str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0},
        purge_orphaned_data=purge,
    )  # fmt: skip
    acc.Reload()
    return acc


def _column(rows: list[dict], column: str) -> tuple[list[int], list[float]]:
    """(env steps, values) of the rows where `column` has a number."""
    kept = [r for r in rows if r[column] != ""]
    return [int(r["env_steps"]) for r in kept], [float(r[column]) for r in kept]


def _assert_events_match_progress(run: Path, purge: bool = True) -> None:
    acc, rows = _events(run, purge), RunDir(run).progress.read()
    assert set(acc.Tags()["scalars"]) == set(TENSORBOARD_TAGS.values())
    for column, tag in TENSORBOARD_TAGS.items():
        steps, values = _column(rows, column)
        events = acc.Scalars(tag)
        assert [e.step for e in events] == steps, tag  # each row once, NaN rows left out
        # TensorBoard stores scalars as float32
        assert [e.value for e in events] == [float(np.float32(v)) for v in values], tag


def test_events_hold_the_progress_rows_and_the_config(tmp_path):
    run = _train(tmp_path, "tb", "--set", "iterations=4", "--set", "eval_every=2",
                 "--set", "tensorboard=true")  # fmt: skip
    _assert_events_match_progress(run)
    acc, rows = _events(run), RunDir(run).progress.read()
    evals = acc.Scalars("eval/return_mean")
    assert len(rows) == 4 and len(evals) == 2  # iterations 2 and 4 evaluated, 1 and 3 not
    assert [e.value for e in evals] == [
        float(np.float32(r["eval_return_mean"])) for r in rows[1::2]
    ]
    (text,) = acc.Tensors("config")
    config = text.tensor_proto.string_val[0].decode()
    assert text.step == 0 and "env: InvertedPendulum-v5" in config and "tensorboard: true" in config

    # Without TensorBoard, the same run: no event files, the same numbers bit for bit.
    plain = _train(tmp_path, "plain", "--set", "iterations=4", "--set", "eval_every=2")
    assert not (plain / "tensorboard").exists()
    for a, b in zip(RunDir(run).progress.read(), RunDir(plain).progress.read()):
        for key in ("env_steps", "eval_return_mean", "pert_return_mean", "manifold_distance"):
            assert a[key] == b[key]
    centre = [
        read_checkpoint(r / "checkpoints" / "latest.npz")[0]["es.center"] for r in (run, plain)
    ]
    assert np.array_equal(*centre)


def test_a_resumed_run_logs_each_iteration_once(tmp_path):
    sets = ["--set", "eval_every=1", "--set", "tensorboard=true"]
    run = _train(tmp_path, "r", "--set", "iterations=3", *sets)
    # As if the run died after logging iteration 3 but before checkpointing it, with the last
    # event record half written.
    ckpts = run / "checkpoints"
    shutil.copy(ckpts / "iter_000002.npz", ckpts / "latest.npz")
    (first,) = sorted((run / "tensorboard").iterdir())
    with open(first, "ab") as fh:
        fh.write(b"\x40\x00\x00\x00\x00")
    assert main(["train", "--resume", str(run), "--set", "iterations=4", "--quiet"]) == 0
    rows = RunDir(run).progress.read()
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4]
    # Iteration 3's old points are gone from the files themselves, not only hidden by
    # TensorBoard's restart mark.
    _assert_events_match_progress(run, purge=False)
    _assert_events_match_progress(run)
    files = sorted((run / "tensorboard").iterdir())
    assert len(files) == 2 and files[0] == first  # one file per session, in order
    configs = _events(run).Tensors("config")
    assert [c.step for c in configs] == [0, int(rows[1]["env_steps"]) + 1]


def test_without_the_package_tensorboard_true_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    kept = _train(tmp_path, "kept", "--set", "iterations=1")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith("tensorboard.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard: ImportError
    capsys.readouterr()
    for argv in (
        ["train", PENDULUM, "--out", str(tmp_path), "--name", "new", *TINY,
         "--set", "tensorboard=true"],
        ["train", "--resume", str(kept), "--set", "iterations=2", "--set", "tensorboard=true"],
    ):  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("odepolicy: error:"), err
        assert "tensorboard" in err and "pip install" in err
    assert not (tmp_path / "new").exists()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
