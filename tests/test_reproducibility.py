"""Runs repeat across CPUs: odepolicy pins OpenBLAS's kernels (odepolicy/__init__.py), whose
run-time choice per CPU was the difference found between an AVX-512 and an AVX2 machine."""

import csv
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from odepolicy import cpuinfo

ROOT = Path(__file__).resolve().parents[1]
PRESET = str(ROOT / "experiments" / "presets" / "HalfCheetah-v5" / "linear.yaml")


def _avx2() -> bool:
    flags = cpuinfo()[1]
    return platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= flags


pytestmark = pytest.mark.skipif(not _avx2(), reason="the pin applies to x86-64 CPUs with AVX2")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    return {**env, "MUJOCO_GL": "egl", **extra}


# Which kernels OpenBLAS took, asked of numpy's own copy of it (the name it was built with).
CORENAME = """
import ctypes, glob, os, sys
import odepolicy, numpy
libs = os.path.join(os.path.dirname(numpy.__file__), "..", "numpy.libs", "*openblas*.so*")
lib = ctypes.CDLL(sorted(glob.glob(libs))[0])
names = ("scipy_openblas_get_corename64_", "openblas_get_corename64_", "openblas_get_corename")
get = next((getattr(lib, n) for n in names if hasattr(lib, n)), None)
if get is None:
    sys.exit(3)
get.restype = ctypes.c_char_p
print(os.environ.get("OPENBLAS_CORETYPE"), get().decode())
"""


def test_importing_odepolicy_pins_openblas_unless_the_user_chose():
    """odepolicy sets the variable before numpy loads OpenBLAS, and OpenBLAS follows it (on an
    AVX-512 CPU it would otherwise take its SkylakeX kernels; on this one it would take
    Haswell's anyway, so the user's Sandybridge shows that the variable is obeyed)."""
    for extra, expected in (({}, "Haswell Haswell"), ({"OPENBLAS_CORETYPE": "Sandybridge"},
                                                      "Sandybridge Sandybridge")):  # fmt: skip
        out = subprocess.run(
            [sys.executable, "-c", CORENAME], env=_env(**extra), capture_output=True, text=True
        )
        if out.returncode == 3:
            pytest.skip("this numpy's OpenBLAS does not name its kernels")
        assert out.stdout.strip() == expected, out.stderr


def _perturbation_returns(tmp_path: Path, name: str, **extra) -> list[str]:
    exe = Path(sys.executable).with_name("odepolicy")
    sets = ["iterations=3", "horizon=200", "es.directions=8", "eval_every=100"]
    argv = [str(exe), "train", PRESET, "--out", str(tmp_path), "--name", name, "--quiet"]
    argv += [a for s in sets for a in ("--set", s)]
    subprocess.run(argv, env=_env(**extra), check=True, timeout=300)
    with open(tmp_path / name / "progress.csv", newline="") as fh:
        return [row["pert_return_mean"] for row in csv.DictReader(fh)]


def test_the_blas_kernels_decide_the_numbers_and_the_default_is_the_pinned_one(tmp_path):
    default = _perturbation_returns(tmp_path, "default")
    assert default == _perturbation_returns(tmp_path, "haswell", OPENBLAS_CORETYPE="Haswell")
    other = _perturbation_returns(tmp_path, "sandybridge", OPENBLAS_CORETYPE="Sandybridge")
    assert other[0] == default[0]  # the same centre: iteration 1's rollouts agree...
    assert other[1:] != default[1:]  # ...the first update goes through BLAS, and then not
