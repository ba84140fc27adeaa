"""Typed run configuration: YAML files, `--set key=value` overrides, validation with clear errors.

A config is a tree of dataclasses. Loading walks the YAML mapping against the dataclass fields, so
an unknown key or a value of the wrong type is an OdepolicyError that names the dotted key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import OdepolicyError
from .es.strategy import ESSettings

DEVICES = ("cpu", "cuda", "auto")
BACKENDS = ("local", "ray")  # what backends.make_backend builds (a test checks they agree)
PHYSICS = ("mujoco", "warp")  # envs.PHYSICS (a test checks they agree)

__all__ = [
    "Config",
    "PolicyConfig",
    "BackendConfig",
    "load_config",
    "config_from_dict",
    "build_typed",
    "read_yaml_mapping",
]


@dataclass
class PolicyConfig:
    name: str = "iso_odetoode"
    kwargs: dict = field(default_factory=dict)


@dataclass
class BackendConfig:
    name: str = "local"  # local | ray (BACKENDS)
    workers: int = 1  # rollout actors (ray)
    # ray: None starts a new local instance (or joins RAY_ADDRESS when a Ray job's driver sets
    # it); "auto" joins the cluster this machine runs; HOST:PORT joins that one.
    address: str | None = None


@dataclass
class Config:
    env: str = "Swimmer-v5"
    seed: int = 0
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    es: ESSettings = field(default_factory=ESSettings)
    horizon: int = 1000  # steps per episode (the env's own limit also applies)
    iterations: int = 100
    max_env_steps: int | None = None  # stop when this many training env steps are used
    target_return: float | None = None  # stop after an evaluation whose mean reaches this
    eval_every: int = 5  # evaluate the centre policy every k iterations (and at the end)
    eval_episodes: int = 5
    checkpoint_every: int = 10
    # periodic checkpoints kept (the newest K; null keeps all); latest and best always stay
    keep_checkpoints: int | None = 5
    # null: a progress.csv row per iteration. N (with max_env_steps): iterations shorter than
    # max_env_steps / N env steps share one row (an evaluation, a checkpoint and the end always
    # end a row), so the log's size follows the env-step budget, not the iteration count
    progress_rows: int | None = None
    # null: an evaluation every `eval_every` iterations. M (with max_env_steps): a periodic
    # evaluation is skipped while the run has made more than M * (env_steps / max_env_steps) +
    # M / 10 of them, so a run whose iterations shrink evaluates at most about 1.1 M times
    max_evals: int | None = None
    normalize_obs: bool = True
    # false: each direction's antithetic pair has its own start state. true: every episode of
    # an iteration starts from one start state, for tasks whose start states differ more than
    # the policies do (dm_control swimmer places its target at random: returns of 10 to 1000
    # for the same policy), so that directions are ranked on the same episode
    shared_start: bool = False
    # write the progress rows as TensorBoard event files under RUN/tensorboard/ (needs the
    # tensorboard package: pip install 'odepolicy[tensorboard]')
    tensorboard: bool = False
    device: str = "cpu"  # cpu | cuda | auto
    # mujoco: Gymnasium / dm_control on CPU workers; warp: the whole population as MuJoCo Warp
    # worlds on `device` (pip install -e ".[warp]"; five Gymnasium v5 tasks)
    physics: str = "mujoco"
    backend: BackendConfig = field(default_factory=BackendConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> Config:
        checks = [
            (self.iterations >= 1, "iterations", "must be at least 1"),
            (self.horizon >= 1, "horizon", "must be at least 1"),
            (self.eval_every >= 1, "eval_every", "must be at least 1"),
            (self.eval_episodes >= 1, "eval_episodes", "must be at least 1"),
            (self.checkpoint_every >= 1, "checkpoint_every", "must be at least 1"),
            (
                self.keep_checkpoints is None or self.keep_checkpoints >= 1,
                "keep_checkpoints",
                "must be at least 1 (or null to keep every periodic checkpoint)",
            ),
            (
                self.progress_rows is None or self.progress_rows >= 1,
                "progress_rows",
                "must be at least 1 (or null for a row every iteration)",
            ),
            (
                self.max_evals is None or self.max_evals >= 1,
                "max_evals",
                "must be at least 1 (or null for an evaluation every eval_every iterations)",
            ),
            (self.device in DEVICES, "device", f"must be one of {', '.join(DEVICES)}"),
            (
                self.physics in PHYSICS,
                "physics",
                f"must be one of {', '.join(PHYSICS)}, got {self.physics!r}",
            ),
            (
                self.backend.name in BACKENDS,
                "backend.name",
                f"must be one of {', '.join(BACKENDS)}",
            ),
            (self.backend.workers >= 1, "backend.workers", "must be at least 1"),
            (
                self.physics != "warp" or not self.shared_start,
                "shared_start",
                "is not available with physics: warp (its worlds draw a start state per direction)",
            ),
            (
                self.physics != "warp" or self.backend.name == "local",
                "backend.name",
                "must be local with physics: warp (every world runs on one device, in process)",
            ),
            (
                self.max_env_steps is None or self.max_env_steps > 0,
                "max_env_steps",
                "must be positive",
            ),
        ]
        for ok, key, why in checks:
            if not ok:
                raise OdepolicyError(f"config key {key!r} {why}")
        try:
            self.es.validate()
        except ValueError as exc:
            raise OdepolicyError(f"config: {exc}") from None
        return self


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp, key: str, kind: str = "config key") -> Any:
    """Check (and gently coerce) a YAML value against a field type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        mappings = [a for a in args if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(mappings) == 1:  # report the mapping's own errors
            return _coerce(value, mappings[0], key, kind)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, kind)
            except OdepolicyError:
                pass
        names = " or ".join(_type_name(a) for a in args)
        raise OdepolicyError(f"{kind} {key!r} must be {names}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise OdepolicyError(f"{kind} {key!r} must be a mapping, got {value!r}")
        return build_typed(tp, value, key + ".", kind)
    if origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp) or (Any,)
            if item is Any:
                return list(value)
            return [_coerce(v, item, f"{key}[{i}]", kind) for i, v in enumerate(value)]
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
    else:  # pragma: no cover - every field type is covered above
        return value
    raise OdepolicyError(f"{kind} {key!r} must be {_type_name(tp)}, got {value!r}")


