"""Command line: odepolicy train | evaluate | plot | sweep | tune | campaign | bench | export.

Every user error (bad config, unknown id, damaged file) is an OdepolicyError: printed on one line
as `odepolicy: error: ...` with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

# One BLAS / OpenMP thread unless the user chose otherwise, set before numpy loads its BLAS:
# parallelism comes from processes (DESIGN principle 4). The driver's BLAS work is tiny (the
# ES update's 16 x 16 exponentials), and a multi-threaded BLAS spinning up threads for it on
# busy cores cost 3.5-7.8 ms per scipy.linalg.expm here, against 15 us on one thread.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from . import OdepolicyError, __version__  # noqa: E402
from .bench import (  # noqa: E402
    DEFAULT_ENV,
    DEFAULT_PERTURBATIONS,
    DEFAULT_POLICY,
    WARP_POPULATIONS,
)
from .checkpoint import CHECKPOINTS  # noqa: E402
from .config import BACKENDS, PHYSICS  # noqa: E402
from .plotting import BANDS, X_AXES  # noqa: E402

__all__ = ["main", "build_parser"]


def _add_set_option(p, what: str) -> None:
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"{what}; repeatable",
    )


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a policy with Riemannian ES",
        description="Train a policy from a YAML config. A run folder is created under --out "
        "holding config.yaml, progress.csv, checkpoints/ and meta.json. `--set physics=warp` "
        "evaluates each iteration's whole population as MuJoCo Warp worlds on the run's device "
        "(`--set device=cuda` for a GPU, cpu for Warp's CPU device; needs pip install -e "
        '".[warp]"; HalfCheetah, Hopper, Walker2d, Swimmer and Humanoid v5); the default '
        "physics=mujoco steps Gymnasium / dm_control on CPU workers.",
    )
    p.add_argument(
        "config",
        nargs="?",
        help="YAML config (see experiments/); omit with --resume, or give --env and --policy "
        "to start from the tuned preset of that pair",
    )
    p.add_argument(
        "--env",
        help="environment id; without CONFIG, start from the preset for (--env, --policy) "
        "(experiments/presets/<env>/<policy>.yaml) or the library defaults",
    )
    p.add_argument("--policy", help="policy name (see odepolicy.policies.POLICIES)")
    _add_set_option(p, "override a config key, dotted for sections (e.g. es.sigma=0.05)")
    p.add_argument("--out", default="runs", help="parent folder of the run folder (default: runs)")
    p.add_argument("--name", help="run folder name (default: <env>_<policy>_s<seed>_<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing run folder of the same name"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a saved policy (returns, robustness to noise, video)",
        description="Run the unperturbed centre policy of a checkpoint with its frozen observation "
        "normaliser, its episodes batched in lockstep as in training, and print the return "
        "(mean +- std, min, max) and episode lengths. With the default seeds this reproduces the "
        "trainer's own evaluation. A video follows the agent with the model's tracking camera.",
    )
    p.add_argument(
        "path",
        help="run folder (uses checkpoints/<--checkpoint>.npz), a checkpoint file, or a policy "
        "from `odepolicy export` (.onnx, run by onnxruntime on CPU, or its npz): the same "
        "episodes, seeds and lockstep batches, so the numbers compare",
    )
    p.add_argument(
        "--checkpoint",
        choices=list(CHECKPOINTS),
        default=None,
        help="which checkpoint of a run folder: latest (default: the newest state) or best "
        "(the centre with the best evaluation during training)",
    )
    p.add_argument(
        "--episodes", type=int, default=None, help="episodes (default: run's eval_episodes)"
    )
    p.add_argument(
        "--seed", type=int, default=None, help="seed of the first episode (default: the run's)"
    )
    p.add_argument(
        "--env", help="evaluate on another env id with the same observation/action sizes"
    )
    p.add_argument("--horizon", type=int, default=None, help="steps per episode (default: run's)")
    p.add_argument(
        "--physics",
        choices=list(PHYSICS),
        default="mujoco",
        help="mujoco (default: Gymnasium on CPU) or warp (MuJoCo Warp worlds on --device, as a "
        "physics=warp run evaluates; needs the warp extra)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="with --physics warp: cpu, cuda or auto (default: the run's device)",
    )
    p.add_argument(
        "--obs-noise",
        type=float,
        default=0.0,
        metavar="S",
        help="add Gaussian noise of std S to every observation (raw units), seeded per episode",
    )
    p.add_argument(
        "--action-noise",
        type=float,
        default=0.0,
        metavar="S",
        help="add Gaussian noise of std S to every action (then clipped to the action box)",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON record on stdout instead of text"
    )
    p.add_argument(
        "--video", metavar="FILE", help="render the first episode to FILE (.mp4 or .gif)"
    )
    p.add_argument(
        "--video-episodes",
        type=int,
        default=1,
        metavar="K",
        help="render the first K evaluated episodes, one after another (default 1)",
    )
    p.add_argument(
        "--camera",
        metavar="NAME|ID",
        default=None,
        help="camera of the model by name or id, -1 for the free camera (default: one that "
        "follows the agent, e.g. 'track')",
    )
    p.add_argument("--fps", type=int, default=30, help="video frames per second (default 30)")
    p.add_argument(
        "--video-every",
        type=int,
        default=1,
        metavar="K",
        help="keep every K-th rendered frame (default 1: all); with --fps lowered by K the "
        "video keeps real time in a smaller file",
    )
    p.add_argument("--width", type=int, default=480, help="video width in pixels (default 480)")
    p.add_argument("--height", type=int, default=360, help="video height in pixels (default 360)")
    p.add_argument("--quiet", action="store_true", help="no progress bar while rendering")


def _add_plot(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="reward curves from run folders",
        description="Group run folders by task and method; one panel per task, one curve per "
        "method (mean and band across seeds). Writes PNG and PDF plus a summary table.",
    )
    p.add_argument("runs", nargs="+", help="run folders, or folders containing run folders")
    p.add_argument(
        "--out", default="reward_curves.png", help="output figure (PNG; a PDF beside it)"
    )
    p.add_argument(
        "--x",
        choices=list(X_AXES),
        default="timesteps",
        help="x axis (default: env steps)",
    )
    p.add_argument(
        "--band",
        choices=list(BANDS),
        default="std",
        help="band around the mean: std across seeds, bootstrap 95%% interval, or none",
    )
    p.add_argument("--table", help="summary table path stem (default: beside --out)")


def _add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="run many (config, seed) runs, locally or on a Ray cluster",
        description="Run every (config, seed) of a sweep file. Finished runs are skipped and "
        "unfinished ones resumed from their checkpoints, so a sweep can simply be re-launched.",
    )
    p.add_argument("sweep", help="sweep YAML (see experiments/figure2.yaml)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (overrides the file)")
    p.add_argument("--address", default=None, help="Ray cluster address (auto or HOST:PORT)")
    p.add_argument(
        "--out", default=None, help="parent folder of the runs (default: the file's out)"
    )
    p.add_argument("--parallel", type=int, default=None, help="runs at a time (default: file's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure ES throughput against bare environment stepping",
        description="Print bare env steps/s (constant action) and, for each population size side "
        "by side, ES-iteration env steps/s (the trainer's own iteration), their ratio to bare "
        "stepping (and with --replay to an open-loop replay of the very same episodes), the "
        "share of time inside env.step, the policy's prepare and per-step cost, and peak "
        "memory.",
    )
    p.add_argument(
        "--config",
        default=None,
        help="take env, policy, ES settings, horizon and seed from this run config; without "
        "--iterations, time its whole env-step budget",
    )
    p.add_argument("--env", default=None, help=f"env id (default {DEFAULT_ENV}; not with --config)")
    p.add_argument(
        "--policy",
        default=None,
        help=f"policy name (default {DEFAULT_POLICY}; with --config, replaces the config's policy "
        "and its options, keeping the rest of the config)",
    )
    p.add_argument(
        "--perturbations",
        type=int,
        nargs="+",
        default=None,
        metavar="K",
        help="ES directions per iteration; several sizes are run side by side (default: "
        f"{' '.join(map(str, DEFAULT_PERTURBATIONS))}, or the config's directions); with "
        f"--physics warp, populations (worlds), default {' '.join(map(str, WARP_POPULATIONS))}",
    )
    p.add_argument(
        "--physics",
        choices=list(PHYSICS),
        default="mujoco",
        help="warp: env steps/s of ES iterations on MuJoCo Warp worlds against MuJoCo Warp's own "
        "bare stepping of as many worlds (needs the warp extra)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="with --physics warp: cpu, cuda or auto (default auto: CUDA when available)",
    )
    p.add_argument("--no-antithetic", action="store_true", help="one-sided sampling")
    p.add_argument(
        "--replay",
        action="store_true",
        help="also record the timed episodes and replay them open loop (same seeds and actions, "
        "in lockstep over as many environments): the ratio to bare stepping of the very same "
        "trajectories (local backend; adds the recording to the peak memory)",
    )
    p.add_argument(
        "--horizon", type=int, default=None, help="episode steps (default 1000; not with --config)"
    )
    p.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="ES iterations to time (default 2; with --config, the config's budget)",
    )
    p.add_argument("--hidden", type=int, default=None, help="policy hidden size")
    p.add_argument("--backend", choices=list(BACKENDS), default="local", help="default local")
    p.add_argument("--workers", type=int, default=1, help="Ray rollout actors")
    p.add_argument("--address", default=None, help="Ray cluster address")


def _add_tune(sub) -> None:
    p = sub.add_parser(
        "tune",
        help="search ES settings with Optuna (resumable study in SQLite)",
        description="Hyperparameter search: each trial trains CONFIG with sampled settings for "
        "--budget env steps as an ordinary run folder under --out; trials trailing the median "
        "are pruned. The study is OUT/study.sqlite3, so re-running continues it, and several "
        "tune processes can work on one study at once (start each with the same command; they "
        "stop together at --trials). Writes the best config to OUT/best.yaml.",
    )
    p.add_argument("config", help="base YAML config (its seed is the tuning seed)")
    p.add_argument("--trials", type=int, required=True, help="trials the study should hold")
    p.add_argument("--budget", type=int, required=True, help="env steps per trial")
    p.add_argument(
        "--space",
        help="search space YAML (config key -> {type, low, high, log} or {type: categorical, "
        "choices}); default: the policy family's space",
    )
    p.add_argument("--out", help="study folder (default: runs/tune/<config name>)")
    _add_set_option(p, "override a key for every trial (e.g. backend.name=ray)")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="runs per trial, with the config's seed and the next ones; the trial's score is "
        "their median (default 1; a study keeps the number it started with)",
    )
    p.add_argument(
        "--sampler-seed",
        type=int,
        default=0,
        help="seed of the TPE sampler; trial k draws with this seed + k",
    )
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")


def _add_campaign(sub) -> None:
    p = sub.add_parser(
        "campaign",
        help="run a whole comparison (explore, confirm, evaluate) as resumable units",
        description="A campaign file (see experiments/comparison.yaml) declares tasks, methods, "
        "budgets, seeds and the tuning protocol. `run` does the next ready units (an explore "
        "study per task and method, the confirm runs of its best trials on new seeds, the "
        "evaluation runs of the pick on held-out seeds, and a task's `extend` run continued past "
        "the budget while it still climbs), PARALLEL at a time; kill it whenever "
        "you like and run it again: finished units are never repeated and unfinished runs "
        "continue from their checkpoints. `status` prints each stage's units done and left "
        "and the core-hours spent and left. `report` writes the comparison table and figure "
        "from the evaluation runs, each run held against the zero action on its own "
        "evaluation episodes, and a reading of the paper's claim task by task.",
    )
    p.add_argument("action", choices=["run", "status", "report"], help="what to do")
    p.add_argument("campaign", help="campaign YAML (e.g. experiments/comparison.yaml)")
    p.add_argument(
        "--parallel", type=int, default=None, help="units at a time (default: the file's)"
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (auto or HOST:PORT): each unit uses a fair share of its CPUs",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Ray rollout workers per unit (default: with --address, the cluster's CPUs / "
        "PARALLEL; without, none: each unit steps its rollouts in its own process). Without "
        "--address, N > 1 has each unit start a local Ray instance with N workers: "
        "`--parallel 1 --workers 2` puts two cores on a campaign's last long run. Results are "
        "the same bit for bit either way",
    )
    p.add_argument(
        "--stage",
        action="append",
        choices=["explore", "confirm", "evaluate", "extend"],
        help="run only this stage's units (repeatable; default: all four; extend: a task's "
        "`extend` run continued past the budget)",
    )
    p.add_argument(
        "--task",
        action="append",
        help="run only this task's units, as the file names it (repeatable; default: all)",
    )
    p.add_argument(
        "--method",
        action="append",
        help="run only this method's units, as the file names it (repeatable; default: all)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-unit lines")


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a trained policy as one ONNX graph or plain arrays (npz)",
        description="Export the centre policy of a run folder or checkpoint: one ONNX graph "
        "from the raw observation (input `obs`, [batch, obs_dim], float64) to the clipped action "
        "(output `action`, [batch, act_dim], float64), with the observation normaliser folded "
        "in and the parameter-only matrix flow precomputed; or (npz) the same arrays for "
        "odepolicy.export.npz_act, a numpy function printed in the README.",
    )
    p.add_argument("path", help="run folder (uses checkpoints/<--checkpoint>.npz) or checkpoint")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write (.onnx or .npz)")
    p.add_argument(
        "--format",
        default=None,
        metavar="onnx|npz",
        help="onnx (needs the onnx package) or npz (default: from the suffix of --out)",
    )
    p.add_argument(
        "--checkpoint",
        choices=list(CHECKPOINTS),
        default=None,
        help="which checkpoint of a run folder: latest (default) or best",
    )


class _Parser(argparse.ArgumentParser):
    """argparse with the rule of every other user error: a bad option or a missing argument is
    one line, `odepolicy: error: ...`, exit status 2 (argparse's own prints the usage block
    first and names the subcommand in its prefix). Subcommand parsers inherit it."""

    def error(self, message: str):
        command = self.prog.removeprefix("odepolicy").strip()  # "" for the top level
        where = f"{command}: " if command else ""
        raise OdepolicyError(f"{where}{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="odepolicy",
        description="Train ODEtoODE and baseline policies with Riemannian evolution strategies.",
    )
    parser.add_argument("--version", action="version", version=f"odepolicy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    adders = (_add_train, _add_evaluate, _add_plot, _add_sweep, _add_tune, _add_campaign)
    for add in (*adders, _add_bench, _add_export):
        add(sub)
    return parser


def cmd_train(args) -> int:
    from .rundir import RunDir
    from .trainer import resume, train

    if args.resume:
        if args.config:
            raise OdepolicyError("give either a CONFIG or --resume RUN_DIR, not both")
        run = RunDir(args.resume)
        if run.is_run():
            config = run.read_config(args.overrides)
            if run.status(config) == "resumable":  # it will train
                _warn_budget(config)
        summary = resume(args.resume, args.overrides, show_progress=not args.quiet)
    else:
        config = _train_config(args)
        _warn_budget(config)
        summary = train(config, args.out, args.name, not args.quiet, args.overwrite)
    print(
        f"run {summary['run_dir']}: {summary['iteration']} iterations, "
        f"{summary['env_steps']} env steps, final eval return "
        f"{summary['eval_return_mean']:.2f} +- {summary['eval_return_std']:.2f}"
    )
    return 0


def _warn_budget(config) -> None:
    """Announce, before training, a budget that one iteration can overshoot."""
    from .trainer import budget_warning

    message = budget_warning(config)
    if message:
        print(f"odepolicy: warning: {message}", file=sys.stderr)


def _train_config(args):
    """The config of `train`: a file, or the preset of (--env, --policy), plus overrides."""
    from .config import config_from_dict, find_campaign_pick, find_preset, load_config

    named = [f"env={args.env}"] if args.env else []
    named += [f"policy.name={args.policy}"] if args.policy else []
    if args.config:
        return load_config(args.config, named + args.overrides)
    if not (args.env and args.policy):
        raise OdepolicyError(
            "train needs a CONFIG.yaml, --env and --policy (a preset), or --resume RUN_DIR"
        )
    preset = find_preset(args.env, args.policy)
    if preset is None:
        pick = find_campaign_pick(args.env, args.policy)
        hint = (
            ""
            if pick is None
            else f" (the comparison campaign's pick for the pair, below the presets' bar or not "
            f"yet confirmed, is a config: odepolicy train {pick})"
        )
        print(
            f"odepolicy: no preset for {args.env} with {args.policy}; using the library "
            f"defaults{hint}",
            file=sys.stderr,
        )
        return config_from_dict({}, named + args.overrides)
    print(f"odepolicy: starting from preset {preset}", file=sys.stderr)
    return load_config(preset, named + args.overrides)


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate_checkpoint, record_json

    out = evaluate_checkpoint(
        args.path,
        checkpoint=args.checkpoint,
        episodes=args.episodes,
        seed=args.seed,
        env_id=args.env,
        horizon=args.horizon,
        obs_noise=args.obs_noise,
        action_noise=args.action_noise,
        video=args.video,
        video_episodes=args.video_episodes,
        camera=args.camera,
        fps=args.fps,
        video_every=args.video_every,
        size=(args.width, args.height),
        show_progress=not args.quiet,
        physics=args.physics,
        device=args.device,
    )
    if args.json:
        print(record_json(out))
        return 0
    last_seed = out["seed"] + out["episodes"] - 1
    noise = ""
    if out["obs_noise"] or out["action_noise"]:
        noise = f", obs noise {out['obs_noise']:g}, action noise {out['action_noise']:g}"
    policy = f"{out['policy']} ({out['exported']} export)" if out["exported"] else out["policy"]
    if out["physics"] != "mujoco":
        policy += f", physics {out['physics']}"
    print(
        f"{out['env_id']} {policy}: return {out['mean']:.2f} +- {out['std']:.2f} "
        f"over {out['episodes']} episodes (seeds {out['seed']}..{last_seed}{noise})"
    )
    print(
        f"return min {out['min']:.2f}, max {out['max']:.2f}; episode length mean "
        f"{out['length_mean']:.1f}, min {out['length_min']}, max {out['length_max']}"
    )
    if out["failed"]:
        print(f"{out['failed']} episode(s) failed: {out['failures'][0]}")
    if out["video"]:
        v = out["video"]
        print(
            f"video written to {v['path']} ({v['episodes']} episode(s), {v['frames']} frames, "
            f"camera {v['camera']})"
        )
    return 0


def cmd_plot(args) -> int:
    from .plotting import plot_command

    return plot_command(args)


def cmd_sweep(args) -> int:
    from .sweep import sweep_command

    return sweep_command(args)


def cmd_tune(args) -> int:
    from .tune import tune_command

    return tune_command(args)


def cmd_campaign(args) -> int:
    from .campaign import campaign_command

    return campaign_command(args)


def cmd_bench(args) -> int:
    from .bench import bench_command

    return bench_command(args)


def cmd_export(args) -> int:
    from .export import export_policy

    out = export_policy(args.path, args.out, args.format, args.checkpoint)
    print(
        f"exported {out['policy']} ({out['env_id']}, iteration {out['iteration']}, "
        f"{out['checkpoint']}) to {out['path']}: {out['format']}, {out['bytes'] / 1024:.1f} KiB, "
        f"obs [batch, {out['obs_dim']}] float64 -> action [batch, {out['act_dim']}] float64"
    )
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "plot": cmd_plot,
    "sweep": cmd_sweep,
    "tune": cmd_tune,
    "campaign": cmd_campaign,
    "bench": cmd_bench,
    "export": cmd_export,
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        parser = build_parser()
        given = sys.argv[1:] if argv is None else list(argv)
        if given and given[0].startswith("-") and given[0] not in ("-h", "--help", "--version"):
            # argparse would first say COMMAND is missing, hiding the option it did not know.
            parser.error(
                f"unrecognized option {given[0]}; a COMMAND comes first, its options after it"
            )
        args, extra = parser.parse_known_args(argv)
        if extra:  # said by the command's own parser, which names its own --help
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            sub.choices[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
        return COMMANDS[args.command](args) or 0
    except OdepolicyError as exc:
        print(f"odepolicy: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user named cannot be made, written or read
        if exc.filename is None:  # not about a file (a connection, a library): a real fault
            raise
        from .rundir import _os_cause

        print(f"odepolicy: error: {exc.filename}: {_os_cause(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("odepolicy: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
