"""`odepolicy sweep`: every (config, grid point, seed) of a sweep file, restartable.

A sweep file is YAML:

    out: runs/figure2          # parent folder of the run folders (--out overrides)
    seeds: 3                   # seeds 0..2, or an explicit list such as [0, 5, 7] (--seeds N)
    parallel: 2                # runs at a time (--parallel K); default 1
    set: ["iterations=50"]     # optional overrides for every run (as `train --set`)
    configs:                   # config files, relative to the sweep file's folder or the CWD
      - experiments/swimmer.yaml
      - {path: experiments/halfcheetah.yaml, set: ["horizon=500"]}   # with its own overrides
    grid:                      # optional: each combination crossed with every config
      policy.name: [iso_odetoode, base_ode]

Each run gets a deterministic folder name: the config's path (relative to the sweep file's
folder, or the CWD, without `.yaml`, `/` turned into `-`), then `key-value` for each grid key,
then `_s{seed}`, e.g. `swimmer_policy.name-base_ode_s1`. Each run is its own process,
`python -m odepolicy.cli train CONFIG --set ... --set seed=S --out OUT --name NAME --quiet`,
so on a cluster each run is its own Ray driver with its own actors. With `--address`, runs use
`backend.name=ray`, that address and a fair share of the cluster's CPUs as `backend.workers`
(cluster CPUs // parallel, at least 1).

Re-launching a sweep is safe: a run whose `checkpoints/latest.npz` has reached its config's
`iterations` (or `max_env_steps`) is skipped, a run with an earlier checkpoint is resumed
(`train --resume`), and a folder without a checkpoint is started again. At the end a table
(run, status, iterations, final evaluation return) is printed and written to
`OUT/sweep_summary.csv`; the exit status is 1 if any run failed. Each run's output is kept in
`OUT/_logs/NAME.log`.
"""

from __future__ import annotations

import csv
import itertools
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import OdepolicyError
from .checkpoint import read_checkpoint
from .config import Config, load_config, read_yaml_mapping

__all__ = ["SweepRun", "load_sweep", "plan_runs", "run_status", "sweep_command"]

_KEYS = {"out", "seeds", "parallel", "set", "configs", "grid"}


@dataclass
class SweepRun:
    name: str
    config_path: Path
    overrides: list[str]  # every --set of the run, seed included
    config: Config  # the resolved config (for the run's budget)
    status: str = "pending"  # skipped | resumed | trained | failed
    iterations: int = 0
    eval_return: float | None = None
    error: str = ""
    extra_args: list[str] = field(default_factory=list)


def _string_list(value, what: str, path: Path) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise OdepolicyError(f"sweep file {path}: {what} must be a list of 'key=value' strings")
    for v in value:
        if "=" not in v:
            raise OdepolicyError(f"sweep file {path}: {what} entry {v!r} is not key=value")
    return list(value)


def load_sweep(path: str | Path) -> dict:
    """Read and check a sweep file; OdepolicyError names what is wrong."""
    path = Path(path)
    data = read_yaml_mapping(path, "sweep file", "out, seeds, configs, ...")
    unknown = set(data) - _KEYS
    if unknown:
        raise OdepolicyError(
            f"sweep file {path}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
            f"known: {', '.join(sorted(_KEYS))}"
        )
    configs = data.get("configs")
    if not isinstance(configs, list) or not configs:
        raise OdepolicyError(f"sweep file {path}: 'configs' must be a non-empty list")
    entries = []
    for i, entry in enumerate(configs):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise OdepolicyError(
                f"sweep file {path}: configs[{i}] must be a path or a mapping with 'path'"
            )
        extra = set(entry) - {"path", "set"}
        if extra:
            raise OdepolicyError(
                f"sweep file {path}: configs[{i}] has unknown key(s) {', '.join(sorted(extra))}"
            )
        entries.append(
            {
                "path": _find_config(entry["path"], path.parent, path),
                "set": _string_list(entry.get("set"), f"configs[{i}].set", path),
            }
        )
    seeds = data.get("seeds", 1)
    if isinstance(seeds, bool) or not (
        (isinstance(seeds, int) and seeds >= 1)
        or (
            isinstance(seeds, list)
            and seeds
            and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        )
    ):
        raise OdepolicyError(
            f"sweep file {path}: 'seeds' must be a positive integer or a list of integers"
        )
    parallel = data.get("parallel", 1)
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise OdepolicyError(f"sweep file {path}: 'parallel' must be a positive integer")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and v for k, v in grid.items()
    ):
        raise OdepolicyError(
            f"sweep file {path}: 'grid' must map config keys to non-empty lists of values"
        )
    out = data.get("out", "runs")
    if not isinstance(out, str) or not out:
        raise OdepolicyError(f"sweep file {path}: 'out' must be a folder path")
    return {
        "path": path,
        "out": out,
        "seeds": list(range(seeds)) if isinstance(seeds, int) else list(seeds),
        "parallel": parallel,
        "set": _string_list(data.get("set"), "set", path),
        "configs": entries,
        "grid": grid,
    }