def build_typed(cls, data: dict, prefix: str = "", kind: str = "config key"):
    """Build dataclass `cls` from a mapping, checking every key and value against the field
    types; an unknown key or a wrong type is an OdepolicyError naming the dotted key. `kind`
    names what the keys are in messages ("config key", "sweep key")."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            known = ", ".join(sorted(names))
            raise OdepolicyError(f"unknown {kind} {prefix + str(key)!r}; known here: {known}")
    kwargs = {k: _coerce(v, hints[k], prefix + k, kind) for k, v in data.items()}
    return cls(**kwargs)


def _set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise OdepolicyError(f"--set {key}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `key=value` strings (value parsed as YAML) to a config mapping."""
    for item in overrides:
        if "=" not in item:
            raise OdepolicyError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            raise OdepolicyError(f"--set {key}: cannot parse value {raw!r}") from None
        _set_dotted(data, key.strip(), value)
    return data


def config_from_dict(data: dict, overrides: list[str] | None = None) -> Config:
    data = apply_overrides(dict(data or {}), list(overrides or []))
    return build_typed(Config, data).validate()


def read_yaml_mapping(path: str | Path, what: str, expected: str) -> dict:
    """A YAML file that must hold a mapping; OdepolicyError (one line) names what is wrong.
    `what` names the kind of file ("config file", "sweep file"), `expected` what it holds."""
    path = Path(path)
    if not path.is_file():
        raise OdepolicyError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise OdepolicyError(f"malformed YAML in {what} {path}{where}") from None
    except UnicodeDecodeError:
        raise OdepolicyError(f"{what} {path} is not a text file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise OdepolicyError(f"{what} {path} must hold a mapping ({expected})")
    return data


def read_yaml(path: str | Path) -> dict:
    return read_yaml_mapping(path, "config file", "config keys")


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    return config_from_dict(read_yaml(path), overrides)


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)


PRESETS_ENV = "ODEPOLICY_PRESETS"


def env_slug(env: str) -> str:
    """An env id as a file-name part: `dm_control/cheetah-run-v0` -> `dmc-cheetah-run-v0`."""
    return env.replace("dm_control/", "dmc-").replace("/", "-")


def preset_dirs() -> list[Path]:
    """Where presets are looked for: $ODEPOLICY_PRESETS, ./experiments/presets, and the
    source checkout's experiments/presets (an editable install)."""
    import os

    dirs = [Path(os.environ[PRESETS_ENV])] if os.environ.get(PRESETS_ENV) else []
    dirs += [Path("experiments") / "presets"]
    dirs += [Path(__file__).resolve().parents[1] / "experiments" / "presets"]
    return dirs


def find_preset(env: str, policy: str) -> Path | None:
    """The tuned preset `<env>/<policy>.yaml` for a pair, or None."""
    for root in preset_dirs():
        path = root / env_slug(env) / f"{policy}.yaml"
        if path.is_file():
            return path
    return None


def find_campaign_pick(env: str, policy: str) -> Path | None:
    """For a pair with no preset: the comparison campaign's pick of the same policy on the same
    task, `experiments/comparison/studies/<task>/<policy>/pick.yaml` beside a presets folder
    (a pick that missed the presets' bar, or whose task is not confirmed yet), or None."""
    for root in preset_dirs():
        for pick in sorted((root.parent / "comparison" / "studies").glob(f"*/{policy}/pick.yaml")):
            try:
                if read_yaml(pick).get("env") == env:
                    return pick
            except (OdepolicyError, OSError):
                continue  # not a config this hint can read: no hint from it
    return None
