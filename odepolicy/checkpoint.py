"""Checkpoints: everything needed to resume a run exactly, in a file that is safe to open.

A checkpoint is one `.npz` archive of plain float/int arrays plus a JSON document stored as a
uint8 array (`__meta__`). It is read with `allow_pickle=False`, so opening a checkpoint from an
untrusted source cannot run code. Writes go to a temporary file in the same folder, are flushed
to disk, then renamed over the target, so a crash never leaves a half-written `latest`.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from . import OdepolicyError

__all__ = ["save_checkpoint", "read_checkpoint", "load_policy", "resolve_checkpoint", "FORMAT"]

FORMAT = "odepolicy-checkpoint-1"
_META = "__meta__"


def save_checkpoint(path: str | Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Atomically write arrays and JSON metadata to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    meta = dict(meta, format=FORMAT)
    payload[_META] = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Arrays and metadata of a checkpoint; OdepolicyError if it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise OdepolicyError(f"checkpoint not found: {path}")
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


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its `checkpoints/latest.npz`)."""
    path = Path(path)
    if path.is_dir():
        latest = path / "checkpoints" / "latest.npz"
        if not latest.is_file():
            raise OdepolicyError(f"{path} is not a run folder with a checkpoint (no {latest})")
        return latest
    if not path.exists():
        raise OdepolicyError(f"no such run folder or checkpoint: {path}")
    return path


def load_policy(path: str | Path, device: str = "cpu"):
    """(policy, theta, normalizer, metadata) from a checkpoint file or run folder."""
    from .state import policy_from_checkpoint

    arrays, meta = read_checkpoint(resolve_checkpoint(path))
    policy, theta, normalizer = policy_from_checkpoint(arrays, meta, device)
    return policy, theta, normalizer, meta
