"""Writers and the files they make: a local shard is written under a hidden temporary name and appears under
its own name only when complete (killed, failed or interrupted writers leave no partial shard there);
streams are written as before; a `pipe:` command that stops reading is reported with its status and stderr."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import threading
from pathlib import Path

import pytest
import webdataset

import fastwds
from conftest import reference

PYTHONPATH = os.path.dirname(os.path.dirname(os.path.abspath(fastwds.__file__)))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PYTHONPATH, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _names(path: Path | str) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def _temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def _sample(i: int, size: int = 10) -> dict:
    return {"__key__": f"s{i:04d}", "bin": bytes([i % 256]) * size, "cls": i}


@pytest.mark.parametrize("name", ["out.tar", "out.tgz"])
def test_a_local_shard_appears_under_its_name_only_when_closed(tmp_path: Path, name: str) -> None:
    target = tmp_path / name
    writer = fastwds.TarWriter(str(target))
    for i in range(200):
        writer.write(_sample(i, 20_000))  # 4 MB: flushed to the file several times
    assert not target.exists()
    (temp,) = _temps(tmp_path)
    assert temp.startswith(f".{name}.")
    assert os.path.getsize(tmp_path / temp) > 0
    writer.close()
    assert _temps(tmp_path) == [] and sorted(os.listdir(tmp_path)) == [name, name + ".wdsidx"]
    assert len(_names(target)) == 400
    # The permissions a plain open() gives a new file.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~umask


def test_an_existing_shard_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "out.tar"
    with fastwds.TarWriter(str(target)) as sink:
        sink.write(_sample(0))
    with fastwds.TarWriter(str(target)) as sink:
        sink.write(_sample(1))
        assert _names(target) == ["s0000.bin", "s0000.cls"], "the old shard stays until the new one is done"
    assert _names(target) == ["s0001.bin", "s0001.cls"]


_KILLED_WRITER = """
import os, sys, fastwds
sink = fastwds.ShardWriter(sys.argv[1], maxcount=1000, verbose=0)
for i in range(100):
    sink.write({"__key__": f"s{i:04d}", "bin": os.urandom(50_000)})  # incompressible: .tgz grows too
print("written", flush=True)
sys.stdin.read()  # until killed
"""


@pytest.mark.parametrize("suffix", ["tar", "tgz"])
def test_a_writer_killed_mid_shard_leaves_nothing_under_the_shard_name(tmp_path: Path, suffix: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(tmp_path / f"shard-%06d.{suffix}")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_env(),
    )
    try:
        assert proc.stdout.readline() == b"written\n"
        (temp,) = _temps(tmp_path)
        assert os.path.getsize(tmp_path / temp) > 1_000_000, "the samples went to the temporary file"
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / f"shard-000000.{suffix}").exists()
    assert os.listdir(tmp_path) == [temp]


def test_an_exception_in_a_with_block_finishes_the_shard_as_close_does_like_webdataset(
    tmp_path: Path,
) -> None:
    # The samples written before the exception are complete; close() ends the archive, as in webdataset.
    seen = []

    def post(fname: str) -> None:
        seen.append((fname, _names(fname), _temps(Path(fname).parent)))

    for library, directory in ((fastwds, tmp_path / "f"), (webdataset, tmp_path / "w")):
        directory.mkdir()
        pattern = str(directory / "shard-%06d.tar")

        def write(library=library, pattern=pattern) -> None:
            with library.ShardWriter(pattern, maxcount=2, verbose=0, post=post) as sink:
                for i in range(3):
                    sink.write(_sample(i))
                raise RuntimeError("the caller's own failure")

        with pytest.raises(RuntimeError, match="own failure"):
            reference(write)
        shards = sorted(name for name in os.listdir(directory) if not name.endswith(".wdsidx"))
        assert shards == ["shard-000000.tar", "shard-000001.tar"]
    fast, ref = seen[:2], seen[2:]
    assert [names for _, names, _ in fast] == [names for _, names, _ in ref]
    # `post` saw each shard complete under its own name, with no temporary file beside it.
    assert [(Path(f).name, temps) for f, _, temps in fast] == [
        ("shard-000000.tar", []),
        ("shard-000001.tar", []),
    ]


_FULL_DISK = """
import json, resource, signal, sys, fastwds
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (3_000_000, 3_000_000))
posted = []
try:
    with fastwds.ShardWriter(sys.argv[1], maxcount=10_000, maxsize=1e9, verbose=0, post=posted.append) as sink:
        for i in range(100):
            sink.write({"__key__": f"s{i:04d}", "bin": bytes(100_000)})
except OSError as e:
    print(json.dumps({"errno": e.errno, "posted": posted}))
"""


def test_a_failed_write_removes_the_temporary_file_and_reports_the_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path / "shard-%06d.tar")],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"errno": errno.EFBIG, "posted": []}
    assert os.listdir(tmp_path) == []


def test_a_write_after_a_failed_write_raises(tmp_path: Path, monkeypatch) -> None:
    writer = fastwds.TarWriter(str(tmp_path / "out.tar"))

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "writev", full)
    with pytest.raises(OSError, match="No space"):
        for i in range(100):
            writer.write(_sample(i, 100_000))
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="failed"):
        writer.write(_sample(0))
    writer.close()
    assert os.listdir(tmp_path) == []


def test_streams_are_written_directly(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    with fastwds.TarWriter(str(fifo)) as sink:
        sink.write(_sample(0))
    reader.join(10)
    assert tarfile.open(fileobj=io.BytesIO(received[0])).getnames() == ["s0000.bin", "s0000.cls"]
    with fastwds.TarWriter(f"pipe:cat > {tmp_path / 'piped.tar'}") as sink:
        sink.write(_sample(1))
    with fastwds.TarWriter("/dev/null") as sink:
        sink.write(_sample(2))
    assert sorted(os.listdir(tmp_path)) == ["fifo", "piped.tar"]
    assert _names(tmp_path / "piped.tar") == ["s0001.bin", "s0001.cls"]


@pytest.mark.parametrize("status", [3, 0])
def test_a_pipe_command_that_exits_before_reading_is_reported_with_its_status_and_stderr(status: int) -> None:
    command = f"echo 'upload: access denied' >&2; exit {status}"
    with pytest.raises(OSError) as info:
        with fastwds.TarWriter(f"pipe:{command}") as sink:
            for i in range(100):
                sink.write(_sample(i, 100_000))
    message = str(info.value)
    assert repr(command) in message
    assert f"status {status}" in message
    assert "upload: access denied" in message
    if status == 0:
        assert isinstance(info.value, BrokenPipeError) and "before reading all its input" in message


def test_a_pipe_commands_stderr_still_reaches_ours(capfd) -> None:
    with fastwds.TarWriter("pipe:cat > /dev/null; echo 'uploaded 1 object' >&2") as sink:
        sink.write(_sample(0))
    assert "uploaded 1 object" in capfd.readouterr().err


def test_a_failing_pipe_command_written_little_is_reported_on_close() -> None:
    script = textwrap.dedent(
        """
        import fastwds
        with fastwds.TarWriter("pipe:cat > /dev/null; echo 'quota exceeded' >&2; exit 5") as sink:
            sink.write({"__key__": "a", "txt": "x"})
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_env())
    assert done.returncode == 1
    assert "status 5" in done.stderr and "quota exceeded" in done.stderr.split("OSError")[-1]
