"""Matching parameter counts across policy families.

"Ode to an ODE" compares families at similar, but not smaller, parameter counts than
ISO-ODEtoODE. `match_size` grows one size option of a family (the hidden size for most, the
MLP width for BaseODE, the hyper-network width for HyperNet, whose hidden size stays at 16 as in
the paper) to the smallest value whose count reaches the target. `python -m
odepolicy.policies.sizing` prints the table for HalfCheetah and Humanoid.
"""

from __future__ import annotations

from typing import Any

from . import POLICIES, make_policy

__all__ = ["SIZE_OPTION", "count_params", "match_size", "parameter_table"]

# The option grown by match_size, per family (None: the size is fixed by the dimensions).
SIZE_OPTION: dict[str, str | None] = {
    "iso_odetoode": "hidden",
    "gated_odetoode": "hidden",
    "base_ode": "width",
    "nanode": "hidden",
    "hypernet": "hyper_width",
    "deepnet": "hidden",
    "deep_resnet": "hidden",
    "linear": None,
}


def count_params(name: str, obs_dim: int, act_dim: int, **kwargs: Any) -> int:
    return make_policy(name, obs_dim, act_dim, **kwargs).num_params


def match_size(name: str, obs_dim: int, act_dim: int, target: int, **fixed: Any) -> dict:
    """Kwargs (`fixed` plus the family's size option) giving the smallest parameter count that
    is >= target. If even size 1 exceeds the target, size 1 is returned (the smallest count the
    family can have with the other options fixed)."""
    if name not in POLICIES:
        make_policy(name, obs_dim, act_dim)  # raises the usual OdepolicyError
    key = SIZE_OPTION[name]
    if key is None:
        return dict(fixed)
    if key in fixed:
        raise ValueError(f"{key} is the option match_size varies for {name}; do not fix it")

    def count(size: int) -> int:
        return count_params(name, obs_dim, act_dim, **fixed, **{key: size})

    # The count grows with the size: double until the target is reached, then bisect.
    hi = 1
    while count(hi) < target:
        hi *= 2
    lo = hi // 2  # count(lo) < target, or lo == 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(mid) >= target:
            hi = mid
        else:
            lo = mid
    return {**fixed, key: hi}


def parameter_table(obs_dim: int, act_dim: int, hidden: int) -> list[tuple[str, dict, int]]:
    """(name, kwargs, num_params) for every family, sized against ISO-ODEtoODE of `hidden`."""
    target = count_params("iso_odetoode", obs_dim, act_dim, hidden=hidden)
    fixed: dict[str, dict] = {
        "iso_odetoode": {},
        "base_ode": {"hidden": hidden},
        "hypernet": {"hidden": 16},
    }
    rows = []
    for name in POLICIES:
        if name == "iso_odetoode":
            kwargs: dict = {"hidden": hidden}
        else:
            kwargs = match_size(name, obs_dim, act_dim, target, **fixed.get(name, {}))
        rows.append((name, kwargs, count_params(name, obs_dim, act_dim, **kwargs)))
    return rows


def markdown_table(title: str, obs_dim: int, act_dim: int, hidden: int) -> str:
    rows = parameter_table(obs_dim, act_dim, hidden)
    lines = [
        f"### {title} (obs {obs_dim}, act {act_dim}; ISO-ODEtoODE hidden {hidden})",
        "",
        "| policy | size options | parameters |",
        "|---|---|---:|",
    ]
    for name, kwargs, n in rows:
        opts = ", ".join(f"{k}={v}" for k, v in kwargs.items()) or "-"
        lines.append(f"| {name} | {opts} | {n} |")
    return "\n".join(lines)


def main() -> None:
    print("## Parameter counts matched to ISO-ODEtoODE (smallest count >= ISO's)\n")
    print(markdown_table("HalfCheetah", 17, 6, 16))
    print()
    print(markdown_table("Humanoid", 348, 17, 64))


if __name__ == "__main__":
    main()
