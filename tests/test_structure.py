"""The structure the design promises: bit-identical numbers across the refactor, import
contracts that fail when broken, one owner for the run folder, typed sweep files."""

import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from odepolicy import OdepolicyError
from odepolicy.checkpoint import load_policy, read_checkpoint
from odepolicy.cli import main
from odepolicy.config import load_config
from odepolicy.rundir import PROGRESS_COLUMNS, RunDir
from odepolicy.sweep import load_sweep
from odepolicy.trainer import Trainer, resume, train

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "structure"
TINY = [
    "iterations=3",
    "es.directions=4",
    "eval_episodes=2",
    "eval_every=1",
    "checkpoint_every=1",
]


def _cpu_kind() -> str:
    """'_avx2' where OpenBLAS runs its Haswell kernels: every x86-64 CPU with AVX2, AVX-512 ones
    included, since importing odepolicy pins them (odepolicy/__init__.py; checked on an Intel
    Xeon with AVX-512 on 2026-12-05). '' on an AVX-512 CPU with OpenBLAS left to choose its own
    (SkylakeX) kernels, where the stored centres were first written."""
    import os

    from numpy._core._multiarray_umath import __cpu_features__

    if os.environ.get("OPENBLAS_CORETYPE") == "Haswell":
        return "_avx2"
    return "" if __cpu_features__.get("AVX512F") else "_avx2"


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_centre_is_bit_identical_to_the_code_before_the_restructuring(tmp_path, optimizer):
    """expected_centres.npz holds `<optimizer>_center`, written by the code at commit 58891de
    (before issue 8) on a CPU with AVX-512, from the paper-settings InvertedPendulum config
    stored beside it with these overrides, and `<optimizer>_center_avx2`, written by the code at
    368545a (which reproduces the first bit for bit on AVX-512) on an AMD EPYC with AVX2 only.
    numpy and OpenBLAS pick their SIMD kernels by CPU, so the last bits of a run depend on
    whether the CPU has AVX-512 (3.3e-16 here); within one kind they must not move. Since
    odepolicy pins OpenBLAS's Haswell kernels, AVX-512 CPUs give the second centre too."""
    config = load_config(
        DATA / "inverted_pendulum_paper.yaml", [*TINY, f"es.optimizer={optimizer}"]
    )
    train(config, tmp_path, "run", show_progress=False)
    arrays, _ = read_checkpoint(tmp_path / "run" / "checkpoints" / "latest.npz")
    expected = np.load(DATA / "expected_centres.npz")[f"{optimizer}_center{_cpu_kind()}"]
    assert arrays["es.center"].shape == expected.shape
    assert np.array_equal(arrays["es.center"], expected)


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(exe), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_import_contracts_hold():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    "module, line, contract",
    [
        ("rollout.py", "from .es import strategy", "know nothing of ES"),
        ("es/shaping.py", "import gymnasium", "ES knows nothing"),
        ("config.py", "from . import trainer", "Layers"),
    ],
)
def test_import_contracts_fail_when_broken(tmp_path, module, line, contract):
    """A copy of the package with one forbidden import added breaks the named contract."""
    shutil.copytree(ROOT / "odepolicy", tmp_path / "odepolicy", ignore=_no_caches)
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "odepolicy" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken


def _no_caches(folder, names):
    return [n for n in names if n == "__pycache__"]


def test_backend_names_agree():
    from odepolicy.backends import BACKENDS as built
    from odepolicy.config import BACKENDS as allowed

    assert set(built) == set(allowed)


def test_trainer_is_small_and_its_loop_fits_on_a_screen():
    assert len(inspect.getsource(Trainer).splitlines()) <= 150
    assert len(inspect.getsource(Trainer.train).splitlines()) <= 50