def _find_config(name: str, base: Path, sweep_path: Path) -> Path:
    for candidate in (base / name, Path(name)):
        if candidate.is_file():
            return candidate
    raise OdepolicyError(
        f"sweep file {sweep_path}: config {name!r} not found (relative to {base} or the CWD)"
    )


def _config_label(config_path: Path, base: Path) -> str:
    """The config's path without suffix, relative to the sweep folder or CWD, '/' -> '-'."""
    resolved = config_path.resolve()
    for root in (base.resolve(), Path.cwd().resolve()):
        try:
            rel = resolved.relative_to(root)
            break
        except ValueError:
            continue
    else:
        rel = Path(config_path.name)
    return "-".join(rel.with_suffix("").parts)


def _yaml_value(value) -> str:
    """A value as one line of YAML, as `--set key=value` parses it."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()
    return text.removesuffix("...").strip()


def _value_label(value) -> str:
    text = value if isinstance(value, str) else _yaml_value(value)
    return "".join(c if c.isalnum() or c in "._+-" else "_" for c in text)


def plan_runs(sweep: dict, seeds: list[int], extra_sets: list[str]) -> list[SweepRun]:
    """Every (config, grid point, seed) with its name, overrides and resolved config."""
    base = sweep["path"].parent
    keys = list(sweep["grid"])
    points = list(itertools.product(*(sweep["grid"][k] for k in keys)))
    runs, names = [], {}
    for entry in sweep["configs"]:
        label = _config_label(entry["path"], base)
        for point in points:
            grid_sets = [f"{k}={_yaml_value(v)}" for k, v in zip(keys, point)]
            grid_label = "".join(f"_{k}-{_value_label(v)}" for k, v in zip(keys, point))
            for seed in seeds:
                name = f"{label}{grid_label}_s{seed}"
                if name in names:
                    raise OdepolicyError(
                        f"sweep file {sweep['path']}: two runs would be named {name!r} "
                        f"({names[name]} and {entry['path']})"
                    )
                names[name] = entry["path"]
                overrides = [
                    *sweep["set"],
                    *entry["set"],
                    *grid_sets,
                    *extra_sets,
                    f"seed={seed}",
                ]
                try:
                    config = load_config(entry["path"], overrides)
                except OdepolicyError as exc:
                    raise OdepolicyError(f"sweep run {name}: {exc}") from None
                runs.append(SweepRun(name, entry["path"], overrides, config))
    return runs


def _checkpoint_progress(run_dir: Path) -> tuple[int, int] | None:
    """(iteration, env_steps) of the run's latest checkpoint; None when there is none."""
    latest = run_dir / "checkpoints" / "latest.npz"
    if not latest.is_file():
        return None
    _, meta = read_checkpoint(latest)
    counters = meta.get("counters", {})
    return int(counters.get("iteration", 0)), int(counters.get("env_steps", 0))


def run_status(run: SweepRun, out: Path) -> str:
    """What to do with a run: 'skip', 'resume' or 'train'."""
    progress = _checkpoint_progress(out / run.name)
    if progress is None:
        return "train"
    iteration, env_steps = progress
    cfg = run.config
    if iteration >= cfg.iterations or (
        cfg.max_env_steps is not None and env_steps >= cfg.max_env_steps
    ):
        return "skip"
    return "resume"


def _final_eval(run_dir: Path) -> float | None:
    path = run_dir / "progress.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as fh:
        values = [r.get("eval_return_mean") for r in csv.DictReader(fh)]
    values = [v for v in values if v not in (None, "")]
    return float(values[-1]) if values else None


def _cluster_cpus(address: str) -> int:
    import ray

    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise OdepolicyError(f"cannot join Ray cluster at {address}: {exc}") from None
    try:
        return int(ray.cluster_resources().get("CPU", 1))
    finally:
        ray.shutdown()


