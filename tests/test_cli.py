"""The real command line, end to end, with real MuJoCo physics and files on disk."""

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from odepolicy.checkpoint import read_checkpoint
from odepolicy.cli import main

ROOT = Path(__file__).resolve().parents[1]
PENDULUM = str(ROOT / "experiments" / "inverted_pendulum.yaml")
TINY = [
    "--set", "iterations=2",
    "--set", "es.directions=3",
    "--set", "horizon=30",
    "--set", "eval_every=1",
    "--set", "eval_episodes=2",
    "--set", "checkpoint_every=1",
    "--set", "policy.kwargs.hidden=4",
    "--quiet",
]  # fmt: skip


def _rows(run: Path) -> list[dict]:
    with open(run / "progress.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _center(run: Path) -> np.ndarray:
    arrays, _ = read_checkpoint(run / "checkpoints" / "latest.npz")
    return arrays["es.center"]


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _train(tmp_path, name, *extra, config=PENDULUM):
    code = main(["train", config, "--out", str(tmp_path), "--name", name, *TINY, *extra])
    assert code == 0
    return tmp_path / name


def test_run_folder_layout_and_determinism(tmp_path):
    a = _train(tmp_path, "a")
    b = _train(tmp_path, "b")
    for name in ("config.yaml", "progress.csv", "meta.json", "checkpoints/latest.npz"):
        assert (a / name).is_file()
    ra, rb = _rows(a), _rows(b)
    assert len(ra) == 2
    for x, y in zip(ra, rb):
        x.pop("wall_seconds"), y.pop("wall_seconds")
        x.pop("steps_per_second"), y.pop("steps_per_second")
        assert x == y
    assert float(ra[-1]["manifold_distance"]) < 1e-10
    assert np.array_equal(_center(a), _center(b))


def test_resume_equals_uninterrupted_run_bit_for_bit(tmp_path):
    full = _train(tmp_path, "full", "--set", "iterations=4")
    part = _train(tmp_path, "part", "--set", "iterations=2")
    # meta.json as a version before 2026-12-05 wrote it: no CPU recorded.
    old = _meta(part)
    del old["cpu"], old["openblas_coretype"]
    (part / "meta.json").write_text(json.dumps(old))
    # Through the console script, so meta.json sees a command line of its own.
    exe = Path(sys.executable).with_name("odepolicy")
    resume = [str(exe), "train", "--resume", str(part), "--set", "iterations=4", "--quiet"]
    subprocess.run(resume, check=True, timeout=300)
    assert np.array_equal(_center(full), _center(part))
    rf, rp = _rows(full), _rows(part)
    assert [r["iteration"] for r in rp] == ["1", "2", "3", "4"]
    assert [r["eval_return_mean"] for r in rf] == [r["eval_return_mean"] for r in rp]
    af, _ = read_checkpoint(full / "checkpoints" / "latest.npz")
    ap, _ = read_checkpoint(part / "checkpoints" / "latest.npz")
    for key in af:
        assert np.array_equal(af[key], ap[key]), key
    # meta.json keeps how the run was first started and adds each resume.
    first, meta = _meta(full), _meta(part)
    assert meta["command"] == first["command"] and "--resume" not in meta["command"]
    assert meta["started"] <= meta["resumes"][0]["started"]
    assert meta["resumes"][0]["command"][1:] == resume[1:]
    assert meta["cpu"] is None and meta["resumes"][0]["cpu"] == first["cpu"] != ""  # as it was
    assert [r["iteration"] for r in meta["resumes"]] == [2] == [meta["resumed_from_iteration"]]
    assert meta["versions"]["dm_control"] == first["versions"]["dm_control"] != "not installed"
    git = ["git", "-C", str(ROOT), "rev-parse", "HEAD"]
    head = subprocess.run(git, capture_output=True, text=True)
    if (ROOT / ".git").exists() and head.returncode == 0:  # a source checkout git can read
        assert meta["versions"]["odepolicy_commit"].removesuffix("+changes") == head.stdout.strip()


def _meta(run: Path) -> dict:
    return json.loads((run / "meta.json").read_text())


def test_a_checkpoint_rebuilds_its_policy_after_a_default_changes(tmp_path, monkeypatch):
    """The checkpoint records every policy option with its default filled in (the config does
    not name output_scale): a later version with another default evaluates the same policy."""
    from odepolicy.checkpoint import load_policy
    from odepolicy.evaluate import evaluate_checkpoint
    from odepolicy.policies import POLICIES, make_policy

    run = _train(tmp_path, "kw")
    _, meta = read_checkpoint(run / "checkpoints" / "latest.npz")
    user = meta["config"]["policy"]["kwargs"]
    assert "output_scale" not in user
    assert meta["policy"]["kwargs"] == make_policy("iso_odetoode", 4, 1, **user).kwargs
    logged = float(_rows(run)[-1]["eval_return_mean"])
    cls = POLICIES["iso_odetoode"]
    monkeypatch.setattr(cls, "defaults", {**cls.defaults, "output_scale": 0.1})
    assert make_policy("iso_odetoode", 4, 1, **user).output_scale == 0.1  # the config alone
    assert load_policy(run)[0].output_scale == 1.0  # the checkpoint
    assert evaluate_checkpoint(run)["mean"] == logged


def test_resume_refuses_another_env_or_policy_of_the_same_sizes(tmp_path, capsys):
    """HalfCheetah-v5 and Walker2d-v5 both have 17 observations and 6 actions: the sizes alone
    cannot tell them apart, the checkpoint's env id can."""
    run = _train(tmp_path, "hc", "--set", "env=HalfCheetah-v5", "--set", "horizon=5")
    before = _tree_digest(tmp_path)
    capsys.readouterr()
    _expect_error(
        capsys, ["train", "--resume", str(run), "--set", "env=Walker2d-v5", "--quiet"],
        "made on HalfCheetah-v5",
    )  # fmt: skip
    _expect_error(
        capsys, ["train", "--resume", str(run), "--set", "policy.name=gated_odetoode", "--quiet"],
        "holds a iso_odetoode policy",
    )  # fmt: skip
    _expect_error(
        capsys, ["train", "--resume", str(run), "--set", "policy.kwargs.output_scale=0.5"],
        "output_scale=1.0 (now 0.5)",
    )  # fmt: skip
    assert _tree_digest(tmp_path) == before


def test_evaluate_reproduces_the_trainers_evaluation(tmp_path, capsys):
    run = _train(tmp_path, "ev")
    logged = float(_rows(run)[-1]["eval_return_mean"])
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    value = float(out.split("return ")[1].split(" +-")[0])
    assert value == pytest.approx(logged, abs=0.005)
    from odepolicy.evaluate import evaluate_checkpoint

    assert evaluate_checkpoint(run)["mean"] == logged  # bit for bit, not just to print precision


def _expect_error(capsys, argv, needle):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("odepolicy: error:") and needle in err, err


def test_bad_input_is_one_line_exit_2_and_leaves_runs_untouched(tmp_path, capsys):
    run = _train(tmp_path, "keep")
    before = _tree_digest(tmp_path)
    capsys.readouterr()
    out = ["--out", str(tmp_path), "--quiet"]
    _expect_error(
        capsys, ["train", PENDULUM, "--set", "env=HalfCheetah-v9", *out], "HalfCheetah-v5"
    )
    _expect_error(capsys, ["train", PENDULUM, "--set", "policy.name=isoode", *out], "isoode")
    _expect_error(capsys, ["train", PENDULUM, "--set", "es.sigmaa=1", *out], "es.sigmaa")
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [InvertedPendulum-v5\nseed: 0\n")
    _expect_error(capsys, ["train", str(bad), *out], "malformed YAML")
    # a run name that exists is refused rather than overwritten
    _expect_error(capsys, ["train", PENDULUM, *out, "--name", "keep"], "already exists")
    # a checkpoint evaluated on an env with another observation size
    _expect_error(capsys, ["evaluate", str(run), "--env", "Hopper-v5"], "obs")
    # a truncated checkpoint file
    ckpt = run / "checkpoints" / "latest.npz"
    cut = tmp_path / "cut.npz"
    cut.write_bytes(ckpt.read_bytes()[:300])
    _expect_error(capsys, ["evaluate", str(cut)], "truncated")
    # --resume of a folder that is not a run
    (tmp_path / "notarun").mkdir()
    _expect_error(capsys, ["train", "--resume", str(tmp_path / "notarun"), "--quiet"], "not a run")
    cut.unlink()
    bad.unlink()
    (tmp_path / "notarun").rmdir()
    assert _tree_digest(tmp_path) == before


def test_unwritable_output_paths_and_bad_options_are_one_line_exit_2(tmp_path, capsys):
    """An output path under a regular file cannot be created: every command that writes one
    says so on one line (no traceback) and leaves the file as it was. Bad options and missing
    arguments follow the same rule instead of argparse's usage block."""
    run = _train(tmp_path, "keep")
    blocker = tmp_path / "a_file"
    blocker.write_text("mine\n")
    capsys.readouterr()
    _expect_error(capsys, ["plot", str(tmp_path), "--out", str(blocker / "fig.png")], "a_file")
    _expect_error(
        capsys,
        ["tune", PENDULUM, "--trials", "1", "--budget", "100", "--out", str(blocker / "t")],
        "a_file",
    )
    video = ["evaluate", str(run), "--episodes", "1", "--video", str(blocker / "v.mp4")]
    _expect_error(capsys, [*video, "--quiet"], "a_file")
    assert blocker.read_text() == "mine\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "keep"]
    _expect_error(capsys, ["evaluate", str(run), "--episodes", "abc"], "invalid int value: 'abc'")
    _expect_error(capsys, ["tune", PENDULUM], "--trials")
    _expect_error(capsys, ["no-such-command"], "invalid choice")
    _expect_error(
        capsys, ["--bogus", "train"], "unrecognized option --bogus; a COMMAND comes first"
    )
    _expect_error(capsys, [], "the following arguments are required: COMMAND")
    _expect_error(
        capsys, ["plot", str(tmp_path), "--bogus"],
        "plot: unrecognized arguments: --bogus (see `odepolicy plot --help`)",
    )  # fmt: skip


def test_console_script_help_lists_every_command():
    exe = Path(sys.executable).with_name("odepolicy")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ("train", "evaluate", "plot", "sweep", "tune", "bench", "export"):
        assert cmd in out


@pytest.mark.slow
def test_shipped_inverted_pendulum_config_solves_it_as_shipped(tmp_path):
    """experiments/inverted_pendulum.yaml, with no overrides at all, reaches >= 950 (max 1000)
    through the real console script within its own budget."""
    exe = Path(sys.executable).with_name("odepolicy")
    args = [str(exe), "train", PENDULUM, "--out", str(tmp_path), "--name", "pend", "--quiet"]
    subprocess.run(args, check=True, timeout=120)
    rows = _rows(tmp_path / "pend")
    evals = [float(r["eval_return_mean"]) for r in rows if r["eval_return_mean"]]
    assert evals[-1] >= 950.0
    assert int(rows[-1]["env_steps"]) <= 50_000


def test_evaluate_renders_a_video_headless(tmp_path, capsys):
    import imageio.v2 as imageio

    run = _train(tmp_path, "vid")
    video = tmp_path / "out" / "pendulum.mp4"
    assert main(["evaluate", str(run), "--episodes", "1", "--video", str(video)]) == 0
    frames = imageio.mimread(video, memtest=False)
    assert 2 <= len(frames) <= 31  # horizon 30: at most 30 steps plus the first frame
    assert frames[0].shape == (360, 480, 3)
    assert frames[0].max() > 100 and frames[0].std() > 5  # a rendered scene, not a blank frame
    assert any((f != frames[0]).any() for f in frames[1:])  # the pole moves


def test_bench_prints_both_sizes_and_the_share_inside_env_step(capsys):
    """Real iterations on a real env: the rates are positive and the share of the time spent
    inside env.step is a fraction (a timer around env.step cannot exceed the iteration)."""
    argv = ["bench", "--env", "InvertedPendulum-v5", "--policy", "linear"]
    assert main([*argv, "--perturbations", "2", "4", "--horizon", "50", "--iterations", "1"]) == 0
    out = capsys.readouterr().out
    rows = {line[:36].strip(): line[36:].split() for line in out.splitlines()}
    assert rows["directions"] == ["2", "4"]
    rates = [float(v.replace(",", "")) for v in rows["ES iteration (local), steps/s"]]
    shares = [float(v) for v in rows["share of time inside env.step"]]
    assert all(r > 0 for r in rates)
    assert all(0.05 < s < 1.0 for s in shares), shares


def test_bench_rate_counts_only_the_timed_iterations():
    """Horizon 5 on HalfCheetah (which never terminates): the timed iterations step
    exactly population x horizon x iterations envs; the extra env.step-timing iteration is
    not counted."""
    import argparse

    from odepolicy.bench import _bench_population
    from odepolicy.envs import env_spec

    args = argparse.Namespace(
        env="HalfCheetah-v5", policy="linear", hidden=None, no_antithetic=False,
        horizon=5, backend="local", workers=1, address=None, iterations=2, replay=True,
    )  # fmt: skip
    r = _bench_population(args, env_spec(args.env), 3)
    assert r["population"] == 6
    assert r["steps"] == 6 * 5 * 2
    assert 0.0 < r["env_share"] < 1.0
    assert r["replay_steps"] == r["steps"]  # the replay steps exactly the timed episodes
    assert r["replay_rate"] > 0


def test_bench_replay_reproduces_the_recorded_episodes():
    """The bench's denominator is an open-loop replay of the recorded episodes: with the same
    reset seeds and actions, MuJoCo must give back each episode's return bit for bit."""
    from odepolicy.bench import _EpisodeRecorder
    from odepolicy.envs import make_env
    from odepolicy.policies import policy_for_env
    from odepolicy.rollout import evaluate_population

    envs = [make_env("Hopper-v5") for _ in range(4)]  # terminates: episodes of varied length
    policy = policy_for_env(envs[0].spec, {"name": "iso_odetoode"})
    rng = np.random.default_rng(3)
    thetas = policy.init(rng)[None, :] + 0.3 * rng.standard_normal((4, policy.num_params))
    recorder = _EpisodeRecorder(envs)
    result = evaluate_population(policy, thetas, envs, [11, 12, 13, 14], horizon=200)
    recorder.close()
    assert "step" not in envs[0].__dict__ and "reset" not in envs[0].__dict__  # unwrapped
    assert len(recorder.batches) == 1  # reset together, then stepped in lockstep
    assert [slot for slot, _, _, _ in recorder.episodes] == [0, 1, 2, 3]
    assert [seed for _, _, seed, _ in recorder.episodes] == [11, 12, 13, 14]
    assert [len(a) for _, _, _, a in recorder.episodes] == list(result.lengths)
    assert min(result.lengths) < 200  # at least one episode ended early
    replay = make_env("Hopper-v5")
    for (_, env_id, seed, actions), ret in zip(recorder.episodes, result.returns):
        assert env_id == "Hopper-v5"
        replay.reset(seed=seed)
        total = 0.0
        for a in actions:
            total += replay.step(a)[1]
        assert total == ret


def test_bench_times_a_config_and_refuses_a_horizon_or_env_with_it(tmp_path, capsys):
    """`--config` takes env, policy and directions from the file and, without --iterations,
    times its whole env-step budget; --horizon with it is a one-line error, exit 2."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "env: InvertedPendulum-v5\npolicy: {name: linear}\nes: {directions: 3}\n"
        "horizon: 40\niterations: 50\nmax_env_steps: 400\n"
    )
    assert main(["bench", "--config", str(cfg), "--replay"]) == 0
    out = capsys.readouterr().out
    rows = {line[:36].strip(): line[36:].split() for line in out.splitlines()}
    assert rows["directions"] == ["3"]
    assert int(rows["timed env steps"][0].replace(",", "")) >= 400
    es, replay = (float(rows[k][-1].replace(",", "")) for k in (
        "ES iteration (local), steps/s", "same trajectories replayed, steps/s"))  # fmt: skip
    ratio = float(rows["ratio to replay x workers"][0])  # the two rates of this run, divided
    assert ratio > 0 and abs(ratio - es / replay) < 0.001 + 1e-4 * ratio, (ratio, es, replay)
    assert main(["bench", "--config", str(cfg), "--horizon", "10"]) == 2
    assert "--horizon cannot be combined with --config" in capsys.readouterr().err
    assert main(["bench", "--config", str(cfg), "--env", "Hopper-v5"]) == 2
    assert "--env cannot be combined with --config" in capsys.readouterr().err
    # --policy replaces the config's policy (its options too) and keeps the rest of the file.
    argv = ["bench", "--config", str(cfg), "--policy", "iso_odetoode", "--hidden", "3"]
    assert main([*argv, "--iterations", "1"]) == 0
    out = capsys.readouterr().out
    assert "env InvertedPendulum-v5 (obs 4, act 1); policy iso_odetoode" in out
    rows = {line[:36].strip(): line[36:].split() for line in out.splitlines()}
    assert rows["directions"] == ["3"]