def test_run_folder_status_and_truncation(tmp_path):
    config = load_config(DATA / "inverted_pendulum_paper.yaml", [*TINY, "iterations=2"])
    run = RunDir(tmp_path / "r")
    assert run.status(config) == "empty" and not run.is_run()
    train(config, tmp_path, "r", show_progress=False)
    assert run.status(config) == "finished"
    rows = run.progress.read()
    assert [int(r["iteration"]) for r in rows] == [1, 2]
    assert list(rows[0]) == PROGRESS_COLUMNS
    bigger = load_config(DATA / "inverted_pendulum_paper.yaml", [*TINY, "iterations=4"])
    assert run.status(bigger) == "resumable"
    # Rows logged after the checkpoint a run resumes from are dropped, once.
    run.progress.truncate(1)
    assert [int(r["iteration"]) for r in run.progress.read()] == [1]
    assert run.checkpoint_counters()["iteration"] == 2


def test_resume_restores_optimiser_state_bit_for_bit(tmp_path):
    """Resume with ClipUp's velocity in the checkpoint equals the uninterrupted run (a test
    fixture, not a shipped config: the assertion is bit identity, not learning)."""
    sets = [*TINY, "es.optimizer=clipup", "checkpoint_every=2", "iterations=4"]
    whole = load_config(DATA / "inverted_pendulum_paper.yaml", sets)
    train(whole, tmp_path, "whole", show_progress=False)
    half = load_config(DATA / "inverted_pendulum_paper.yaml", [*sets, "iterations=2"])
    train(half, tmp_path, "half", show_progress=False)
    resume(tmp_path / "half", ["iterations=4"], show_progress=False)
    a, _ = read_checkpoint(tmp_path / "whole" / "checkpoints" / "latest.npz")
    b, _ = read_checkpoint(tmp_path / "half" / "checkpoints" / "latest.npz")
    assert set(a) == set(b) and "es.opt.velocity" in a
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    policy, theta, _, meta = load_policy(tmp_path / "half")
    assert np.array_equal(theta, a["es.center"]) and meta["counters"]["iteration"] == 4


def _sweep(tmp_path, text: str) -> Path:
    shutil.copy(DATA / "inverted_pendulum_paper.yaml", tmp_path / "pend.yaml")
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("configs: [pend.yaml]\nparalel: 2\n", "unknown sweep key 'paralel'"),
        ("configs: [{path: pend.yaml, sets: [a=1]}]\n", "unknown sweep key 'configs[0].sets'"),
        ("configs: [pend.yaml]\nseeds: [0, x]\n", "'seeds'"),
        ("configs: [pend.yaml]\nparallel: 0\n", "'parallel' must be a positive integer"),
        ("configs: []\n", "'configs' must be a non-empty list"),
        ("configs: [missing.yaml]\n", "not found"),
    ],
)
def test_sweep_files_are_checked_by_the_typed_builder(tmp_path, capsys, text, message):
    path = _sweep(tmp_path, text)
    with pytest.raises(OdepolicyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_sweep(path)
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sweep file" in err[0]
    assert not (tmp_path / "out").exists()


def test_sweep_runs_in_parallel_and_skips_finished_runs(tmp_path, capsys):
    sets = ", ".join(f"'{s}'" for s in [*TINY, "iterations=1", "horizon=20"])
    path = _sweep(tmp_path, f"configs: [pend.yaml]\nseeds: 2\nparallel: 2\nset: [{sets}]\n")
    out = tmp_path / "out"
    assert main(["sweep", str(path), "--out", str(out), "--quiet"]) == 0
    for seed in (0, 1):
        assert RunDir(out / f"pend_s{seed}").status() == "finished"
    mtime = (out / "pend_s0" / "checkpoints" / "latest.npz").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["sweep", str(path), "--out", str(out)]) == 0
    assert "skipped" in capsys.readouterr().out
    assert (out / "pend_s0" / "checkpoints" / "latest.npz").stat().st_mtime_ns == mtime


def test_cli_choices_come_from_the_library(capsys):
    from odepolicy.config import BACKENDS
    from odepolicy.plotting import BANDS, X_AXES

    for cmd, values in (("plot", [*BANDS, *X_AXES]), ("bench", BACKENDS)):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        for v in values:
            assert v in text
