"""The run folder, its one owner: what it holds, how each file is written and read.

    RUN/config.yaml          the resolved config
    RUN/progress.csv         one row per iteration (PROGRESS_COLUMNS), appended and flushed
    RUN/checkpoints/         latest.npz, plus iter_NNNNNN.npz every `checkpoint_every`
    RUN/meta.json            library versions, command line, host, start time (and extras)

A run folder is `empty` (no checkpoint yet), `resumable` (a checkpoint short of the config's
budget) or `finished` (the checkpoint reached `iterations` or `max_env_steps`, or its last
evaluation reached `target_return`). The trainer,
the sweep, the tuner and the plots all go through `RunDir`, so the format lives here only.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import platform
import shutil
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import OdepolicyError, __version__
from .checkpoint import read_checkpoint, save_checkpoint
from .config import Config, config_from_dict, dump_config, env_slug, read_yaml
from .state import budget_spent

__all__ = [
    "RunDir",
    "ProgressWriter",
    "ProgressFile",
    "PROGRESS_COLUMNS",
    "REQUIRED_COLUMNS",
    "STATUSES",
    "library_versions",
    "run_name",
]

PROGRESS_COLUMNS = [
    "iteration",
    "env_steps",
    "episodes",
    "wall_seconds",
    "eval_return_mean",
    "eval_return_std",
    "pert_return_mean",
    "pert_return_max",
    "failed",
    "steps_per_second",
    "manifold_distance",
    "worker_restarts",
]
# Columns a reader needs; older runs may lack the others.
REQUIRED_COLUMNS = ("iteration", "env_steps", "wall_seconds", "eval_return_mean")
STATUSES = ("empty", "resumable", "finished")


def library_versions() -> dict[str, str]:
    """Versions of the libraries a run depends on (looked up once per process)."""
    return dict(_library_versions())


@functools.cache
def _library_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"odepolicy": __version__, "python": platform.python_version()}
    for dist in ("torch", "gymnasium", "mujoco", "dm-control", "shimmy", "ray", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def run_name(config: Config) -> str:
    """`<env>_<policy>_s<seed>_<time>`: a run's identity readable from its folder name."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{env_slug(config.env)}_{config.policy.name}_s{config.seed}_{stamp}"


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


