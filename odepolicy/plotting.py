"""Reward curves and summary tables from run folders (`odepolicy plot`).

Run folders are read through `rundir.RunDir` (config.yaml and progress.csv); a run's task is
the config's `env`, its method the config's `policy.name`. Runs are grouped by (task, method); the
seeds of a group are interpolated onto the union of their x values, kept only where every seed
has data, and drawn as a mean curve with a band: the standard deviation across seeds, a
bootstrap 95% interval of the mean (fixed RNG, so the output is deterministic), or none.
Standard deviations here are population ones (numpy's default, ddof=0), like the trainer's
`eval_return_std`.

Figures are drawn on matplotlib's Agg canvas without pyplot, so no global backend is touched.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import OdepolicyError
from .rundir import RunDir

__all__ = [
    "Run",
    "Curve",
    "find_runs",
    "load_run",
    "aggregate",
    "summary_table",
    "plot_runs",
    "plot_command",
    "X_AXES",
    "BANDS",
    "ARS_THRESHOLDS",
    "steps_to_threshold",
]

X_AXES = {
    "timesteps": "environment steps",
    "iterations": "iterations",
    "seconds": "wall-clock seconds",
}
BANDS = ("std", "bootstrap", "none")
_BAND_CAPTIONS = {
    "std": "band: ± one standard deviation across seeds",
    "bootstrap": "band: bootstrap 95% interval of the mean",
    "none": "no band",
}
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0

# Canonical order, display name and colour of the methods (DESIGN.md); others get a colour
# derived from their name, so a method keeps its colour from one figure to the next.
METHODS = {
    "iso_odetoode": ("ISO-ODEtoODE", "#d62728"),
    "gated_odetoode": ("Gated-ODEtoODE", "#ff7f0e"),
    "base_ode": ("BaseODE", "#1f77b4"),
    "nanode": ("NANODE", "#2ca02c"),
    "hypernet": ("HyperNet", "#9467bd"),
    "deepnet": ("DeepNet", "#8c564b"),
    "deep_resnet": ("DeepResNet", "#e377c2"),
    "linear": ("Linear", "#7f7f7f"),
    # Variants with an addition their family lacks are methods of their own (DESIGN.md).
    "iso_odetoode_skip": ("ISO-ODEtoODE + linear skip", "#17becf"),
    "gated_odetoode_skip": ("Gated-ODEtoODE + linear skip", "#bcbd22"),
}
HIGHLIGHT = "iso_odetoode"
_EXTRA_COLOURS = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")

_SUMMARY_FIELDS = [
    "task",
    "method",
    "seeds",
    "final_return_mean",
    "final_return_std",
    "best_return_mean",
    "best_return_std",
    "env_steps_mean",
    "threshold",
    "seeds_reached",
    "steps_to_threshold_mean",
    "steps_to_threshold_std",
    "rank",
]

# ARS's reward thresholds (Mania et al. 2018, Table 1; Gym v1 tasks, approximate targets for
# the v5 tasks): drawn as dashed lines and used for env steps to threshold.
ARS_THRESHOLDS = {
    "Swimmer-v5": 325.0,
    "Hopper-v5": 3120.0,
    "HalfCheetah-v5": 3430.0,
    "Walker2d-v5": 4390.0,
    "Ant-v5": 3580.0,
    "Humanoid-v5": 6000.0,
}


@dataclass
class Run:
    """One run folder: its identity and its evaluation rows (arrays of equal length)."""

    path: Path
    task: str
    method: str
    seed: int | None
    iterations: np.ndarray  # at evaluation rows
    env_steps: np.ndarray
    seconds: np.ndarray
    returns: np.ndarray  # eval_return_mean
    final_env_steps: int  # env_steps of the last logged row, evaluated or not
    final_iteration: int

    def xs(self, x: str = "timesteps") -> np.ndarray:
        if x == "timesteps":
            return self.env_steps
        if x == "iterations":
            return self.iterations
        if x == "seconds":
            return self.seconds
        raise OdepolicyError(f"unknown x axis {x!r}; choose one of {', '.join(X_AXES)}")


@dataclass
class Curve:
    """The mean curve of one (task, method) group on its common grid."""

    task: str
    method: str
    seeds: int
    grid: np.ndarray
    values: np.ndarray  # [seeds, len(grid)]: each seed interpolated onto the grid
    mean: np.ndarray
    lo: np.ndarray | None  # band; None for band="none"
    hi: np.ndarray | None


# -- finding and reading runs ------------------------------------------------------------------
def _is_run_dir(path: Path) -> bool:
    return RunDir(path).has_progress()


def find_runs(paths) -> list[Path]:
    """Run folders named by `paths`: each a run folder or a folder searched recursively.

    Raises OdepolicyError for a path that does not exist or holds no run folder.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise OdepolicyError(f"no such file or folder: {path}")
        if path.is_file() and path.name in ("config.yaml", "progress.csv"):
            path = path.parent
        if not path.is_dir():
            raise OdepolicyError(f"{path} is not a run folder or a folder of run folders")
        here = []
        for root, dirs, _ in os.walk(path):
            folder = Path(root)
            if _is_run_dir(folder):
                here.append(folder)
                dirs[:] = []  # a run folder's checkpoints hold no runs
            else:
                dirs.sort()
        if not here:
            raise OdepolicyError(f"no run folders (config.yaml + progress.csv) found under {path}")
        for folder in sorted(here):
            found.setdefault(folder.resolve(), None)
    return list(found)


