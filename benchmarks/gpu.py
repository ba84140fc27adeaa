"""`physics: warp` on a GPU: throughput and time to threshold, written to benchmarks/gpu.md.

    python benchmarks/gpu.py              # a few minutes on one GPU
    python benchmarks/gpu.py --quick      # 1k worlds only, a short learning run: a smoke test

Measures, on the first CUDA device:

1. ES iteration env steps/s (the trainer's own `iterate`: ask, the population's episodes as
   MuJoCo Warp worlds with the ISO-ODEtoODE policy on the device, merge statistics, tell) on
   HalfCheetah-v5 and Humanoid-v5 at populations of 1k, 8k and 32k worlds, and MuJoCo Warp's
   own bare stepping of as many worlds (zero controls, no policy, no task), and their ratio.
   Humanoid episodes end early (falls), so its ES rate counts only live worlds' steps while the
   bare rate counts every world's: the ratio understates its efficiency.
2. Wall time for HalfCheetah-v5 to reach 3430 (ARS's threshold) with the tuned linear preset
   on seed 1, on warp worlds, against the CPU path's committed run of the same preset and seed
   (results/learning/presets-HalfCheetah-v5-linear_s1: 2 shared cores).

Without CUDA (or without the warp extra) it says so and exits with status 1, writing nothing.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 3430.0
CPU_RUN = ROOT / "results/learning/presets-HalfCheetah-v5-linear_s1/progress.csv"
PRESET = ROOT / "experiments/presets/HalfCheetah-v5/linear.yaml"


def _check_gpu() -> str | None:
    """None when a CUDA device and the warp extra are there, else why not."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA device is visible to torch; this benchmark needs a GPU"
    try:
        import mujoco_warp  # noqa: F401
        import warp as wp
    except ImportError:
        return 'MuJoCo Warp is not installed: pip install -e ".[warp]"'
    wp.init()
    if wp.get_cuda_device_count() < 1:
        return "Warp sees no CUDA device (driver too old for warp-lang?)"
    return None


