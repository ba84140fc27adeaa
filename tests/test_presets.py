"""Presets: every shipped preset names a real (env, policy) pair and trains; `train --env
--policy` starts from the preset or says it falls back; `target_return` ends a run early."""

from pathlib import Path

import pytest
import yaml

from odepolicy.cli import main
from odepolicy.config import find_preset, load_config
from odepolicy.policies import POLICIES
from odepolicy.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "experiments" / "presets").glob("*/*.yaml"))
TINY = ["iterations=1", "es.directions=1", "horizon=3", "eval_episodes=1", "max_env_steps=null"]


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_preset_matches_its_place_and_states_its_procedure(path):
    config = load_config(path)
    assert config.env == path.parent.name and config.policy.name == path.stem
    assert config.policy.name in POLICIES
    assert path.read_text().startswith(
        ("# Found by `odepolicy tune ", "# Found by `odepolicy campaign run ")
    )
    assert config.seed == 0  # tuned on seed 0 only
    assert find_preset(config.env, config.policy.name).resolve() == path.resolve()


def test_train_env_policy_starts_from_the_preset(tmp_path, capsys):
    path = PRESETS[0]
    env, policy = path.parent.name, path.stem
    sets = [a for s in TINY for a in ("--set", s)]
    args = ["train", "--env", env, "--policy", policy, "--out", str(tmp_path), "--name", "p"]
    assert main([*args, *sets, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "starting from preset" in err and f"presets/{env}/{policy}.yaml" in err
    saved = yaml.safe_load((tmp_path / "p" / "config.yaml").read_text())
    preset = yaml.safe_load(path.read_text())
    assert saved["es"]["sigma"] == preset["es"]["sigma"] and saved["es"]["directions"] == 1


def test_train_env_policy_without_preset_falls_back_to_defaults(tmp_path, capsys):
    sets = [a for s in TINY for a in ("--set", s)]
    args = ["train", "--env", "Reacher-v5", "--policy", "deepnet", "--out", str(tmp_path)]
    assert main([*args, "--name", "d", *sets, "--quiet"]) == 0
    assert "no preset for Reacher-v5 with deepnet; using the library defaults" in (
        capsys.readouterr().err
    )
    config = RunDir(tmp_path / "d").read_config()
    assert config.env == "Reacher-v5" and config.policy.name == "deepnet"
    assert config.es.sigma == 0.1  # the library default


def test_train_without_preset_names_the_campaigns_pick(tmp_path, capsys):
    """Swimmer-v5's gated-ODEtoODE pick missed the presets' bar: no preset, but the message
    names the pick's config, which a user can train from as it is."""
    pick = ROOT / "experiments/comparison/studies/Swimmer-v5/gated_odetoode/pick.yaml"
    assert pick.is_file()
    assert not (ROOT / "experiments/presets/Swimmer-v5/gated_odetoode.yaml").exists()
    sets = [a for s in TINY for a in ("--set", s)]
    args = ["train", "--env", "Swimmer-v5", "--policy", "gated_odetoode", "--out", str(tmp_path)]
    assert main([*args, "--name", "g", *sets, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "no preset for Swimmer-v5 with gated_odetoode; using the library defaults" in err
    assert "odepolicy train " in err and err.rstrip().endswith(
        "comparison/studies/Swimmer-v5/gated_odetoode/pick.yaml)"
    )
    assert RunDir(tmp_path / "g").read_config().es.sigma == 0.1  # still the library default
    from odepolicy.config import find_campaign_pick

    assert find_campaign_pick("Swimmer-v5", "gated_odetoode").resolve() == pick.resolve()
    assert find_campaign_pick("Reacher-v5", "gated_odetoode") is None  # no campaign task


def test_train_needs_a_config_or_a_pair(capsys):
    assert main(["train", "--env", "Hopper-v5"]) == 2
    assert "--env and --policy" in capsys.readouterr().err


def test_target_return_ends_the_run_and_marks_it_finished(tmp_path):
    from odepolicy.trainer import train

    sets = ["horizon=20", "eval_every=1", "eval_episodes=1", "iterations=50", "target_return=5"]
    config = load_config(ROOT / "experiments" / "inverted_pendulum.yaml", sets)
    summary = train(config, tmp_path, "t", show_progress=False)
    assert summary["eval_return_mean"] >= 5 and summary["iteration"] < 50
    run = RunDir(tmp_path / "t")
    assert run.status(config) == "finished"
    assert run.status(load_config(run.config_file, ["target_return=null"])) == "resumable"


def _presets_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("presets_tool", ROOT / "benchmarks/presets.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_presets_are_exactly_the_picks_and_studies_that_reach_the_bar(monkeypatch):
    """A task whose comparison campaign has confirmed every method takes its presets from the
    campaign: each policy's best pick is shipped, header and config exactly as the tool writes
    them, when its median reaches a third of the task's reference return, and no preset is left
    where it does not. Every other task keeps the tuning-study rule: every shipped preset has
    its committed study, whose best trial reaches the bar, and every committed study that
    reaches it has its preset, its header naming the same best score as the study."""
    from odepolicy.campaign import load_campaign

    tool = _presets_tool()
    monkeypatch.chdir(ROOT)  # the campaign file's folders are relative to the repository
    campaign = load_campaign("experiments/comparison.yaml")
    rows = tool.campaign_rows(campaign)
    refreshed = {row["task"] for row in rows}
    assert {"Swimmer-v5", "Hopper-v5", "HalfCheetah-v5", "Walker2d-v5"} <= refreshed
    for row in rows:
        preset = ROOT / "experiments" / "presets" / row["task"] / f"{row['policy']}.yaml"
        assert preset.is_file() == row["ok"], row
        if row["ok"]:
            assert preset.read_text() == tool.campaign_preset_text(campaign, row)
            assert load_config(preset) == load_config(
                campaign.pick_file(row["task"], row["method"])
            )
    studies = ROOT / "experiments" / "tune" / "studies"
    for db in sorted(studies.glob("*/*/study.sqlite3")):
        env, policy = db.parent.parent.name, db.parent.name
        if env in refreshed:
            continue
        s = tool.summarise(db)
        preset = ROOT / "experiments" / "presets" / env / f"{policy}.yaml"
        ok = tool.passes(env, s["best"])
        assert preset.is_file() == ok, (env, policy, s["best"])
        if ok:
            header = preset.read_text().splitlines()[3]
            assert f"trial {s['best_trial']}, score {s['best']:.2f}" in header, (env, policy)
    shipped = {(p.parent.name, p.stem) for p in PRESETS}
    studied = {(d.parent.parent.name, d.parent.name) for d in studies.glob("*/*/study.sqlite3")}
    picked = {(row["task"], row["policy"]) for row in rows}
    assert shipped <= studied | picked


@pytest.mark.parametrize(
    "config, preset",
    [
        ("halfcheetah.yaml", "HalfCheetah-v5/iso_odetoode.yaml"),
        ("swimmer.yaml", "Swimmer-v5/iso_odetoode.yaml"),
        ("inverted_pendulum.yaml", "InvertedPendulum-v5/iso_odetoode.yaml"),
    ],
)
def test_user_configs_use_their_presets_settings(config, preset):
    """The configs a user starts from carry their preset's ES settings and policy options (a
    re-tuned preset must not leave them behind); only budgets and bookkeeping may differ."""
    ours = load_config(ROOT / "experiments" / config)
    tuned = load_config(ROOT / "experiments" / "presets" / preset)
    assert ours.env == tuned.env and ours.policy.name == tuned.policy.name
    assert ours.es == tuned.es
    from odepolicy.envs import env_spec
    from odepolicy.policies import policy_for_env

    spec = env_spec(ours.env)
    built = [
        policy_for_env(spec, {"name": c.policy.name, **c.policy.kwargs}).kwargs
        for c in (ours, tuned)
    ]
    assert built[0] == built[1]
    assert ours.normalize_obs == tuned.normalize_obs
