"""Loggers: what the training loop reports each iteration goes to these objects.

The loop calls `start(trainer)` once, `log(row)` after every iteration (row: the progress
columns of `rundir.PROGRESS_COLUMNS`, NaN where there was no evaluation, and `checkpoint`: whether
the iteration's state is saved as the run's latest checkpoint, `rollout_seconds`: its
population's time), `flush()` before a checkpoint written after a failed iteration, and
`close()` at the end, even after an error. A logger may raise to stop the run (the tuner's
pruning logger does). The run's own: progress.csv (always), TensorBoard event files
(`tensorboard: true`) and the progress bar.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import struct
import sys
import time
from pathlib import Path

import numpy as np

from . import OdepolicyError
from .checkpoint import atomic_write
from .config import dump_config
from .rundir import PROGRESS_COLUMNS, ProgressWriter, RunDir

__all__ = [
    "Logger",
    "ProgressCSVLogger",
    "ProgressBarLogger",
    "TensorBoardLogger",
    "TENSORBOARD_TAGS",
]


class Logger:
    def start(self, trainer) -> None:
        pass

    def log(self, row: dict) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class ProgressCSVLogger(Logger):
    """The run folder's progress.csv: a row per iteration, or with `progress_rows` N (and
    `max_env_steps`) a row per span of iterations that adds up to max_env_steps / N env steps.
    An evaluation, a checkpoint and the end always end a row, so a checkpoint never falls inside
    one and a resumed run logs every iteration once. A row of several iterations holds the
    counters and evaluation of its last, the mean of their mean returns, their largest return,
    their failures summed and their env steps over their rollout seconds; a row of one
    iteration, that iteration's own numbers."""

    def __init__(self, run: RunDir):
        self.run = run
        self.writer: ProgressWriter | None = None
        self.span: list[dict] = []
        self.row_steps = 0  # a row spans at least this many env steps (0: every iteration)
        self.start_steps = 0  # env steps before the span

    def start(self, trainer) -> None:
        config = trainer.config
        if config.progress_rows is not None and config.max_env_steps is not None:
            self.row_steps = config.max_env_steps // config.progress_rows
        self.start_steps = trainer.counters.env_steps
        self.writer = self.run.progress.writer()

    def log(self, row: dict) -> None:
        self.span.append(dict(row))
        evaluated = not math.isnan(row.get("eval_return_mean", math.nan))
        if (
            evaluated
            or row.get("checkpoint", True)
            or (row["env_steps"] - self.start_steps >= self.row_steps)
        ):
            self.flush()

    def flush(self) -> None:
        if not self.span or self.writer is None:
            return
        span, self.span = self.span, []
        row = span[-1]
        if len(span) > 1:
            means = [r["pert_return_mean"] for r in span if not math.isnan(r["pert_return_mean"])]
            maxes = [r["pert_return_max"] for r in span if not math.isnan(r["pert_return_max"])]
            seconds = sum(r["rollout_seconds"] for r in span)
            row = dict(
                row,
                failed=sum(r["failed"] for r in span),
                pert_return_mean=float(np.mean(means)) if means else math.nan,
                pert_return_max=max(maxes) if maxes else math.nan,
                steps_per_second=float((row["env_steps"] - self.start_steps) / max(seconds, 1e-9)),
            )
        self.start_steps = row["env_steps"]
        self.writer.write(row)

    def close(self) -> None:
        if self.writer is not None:
            # A run stopped between checkpoints: the iterations it finished (a resumed run cuts
            # them off again). Only a stopped run has any, so a failed write here is not news.
            with contextlib.suppress(OdepolicyError):
                self.flush()
            self.writer.close()
            self.writer = None


