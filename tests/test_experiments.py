"""Every config in experiments/ loads, builds its env and policy, and trains one tiny iteration."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from odepolicy.config import load_config
from odepolicy.policies.sizing import count_params
from odepolicy.trainer import train

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
CONFIGS = sorted(  # every run config: sweep files (configs:), campaign files (tasks:), search
    p  # spaces and the campaign's picks (each trained by its evaluation runs) are not
    for p in EXPERIMENTS.rglob("*.yaml")
    if not {"configs", "tasks"} & set(yaml.safe_load(p.read_text()))
    and not {"spaces", "studies"} & set(p.parts)
)
TINY = [
    "iterations=1",
    "es.directions=1",
    "horizon=3",
    "eval_episodes=1",
    "max_env_steps=null",
    "backend.name=local",
]


def test_there_is_a_config_per_task_and_method():
    assert len(list((EXPERIMENTS / "figure2").rglob("*.yaml"))) == 8 * 8


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_config_runs_one_tiny_iteration(path, tmp_path):
    config = load_config(path, TINY)
    summary = train(config, tmp_path, "run", show_progress=False)
    assert summary["iteration"] == 1
    assert 2 <= summary["env_steps"] <= 6  # both antithetic rollouts stepped, horizon 3
    assert np.isfinite(summary["eval_return_mean"])


@pytest.mark.parametrize("task", ["halfcheetah", "humanoid", "dmc_swimmer6"])
def test_baselines_are_not_smaller_than_iso_odetoode(task):
    def size(method):
        cfg = load_config(EXPERIMENTS / "figure2" / task / f"{method}.yaml")
        from odepolicy.envs import env_spec

        spec = env_spec(cfg.env)
        return count_params(cfg.policy.name, spec.obs_dim, spec.act_dim, **cfg.policy.kwargs)

    iso = size("iso_odetoode")
    for method in ("gated_odetoode", "base_ode", "nanode", "hypernet", "deepnet", "deep_resnet"):
        assert iso <= size(method) <= 1.3 * iso, method


@pytest.mark.parametrize("sweep", ["figure2.yaml", "reduced.yaml"])
def test_sweep_files_name_existing_configs(sweep):
    data = yaml.safe_load((EXPERIMENTS / sweep).read_text())
    for entry in data["configs"]:
        path = entry if isinstance(entry, str) else entry["path"]
        assert (EXPERIMENTS.parent / path).is_file(), path
