"""The command line against hostile shards and signals: `ls` escapes control characters in names as `tar tv`
does, and SIGTERM or Ctrl-C (SIGINT) stop a command with its `pipe:` children killed and its temporary output
removed, the process ending by that signal."""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import fastwds
from conftest import pids_with, wait_until
from fastwds.cli import main
from fastwds.cli.ls import quote

PYTHONPATH = os.path.dirname(os.path.dirname(os.path.abspath(fastwds.__file__)))
HOSTILE = "a\x1b[31mred\n.txt"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PYTHONPATH, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _tar(path: Path, names: list[str], uname: str = "bigdata") -> str:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 1
            info.uname = info.gname = uname
            tar.addfile(info, io.BytesIO(b"x"))
    return str(path)


def test_quote_escapes_as_gnu_tar() -> None:
    assert quote("plain name.txt") == "plain name.txt"
    assert quote(HOSTILE) == "a\\033[31mred\\n.txt"
    assert quote("b\\c\t\a\b\f\r\v\x7f") == "b\\\\c\\t\\a\\b\\f\\r\\v\\177"
    assert quote("\u00e9t\u00e9\u2603") == "\u00e9t\u00e9\u2603"
    assert quote("c1\u009b31m") == "c1\\302\\23331m"  # a C1 control: its UTF-8 bytes in octal, as tar
    assert quote("rtl\u202eoverride") == "rtl\\342\\200\\256override"  # stricter than tar, which prints it


def test_ls_prints_control_characters_escaped(tmp_path: Path, capsys) -> None:
    names = [HOSTILE, "tab\there.cls", "ok.json"]
    url = _tar(tmp_path / "hostile.tar", names, uname="ev\x1bil")
    assert main(["ls", url]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\t" not in out
    lines = out.splitlines()
    assert len(lines) == 3
    names = [re.fullmatch(r"\S+ \S+ +\d+ \S+ \S+ (.*)", line).group(1) for line in lines]
    assert names == ["a\\033[31mred\\n.txt", "tab\\there.cls", "ok.json"]
    assert all(" ev\\033il/ev\\033il " in line for line in lines)
    if shutil.which("tar"):
        listed = subprocess.run(["tar", "tvf", url], capture_output=True, text=True, check=True).stdout
        # GNU tar prints the same names (its columns are spaced differently).
        assert [line.rsplit(" ", 1)[-1] for line in listed.splitlines()] == [
            line.rsplit(" ", 1)[-1] for line in lines
        ]
    assert main(["ls", "--samples", url]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and out.count("\n") == 3 and "a\\033[31mred\\n" in out


# ---------------------------------------------------------------------------------------------------------
# signals


def _marker() -> str:
    """A `sleep` command line no other process has, to find the command's processes by."""
    return f"sleep {900 + random.random() * 99:.6f}"


def _running(marker: str) -> list[int]:
    return pids_with(marker)


def _stop(args: list[str], marker: str, signum: int, cwd: Path) -> subprocess.CompletedProcess:
    """Starts `fastwds ARGS`, waits until its `sleep` child runs, sends `signum` and waits for the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastwds", *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_until(lambda: _running(marker)), "the command's child never started"
        time.sleep(0.2)  # the CLI's handlers are in place before it starts children; give it a moment anyway
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in _running(marker):  # never leave a stray sleep behind, whatever the test says
            os.kill(pid, signal.SIGKILL)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("jobs", ["1", "3"])
def test_create_stopped_by_a_signal_kills_its_commands_and_removes_its_temporary_file(
    tmp_path: Path, signum: int, jobs: str
) -> None:
    marker = _marker()
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "list.txt").write_text(f"a.txt a.txt\nb.bin pipe:{marker}\nc.bin pipe:echo c\n")
    done = _stop(["create", "list.txt", "-j", jobs, "-o", "out.tar"], marker, signum, tmp_path)
    assert done.returncode == -signum, done.stderr
    assert wait_until(lambda: not _running(marker), 5), "the pipe: command outlived the CLI"
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "list.txt"]


@pytest.mark.parametrize("command", ["cat", "split", "stats", "ls"])
def test_readers_stopped_by_sigterm_kill_their_pipe_commands(tmp_path: Path, command: str) -> None:
    marker = _marker()
    _tar(tmp_path / "x.tar", ["k.txt"])
    url = f"pipe:{marker}; cat x.tar"
    output = {"cat": ["-o", "out.tar"], "split": ["-o", "out-%06d.tar"]}.get(command, [])
    done = _stop([command, url, *output], marker, signal.SIGTERM, tmp_path)
    assert done.returncode == -signal.SIGTERM, done.stderr
    assert wait_until(lambda: not _running(marker), 5), "the pipe: command outlived the CLI"
    assert sorted(os.listdir(tmp_path)) == ["x.tar"]
