"""The README's opening example works when pasted, and does what it says."""

import pathlib
import re
import subprocess
import sys
import tarfile

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def first_python_block() -> str:
    match = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert match, "the README opens with a python example"
    return match.group(1)


@pytest.mark.timeout(180)
def test_quick_start_writes_three_shards_and_prints_every_sample_once(tmp_path) -> None:
    code = first_python_block()
    # It writes and reads /tmp/demo-*.tar; here in a directory of its own.
    assert code.count("/tmp/demo-") == 2, code
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code.replace("/tmp/demo-", f"{tmp_path}/demo-")],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stderr

    # "three shards of 100 samples", each sample a txt and a cls member, in key order.
    shards = sorted(tmp_path.glob("demo-*.tar"))
    assert [p.name for p in shards] == [f"demo-00000{i}.tar" for i in range(3)]
    for i, path in enumerate(shards):
        with tarfile.open(path) as tar:
            names = tar.getnames()
        assert names == [
            f"s{n:04d}.{field}" for n in range(100 * i, 100 * i + 100) for field in ("txt", "cls")
        ]

    # ShardWriter's progress lines, then one line per batch: its size and its first five labels.
    lines = done.stdout.splitlines()
    progress = [line for line in lines if line.startswith("# writing")]
    assert [line.split()[2] for line in progress] == [f"{tmp_path}/demo-00000{i}.tar" for i in range(3)]
    batches = [re.fullmatch(r"(\d+) tensor\(\[([\d, ]*)\]\)", line) for line in lines if line not in progress]
    assert batches and all(batches), done.stdout
    sizes = [int(m.group(1)) for m in batches]
    assert sum(sizes) == 300 and all(1 <= s <= 32 for s in sizes), sizes
    for size, m in zip(sizes, batches):
        labels = [int(x) for x in m.group(2).split(",")]
        assert len(labels) == min(size, 5) and all(0 <= x < 10 for x in labels), m.group(0)
