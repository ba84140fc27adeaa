"""The README's Python example runs as written and does what it says."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs_and_stays_on_the_manifold(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8
    first, last = lines[0].split(), lines[-1].split()
    assert float(last[1]) > float(first[1])  # the best perturbation improves
    assert all(float(line.split()[2]) < 1e-10 for line in lines)


def test_readme_states_both_commands_first():
    head = README.read_text().split("## ")[0]
    assert "make demo" in head and "make test" in head
