"""`physics: mujoco | warp` as a config key and a command-line option; none of these tests needs
the optional MuJoCo Warp extra (tests/test_warp_engine.py runs the engine itself)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from odepolicy import OdepolicyError
from odepolicy.cli import main
from odepolicy.config import PHYSICS, config_from_dict
from odepolicy.envs import PHYSICS as ENV_PHYSICS
from odepolicy.envs import WARP_ENV_IDS, require_warp


def test_physics_defaults_to_mujoco_and_lists_agree():
    assert config_from_dict({}).physics == "mujoco"
    assert PHYSICS == ENV_PHYSICS == ("mujoco", "warp")


def test_unknown_physics_is_named():
    with pytest.raises(OdepolicyError, match="'physics' must be one of mujoco, warp, got 'gpu'"):
        config_from_dict({"physics": "gpu"})


def test_warp_needs_the_local_backend():
    with pytest.raises(OdepolicyError, match="backend.name"):
        config_from_dict({"physics": "warp", "backend": {"name": "ray"}})


def test_shared_start_is_refused_with_warp():
    assert config_from_dict({"shared_start": True}).shared_start is True
    with pytest.raises(OdepolicyError, match="'shared_start' is not available with physics: warp"):
        config_from_dict({"physics": "warp", "shared_start": True})


def test_unsupported_env_with_warp_is_a_one_line_error(tmp_path, capsys):
    code = main(
        ["train", "--env", "Ant-v5", "--policy", "linear", "--set", "physics=warp",
         "--out", str(tmp_path), "--quiet"]
    )  # fmt: skip
    assert code == 2
    note, err = capsys.readouterr().err.strip().splitlines()  # the note, then one error line
    assert note.startswith("odepolicy: no preset for Ant-v5")
    assert err.startswith("odepolicy: error: physics: warp has no task 'Ant-v5'")
    assert not any(tmp_path.iterdir())  # nothing written


def test_missing_extra_is_a_one_line_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if "warp" in name else real(name, *a)
    )
    with pytest.raises(OdepolicyError, match=r'pip install -e "\.\[warp\]"'):
        require_warp(WARP_ENV_IDS[0])


def test_base_install_never_imports_warp():
    code = (
        "import sys, odepolicy.cli, odepolicy.trainer, odepolicy.evaluate, odepolicy.bench\n"
        "from odepolicy.envs import make_env\n"
        "from odepolicy.config import config_from_dict\n"
        "from odepolicy.trainer import Trainer\n"
        "Trainer(config_from_dict({'env': 'Hopper-v5', 'iterations': 1}))\n"
        "bad = [m for m in ('warp', 'mujoco_warp') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_train_help_names_the_physics_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "physics=warp" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "--physics" in capsys.readouterr().out
