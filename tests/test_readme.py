"""The README's opening example works when pasted."""

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def first_python_block() -> str:
    match = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert match, "the README opens with a python example"
    return match.group(1)


def test_quick_start_is_at_most_ten_lines_of_code() -> None:
    lines = [line for line in first_python_block().splitlines() if line.strip()]
    assert len(lines) <= 10, lines


@pytest.mark.timeout(180)
def test_quick_start_runs_and_prints_every_sample_once() -> None:
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", first_python_block()],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stderr
    batches = [line for line in done.stdout.splitlines() if not line.startswith("#")]
    sizes = [int(line.split()[0]) for line in batches]
    assert sum(sizes) == 300, done.stdout
    assert all(s <= 32 for s in sizes)
