"""`odepolicy plot` on run folders with known numbers: figure files, the summary table, the
aggregation across seeds, the bands, and one-line errors for bad input."""

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from odepolicy import OdepolicyError
from odepolicy.cli import main
from odepolicy.plotting import aggregate, find_runs, load_run, summary_table

ROOT = Path(__file__).resolve().parents[1]
PENDULUM = ROOT / "experiments" / "inverted_pendulum.yaml"
HEADER = (
    "iteration,env_steps,episodes,wall_seconds,eval_return_mean,eval_return_std,"
    "pert_return_mean,pert_return_max,failed,steps_per_second,manifold_distance,worker_restarts"
)

# Swimmer-v5 / iso_odetoode, three seeds: (iteration, env_steps, eval return or None).
SWIMMER_ISO = {
    0: [(1, 100, None), (2, 200, 10.0), (3, 300, None), (4, 400, 30.0)],
    1: [(1, 120, None), (2, 240, 14.0), (3, 360, None), (4, 480, 60.0), (5, 600, 50.0)],
    2: [(1, 90, 5.0), (2, 180, 42.0), (3, 270, 40.0)],
}


def _write_run(folder: Path, env: str, method: str, seed: int, rows) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        f"env: {env}\nseed: {seed}\npolicy:\n  name: {method}\n  kwargs: {{hidden: 4}}\n"
    )
    lines = [HEADER]
    for it, steps, ret in rows:
        ev = "" if ret is None else repr(ret)
        std = "" if ret is None else "0.5"
        lines.append(f"{it},{steps},{4 * it},{0.25 * it},{ev},{std},1.0,2.0,0,1000.0,0.0,0")
    (folder / "progress.csv").write_text("\n".join(lines) + "\n")
    (folder / "meta.json").write_text("{}\n")
    (folder / "checkpoints").mkdir()
    return folder


def _synthetic_rows(seed: int, scale: float, n: int = 6):
    return [
        (it, it * (50 + 7 * seed), scale * it + seed if it % 2 == 0 or it == n else None)
        for it in range(1, n + 1)
    ]


@pytest.fixture
def runs_root(tmp_path) -> Path:
    root = tmp_path / "runs"
    for seed, rows in SWIMMER_ISO.items():
        _write_run(
            root / f"Swimmer-v5_iso_odetoode_s{seed}", "Swimmer-v5", "iso_odetoode", seed, rows
        )
    for seed in (0, 1):
        _write_run(
            root / f"Swimmer-v5_linear_s{seed}",
            "Swimmer-v5",
            "linear",
            seed,
            _synthetic_rows(seed, 2.0),
        )
    for method, scale in (("iso_odetoode", 3.0), ("linear", 1.5)):
        for seed in (0, 1):
            _write_run(
                root / "cheetah" / f"{method}_s{seed}",
                "HalfCheetah-v5",
                method,
                seed,
                _synthetic_rows(seed, scale, n=5),
            )
    return root


def _summary(path: Path) -> dict:
    with open(path, newline="") as fh:
        return {(r["task"], r["method"]): r for r in csv.DictReader(fh)}


def _expected_row(groups: list[list[float]], end_steps: list[int]) -> dict:
    final = np.array([g[-1] for g in groups])
    best = np.array([max(g) for g in groups])
    return {
        "seeds": len(groups),
        "final_return_mean": final.mean(),
        "final_return_std": final.std(),
        "best_return_mean": best.mean(),
        "best_return_std": best.std(),
        "env_steps_mean": np.mean(end_steps),
    }


