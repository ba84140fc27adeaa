"""Committed results are regenerable: the summary tables equal what `plot` computes from the
committed run folders, and no committed file is over 1 MiB but a run's own log."""

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
    """1 MiB per file keeps a clone small. The exception is a committed run's own log
    (`results/<...>/progress.csv`, one row per ES iteration, which the report reads): a run whose
    policy falls at once (Walker2d-v5 with ARS's shifted survival bonus can learn that) spends
    its env steps in tens of thousands of iterations of a few steps per episode (38,557 rows,
    4.5 MiB, for Walker2d-v5 iso_odetoode_skip s102 at 5M steps), and such a log is data, not
    an artefact to trim. Up to 16 MiB: 8 directions, 7-step episodes at 5M env steps."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    sizes = {f: (ROOT / f).stat().st_size for f in files if f and (ROOT / f).is_file()}
    big = {f: n for f, n in sizes.items() if n > 2**20}
    logs = {
        f: n for f, n in big.items() if f.startswith("results/") and f.endswith("/progress.csv")
    }
    assert sorted(set(big) - set(logs)) == []
    assert {f: n for f, n in logs.items() if n > 16 * 2**20} == {}