def _number(text, file: Path, line: int, column: str, integer: bool = False) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        shown = "a missing value" if text in (None, "") else repr(text)
        raise OdepolicyError(
            f"malformed {file}: line {line} has {shown} in column {column}"
        ) from None
    if integer and not value.is_integer():
        raise OdepolicyError(f"malformed {file}: line {line} has {text!r} in column {column}")
    return value


def load_run(path) -> Run:
    """Read one run folder. A run without evaluation rows yet gets empty arrays."""
    path = Path(path)
    if not _is_run_dir(path):
        raise OdepolicyError(f"{path} is not a run folder (needs config.yaml and progress.csv)")
    run_dir = RunDir(path)
    task, method, seed = run_dir.identity()
    method = _variant(run_dir, method)
    file = run_dir.progress_file
    rows = run_dir.progress.read()
    its, steps, secs, rets = [], [], [], []
    last_it = last_steps = 0
    for i, row in enumerate(rows):
        line = i + 2
        it = _number(row["iteration"], file, line, "iteration", integer=True)
        st = _number(row["env_steps"], file, line, "env_steps", integer=True)
        sec = _number(row["wall_seconds"], file, line, "wall_seconds")
        if (i > 0 and it <= last_it) or st < last_steps:
            raise OdepolicyError(f"malformed {file}: line {line} goes back in iteration or steps")
        last_it, last_steps = it, st
        text = row["eval_return_mean"]
        if text in (None, ""):
            continue
        ret = _number(text, file, line, "eval_return_mean")
        if math.isfinite(ret):
            its.append(it)
            steps.append(st)
            secs.append(sec)
            rets.append(ret)
    return Run(
        path=path,
        task=task,
        method=method,
        seed=seed,
        iterations=np.asarray(its, dtype=np.float64),
        env_steps=np.asarray(steps, dtype=np.float64),
        seconds=np.asarray(secs, dtype=np.float64),
        returns=np.asarray(rets, dtype=np.float64),
        final_env_steps=int(last_steps),
        final_iteration=int(last_it),
    )


def _variant(run_dir: RunDir, method: str) -> str:
    """A run with the linear skip path is its own method, `<policy>_skip`: the paper's
    architectures and a variant that adds a linear term are never one curve."""
    from .config import read_yaml

    policy = read_yaml(run_dir.config_file).get("policy")
    kwargs = policy.get("kwargs") if isinstance(policy, dict) else None
    skip = isinstance(kwargs, dict) and kwargs.get("linear_skip") is True
    return f"{method}_skip" if skip else method