class ProgressWriter:
    """Appends rows to progress.csv, flushing each so a crash loses at most one row."""

    def __init__(self, path: Path):
        self.path = Path(path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.fh = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.fh, fieldnames=PROGRESS_COLUMNS)
        if new:
            self.writer.writeheader()
            self.fh.flush()

    def write(self, row: dict) -> None:
        self.writer.writerow({k: _fmt(row.get(k)) for k in PROGRESS_COLUMNS})
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ProgressFile:
    """progress.csv of a run: an appending writer, a validating reader, truncation on resume."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def writer(self) -> ProgressWriter:
        return ProgressWriter(self.path)

    # -- progress.csv ----------------------------------------------------------------------
    def read(self) -> list[dict]:
        """Rows of progress.csv as strings; OdepolicyError for a malformed file."""
        file = self.path
        try:
            with open(file, newline="") as fh:
                reader = csv.DictReader(fh)
                header = reader.fieldnames
                rows = list(reader)
        except FileNotFoundError:
            return []
        except UnicodeDecodeError:
            raise OdepolicyError(f"malformed {file}: not a text file") from None
        except csv.Error as exc:
            raise OdepolicyError(f"malformed {file}: {exc}") from None
        if header is None:  # empty: the run died before its first row was flushed
            return []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise OdepolicyError(f"malformed {file}: no column {', '.join(missing)}")
        for i, row in enumerate(rows):
            if None in row:  # more fields than the header
                raise OdepolicyError(f"malformed {file}: line {i + 2} has extra fields")
        return rows

    def truncate(self, iteration: int) -> None:
        """Drop rows logged after `iteration` (the checkpoint a run resumes from), so a resumed
        run logs each iteration once."""
        rows = self.read()
        keep = [r for r in rows if int(r["iteration"]) <= iteration]
        if len(keep) == len(rows):
            return
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=PROGRESS_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(keep)
        os.replace(tmp, self.path)

    def final_eval(self) -> float | None:
        """The last logged centre-policy evaluation return, if any."""
        values = [r.get("eval_return_mean") for r in self.read()]
        values = [v for v in values if v not in (None, "")]
        return float(values[-1]) if values else None


class RunDir:
    """One run folder. Creating it never touches a folder that is not a run folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config_file = property(lambda self: self.path / "config.yaml")
    progress_file = property(lambda self: self.path / "progress.csv")
    meta_file = property(lambda self: self.path / "meta.json")
    checkpoint_dir = property(lambda self: self.path / "checkpoints")
    latest = property(lambda self: self.checkpoint_dir / "latest.npz")

    def periodic(self, iteration: int) -> Path:
        return self.checkpoint_dir / f"iter_{int(iteration):06d}.npz"

    def is_run(self) -> bool:
        return self.config_file.is_file()

    def has_progress(self) -> bool:
        return self.is_run() and self.progress_file.is_file()

    @property
    def progress(self) -> ProgressFile:
        return ProgressFile(self.progress_file)

    # -- creating and describing -----------------------------------------------------------
    def create(self, config: Config, overwrite: bool = False) -> RunDir:
        """Make a new run folder holding config.yaml and meta.json."""
        if self.path.exists() and any(self.path.iterdir()):
            if not overwrite:
                raise OdepolicyError(
                    f"run folder {self.path} already exists; use --resume or a new --name"
                )
            if not self.is_run():
                raise OdepolicyError(f"refusing to overwrite {self.path}: it is not a run folder")
            shutil.rmtree(self.path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_config(config)
        self.write_meta(config)
        return self

    def write_config(self, config: Config) -> None:
        self.config_file.write_text(dump_config(config))

    def read_config(self, overrides: list[str] | None = None) -> Config:
        if not self.is_run():
            raise OdepolicyError(f"{self.path} is not a run folder (no config.yaml)")
        return config_from_dict(read_yaml(self.config_file), overrides)

    def identity(self) -> tuple[str, str, int | None]:
        """(env, policy name, seed) from config.yaml, read leniently (old runs, other keys)."""
        cfg = read_yaml(self.config_file)
        policy = cfg.get("policy")
        name = policy.get("name") if isinstance(policy, dict) else policy
        env, seed = cfg.get("env"), cfg.get("seed")
        if not isinstance(env, str) or not env:
            raise OdepolicyError(f"{self.config_file} has no env")
        if not isinstance(name, str) or not name:
            raise OdepolicyError(f"{self.config_file} has no policy name")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise OdepolicyError(f"{self.config_file}: seed must be an integer, got {seed!r}")
        return env, name, seed

    def write_meta(self, config: Config, extra: dict | None = None) -> None:
        meta = {
            "versions": library_versions(),
            "command": sys.argv,
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "env": config.env,
            "policy": config.policy.name,
            "seed": config.seed,
        }
        meta.update(extra or {})
        self._write_json(meta)

    def update_meta(self, **extra) -> None:
        """Add keys to meta.json (e.g. the Ray cluster a run joined)."""
        meta = self.read_meta()
        meta.update(extra)
        self._write_json(meta)

    def read_meta(self) -> dict:
        try:
            return json.loads(self.meta_file.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def _write_json(self, meta: dict) -> None:
        tmp = self.meta_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, self.meta_file)

    # -- checkpoints and status ------------------------------------------------------------
    def save_checkpoint(self, arrays: dict[str, np.ndarray], meta: dict, periodic: bool) -> Path:
        """Write `latest.npz` (and `iter_NNNNNN.npz` when `periodic`) atomically."""
        latest = save_checkpoint(self.latest, arrays, meta)
        if periodic:
            save_checkpoint(self.periodic(meta["iteration"]), arrays, meta)
        return latest

    def save_state(self, state, config: Config, env_spec) -> Path:
        """Checkpoint a `state.TrainState` (periodic every `config.checkpoint_every`)."""
        arrays, meta = state.to_checkpoint(config, env_spec, library_versions())
        periodic = state.counters.iteration % config.checkpoint_every == 0
        return self.save_checkpoint(arrays, meta, periodic)

    def read_latest(self) -> tuple[dict[str, np.ndarray], dict]:
        return read_checkpoint(self.latest)

    def checkpoint_counters(self) -> dict | None:
        """Counters of the latest checkpoint (iteration, env_steps, ...); None without one."""
        if not self.latest.is_file():
            return None
        _, meta = self.read_latest()
        counters = meta.get("counters", {})
        return {"iteration": int(counters.get("iteration", 0)), **counters}

    def status(self, config: Config | None = None) -> str:
        """'empty', 'resumable' or 'finished' against `config`'s budget (default: its own)."""
        counters = self.checkpoint_counters()
        if counters is None:
            return "empty"
        if budget_spent(config or self.read_config(), counters):
            return "finished"
        return "resumable"
