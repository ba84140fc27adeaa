"""`odepolicy evaluate` as a user runs it: real MuJoCo physics, real headless rendering (EGL).

The Hopper fixture is a hand-made checkpoint of a linear policy a = W s + c that hops forward
(about 3 m in 300 steps, no falls over 1000 steps). Its weights were found by a short run of ARS
(Mania et al. 2018) on Hopper-v5 with observation normalisation, which was then folded into W and
c, rounded to four digits, so the checkpoint needs no normaliser statistics.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # before mujoco is imported anywhere

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from odepolicy.checkpoint import save_checkpoint
from odepolicy.cli import main
from odepolicy.envs import env_spec
from odepolicy.evaluate import evaluate_checkpoint
from odepolicy.normalizer import ObsNormalizer

HOP_W = np.array(
    [
        [2.708, -4.564, -0.1571, 1.042, 0.05451, 0.005003, -0.09956, -0.2445, -0.04207, 0.06242,
         0.003762],
        [-0.8262, -4.001, -0.4557, 0.1559, 0.02325, -0.1346, 0.09616, -0.4023, 0.02093, -0.1141,
         -0.0465],
        [3.335, 3.309, 1.203, -0.721, -0.4591, -0.3042, -0.4042, 0.4237, 0.2284, 0.002637,
         -0.02164],
    ]
)  # fmt: skip
HOP_C = np.array([-2.794, 1.062, -3.126])


def _checkpoint(path: Path, env_id: str, theta: np.ndarray, episodes=3, horizon=300) -> Path:
    """A checkpoint of a linear policy with the normaliser off, as the trainer would write it."""
    spec = env_spec(env_id)
    arrays = {"es.center": theta}
    arrays.update({"norm." + k: v for k, v in ObsNormalizer(spec.obs_dim, False).state().items()})
    meta = {
        "config": {"eval_episodes": episodes, "horizon": horizon},
        "eval_seed": 0,
        "env": {
            "env_id": env_id,
            "obs_dim": spec.obs_dim,
            "act_dim": spec.act_dim,
            "action_low": list(spec.action_low),
            "action_high": list(spec.action_high),
            "obs_keys": list(spec.obs_keys),
        },
        "policy": {"name": "linear", "kwargs": {}},
    }
    return save_checkpoint(path, arrays, meta)


@pytest.fixture(scope="module")
def hopper(tmp_path_factory) -> Path:
    theta = np.concatenate([HOP_W.ravel(), HOP_C])
    return _checkpoint(tmp_path_factory.mktemp("hop") / "hop.npz", "Hopper-v5", theta)


def _agent(frame: np.ndarray) -> np.ndarray:
    """Pixels of the hopper: its orange-brown body, against the grey-blue sky and the
    black-and-white checker floor."""
    f = frame.astype(np.int16)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    return (r > 90) & (r - b > 50) & (r - g > 25)


def _evaluate_json(capsys, *argv) -> tuple[dict, str]:
    """The record `evaluate --json` prints, and what went to stderr."""
    capsys.readouterr()
    assert main(["evaluate", *map(str, argv), "--json"]) == 0
    out, err = capsys.readouterr()
    return json.loads(out), err  # the whole of stdout is one JSON record


def test_video_camera_follows_a_hopper_that_leaves_the_fixed_view(hopper, tmp_path, capsys):
    import gymnasium as gym
    import imageio.v2 as imageio

    video = tmp_path / "hop.mp4"
    size = ["--width", 160, "--height", 120]
    rec, err = _evaluate_json(capsys, hopper, "--episodes", 1, "--video", video, *size)
    assert "rendering" in err and "301/301" in err  # the progress bar, on stderr
    assert rec["lengths"] == [300]  # the hopper stays up for the whole episode
    assert rec["video"]["camera"] == "track" and rec["video"]["frames"] == 301
    assert rec["video"]["returns"] == rec["returns"]  # the video shows the evaluated episode
    frames = imageio.mimread(video, memtest=False)
    assert len(frames) == 301 and frames[0].shape == (120, 160, 3)
    first, last = _agent(frames[0]), _agent(frames[-1])
    assert first.sum() > 100
    assert last.sum() > 0.5 * first.sum()  # the whole agent, not a sliver at an edge
    ys, xs = np.nonzero(last)
    assert 8 <= xs.min() and xs.max() < 160 - 8 and 4 <= ys.min() and ys.max() < 120 - 4
    assert 40 <= xs.mean() <= 120  # near the middle, where the tracking camera keeps it

    # The same episode through the old renderer (Gymnasium's default view, which stays where
    # the episode started) loses the hopper: this test fails for a camera that does not follow.
    env = gym.make("Hopper-v5", render_mode="rgb_array", width=160, height=120)
    try:
        obs, _ = env.reset(seed=rec["seed"])
        start = _agent(env.render())
        for _ in range(300):
            obs, *_ = env.step(np.clip(HOP_W @ obs + HOP_C, -1, 1))
        assert env.unwrapped.data.qpos[0] > 2.5  # moved forward by more than the view's width
        assert start.sum() > 50 and _agent(env.render()).sum() == 0
    finally:
        env.close()


def test_video_gif_concatenates_episodes_and_takes_a_camera(hopper, tmp_path, capsys):
    import imageio.v2 as imageio

    gif = tmp_path / "two.gif"
    argv = [hopper, "--episodes", 3, "--horizon", 20, "--video", gif, "--video-episodes", 2]
    argv += ["--camera", "-1", "--width", 64, "--height", 48, "--action-noise", 0.2]
    rec, _ = _evaluate_json(capsys, *argv)
    assert rec["video"]["camera"] == "free" and rec["video"]["episodes"] == 2
    assert len(imageio.mimread(gif, memtest=False)) == 21 + 21 == rec["video"]["frames"]
    assert rec["video"]["returns"] == rec["returns"][:2]  # the same noisy episodes

    code = main(["evaluate", str(hopper), "--video", str(tmp_path / "x.mp4"), "--camera", "top"])
    err = capsys.readouterr().err
    assert code == 2 and "no camera named 'top'" in err and "track" in err
    assert sorted(os.listdir(tmp_path)) == ["two.gif"]  # no video, no temporary file


def test_dm_control_video_uses_the_suites_tracking_camera(tmp_path, capsys):
    import imageio.v2 as imageio

    env_id = "dm_control/cheetah-run-v0"
    spec = env_spec(env_id)
    theta = np.zeros(spec.act_dim * (spec.obs_dim + 1))  # W = 0, c = 0: stands still
    ckpt = _checkpoint(tmp_path / "cheetah.npz", env_id, theta, episodes=1, horizon=5)
    video = tmp_path / "cheetah.mp4"
    rec, _ = _evaluate_json(capsys, ckpt, "--video", video, "--width", 64, "--height", 48)
    assert rec["video"]["camera"] == "side" and rec["video"]["frames"] == 6
    frames = imageio.mimread(video, memtest=False)
    assert len(frames) == 6 and frames[0].std() > 5  # a rendered scene, not a blank frame


def test_batched_evaluation_equals_single_episodes(hopper, monkeypatch):
    # Three lockstep batches (3 + 3 + 1) for seven episodes, the environments reused.
    import odepolicy.evaluate as module

    sizes = []
    population = module.evaluate_population

    def counted(policy, thetas, envs, *args):
        sizes.append(len(thetas))
        return population(policy, thetas, envs, *args)

    monkeypatch.setattr(module, "lockstep_for", lambda policy: 3)
    monkeypatch.setattr(module, "evaluate_population", counted)
    kw = {"horizon": 150, "seed": 7}
    for noise in ({}, {"obs_noise": 0.05, "action_noise": 0.2}):
        sizes.clear()
        batch = evaluate_checkpoint(hopper, episodes=7, **kw, **noise)
        assert sizes == [3, 3, 1]
        singles = [
            evaluate_checkpoint(hopper, episodes=1, **{**kw, "seed": 7 + k}, **noise)
            for k in range(7)
        ]
        assert batch["returns"].tolist() == [s["returns"][0] for s in singles]
        assert batch["lengths"].tolist() == [s["lengths"][0] for s in singles]
    clean = evaluate_checkpoint(hopper, episodes=3, **kw)
    noisy = [evaluate_checkpoint(hopper, episodes=3, **kw, action_noise=0.2) for _ in range(2)]
    assert noisy[0]["returns"].tolist() == noisy[1]["returns"].tolist()  # seeded: repeatable
    assert not np.array_equal(noisy[0]["returns"], clean["returns"])  # and really noisy


def test_json_record_holds_the_numbers_of_the_text(hopper, capsys):
    argv = ["evaluate", str(hopper), "--episodes", "4", "--horizon", "120", "--obs-noise", "0.1"]
    assert main(argv) == 0
    text = capsys.readouterr().out.splitlines()
    rec, _ = _evaluate_json(capsys, *argv[1:])
    assert rec["episodes"] == 4 and rec["seed"] == 0 and rec["obs_noise"] == 0.1
    assert len(rec["returns"]) == len(rec["lengths"]) == 4
    assert rec["mean"] == pytest.approx(np.mean(rec["returns"]))
    assert rec["min"] == min(rec["returns"]) and rec["max"] == max(rec["returns"])
    head = f"Hopper-v5 linear: return {rec['mean']:.2f} +- {rec['std']:.2f} over 4 episodes"
    assert text[0].startswith(head) and "(seeds 0..3, obs noise 0.1, action noise 0)" in text[0]
    assert text[1] == (
        f"return min {rec['min']:.2f}, max {rec['max']:.2f}; episode length mean "
        f"{np.mean(rec['lengths']):.1f}, min {min(rec['lengths'])}, max {max(rec['lengths'])}"
    )


_WARNINGS_SCRIPT = """
import sys
import numpy as np
import mujoco
{before}
from odepolicy.envs import make_env
env = make_env({env_id!r})
env.reset(seed=0)
model, data = env.physics()
data.qpos[:] = np.nan  # a real MuJoCo warning of another kind: an unstable simulation
mujoco.mj_step(model, data)
"""


@pytest.mark.parametrize(
    "env_id, unfiltered",
    [
        ("dm_control/cheetah-run-v0", "from dm_control import suite\nsuite.load('cheetah', 'run')"),
        ("HalfCheetah-v5", "import gymnasium\ngymnasium.make('HalfCheetah-v5')"),
    ],
)
def test_env_build_hides_settotalmass_notice_but_not_other_warnings(env_id, unfiltered):
    # A fresh process, as a user's. The model built first, without odepolicy, shows the notice
    # is really printed (through absl for dm_control, by MuJoCo itself otherwise).
    before = unfiltered + "\nprint('---', file=sys.stderr)"
    script = _WARNINGS_SCRIPT.format(before=before, env_id=env_id)
    env = {**os.environ, "MUJOCO_GL": "egl"}
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert run.returncode == 0, run.stderr
    unfiltered_err, ours = run.stderr.split("---\n", 1)
    assert "settotalmass" in unfiltered_err
    assert "settotalmass" not in ours
    assert "Nan, Inf or huge value in QPOS" in ours


def test_object_array_checkpoint_is_refused_and_left_untouched(tmp_path, capsys):
    path = tmp_path / "pickled.npz"
    meta = json.dumps({"format": "odepolicy-checkpoint-1"}).encode()
    with open(path, "wb") as fh:
        np.savez(
            fh,
            **{"es.center": np.array([{"x": 1}], dtype=object)},
            __meta__=np.frombuffer(meta, np.uint8),
        )
    before = (path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(tmp_path)))
    capsys.readouterr()
    assert main(["evaluate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("odepolicy: error:")
    assert "contains pickled Python objects; refusing to load" in err and "damaged" not in err
    assert (path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(tmp_path))) == before
    # a damaged file still says so
    cut = tmp_path / "cut.npz"
    cut.write_bytes(path.read_bytes()[:200])
    assert main(["evaluate", str(cut)]) == 2
    err = capsys.readouterr().err
    assert "damaged or truncated" in err and "pickled" not in err
    for junk in (b"abc", b"not a checkpoint at all\n" * 20):  # too short, or not an archive
        cut.write_bytes(junk)
        assert main(["evaluate", str(cut)]) == 2
        err = capsys.readouterr().err
        assert "damaged or truncated (not an .npz archive)" in err and "pickled" not in err


@pytest.mark.parametrize(
    "env_id, seed, episodes, horizon",
    [("Hopper-v5", 1_100_000, 3, 1000), ("Hopper-v5", 5, 2, 30),
     ("dm_control/swimmer-swimmer6-v0", 1_100_000, 2, 1000)],
)  # fmt: skip
def test_zero_action_return_is_the_mean_return_of_zero_actions_on_those_episodes(
    env_id, seed, episodes, horizon
):
    """The campaign report's baseline: the zero policy run through the trainer's evaluation
    path equals stepping the environment with zeros, episode `seed + k`, up to `horizon`."""
    from odepolicy.envs import make_env
    from odepolicy.evaluate import zero_action_return

    env = make_env(env_id)
    returns = []
    for k in range(episodes):
        env.reset(seed=seed + k)
        total, t, done = 0.0, 0, False
        while not done and t < horizon:
            _, reward, terminated, truncated = env.step(np.zeros(env.act_dim))
            total, t, done = total + reward, t + 1, terminated or truncated
        returns.append(total)
    env.close()
    assert zero_action_return(env_id, seed, episodes, horizon) == pytest.approx(
        np.mean(returns), abs=1e-9
    )
    if horizon == 30:  # the horizon cuts the episodes (a zero-action Hopper stands longer)
        assert zero_action_return(env_id, seed, episodes, 1000) > np.mean(returns) + 50