def _command(run: SweepRun, action: str, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "odepolicy.cli", "train"]
    if action == "resume":
        # The run's own config.yaml already holds its overrides; re-apply the budget (the sweep
        # may have raised it) and where to run.
        budget = [f"iterations={run.config.iterations}"]
        if run.config.max_env_steps is not None:
            budget.append(f"max_env_steps={run.config.max_env_steps}")
        sets = budget + run.extra_args
        cmd += ["--resume", str(out / run.name)]
    else:
        sets = run.overrides
        cmd += [str(run.config_path), "--out", str(out), "--name", run.name, "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    return cmd + ["--quiet"]


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(var, "1")  # parallelism comes from processes (DESIGN principle 4)
    return env


def execute(runs: list[SweepRun], out: Path, parallel: int, quiet: bool) -> None:
    """Run the pending runs, `parallel` processes at a time; fills in each run's status."""
    logs = out / "_logs"
    todo = []
    for run in runs:
        try:
            action = run_status(run, out)
        except OdepolicyError as exc:  # a damaged checkpoint: leave the folder alone
            run.status, run.error = "failed", str(exc)
            continue
        if action == "skip":
            run.status = "skipped"
        else:
            todo.append((run, action))
    active: list[tuple[SweepRun, str, subprocess.Popen, object]] = []
    env = _child_env()
    try:
        while todo or active:
            while todo and len(active) < parallel:
                run, action = todo.pop(0)
                logs.mkdir(parents=True, exist_ok=True)
                log = open(logs / f"{run.name}.log", "w")
                cmd = _command(run, action, out)
                log.write(" ".join(cmd) + "\n")
                log.flush()
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                active.append((run, action, proc, log))
                if not quiet:
                    print(f"[sweep] {action:6s} {run.name}", flush=True)
            time.sleep(0.2)
            for item in list(active):
                run, action, proc, log = item
                if proc.poll() is None:
                    continue
                active.remove(item)
                log.close()
                if proc.returncode == 0:
                    run.status = "resumed" if action == "resume" else "trained"
                else:
                    run.status = "failed"
                    run.error = _last_line(logs / f"{run.name}.log")
                if not quiet:
                    print(f"[sweep] {run.status:7s} {run.name} {run.error}".rstrip(), flush=True)
    finally:
        for _, _, proc, _log in active:  # interrupted: stop the children, keep checkpoints
            proc.terminate()
        for _, _, proc, log in active:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def summarize(runs: list[SweepRun], out: Path) -> list[dict]:
    rows = []
    for run in runs:
        run_dir = out / run.name
        try:
            progress = _checkpoint_progress(run_dir)
        except OdepolicyError:
            progress = None
        ret = _final_eval(run_dir)
        rows.append(
            {
                "run": run.name,
                "status": run.status,
                "iterations": progress[0] if progress else 0,
                "target_iterations": run.config.iterations,
                "eval_return": "" if ret is None else f"{ret:.2f}",
                "error": run.error,
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "sweep_summary.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _print_table(rows: list[dict]) -> None:
    cols = ["run", "status", "iterations", "eval_return"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
    for r in rows:
        if r["error"]:
            print(f"{r['run']}: {r['error']}")


def sweep_command(args) -> int:
    sweep = load_sweep(args.sweep)
    seeds = list(range(args.seeds)) if args.seeds is not None else sweep["seeds"]
    if not seeds:
        raise OdepolicyError("--seeds must be at least 1")
    parallel = args.parallel if args.parallel is not None else sweep["parallel"]
    if parallel < 1:
        raise OdepolicyError("--parallel must be at least 1")
    out = Path(args.out if args.out is not None else sweep["out"])
    extra: list[str] = []
    if args.address:
        workers = max(1, _cluster_cpus(args.address) // parallel)
        extra = [
            "backend.name=ray",
            f"backend.address={args.address}",
            f"backend.workers={workers}",
        ]
    runs = plan_runs(sweep, seeds, extra)
    for run in runs:
        run.extra_args = extra
    if not args.quiet:
        print(f"[sweep] {len(runs)} runs in {out}, {parallel} at a time", flush=True)
    execute(runs, out, parallel, args.quiet)
    rows = summarize(runs, out)
    _print_table(rows)
    return 1 if any(r["status"] == "failed" for r in rows) else 0
