"""Checkpoints: everything needed to resume a run exactly, in a file that is safe to open.

A checkpoint is one `.npz` archive of plain float/int arrays plus a JSON document stored as a
uint8 array (`__meta__`). It is read with `allow_pickle=False`, so opening a checkpoint from an
untrusted source cannot run code. Writes go to a temporary file in the same folder, are flushed
to disk, then renamed over the target (`atomic_write`, which the run folder's other files use
too), so a crash, a full disk or a file-size limit never leaves a half-written `latest`.
"""

from __future__ import annotations

import json
import os
import secrets
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np

from . import OdepolicyError

__all__ = [
    "save_checkpoint",
    "read_checkpoint",
    "load_policy",
    "resolve_checkpoint",
    "atomic_write",
    "CHECKPOINTS",
    "FORMAT",
]

FORMAT = "odepolicy-checkpoint-1"
_META = "__meta__"
# The checkpoints of a run folder a user can pick by name (`odepolicy evaluate --checkpoint`):
# the newest state, and the centre with the best evaluation so far.
CHECKPOINTS = ("latest", "best")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], mode: int = 0o666) -> Path:
    """Write `path` through `write(fh)` on a temporary file beside it, flushed to disk and then
    renamed over `path`: readers see the old file or the new one, never a mixture. If anything
    fails (a full disk, a file-size limit) the temporary file is removed, `path` is left as it
    was and the error (an OSError for the file system's) propagates. `mode` is the new file's
    permission bits before the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{secrets.token_hex(4)}{path.suffix}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_checkpoint(path: str | Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Atomically write arrays and JSON metadata to `path` (readable by its owner only)."""
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    meta = dict(meta, format=FORMAT)
    payload[_META] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    return atomic_write(path, lambda fh: np.savez(fh, **payload), mode=0o600)


def read_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays and metadata of a checkpoint; OdepolicyError if it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise OdepolicyError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # np.load would take a short or foreign file for a pickle
        raise OdepolicyError(f"checkpoint {path} is damaged or truncated (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as exc:
        # numpy refuses an object array under allow_pickle=False: the file is intact but would
        # need pickle (able to run code) to open, which no checkpoint of ours does.
        if "allow_pickle" in str(exc):
            raise OdepolicyError(
                f"checkpoint {path} contains pickled Python objects; refusing to load"
            ) from None
        raise OdepolicyError(f"checkpoint {path} is damaged or truncated ({exc})") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as exc:
        raise OdepolicyError(f"checkpoint {path} is damaged or truncated ({exc})") from None
    if _META not in arrays:
        raise OdepolicyError(f"{path} is not an odepolicy checkpoint (no metadata)")
    try:
        meta = json.loads(arrays.pop(_META).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise OdepolicyError(f"checkpoint {path} has unreadable metadata") from None
    if meta.get("format") != FORMAT:
        raise OdepolicyError(f"{path} has unknown checkpoint format {meta.get('format')!r}")
    return arrays, meta


def resolve_checkpoint(path: str | Path, checkpoint: str | None = None) -> Path:
    """A checkpoint file, or a run folder's `checkpoints/<checkpoint>.npz`, `checkpoint` one of
    CHECKPOINTS (default latest); naming one for a checkpoint file is an error."""
    path = Path(path)
    if checkpoint is not None and checkpoint not in CHECKPOINTS:
        raise OdepolicyError(
            f"unknown checkpoint {checkpoint!r}; a run folder has {', '.join(CHECKPOINTS)}"
        )
    if path.is_dir():
        file = path / "checkpoints" / f"{checkpoint or 'latest'}.npz"
        if file.is_file():
            return file
        if checkpoint == "best" and (path / "checkpoints" / "latest.npz").is_file():
            raise OdepolicyError(
                f"{path} has no best checkpoint (no {file}): it is written at the run's first "
                "evaluation, and runs from before odepolicy 0.2.0 have none; use --checkpoint "
                "latest"
            )
        raise OdepolicyError(f"{path} is not a run folder with a checkpoint (no {file})")
    if not path.exists():
        raise OdepolicyError(f"no such run folder or checkpoint: {path}")
    if checkpoint is not None:
        raise OdepolicyError(
            f"--checkpoint {checkpoint} picks a file of a run folder, but {path} is a file"
        )
    return path


def load_policy(path: str | Path, device: str = "cpu", checkpoint: str | None = None):
    """(policy, theta, normalizer, metadata) from a checkpoint file or run folder (its
    `checkpoint`: latest by default, or best)."""
    from .state import policy_from_checkpoint

    arrays, meta = read_checkpoint(resolve_checkpoint(path, checkpoint))
    policy, theta, normalizer = policy_from_checkpoint(arrays, meta, device)
    return policy, theta, normalizer, meta