class ProgressBarLogger(Logger):
    """A tqdm bar on stderr: iterations, or env steps when `max_env_steps` bounds the run
    (it is below what `iterations` iterations can use), perturbation mean return, last
    evaluation."""

    def __init__(self):
        self.bar = None
        self.last_eval = math.nan
        self.count_steps = False

    def start(self, trainer) -> None:
        from tqdm import tqdm

        config, counters = trainer.config, trainer.counters
        most = config.iterations * config.es.population * config.horizon
        self.count_steps = config.max_env_steps is not None and config.max_env_steps < most
        if self.count_steps:
            total, done, unit = config.max_env_steps, counters.env_steps, "step"
        else:
            total, done, unit = config.iterations, counters.iteration, "it"
        self.bar = tqdm(
            total=total,
            initial=min(done, total),
            unit=unit,
            unit_scale=self.count_steps,
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def log(self, row: dict) -> None:
        if not math.isnan(row.get("eval_return_mean", math.nan)):
            self.last_eval = row["eval_return_mean"]
        postfix = {"ret": f"{row['pert_return_mean']:.1f}", "eval": f"{self.last_eval:.1f}"}
        if self.count_steps:  # the last iteration may overshoot the budget: stop at the total
            self.bar.update(min(row["env_steps"], self.bar.total) - self.bar.n)
            postfix = {"it": row["iteration"], **postfix}
        else:
            self.bar.update(1)
        self.bar.set_postfix(postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# TensorBoard's name for each progress column (its section before the slash); env_steps is the
# step axis. A column missing here is written as progress/<column>.
TENSORBOARD_TAGS = {
    "eval_return_mean": "eval/return_mean",
    "eval_return_std": "eval/return_std",
    "pert_return_mean": "perturbations/return_mean",
    "pert_return_max": "perturbations/return_max",
    "failed": "perturbations/failed",
    "steps_per_second": "speed/env_steps_per_second",
    "wall_seconds": "speed/wall_seconds",
    "iteration": "progress/iteration",
    "episodes": "progress/episodes",
    "worker_restarts": "progress/worker_restarts",
    "manifold_distance": "manifold/distance",
}
_EVENTS = "events.out.tfevents."


def _tensorboard():
    """TensorBoard's record writer and protos; OdepolicyError (one line) without them."""
    try:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.plugins.text.summary_v2 import text_pb
        from tensorboard.summary.writer.record_writer import RecordWriter
    except ImportError:
        raise OdepolicyError(
            "tensorboard: true needs the tensorboard package: pip install 'odepolicy[tensorboard]'"
        ) from None
    return Event, SessionLog, Summary, text_pb, RecordWriter


def _records(data: bytes):
    """(start, end) of each whole record of a TFRecord file's bytes (uint64 length, uint32
    crc, data, uint32 crc); a record cut short by a crash ends the list."""
    pos = 0
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        end = pos + 12 + length + 4
        if end > len(data):
            return
        yield pos, end
        pos = end


def drop_events_from(folder: Path, step: int) -> None:
    """Remove the summaries and session marks at `step` or later (and any record cut short)
    from the event files in `folder`, each file rewritten atomically; files left with no
    summary are removed. A resumed run calls this with the first step it will log, so the
    iterations logged after its checkpoint, which it logs again, are not shown twice."""
    Event = _tensorboard()[0]
    for file in sorted(folder.glob(_EVENTS + "*")):
        data = file.read_bytes()
        kept, summaries, changed = [], 0, False
        for start, end in _records(data):
            try:
                event = Event.FromString(data[start + 12 : end - 4])
            except Exception:  # a damaged record: keep nothing from it on
                break
            logged = event.HasField("summary") or event.HasField("session_log")
            if logged and event.step >= step:
                changed = True
                continue
            kept.append(data[start:end])
            summaries += event.HasField("summary")
        changed = changed or sum(map(len, kept)) != len(data)
        if not summaries:
            file.unlink()
        elif changed:
            atomic_write(file, lambda fh, kept=kept: fh.write(b"".join(kept)))


class TensorBoardLogger(Logger):
    """Event files under RUN/tensorboard/: every number of a progress row as a scalar
    (TENSORBOARD_TAGS) against env steps, NaN (no evaluation that iteration) left out, and the
    resolved config as text. Written with TensorBoard's own record writer and protos (no torch,
    no TensorFlow), flushed every iteration, so `tensorboard --logdir RUN` follows a live run.

    Each session (a run, or a resume) writes a file of its own, named so that sessions sort in
    order. A resumed run first drops what the files hold from its first step on (the iterations
    after its checkpoint, which it logs again) and starts its file with TensorBoard's restart
    mark (SessionLog.START) at that step, which tells a TensorBoard already reading the folder
    to forget those points too. Scalars are float32, as TensorBoard stores them."""

    def __init__(self, run: RunDir):
        _tensorboard()  # a missing package fails here, before the run folder is made
        self.run, self.folder = run, run.tensorboard_dir
        self.writer = None

    @contextlib.contextmanager
    def _writing(self):
        """An OSError writing the event files as a one-line OdepolicyError that says how to go
        on (the run's checkpoints are untouched)."""
        try:
            yield
        except OSError as exc:
            raise OdepolicyError(
                f"cannot write TensorBoard events in {self.folder}: {exc.strerror or exc}; the "
                f"run stopped: once the cause is fixed, continue it with `odepolicy train "
                f"--resume {self.run.path}` (or set tensorboard: false)"
            ) from None

    def _new_file(self) -> Path:
        """A new event file whose name sorts after every one already in the folder (the time
        stamp, in seconds, moved past theirs when two sessions start within one second)."""
        stamps = [int(m.group(1)) for p in self.folder.glob(_EVENTS + "*")
                  if (m := re.match(re.escape(_EVENTS) + r"(\d{10})\.", p.name))]  # fmt: skip
        stamp = max([int(time.time()), *(s + 1 for s in stamps)])
        return self.folder / f"{_EVENTS}{stamp:010d}.{socket.gethostname()}.{os.getpid()}.odepolicy"

    def _write(self, event) -> None:
        self.writer.write(event.SerializeToString())

    def start(self, trainer) -> None:
        Event, SessionLog, _, text_pb, RecordWriter = _tensorboard()
        counters = trainer.counters
        first = 0 if counters.iteration == 0 else counters.env_steps + 1
        text = "".join("    " + line + "\n" for line in dump_config(trainer.config).splitlines())
        now = time.time()
        with self._writing():
            self.folder.mkdir(parents=True, exist_ok=True)
            drop_events_from(self.folder, first)
            self.writer = RecordWriter(open(self._new_file(), "xb"))
            self._write(Event(wall_time=now, file_version="brain.Event:2"))
            if first:
                start = SessionLog(status=SessionLog.START)
                self._write(Event(wall_time=now, step=first, session_log=start))
            self._write(Event(wall_time=now, step=first, summary=text_pb("config", text)))
            self.writer.flush()

    def log(self, row: dict) -> None:
        Event, _, Summary, _, _ = _tensorboard()
        summary = Summary()
        for column in PROGRESS_COLUMNS:
            value = row.get(column)
            if column == "env_steps" or isinstance(value, bool) or value is None:
                continue
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                tag = TENSORBOARD_TAGS.get(column, f"progress/{column}")
                summary.value.add(tag=tag, simple_value=value)
        event = Event(wall_time=time.time(), step=int(row["env_steps"]), summary=summary)
        with self._writing():
            self._write(event)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            with contextlib.suppress(OSError):  # closing after a failed write
                writer.close()
