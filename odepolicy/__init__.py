"""odepolicy: ODEtoODE and baseline policies trained by Riemannian evolution strategies."""

import os
import platform
import sys

__version__ = "0.1.0"


def _pin_blas_kernels() -> None:
    """Ask OpenBLAS for its Haswell kernels on every x86-64 CPU with AVX2, before numpy loads it.

    numpy's and scipy's OpenBLAS pick their kernels for the CPU at run time, and the summation
    order of a product (the ES gradient `w @ eps`, the products inside expm) differs between
    them: the same run on an AVX-512 CPU and on an AVX2 one agreed in its first iteration and
    not after. Haswell's kernels run on every CPU with AVX2 (Intel since 2013, AMD since Zen,
    whose own kernels are Haswell's), so one choice gives the same numbers on all of them. A
    value the user set wins; without AVX2, off Linux (the flags come from /proc/cpuinfo), or
    once numpy is loaded (import odepolicy first), nothing changes."""
    if "OPENBLAS_CORETYPE" in os.environ or "numpy" in sys.modules:
        return
    if platform.machine() not in ("x86_64", "AMD64"):
        return
    flags = cpuinfo()[1]
    if "avx2" in flags and "fma" in flags:
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"


def cpuinfo() -> tuple[str | None, set[str]]:
    """(model name, feature flags) of the first CPU in /proc/cpuinfo; (None, empty) off Linux."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                if flags and model is not None:
                    break
    except OSError:
        pass
    return model, flags


def _widen_numba_vectors() -> None:
    """Let numba's LLVM use 512-bit vectors on CPUs where they do not slow the clock, before
    numba is loaded.

    LLVM's tuning for AVX-512 CPUs keeps auto-vectorised loops at 256 bits (on Skylake-SP and
    Cascade Lake, 512-bit arithmetic lowers the clock for everything around it). Our kernels'
    vector loops run across independent elements (each product's column j, each row of a
    mat-vec) and nothing is compiled with fastmath, so every lane rounds as scalar code would
    and the width changes no bit (tests/test_kernels.py compares both). With 512 bits the
    matrix flow of ISO-ODEtoODE at h = 64 (`prepare`, once per rollout) took 5.4 ms instead of
    7.0 on an Emerald Rapids core (benchmarks/es_throughput.md). Only on x86-64 Linux CPUs
    with AVX512-VBMI2 (Intel since Ice Lake, AMD since Zen 4), where 512-bit vectors keep the
    clock; never over a NUMBA_CPU_NAME / NUMBA_CPU_FEATURES the user set, nor with
    ODEPOLICY_NUMBA_VECTORS=256, nor once numba is loaded (import odepolicy first).

    The values are the host's, and child processes inherit them: `_NUMBA_MARK` says that
    odepolicy set them, so a process that inherits them decides afresh for its own CPU (a job
    launched on another machine must not compile for this one's)."""
    env = os.environ
    if "numba" in sys.modules:
        return
    if env.pop(_NUMBA_MARK, None) is not None:  # ours, inherited: decide again for this CPU
        env.pop("NUMBA_CPU_NAME", None)
        env.pop("NUMBA_CPU_FEATURES", None)
    if env.get("ODEPOLICY_NUMBA_VECTORS") == "256":
        return
    if "NUMBA_CPU_NAME" in env or "NUMBA_CPU_FEATURES" in env:
        return
    if platform.machine() not in ("x86_64", "AMD64"):
        return
    flags = cpuinfo()[1]
    if not {"avx512f", "avx512_vbmi2"} <= flags:
        return
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features().flatten()
    env["NUMBA_CPU_NAME"] = llvm.get_host_cpu_name()
    env["NUMBA_CPU_FEATURES"] = features + ",-prefer-256-bit"
    env[_NUMBA_MARK] = "1"


_NUMBA_MARK = "ODEPOLICY_SET_NUMBA_CPU"  # NUMBA_CPU_NAME / _FEATURES are odepolicy's


_pin_blas_kernels()
_widen_numba_vectors()


class OdepolicyError(Exception):
    """An error caused by the user's input (config, file, id). The CLI prints it on one line
    and exits with status 2."""
