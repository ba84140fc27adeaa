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
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import OdepolicyError
from .config import Config, build_typed, load_config, read_yaml_mapping
from .rundir import RunDir

__all__ = [
    "SweepFile",
    "SweepEntry",
    "SweepRun",
    "load_sweep",
    "plan_runs",
    "run_status",
    "execute",
    "sweep_command",
]


@dataclass
class SweepEntry:
    path: str = ""
    set: list[str] = field(default_factory=list)


@dataclass
class SweepFile:
    """The keys of a sweep file, checked by the same typed builder as run configs."""

    out: str = "runs"
    seeds: int | list[int] = 1
    parallel: int = 1
    set: list[str] = field(default_factory=list)
    configs: list[str | SweepEntry] = field(default_factory=list)
    grid: dict[str, list] = field(default_factory=dict)


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


def _check_sets(values: list[str], what: str) -> list[str]:
    for v in values:
        if "=" not in v:
            raise OdepolicyError(f"{what} entry {v!r} is not key=value")
    return list(values)


def load_sweep(path: str | Path) -> dict:
    """Read and check a sweep file; OdepolicyError names what is wrong."""
    path = Path(path)
    data = read_yaml_mapping(path, "sweep file", "out, seeds, configs, ...")
    if isinstance(data.get("set"), str):  # a lone string is accepted where a list is expected
        data["set"] = [data["set"]]
    try:
        sweep = build_typed(SweepFile, data, kind="sweep key")
        if not sweep.configs:
            raise OdepolicyError("'configs' must be a non-empty list")
        entries = []
        for i, entry in enumerate(sweep.configs):
            if isinstance(entry, str):
                entry = SweepEntry(path=entry)
            if not entry.path:
                raise OdepolicyError(f"configs[{i}] needs a 'path'")
            entries.append(
                {
                    "path": _find_config(entry.path, path.parent),
                    "set": _check_sets(entry.set, f"configs[{i}].set"),
                }
            )
        seeds = sweep.seeds
        if (isinstance(seeds, int) and seeds < 1) or (isinstance(seeds, list) and not seeds):
            raise OdepolicyError("'seeds' must be a positive integer or a list of integers")
        if sweep.parallel < 1:
            raise OdepolicyError("'parallel' must be a positive integer")
        if not all(isinstance(v, list) and v for v in sweep.grid.values()):
            raise OdepolicyError("'grid' must map config keys to non-empty lists of values")
        if not sweep.out:
            raise OdepolicyError("'out' must be a folder path")
        sets = _check_sets(sweep.set, "set")
    except OdepolicyError as exc:
        raise OdepolicyError(f"sweep file {path}: {exc}") from None
    return {
        "path": path,
        "out": sweep.out,
        "seeds": list(range(seeds)) if isinstance(seeds, int) else list(seeds),
        "parallel": sweep.parallel,
        "set": sets,
        "configs": entries,
        "grid": sweep.grid,
    }


def _find_config(name: str, base: Path) -> Path:
    for candidate in (base / name, Path(name)):
        if candidate.is_file():
            return candidate
    raise OdepolicyError(f"config {name!r} not found (relative to {base} or the CWD)")


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


_ACTIONS = {"finished": "skip", "resumable": "resume", "empty": "train"}


def run_status(run: SweepRun, out: Path) -> str:
    """What to do with a run: 'skip' (finished), 'resume' or 'train' (no checkpoint yet)."""
    return _ACTIONS[RunDir(out / run.name).status(run.config)]


def cluster_cpus(address: str) -> int:
    """CPUs of the cluster at `address`; a dead address fails fast, naming where it came from."""
    import ray

    from .backends.ray_backend import init_ray

    init_ray(address)  # never passes num_cpus when joining
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


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(var, "1")  # parallelism comes from processes (DESIGN principle 4)
    return env


class _Launcher:
    """Starts run processes and remembers the live ones, so an interrupt can stop them."""

    def __init__(self, out: Path, quiet: bool):
        self.out, self.quiet = out, quiet
        self.env = child_env()
        self.live: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def run(self, run: SweepRun, action: str) -> None:
        logs = self.out / "_logs"
        logs.mkdir(parents=True, exist_ok=True)
        cmd = _command(run, action, self.out)
        with open(logs / f"{run.name}.log", "w") as log:
            log.write(" ".join(cmd) + "\n")
            log.flush()
            with self.lock:
                if self.stopping:
                    return
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env)
                self.live.add(proc)
            if not self.quiet:
                print(f"[sweep] {action:6s} {run.name}", flush=True)
            proc.wait()
            with self.lock:
                self.live.discard(proc)
        if proc.returncode == 0:
            run.status = "resumed" if action == "resume" else "trained"
        else:
            run.status, run.error = "failed", _last_line(logs / f"{run.name}.log")
        if not self.quiet:
            print(f"[sweep] {run.status:7s} {run.name} {run.error}".rstrip(), flush=True)

    def stop(self) -> None:
        """Terminate the running children; their checkpoints stay for the next launch."""
        with self.lock:
            self.stopping = True
            procs = list(self.live)
        stop_processes(procs)


def stop_processes(procs: list[subprocess.Popen]) -> None:
    """Terminate child processes, waiting up to 30 s each before killing it."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def execute(runs: list[SweepRun], out: Path, parallel: int, quiet: bool) -> None:
    """Run the pending runs, `parallel` processes at a time; fills in each run's status."""
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
    launcher = _Launcher(out, quiet)
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="sweep")
    try:
        futures = [pool.submit(launcher.run, run, action) for run, action in todo]
        for future in as_completed(futures):
            future.result()
    finally:
        launcher.stop()  # no-op when every run has finished
        pool.shutdown(wait=True, cancel_futures=True)


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def summarize(runs: list[SweepRun], out: Path) -> list[dict]:
    rows = []
    for run in runs:
        run_dir = RunDir(out / run.name)
        try:
            counters = run_dir.checkpoint_counters()
        except OdepolicyError:
            counters = None
        try:
            ret = run_dir.progress.final_eval()
        except OdepolicyError:
            ret = None
        rows.append(
            {
                "run": run.name,
                "status": run.status,
                "iterations": counters["iteration"] if counters else 0,
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
        workers = max(1, cluster_cpus(args.address) // parallel)
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
