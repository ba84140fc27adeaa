"""Committed results are regenerable: the summary tables equal what `plot` computes from the
committed run folders, and no committed file is over 1 MB."""

import csv
import subprocess
from pathlib import Path

import pytest

from odepolicy.plotting import find_runs, load_run, summary_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def _committed_table(path: Path) -> dict:
    with open(path, newline="") as fh:
        return {(r["task"], r["method"]): r for r in csv.DictReader(fh)}


@pytest.mark.parametrize(
    "runs, table", [("learning", "learning_summary.csv"), ("demo", "demo_summary.csv")]
)
def test_committed_summary_equals_plot_of_committed_runs(runs, table):
    folder = RESULTS / runs
    computed = summary_table([load_run(p) for p in find_runs(folder)])
    committed = _committed_table(RESULTS / table)
    assert {(r["task"], r["method"]) for r in computed} == set(committed)
    for row in computed:
        saved = committed[(row["task"], row["method"])]
        for key, value in row.items():
            if isinstance(value, float):
                assert float(saved[key]) == value, (row["task"], row["method"], key)
            else:
                assert saved[key] == str(value), (row["task"], row["method"], key)


def test_no_committed_file_is_over_1_mb():
    """1 MB (10^6 bytes, the stricter reading) per file keeps a clone small, a committed run's
    own log included: the campaigns set `progress_rows` on every trial and run and `max_evals`
    on evaluation runs, so a run whose iterations shrink to a few env steps (a Walker2d-v5
    policy that learned to fall at once) logs and evaluates by its env-step budget, not once
    per iteration."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    big = [f for f in files if f and (ROOT / f).is_file() and (ROOT / f).stat().st_size > 10**6]
    assert big == []
