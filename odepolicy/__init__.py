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


_pin_blas_kernels()


class OdepolicyError(Exception):
    """An error caused by the user's input (config, file, id). The CLI prints it on one line
    and exits with status 2."""
