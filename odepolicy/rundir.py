"""The run folder, its one owner: what it holds, how each file is written and read.

    RUN/config.yaml          the resolved config
    RUN/progress.csv         one row per iteration (PROGRESS_COLUMNS), appended and flushed;
                             with `progress_rows`, one per span of short iterations
    RUN/checkpoints/         latest.npz, plus iter_NNNNNN.npz every `checkpoint_every` (the
                             newest `keep_checkpoints` of them), and best.npz: the state whose
                             centre had the best evaluation so far
    RUN/meta.json            library versions, command line, host, start time (and extras)
    RUN/tensorboard/         event files of the progress rows (`tensorboard: true`;
                             written by `loggers.TensorBoardLogger`)

Every file is written atomically (or, progress.csv, a whole row at a time), and a write the file
system refuses (a full disk, a file-size limit, a read-only folder) is an OdepolicyError that
names the file, the OS's reason and how to continue the run, with the folder left as it was
before that write: its latest checkpoint valid, no temporary files, no partial rows.

A run folder is `empty` (no checkpoint yet), `resumable` (a checkpoint short of the config's
budget) or `finished` (the checkpoint reached `iterations` or `max_env_steps`, or its last
evaluation reached `target_return`). The trainer,
the sweep, the tuner and the plots all go through `RunDir`, so the format lives here only.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import functools
import io
import json
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import OdepolicyError, __version__, cpuinfo
from .checkpoint import atomic_write, read_checkpoint, save_checkpoint
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
    # Keyed by the name one imports (dm_control), looked up by the distribution's (dm-control).
    for name in ("torch", "gymnasium", "mujoco", "dm_control", "shimmy", "ray", "numpy"):
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    commit = _source_commit()
    if commit:
        out["odepolicy_commit"] = commit
    return out


# What meta.json says of where and how a run was started; a resume lists its own in `resumes`.
_PROVENANCE = (
    "versions", "command", "host", "platform", "cpus", "cpu", "openblas_coretype", "started"
)  # fmt: skip


@functools.cache
def cpu_name() -> str:
    """The CPU's model name and its widest vector extension, e.g. `AMD EPYC (AVX2)`: runs are
    bit for bit the same only on CPUs that pick the same instructions (README)."""
    model, flags = cpuinfo()
    model = model or platform.processor() or "unknown CPU"
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    return f"{model} ({vector})" if vector else model


def _source_commit() -> str | None:
    """The git commit odepolicy runs from, `+changes` when its package folder differs from it
    (a source checkout; None for an installed wheel or without git)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None

    # No index.lock (a user's own git command may run beside a campaign), and this checkout's
    # repository whatever GIT_DIR the caller's shell has.
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_DIR", "GIT_WORK_TREE")}

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(root), *args],
            capture_output=True, text=True, timeout=20, env=env,
        )  # fmt: skip
        if done.returncode:
            raise OSError(done.stderr.strip())
        return done.stdout.strip()

    try:
        head = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--", "odepolicy")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+changes" if changed else "")


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


def _os_cause(exc: OSError) -> str:
    """`No space left on device (ENOSPC)`: the OS's reason for a failed call, on one line."""
    name = errno.errorcode.get(exc.errno or 0)
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason} ({name})" if name else reason


def _write_failed(run: Path, file: Path, exc: OSError, hint: bool = True) -> OdepolicyError:
    """The one-line error for a write the file system refused, saying how to go on."""
    message = f"cannot write {file}: {_os_cause(exc)}"
    if not hint:
        return OdepolicyError(message)
    run = RunDir(run)
    if run.latest.is_file():
        try:
            at = f" (iteration {int(run.read_latest()[1]['iteration'])})"
        except (OdepolicyError, KeyError, TypeError, ValueError):
            at = ""
        message += (
            f"; the run stopped and its last checkpoint{at} is intact: once the cause is "
            f"fixed, continue it with `odepolicy train --resume {run.path}`"
        )
    elif run.is_run():
        message += (
            "; the run stopped before its first checkpoint: once the cause is fixed, start it "
            f"again with `{run.restart_command()}`"
        )
    return OdepolicyError(message)


@contextlib.contextmanager
def _writing(run: Path, file: Path, hint: bool = True):
    """Turn an OSError of writing `file` of run folder `run` into a one-line OdepolicyError
    (saying how to continue the run when `hint`)."""
    try:
        yield
    except OSError as exc:
        raise _write_failed(run, file, exc, hint) from None


def _csv_line(values: list[str]) -> bytes:
    """One progress.csv line, quoted and terminated as csv.DictWriter writes it."""
    buf = io.StringIO()
    csv.writer(buf).writerow(values)
    return buf.getvalue().encode()


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode()))