def throughput(envs, populations, horizon: int) -> list[dict]:
    from odepolicy.bench import warp_bare_steps_per_second, warp_iteration_rate
    from odepolicy.config import Config, PolicyConfig
    from odepolicy.es import ESSettings

    rows = []
    for env_id in envs:
        for n in populations:
            t0 = time.perf_counter()
            bare = warp_bare_steps_per_second(env_id, n, "cuda")
            config = Config(
                env=env_id,
                policy=PolicyConfig("iso_odetoode"),
                es=ESSettings(directions=n // 2),
                horizon=horizon,
                physics="warp",
                device="cuda",
            ).validate()
            es = warp_iteration_rate(config, iterations=1)
            row = {"env": env_id, "worlds": n, "bare": bare, **es}
            row["wall"] = time.perf_counter() - t0
            print(
                f"{env_id} {n} worlds: bare {bare:,.0f} steps/s, ES iteration "
                f"{es['rate']:,.0f} steps/s ({es['rate'] / bare:.3f})",
                flush=True,
            )
            rows.append(row)
    return rows


class _WallCap:
    """A logger that ends a run after `seconds` of wall time (at the end of an iteration)."""

    def __init__(self, seconds: float):
        self.seconds, self.trainer, self.t0 = seconds, None, time.perf_counter()

    def start(self, trainer) -> None:
        self.trainer, self.t0 = trainer, time.perf_counter()

    def log(self, row: dict) -> None:
        if time.perf_counter() - self.t0 > self.seconds:
            self.trainer.config.iterations = row["iteration"]

    def close(self) -> None:
        pass


def time_to_threshold(out: Path, cap_seconds: float, max_env_steps: int) -> dict:
    from odepolicy.config import load_config
    from odepolicy.rundir import RunDir
    from odepolicy.trainer import train

    overrides = [
        "physics=warp", "device=cuda", "seed=1", f"target_return={THRESHOLD}",
        f"max_env_steps={max_env_steps}", "iterations=1000000",
    ]  # fmt: skip
    config = load_config(PRESET, overrides)
    t0 = time.perf_counter()
    train(config, out, "gpu-HalfCheetah-v5-linear_s1", False, True, [_WallCap(cap_seconds)])
    total = time.perf_counter() - t0
    rows = RunDir(out / "gpu-HalfCheetah-v5-linear_s1").progress.read()
    return {"total": total, **_first_at_threshold(rows), "last": rows[-1] if rows else None}


def _first_at_threshold(rows) -> dict:
    for r in rows:
        value = r.get("eval_return_mean")
        if value not in (None, "") and float(value) >= THRESHOLD:
            return {"reached": True, "wall": float(r["wall_seconds"]),
                    "steps": int(r["env_steps"]), "eval": float(value)}  # fmt: skip
    return {"reached": False}


def cpu_reference() -> dict:
    if not CPU_RUN.is_file():
        return {"reached": False}
    with open(CPU_RUN) as f:
        return _first_at_threshold(list(csv.DictReader(f)))


def report(rows, learn, cpu, args) -> str:
    import torch
    import warp as wp

    import odepolicy

    gpu = torch.cuda.get_device_name(0)
    lines = [
        "# physics: warp on a GPU",
        "",
        f"Measured by `python benchmarks/gpu.py{' --quick' if args.quick else ''}` on "
        f"{datetime.date.today()}: {gpu}, {platform.processor() or platform.machine()}, "
        f"odepolicy {odepolicy.__version__}, torch {torch.__version__}, warp {wp.__version__}.",
        "",
        "## Throughput",
        "",
        f"ISO-ODEtoODE (hidden 16), antithetic populations, horizon {args.horizon}; one timed "
        "ES iteration after an untimed one that builds the worlds and captures the CUDA graph. "
        "Bare: MuJoCo Warp's own stepping of as many worlds (frame_skip `mjw.step`s per env "
        "step, zero controls). Humanoid's ES rate counts live worlds only (falls end episodes).",
        "",
        "| task | worlds | bare MuJoCo Warp, env steps/s | ES iteration, env steps/s | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['env']} | {r['worlds']:,} | {r['bare']:,.0f} | {r['rate']:,.0f} | "
            f"{r['rate'] / r['bare']:.3f} |"
        )
    lines += ["", "## HalfCheetah-v5 to 3430", ""]

    def cell(x):
        if not x.get("reached"):
            return "not reached", "", ""
        return f"{x['wall']:.0f} s", f"{x['steps']:,}", f"{x['eval']:.0f}"

    lines += [
        "Linear preset (experiments/presets/HalfCheetah-v5/linear.yaml), seed 1; wall time at "
        "the first centre evaluation at or above 3430 (`wall_seconds` in progress.csv).",
        "",
        "| engine | wall time | env steps | evaluation |",
        "|---|---:|---:|---:|",
        "| warp on the GPU | {} | {} | {} |".format(*cell(learn)),
        "| mujoco on CPU (committed run, 2 shared cores) | {} | {} | {} |".format(*cell(cpu)),
        "",
    ]
    if not learn.get("reached"):
        last = learn.get("last") or {}
        lines.append(
            f"The warp run stopped at {int(last.get('env_steps', 0)):,} env steps after "
            f"{learn['total']:.0f} s without reaching 3430 (float32 physics: not the same "
            "episodes as the CPU path's)."
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "gpu.md"))
    parser.add_argument("--horizon", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="1k worlds, a 60 s learning run")
    parser.add_argument("--cap", type=float, default=240.0, help="learning run's wall cap, s")
    args = parser.parse_args(argv)
    why = _check_gpu()
    if why:
        print(f"benchmarks/gpu.py: {why}; nothing written", file=sys.stderr)
        return 1
    populations = [1024] if args.quick else [1024, 8192, 32768]
    rows = throughput(("HalfCheetah-v5", "Humanoid-v5"), populations, args.horizon)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        cap = 60.0 if args.quick else args.cap
        learn = time_to_threshold(Path(tmp), cap, 3_000_000)
    text = report(rows, learn, cpu_reference(), args)
    Path(args.out).write_text(text)
    print(text)
    return 0 if all(math.isfinite(r["rate"]) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