# -- grouping and statistics -------------------------------------------------------------------
def _method_key(method: str) -> tuple[int, str]:
    order = list(METHODS)
    return (order.index(method) if method in order else len(order), method)


def group_runs(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs by (task, method), tasks sorted, methods in canonical order, seeds by seed."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.task, run.method), []).append(run)
    keys = sorted(groups, key=lambda k: (k[0], _method_key(k[1])))
    return {
        k: sorted(groups[k], key=lambda r: (r.seed is None, r.seed or 0, str(r.path))) for k in keys
    }


def _band(values: np.ndarray, mean: np.ndarray, band: str):
    if band == "none":
        return None, None
    if band == "std":
        std = values.std(axis=0)
        return mean - std, mean + std
    if band == "bootstrap":
        # Resample whole seeds (curves), the same resample at every grid point.
        rng = np.random.default_rng(BOOTSTRAP_SEED)
        n = values.shape[0]
        idx = rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
        means = values[idx].mean(axis=1)  # [resamples, grid]
        lo, hi = np.percentile(means, [2.5, 97.5], axis=0)
        return np.minimum(lo, mean), np.maximum(hi, mean)
    raise OdepolicyError(f"unknown band {band!r}; choose one of {', '.join(BANDS)}")


def aggregate(runs: list[Run], x: str = "timesteps", band: str = "std") -> list[Curve]:
    """One Curve per (task, method). The grid is the union of the seeds' x values between the
    latest first evaluation and the earliest last one, where every seed has data; each seed is
    linearly interpolated onto it. A group whose seeds do not overlap gets an empty grid."""
    if band not in BANDS:
        raise OdepolicyError(f"unknown band {band!r}; choose one of {', '.join(BANDS)}")
    curves = []
    for (task, method), group in group_runs(runs).items():
        group = [r for r in group if len(r.returns)]
        if not group:
            continue
        xs = [r.xs(x) for r in group]
        start = max(float(v[0]) for v in xs)
        stop = min(float(v[-1]) for v in xs)
        union = np.unique(np.concatenate(xs))
        grid = union[(union >= start) & (union <= stop)]
        values = np.array([np.interp(grid, v, r.returns) for v, r in zip(xs, group)])
        values = values.reshape(len(group), len(grid))
        mean = values.mean(axis=0)
        lo, hi = _band(values, mean, band) if len(grid) else (None, None)
        curves.append(Curve(task, method, len(group), grid, values, mean, lo, hi))
    return curves


def steps_to_threshold(run: Run, threshold: float) -> float | None:
    """Env steps at the first evaluation whose mean return reaches `threshold` (None: never)."""
    hits = np.flatnonzero(run.returns >= threshold)
    return float(run.env_steps[hits[0]]) if len(hits) else None


def summary_table(runs: list[Run], thresholds: dict | None = None) -> list[dict]:
    """Per (task, method): seeds, final and best evaluation return (mean and population std
    across seeds of each seed's last and best evaluation), mean env steps at the end, and for
    tasks with a threshold (ARS's by default) the env steps at which each seed first reached
    it (mean and std over the seeds that did, and how many did), and each method's rank in its
    task by final return (1: the highest mean; equal means share a rank)."""
    thresholds = ARS_THRESHOLDS if thresholds is None else thresholds
    table = []
    for (task, method), group in group_runs(runs).items():
        group = [r for r in group if len(r.returns)]
        if not group:
            continue
        final = np.array([r.returns[-1] for r in group])
        best = np.array([r.returns.max() for r in group])
        steps = np.array([r.final_env_steps for r in group], dtype=np.float64)
        threshold = thresholds.get(task)
        reached = []
        if threshold is not None:
            reached = [s for s in (steps_to_threshold(r, threshold) for r in group) if s]
        table.append(
            {
                "task": task,
                "method": method,
                "seeds": len(group),
                "final_return_mean": float(final.mean()),
                "final_return_std": float(final.std()),
                "best_return_mean": float(best.mean()),
                "best_return_std": float(best.std()),
                "env_steps_mean": float(steps.mean()),
                "threshold": "" if threshold is None else threshold,
                "seeds_reached": len(reached) if threshold is not None else "",
                "steps_to_threshold_mean": float(np.mean(reached)) if reached else "",
                "steps_to_threshold_std": float(np.std(reached)) if reached else "",
            }
        )
    for row in table:
        row["rank"] = 1 + sum(
            other["final_return_mean"] > row["final_return_mean"]
            for other in table
            if other["task"] == row["task"]
        )
    return table


def _steps(value) -> str:
    return "" if value == "" else f"{value / 1e6:.2f}M"


def table_markdown(table: list[dict]) -> str:
    lines = [
        "| task | method | seeds | final return | best return | env steps "
        "| steps to threshold (seeds reached) | rank |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        if r["threshold"] == "":
            reach = ""
        elif r["seeds_reached"]:
            reach = (
                f"{_steps(r['steps_to_threshold_mean'])} ± {_steps(r['steps_to_threshold_std'])} "
                f"({r['seeds_reached']}/{r['seeds']} reached {r['threshold']:.0f})"
            )
        else:
            reach = f"not reached (0/{r['seeds']} reached {r['threshold']:.0f})"
        lines.append(
            f"| {r['task']} | {r['method']} | {r['seeds']} "
            f"| {r['final_return_mean']:.2f} ± {r['final_return_std']:.2f} "
            f"| {r['best_return_mean']:.2f} ± {r['best_return_std']:.2f} "
            f"| {r['env_steps_mean']:.0f} | {reach} | {r['rank']} |"
        )
    return "\n".join(lines) + "\n"


def write_table(table: list[dict], stem: Path) -> tuple[Path, Path]:
    """Write `<stem>_summary.csv` (full precision) and `<stem>_summary.md`."""
    csv_path = stem.parent / f"{stem.name}_summary.csv"
    md_path = stem.parent / f"{stem.name}_summary.md"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_SUMMARY_FIELDS)
        writer.writeheader()
        for row in table:
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    md_path.write_text(table_markdown(table))
    return csv_path, md_path


# -- drawing -----------------------------------------------------------------------------------
def method_style(method: str) -> dict:
    """Colour, label and line width of a method: the same in every figure."""
    label, colour = METHODS.get(method, (method, None))
    if colour is None:
        colour = _EXTRA_COLOURS[zlib.crc32(method.encode()) % len(_EXTRA_COLOURS)]
    wide = method == HIGHLIGHT
    return {
        "color": colour,
        "label": label,
        "linewidth": 2.6 if wide else 1.5,
        "zorder": 3 if wide else 2,
    }


def _figure_paths(out) -> tuple[Path, Path]:
    out = Path(out)
    if out.suffix.lower() in (".png", ".pdf"):
        out = out.with_suffix("")
    return out.parent / f"{out.name}.png", out.parent / f"{out.name}.pdf"


def plot_runs(
    runs: list[Run],
    out,
    x: str = "timesteps",
    band: str = "std",
    references=None,
    budgets=None,
) -> tuple[Path, Path]:
    """Draw one panel per task, one curve per method; write a PNG and a PDF beside it.
    `references`: {task: [(return, label), ...]}, drawn dotted across that task's panel (the
    campaign report's zero action, on tasks without an ARS threshold). `budgets`: {task: env
    steps}: on the env-steps axis, that task's panel spans 0 to at least its budget, so runs
    under way show how far they have come (the campaign report)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if x not in X_AXES:
        raise OdepolicyError(f"unknown x axis {x!r}; choose one of {', '.join(X_AXES)}")
    curves = aggregate(runs, x, band)
    if not curves:
        raise OdepolicyError("no run has an evaluation yet; nothing to plot")
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    tasks = sorted({c.task for c in curves})
    cols = min(3, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig = Figure(figsize=(4.6 * cols + 0.4, 3.5 * rows + 0.9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(tasks) :]:
        ax.set_visible(False)
    handles: dict[str, object] = {}
    for task, ax in zip(tasks, axes.flat):
        for curve in (c for c in curves if c.task == task):
            style = method_style(curve.method)
            label = style.pop("label")
            if not len(curve.grid):
                print(
                    f"odepolicy: note: the seeds of {task} {curve.method} do not overlap in {x}",
                    file=sys.stderr,
                )
            marker = "o" if len(curve.grid) == 1 else None
            (line,) = ax.plot(curve.grid, curve.mean, label=label, marker=marker, **style)
            handles.setdefault(curve.method, line)  # one legend entry per method
            if curve.lo is not None:
                ax.fill_between(
                    curve.grid, curve.lo, curve.hi, color=style["color"], alpha=0.2, linewidth=0
                )
        if task in ARS_THRESHOLDS:
            ax.axhline(ARS_THRESHOLDS[task], color="black", linestyle="--", linewidth=1)
            ax.annotate(
                f"ARS threshold {ARS_THRESHOLDS[task]:.0f}",
                (0.01, ARS_THRESHOLDS[task]),
                xycoords=("axes fraction", "data"),
                fontsize="x-small",
                va="bottom",
            )
        for value, text in (references or {}).get(task, []):
            ax.axhline(value, color="dimgray", linestyle=":", linewidth=1.2)
            ax.annotate(
                text,
                (0.01, value),
                xycoords=("axes fraction", "data"),
                fontsize="x-small",
                va="bottom",
                color="dimgray",
            )
        ax.set_title(task)
        ax.set_xlabel(X_AXES[x])
        ax.set_ylabel("evaluation return")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
        if x == "timesteps":
            ax.xaxis.set_major_formatter(FuncFormatter(_millions))
            if task in (budgets or {}):
                ax.set_xlim(*panel_span([c for c in curves if c.task == task], budgets[task]))
    # Below the panels, where no curve or title can run into it (constrained layout makes room).
    fig.legend(
        handles=list(handles.values()),
        loc="outside lower center",
        ncol=min(len(handles), max(2, 2 * cols)),
        fontsize="small",
    )
    fig.suptitle(f"mean over seeds; {_BAND_CAPTIONS[band]}", fontsize="small")
    png, pdf = _figure_paths(out)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    fig.savefig(pdf, metadata={"CreationDate": None})  # byte-identical on a re-run
    return png, pdf


def panel_span(curves: list[Curve], budget: float) -> tuple[float, float]:
    """The env-steps span of a panel with a budget: 0 to the budget or the furthest curve,
    whichever is further, with a 2% margin."""
    reach = max((float(c.grid.max()) for c in curves if len(c.grid)), default=0.0)
    return 0.0, 1.02 * max(float(budget), reach)


def _millions(value: float, _pos=None) -> str:
    """Tick labels in readable units: 0, 0.5M, 1M, 250k."""
    if value == 0:
        return "0"
    if abs(value) >= 1e6:
        return f"{value / 1e6:g}M"
    if abs(value) >= 1e3:
        return f"{value / 1e3:g}k"
    return f"{value:g}"


def plot_command(args) -> int:
    """`odepolicy plot`: figure, summary table on stdout and beside the figure."""
    runs = [load_run(p) for p in find_runs(args.runs)]
    usable = []
    for run in runs:
        if len(run.returns):
            usable.append(run)
        else:
            print(f"odepolicy: note: skipping {run.path}: no evaluation yet", file=sys.stderr)
    if not usable:
        raise OdepolicyError("no run has an evaluation yet; nothing to plot")
    png, pdf = plot_runs(usable, args.out, args.x, args.band)
    table = summary_table(usable)
    stem = Path(args.table) if args.table else png.with_suffix("")
    if stem.suffix.lower() in (".csv", ".md"):
        stem = stem.with_suffix("")
    csv_path, md_path = write_table(table, stem)
    print(table_markdown(table), end="")
    print(f"wrote {png}, {pdf}, {csv_path}, {md_path}")
    return 0
