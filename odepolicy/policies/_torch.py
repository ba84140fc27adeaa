"""torch, imported on first use.

The CPU path of every policy runs on the compiled kernels and never touches torch, whose import
costs about 180 MB of resident memory per process (a driver and every Ray worker). Policy
modules write `from ._torch import torch` and use it as the module; the first attribute looked
up imports the real torch. The CUDA path and `backend = "torch"` import it as before.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["torch", "torch_imported"]


class _LazyTorch:
    def __getattr__(self, name: str) -> Any:
        return getattr(importlib.import_module("torch"), name)

    def __repr__(self) -> str:
        return "<torch, imported on first use>"


torch: Any = _LazyTorch()


def torch_imported() -> bool:
    import sys

    return "torch" in sys.modules