class ProgressWriter:
    """Appends rows to progress.csv, each in one write flushed to the OS, so a crash loses at
    most one row. A write the file system refuses is undone (the file cut back to its last
    whole row) and raised as a one-line OdepolicyError."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None
        with _writing(self.path.parent, self.path):
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if os.fstat(self.fd).st_size == 0:
                self._append(_csv_line(PROGRESS_COLUMNS))
        except BaseException:
            self.close()
            raise

    def write(self, row: dict) -> None:
        self._append(_csv_line([_fmt(row.get(k)) for k in PROGRESS_COLUMNS]))

    def _append(self, line: bytes) -> None:
        size = os.fstat(self.fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, size)  # no partial row: a resumed run appends after it
            raise _write_failed(self.path.parent, self.path, exc) from None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

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
        """Drop rows logged after `iteration` (the checkpoint a run resumes from), and a last
        row cut short by a crash, so a resumed run logs each iteration once."""
        rows = self.read()
        partial = bool(rows) and not self.path.read_bytes().endswith(b"\n")
        keep = [r for r in rows[: len(rows) - partial] if int(r["iteration"]) <= iteration]
        if len(keep) == len(rows):
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=PROGRESS_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(keep)
        with _writing(self.path.parent, self.path):
            _write_text(self.path, buf.getvalue())

    def evals(self) -> list[float]:
        """Every centre-policy evaluation logged (the mean returns), in order."""
        values = [r.get("eval_return_mean") for r in self.read()]
        return [float(v) for v in values if v not in (None, "") and not math.isnan(float(v))]

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
    best = property(lambda self: self.checkpoint_dir / "best.npz")
    tensorboard_dir = property(lambda self: self.path / "tensorboard")

    def periodic(self, iteration: int) -> Path:
        return self.checkpoint_dir / f"iter_{int(iteration):06d}.npz"

    def periodic_files(self) -> list[Path]:
        """The periodic checkpoints on disk, oldest iteration first."""
        found = []
        for path in self.checkpoint_dir.glob("iter_*.npz"):
            match = re.fullmatch(r"iter_(\d+)\.npz", path.name)
            if match:
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def is_run(self) -> bool:
        return self.config_file.is_file()

    def restart_command(self) -> str:
        """The command that starts this run again from its own config.yaml."""
        p = self.path
        return f"odepolicy train {self.config_file} --out {p.parent} --name {p.name} --overwrite"

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
            with _writing(self.path, self.path, hint=False):
                shutil.rmtree(self.path)
        with _writing(self.path, self.path, hint=False):
            self.path.mkdir(parents=True, exist_ok=True)
        self.write_config(config)
        self.write_meta(config)
        return self

    def write_config(self, config: Config) -> None:
        with _writing(self.path, self.config_file):
            _write_text(self.config_file, dump_config(config))

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

    def write_meta(
        self, config: Config, extra: dict | None = None, resumed_from: int | None = None
    ) -> None:
        """Write meta.json. A resume (`resumed_from`: the iteration it continues from) keeps the
        first start's provenance (versions, command, machine, time; None where an older meta.json
        lacks a key) and appends its own to `resumes`."""
        meta = {
            "versions": library_versions(),
            "command": sys.argv,
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "cpu": cpu_name(),
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", "chosen by OpenBLAS"),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "env": config.env,
            "policy": config.policy.name,
            "seed": config.seed,
        }
        if resumed_from is not None:
            first = self.read_meta()
            this = {k: meta[k] for k in _PROVENANCE}
            meta.update({k: first.get(k) for k in _PROVENANCE})  # None: not recorded then
            meta["resumes"] = [*first.get("resumes", []), {"iteration": resumed_from, **this}]
            meta["resumed_from_iteration"] = resumed_from
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
        with _writing(self.path, self.meta_file):
            _write_text(self.meta_file, json.dumps(meta, indent=2) + "\n")

    # -- checkpoints and status ------------------------------------------------------------
    def _save(self, file: Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
        with _writing(self.path, file):
            return save_checkpoint(file, arrays, meta)

    def save_checkpoint(
        self, arrays: dict[str, np.ndarray], meta: dict, periodic: bool, keep: int | None = None
    ) -> Path:
        """Write `latest.npz` (and `iter_NNNNNN.npz` when `periodic`, then remove periodic
        checkpoints beyond the newest `keep`; None keeps all) atomically."""
        latest = self._save(self.latest, arrays, meta)
        if periodic:
            self._save(self.periodic(meta["iteration"]), arrays, meta)
            if keep is not None:
                for old in self.periodic_files()[:-keep]:
                    with _writing(self.path, old):
                        old.unlink()
        return latest

    def save_state(
        self,
        state,
        config: Config,
        env_spec,
        best: bool = False,
        latest: bool = True,
        policy_kwargs: dict | None = None,
    ) -> None:
        """Checkpoint a `state.TrainState`: `best.npz` when `best` (first, so that `latest`
        never records a best evaluation that best.npz lacks), then `latest.npz` when `latest`
        (periodic every `config.checkpoint_every`, `config.keep_checkpoints` of them kept)."""
        arrays, meta = state.to_checkpoint(config, env_spec, library_versions(), policy_kwargs)
        if best:
            self._save(self.best, arrays, meta)
        if latest:
            periodic = state.counters.iteration % config.checkpoint_every == 0
            self.save_checkpoint(arrays, meta, periodic, config.keep_checkpoints)

    def read_latest(self) -> tuple[dict[str, np.ndarray], dict]:
        return read_checkpoint(self.latest)

    def best_eval(self) -> float | None:
        """The evaluation mean return best.npz was saved for; None without one."""
        if not self.best.is_file():
            return None
        value = read_checkpoint(self.best)[1].get("counters", {}).get("best_eval")
        return None if value is None else float(value)

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
