"""Figures and tables for benchmarks/learning.md from the tuning studies and their run folders.

    python benchmarks/learning_study.py STUDIES_ROOT [--out benchmarks/learning_study.png]

STUDIES_ROOT holds `<env>/<policy>/study.sqlite3` (as written by `odepolicy tune --out
ROOT/<env>/<policy>`). For every study this prints its trials (settings, score, state) and
draws the score of every finished trial against sigma, lr, directions and top-b, one row per
task, ISO-ODEtoODE and linear side by side. It also measures action saturation: the fraction
of action entries at the action bounds over one evaluation episode of each study's best trial.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

KEYS = ("es.sigma", "es.lr", "es.directions", "es.top_b")


def load_studies(root: Path) -> dict:
    import optuna

    out = {}
    for db in sorted(root.glob("*/*/study.sqlite3")):
        env, policy = db.parent.parent.name, db.parent.name
        study = optuna.load_study(study_name="odepolicy", storage=f"sqlite:///{db}")
        out[(env, policy)] = (db.parent, study)
    return out


def saturation(run_dir: Path, episodes: int = 1) -> float:
    """Fraction of action entries within 1e-6 of the action bounds over evaluation episodes."""
    from odepolicy.checkpoint import load_policy
    from odepolicy.envs import make_env

    policy, theta, normalizer, meta = load_policy(run_dir)
    env = make_env(meta["env"]["env_id"])
    mean, std = normalizer.mean_std()
    clip = normalizer.active_clip
    hits = total = 0
    prepared = policy.prepare(theta[None, :])
    for k in range(episodes):
        obs = env.reset(seed=meta["eval_seed"] + k)
        for _ in range(1000):
            z = (obs - mean) / std
            z = z if clip is None else np.clip(z, -clip, clip)
            a = policy.step(prepared, z[None, :])[0]
            hits += int(np.sum(np.isclose(a, env.action_low, atol=1e-6)))
            hits += int(np.sum(np.isclose(a, env.action_high, atol=1e-6)))
            total += a.size
            obs, _, terminated, truncated = env.step(a)
            if terminated or truncated:
                break
    env.close()
    return hits / max(total, 1)


def gradient_scale(env_id: str, policy_name: str, sigma: float, directions: int = 16) -> dict:
    """Norm of one iteration's ES gradient estimate at the initial point, per shaping.

    The update is lr * |g| (SGD), so this is the factor between `lr` and the step length; it
    depends on the shaping (ranks in [-0.5, 0.5] vs. returns scaled by their std) and on sigma.
    """
    from odepolicy.envs import env_spec
    from odepolicy.es import ESSettings, RiemannianES
    from odepolicy.policies import policy_for_env
    from odepolicy.rollout import RolloutTask, RolloutWorker

    spec = env_spec(env_id)
    policy = policy_for_env(spec, {"name": policy_name})
    theta = policy.init(np.random.default_rng(0))
    worker = RolloutWorker(env_id, {"name": policy_name}, policy=policy)
    es = RiemannianES(policy.layout, theta, ESSettings(sigma=sigma, directions=directions), 0)
    noise = es.ask()
    results = worker.run(RolloutTask(theta, 1000, noise), range(noise.population))
    returns = np.array([r.ret for r in results])
    worker.close()
    out = {"theta_norm": float(np.linalg.norm(theta))}
    for shaping in ("centered_ranks", "zscore", "topb"):
        es.settings.shaping, es.settings.top_b = shaping, max(1, directions // 2)
        grad, _ = es.gradient(noise, returns)
        out[shaping] = float(np.linalg.norm(grad))
    return out


def block_scales(policy_name: str, obs_dim: int = 17, act_dim: int = 6) -> dict:
    """RMS entry of each parameter block at initialisation (what sigma perturbs)."""
    from odepolicy.policies import make_policy

    policy = make_policy(policy_name, obs_dim, act_dim)
    parts = policy.layout.unflatten(policy.init(np.random.default_rng(0)))
    return {name: float(np.sqrt(np.mean(block**2))) for name, block in parts.items()}


def main(argv=None) -> int:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="folder of <env>/<policy>/study.sqlite3")
    parser.add_argument("--out", default="benchmarks/learning_study.png")
    parser.add_argument("--saturation", action="store_true", help="also measure saturation")
    parser.add_argument(
        "--scales", action="store_true", help="also print gradient and block scales"
    )
    args = parser.parse_args(argv)
    if args.scales:
        for name in ("linear", "iso_odetoode"):
            print(f"block RMS at init, {name} (HalfCheetah sizes): {block_scales(name)}")
            for sigma in (0.1, 0.03):
                g = gradient_scale("HalfCheetah-v5", name, sigma)
                print(f"|grad| at init, HalfCheetah-v5, {name}, sigma {sigma}: {g}")
    studies = load_studies(Path(args.root))
    envs = sorted({env for env, _ in studies})
    fig = Figure(figsize=(16, 3.2 * len(envs)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(envs), len(KEYS), squeeze=False)
    for (env, policy), (folder, study) in studies.items():
        row = envs.index(env)
        done = [t for t in study.trials if t.state.name == "COMPLETE"]
        print(f"\n## {env} {policy}: {len(study.trials)} trials, {len(done)} complete")
        # the common keys, then whatever else this study searched (shaping, a policy's own knob)
        extra = sorted({k for t in study.trials for k in t.params} - set(KEYS))
        cols = (*KEYS, *extra)
        print("| trial | state | score | " + " | ".join(cols) + " |")
        print("|---:|---|---:|" + "---:|" * len(cols))
        for t in study.trials:
            score = "" if t.value is None or t.state.name != "COMPLETE" else f"{t.value:.1f}"
            cells = " | ".join(
                f"{t.params.get(k, ''):.4g}"
                if isinstance(t.params.get(k), float)
                else str(t.params.get(k, ""))
                for k in cols
            )
            print(f"| {t.number} | {t.state.name.lower()} | {score} | {cells} |")
        for col, key in enumerate(KEYS):
            ax = axes[row][col]
            xs = [t.params[key] for t in done if key in t.params]
            ys = [t.value for t in done if key in t.params]
            from odepolicy.plotting import method_style

            ax.scatter(xs, ys, color=method_style(policy)["color"], label=policy, alpha=0.8)
            if key in ("es.sigma", "es.lr"):
                ax.set_xscale("log")
            ax.set_title(f"{env}: score vs {key}", fontsize="small")
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel("mean of last 3 evaluations")
                ax.legend(fontsize="x-small")
        if args.saturation and done:
            best = folder / f"trial_{study.best_trial.number:04d}"
            print(f"saturation of the best trial ({best.name}): {saturation(best):.3f}")
    fig.savefig(args.out, dpi=100)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