def test_plot_writes_figure_and_exact_summary(runs_root, tmp_path, capsys):
    import matplotlib.image

    out = tmp_path / "fig" / "curves.png"
    assert main(["plot", str(runs_root), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    png, pdf = out, out.with_suffix(".pdf")
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image.shape[1] > image.shape[0]  # two task panels side by side
    assert image.std() > 0.01  # something was drawn
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 2000

    table = _summary(tmp_path / "fig" / "curves_summary.csv")
    assert set(table) == {
        ("Swimmer-v5", "iso_odetoode"),
        ("Swimmer-v5", "linear"),
        ("HalfCheetah-v5", "iso_odetoode"),
        ("HalfCheetah-v5", "linear"),
    }
    # Hand numbers: finals 30, 50, 40; bests 30, 60, 42; last rows at 400, 600, 270 steps.
    row = table[("Swimmer-v5", "iso_odetoode")]
    assert int(row["seeds"]) == 3
    assert float(row["final_return_mean"]) == 40.0
    assert float(row["final_return_std"]) == pytest.approx(np.sqrt(200 / 3), rel=1e-15)
    assert float(row["best_return_mean"]) == 44.0
    assert float(row["best_return_std"]) == pytest.approx(np.sqrt((196 + 256 + 4) / 3), rel=1e-15)
    assert float(row["env_steps_mean"]) == pytest.approx(1270 / 3, rel=1e-15)
    # Every group against its files, read here without odepolicy.
    expected: dict = {}
    for config in runs_root.rglob("config.yaml"):
        cfg = yaml.safe_load(config.read_text())
        with open(config.parent / "progress.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        evals = [float(r["eval_return_mean"]) for r in rows if r["eval_return_mean"]]
        group = expected.setdefault((cfg["env"], cfg["policy"]["name"]), ([], []))
        group[0].append(evals)
        group[1].append(int(rows[-1]["env_steps"]))
    assert set(expected) == set(table)
    for key, (evals, ends) in expected.items():
        for column, value in _expected_row(evals, ends).items():
            assert float(table[key][column]) == value, (key, column)

    md = (tmp_path / "fig" / "curves_summary.md").read_text()
    row = "| Swimmer-v5 | iso_odetoode | 3 | 40.00 ± 8.16 | 44.00 ± 12.33 | 423 "
    assert row + "| not reached (0/3 reached 325) |" in md
    assert md in stdout


def test_aggregate_mean_is_mean_of_interpolated_seeds(runs_root):
    runs = [load_run(p) for p in find_runs([runs_root])]
    curves = {(c.task, c.method): c for c in aggregate(runs, "timesteps", "std")}
    curve = curves[("Swimmer-v5", "iso_odetoode")]
    # Seeds overlap from 240 steps (seed 1's first eval) to 270 (seed 2's last).
    assert curve.seeds == 3
    np.testing.assert_array_equal(curve.grid, [240.0, 270.0])
    at_240 = [10.0 + (30.0 - 10.0) * 40 / 200, 14.0, 42.0 + (40.0 - 42.0) * 60 / 90]
    at_270 = [10.0 + (30.0 - 10.0) * 70 / 200, 14.0 + (60.0 - 14.0) * 30 / 240, 40.0]
    assert curve.mean[0] == pytest.approx(np.mean(at_240), rel=1e-14)
    assert curve.mean[1] == pytest.approx(np.mean(at_270), rel=1e-14)
    np.testing.assert_allclose(curve.lo, curve.mean - np.std([at_240, at_270], axis=1))
    np.testing.assert_allclose(curve.hi, curve.mean + np.std([at_240, at_270], axis=1))

    table = {(r["task"], r["method"]): r for r in summary_table(runs)}
    assert table[("Swimmer-v5", "iso_odetoode")]["seeds"] == curve.seeds
    assert table[("Swimmer-v5", "iso_odetoode")]["final_return_mean"] == 40.0

    by_iter = {(c.task, c.method): c for c in aggregate(runs, "iterations", "none")}
    curve = by_iter[("Swimmer-v5", "iso_odetoode")]
    np.testing.assert_array_equal(curve.grid, [2.0, 3.0])
    assert curve.mean[1] == pytest.approx(np.mean([20.0, 14.0 + 46.0 / 2, 40.0]), rel=1e-14)
    assert curve.lo is None and curve.hi is None


def test_bootstrap_band_contains_mean_and_is_deterministic(runs_root):
    runs = [load_run(p) for p in find_runs([runs_root])]
    first = aggregate(runs, "timesteps", "bootstrap")
    second = aggregate(runs, "timesteps", "bootstrap")
    assert len(first) == 4
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.lo, b.lo)
        np.testing.assert_array_equal(a.hi, b.hi)
        assert np.all(a.lo <= a.mean) and np.all(a.mean <= a.hi)
        # A resampled mean never leaves the range of the seeds.
        assert np.all(a.lo >= a.values.min(axis=0)) and np.all(a.hi <= a.values.max(axis=0))
    iso = next(c for c in first if (c.task, c.method) == ("Swimmer-v5", "iso_odetoode"))
    assert np.all(iso.hi - iso.lo > 1.0)  # seeds disagree, so the interval is not a point


def test_table_stem_and_x_axes(runs_root, tmp_path):
    run = runs_root / "Swimmer-v5_iso_odetoode_s0"
    for x in ("timesteps", "iterations", "seconds"):
        out = tmp_path / x / "fig.png"
        stem = tmp_path / "tables" / x
        code = main(["plot", str(run), "--out", str(out), "--x", x, "--table", str(stem)])
        assert code == 0
        assert out.is_file() and out.with_suffix(".pdf").is_file()
        assert (tmp_path / "tables" / f"{x}_summary.csv").is_file()
        assert (tmp_path / "tables" / f"{x}_summary.md").is_file()
        assert not (tmp_path / x / "fig_summary.csv").exists()


def test_runs_without_evaluation_are_skipped(runs_root, tmp_path, capsys):
    fresh = runs_root / "Swimmer-v5_linear_s9"
    _write_run(fresh, "Swimmer-v5", "linear", 9, [(1, 100, None)])
    assert main(["plot", str(runs_root), "--out", str(tmp_path / "c.png")]) == 0
    captured = capsys.readouterr()
    assert "skipping" in captured.err and "Swimmer-v5_linear_s9" in captured.err
    assert int(_summary(tmp_path / "c_summary.csv")[("Swimmer-v5", "linear")]["seeds"]) == 2
    assert main(["plot", str(fresh), "--out", str(tmp_path / "d.png")]) == 2


def _assert_one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("odepolicy: error: ")
    for needle in needles:
        assert needle in lines[0]


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    out = str(tmp_path / "out.png")
    missing = tmp_path / "nowhere"
    assert main(["plot", str(missing), "--out", out]) == 2
    _assert_one_line_error(capsys, "nowhere")

    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no runs here\n")
    assert main(["plot", str(empty), "--out", out]) == 2
    _assert_one_line_error(capsys, "no run folders", "empty")

    bad = _write_run(tmp_path / "bad", "Swimmer-v5", "linear", 0, [(1, 100, 1.0), (2, 200, 2.0)])
    text = (bad / "progress.csv").read_text().replace("\n2,200,", "\n2,lots,")
    (bad / "progress.csv").write_text(text)
    assert main(["plot", str(bad), "--out", out]) == 2
    _assert_one_line_error(capsys, "progress.csv", "line 3", "env_steps")

    (bad / "progress.csv").write_text("step,reward\n1,2\n")
    assert main(["plot", str(bad), "--out", out]) == 2
    _assert_one_line_error(capsys, "progress.csv", "eval_return_mean")

    (bad / "progress.csv").write_bytes(b"\xff\xfe\x00garbage")
    assert main(["plot", str(bad), "--out", out]) == 2
    _assert_one_line_error(capsys, "progress.csv")

    assert not Path(out).exists()


def test_load_run_rejects_a_config_without_env(tmp_path):
    run = _write_run(tmp_path / "r", "Swimmer-v5", "linear", 0, [(1, 100, 1.0)])
    (run / "config.yaml").write_text("seed: 0\npolicy: {name: linear}\n")
    with pytest.raises(OdepolicyError, match="no env"):
        load_run(run)


def test_plot_runs_made_by_the_trainer(tmp_path, capsys):
    tiny = [
        "--set", "iterations=2",
        "--set", "es.directions=2",
        "--set", "horizon=10",
        "--set", "eval_every=1",
        "--set", "eval_episodes=1",
        "--set", "policy.kwargs.hidden=4",
        "--quiet",
    ]  # fmt: skip
    runs = tmp_path / "runs"
    for seed in (0, 1):
        args = ["train", str(PENDULUM), "--out", str(runs), "--name", f"s{seed}"]
        assert main([*args, "--set", f"seed={seed}", *tiny]) == 0
    out = tmp_path / "curves.png"
    assert main(["plot", str(runs), "--out", str(out), "--band", "bootstrap"]) == 0
    assert out.is_file() and out.with_suffix(".pdf").is_file()
    (row,) = _summary(tmp_path / "curves_summary.csv").values()
    assert (row["task"], row["method"], int(row["seeds"])) == (
        "InvertedPendulum-v5",
        "iso_odetoode",
        2,
    )
    finals, bests, ends = [], [], []
    for seed in (0, 1):
        with open(runs / f"s{seed}" / "progress.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        evals = [float(r["eval_return_mean"]) for r in rows]
        finals.append(evals[-1])
        bests.append(max(evals))
        ends.append(int(rows[-1]["env_steps"]))
    assert float(row["final_return_mean"]) == np.mean(finals)
    assert float(row["final_return_std"]) == np.std(finals)
    assert float(row["best_return_mean"]) == np.mean(bests)
    assert float(row["best_return_std"]) == np.std(bests)
    assert float(row["env_steps_mean"]) == np.mean(ends)


def test_steps_to_threshold_and_readable_ticks(tmp_path):
    from odepolicy.plotting import _millions, steps_to_threshold, summary_table

    for seed, rets in enumerate([[100, 330, 200], [50, 60, 400], [10, 20, 30]]):
        run = tmp_path / f"s{seed}"
        run.mkdir()
        (run / "config.yaml").write_text(
            f"env: Swimmer-v5\nseed: {seed}\npolicy: {{name: linear}}\n"
        )
        rows = ["iteration,env_steps,wall_seconds,eval_return_mean"]
        rows += [f"{i + 1},{(i + 1) * 500000},1.0,{r}" for i, r in enumerate(rets)]
        (run / "progress.csv").write_text("\n".join(rows) + "\n")
    runs = [load_run(p) for p in find_runs(tmp_path)]
    assert [steps_to_threshold(r, 325.0) for r in runs] == [1e6, 1.5e6, None]
    (row,) = summary_table(runs)
    assert row["seeds_reached"] == 2 and row["threshold"] == 325.0
    assert row["steps_to_threshold_mean"] == 1.25e6 and row["steps_to_threshold_std"] == 0.25e6
    assert [_millions(v) for v in (0, 5e5, 1e6, 2.5e6, 250)] == ["0", "500k", "1M", "2.5M", "250"]


def test_the_legend_is_clear_of_every_panel_and_the_title(tmp_path):
    """The legend sits below the panels: its box overlaps no panel and not the title, for one
    panel and for a grid of four with five methods."""
    from matplotlib.figure import Figure

    from odepolicy.plotting import plot_runs

    captured = []
    original = Figure.savefig

    def grab(self, *args, **kwargs):
        captured.append(self)
        return original(self, *args, **kwargs)

    for tasks in (["Swimmer-v5"], ["Swimmer-v5", "Hopper-v5", "HalfCheetah-v5", "Walker2d-v5"]):
        root = tmp_path / str(len(tasks))
        for task in tasks:
            for method in ("iso_odetoode", "gated_odetoode", "linear", "deepnet", "hypernet"):
                for seed in (0, 1):
                    rows = _synthetic_rows(seed, 2.0)
                    _write_run(root / f"{task}_{method}_s{seed}", task, method, seed, rows)
        Figure.savefig = grab
        try:
            plot_runs([load_run(p) for p in find_runs([root])], root / "out.png")
        finally:
            Figure.savefig = original
        fig = captured[-1]
        renderer = fig.canvas.get_renderer()
        (legend,) = fig.legends
        box = legend.get_window_extent(renderer)
        panels = [ax for ax in fig.axes if ax.get_visible()]
        assert len(panels) == len(tasks)
        for ax in panels:
            assert not box.overlaps(ax.get_tightbbox(renderer)), ax.get_title()
        assert not box.overlaps(fig._suptitle.get_window_extent(renderer))


def test_a_panel_spans_its_budget_or_its_furthest_curve(tmp_path):
    """`budgets` (the campaign report): a task's panel runs from 0 to its budget while its runs
    are short of it, and to its furthest curve once one goes past it; tasks without a budget
    keep matplotlib's own span."""
    from matplotlib.figure import Figure

    from odepolicy.plotting import plot_runs

    for task in ("Swimmer-v5", "Hopper-v5", "HalfCheetah-v5"):
        for seed in (0, 1):  # evaluations to 300 (seed 0) and 342 env steps: the mean ends at 300
            _write_run(tmp_path / f"{task}_linear_s{seed}", task, "linear", seed,
                       _synthetic_rows(seed, 2.0))  # fmt: skip
    captured = []
    original = Figure.savefig

    def grab(self, *args, **kwargs):
        captured.append(self)
        return original(self, *args, **kwargs)

    Figure.savefig = grab
    try:
        runs = [load_run(p) for p in find_runs([tmp_path])]
        plot_runs(runs, tmp_path / "out.png", budgets={"Swimmer-v5": 10_000, "Hopper-v5": 100})
    finally:
        Figure.savefig = original
    spans = {ax.get_title(): ax.get_xlim() for ax in captured[-1].axes if ax.get_visible()}
    assert spans["Swimmer-v5"] == pytest.approx((0.0, 10_200.0))
    assert spans["Hopper-v5"] == pytest.approx((0.0, 1.02 * 300))  # past the budget of 100
    assert spans["HalfCheetah-v5"][0] > 0  # matplotlib's span: from the first point, less a margin
