"""Loggers: what the training loop reports each iteration goes to these objects.

The loop calls `start(trainer)` once, `log(row)` after every iteration (row: the progress
columns of `rundir.PROGRESS_COLUMNS`, NaN where there was no evaluation) and `close()` at the
end, even after an error. A logger may raise to stop the run (the tuner's pruning logger does).
"""

from __future__ import annotations

import math
import sys

from .rundir import ProgressWriter, RunDir

__all__ = ["Logger", "ProgressCSVLogger", "ProgressBarLogger"]


class Logger:
    def start(self, trainer) -> None:
        pass

    def log(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


class ProgressCSVLogger(Logger):
    """One row per iteration appended to the run folder's progress.csv."""

    def __init__(self, run: RunDir):
        self.run = run
        self.writer: ProgressWriter | None = None

    def start(self, trainer) -> None:
        self.writer = self.run.progress.writer()

    def log(self, row: dict) -> None:
        self.writer.write(row)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ProgressBarLogger(Logger):
    """A tqdm bar on stderr: iterations, perturbation mean return, last evaluation."""

    def __init__(self):
        self.bar = None
        self.last_eval = math.nan

    def start(self, trainer) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=trainer.config.iterations,
            initial=trainer.counters.iteration,
            unit="it",
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def log(self, row: dict) -> None:
        if not math.isnan(row.get("eval_return_mean", math.nan)):
            self.last_eval = row["eval_return_mean"]
        self.bar.update(1)
        self.bar.set_postfix(ret=f"{row['pert_return_mean']:.1f}", eval=f"{self.last_eval:.1f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
