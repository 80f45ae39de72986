"""The `fastwds` command line end to end: create, ls, stats, cat, split, bench, run as `python -m fastwds`
and in-process through `fastwds.cli.main`, on shards generated in tmp_path."""

from __future__ import annotations

import gzip
import io
import os
import pty
import random
import re
import stat
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import webdataset
import webdataset.filters as ref_filters

import fastwds
from conftest import reference, write_shards, write_wds
from fastwds import shardindex
from fastwds.cli import main
from fastwds.cli._util import parse_size
from fastwds.cli.progress import Progress
from remote_servers import MotoS3, unique_bucket

PYTHONPATH = os.path.dirname(os.path.dirname(os.path.abspath(fastwds.__file__)))
COMMANDS = ["create", "ls", "stats", "cat", "split", "index", "bench"]


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PYTHONPATH, *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_subprocess(args: list[str], **kw) -> subprocess.CompletedProcess:
    """`python -m fastwds ARGS`, capturing stdout (bytes) and stderr (text)."""
    return subprocess.run(
        [sys.executable, "-m", "fastwds", *args], capture_output=True, env=cli_env(), timeout=120, **kw
    )


class Result:
    """What a run printed and returned: `code`, `out` (text), `err` (text)."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture(params=["subprocess", "inprocess"])
def cli(request, capsys):
    """Runs the command line either as `python -m fastwds` or as `fastwds.cli.main([...])`."""

    def run(*args: str) -> Result:
        if request.param == "subprocess":
            proc = run_subprocess(list(args))
            return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def inprocess(capsys, *args: str) -> Result:
    capsys.readouterr()
    code = main(list(args))
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


def tar_members(path_or_bytes) -> list[tuple[str, bytes]]:
    """(name, data) of each member, read with Python's tarfile."""
    fileobj = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else open(path_or_bytes, "rb")
    with fileobj, tarfile.open(fileobj=fileobj, mode="r:*") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def ref_samples(urls) -> list[dict]:
    """Samples as webdataset 1.0.2 reads them (without __url__ and __local_path__)."""

    def read():
        return [
            {k: v for k, v in s.items() if k not in ("__url__", "__local_path__")}
            for s in webdataset.WebDataset(urls, shardshuffle=False)
        ]

    return reference(read)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---------------------------------------------------------------------------------------------------------
# create


def write_list(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_create_writes_members_in_list_order(cli, tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8 jpeg bytes")
    (tmp_path / "big.bin").write_bytes(bytes(range(256)) * 40)
    listfile = write_list(
        tmp_path / "list.txt",
        [
            "# a comment, then a blank line",
            "",
            f"s1.jpg {tmp_path / 'a.jpg'}",
            "s1.txt pipe:printf 'hello world'",
            f"s0.bin file:{tmp_path / 'big.bin'}",
            "s0.json pipe:echo '{\"a\": 1}'",
        ],
    )
    out = tmp_path / "out.tar"
    result = cli("create", listfile, "-o", str(out))
    assert result.code == 0, result.err
    assert result.out == "" and result.err == ""
    assert tar_members(out) == [
        ("s1.jpg", b"\xff\xd8 jpeg bytes"),
        ("s1.txt", b"hello world"),
        ("s0.bin", bytes(range(256)) * 40),
        ("s0.json", b'{"a": 1}\n'),
    ]
    samples = ref_samples(str(out))
    assert [s["__key__"] for s in samples] == ["s1", "s0"]
    assert samples[1]["json"] == b'{"a": 1}\n'
    assert sorted(leftovers(tmp_path)) == ["a.jpg", "big.bin", "list.txt", "out.tar"]


def test_create_tgz_is_gzipped(capsys, tmp_path):
    listfile = write_list(
        tmp_path / "list.txt", [f"k.txt pipe:seq 1 {n}" for n in (3,)] + ["k.cls pipe:echo 7"]
    )
    result = inprocess(capsys, "create", listfile, "-o", str(tmp_path / "out.tgz"))
    assert result.code == 0, result.err
    raw = (tmp_path / "out.tgz").read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    assert tar_members(gzip.decompress(raw)) == [("k.txt", b"1\n2\n3\n"), ("k.cls", b"7\n")]


def test_create_streams_stdin_to_stdout(tmp_path):
    (tmp_path / "x.txt").write_text("from a file")
    lines = f"x.txt {tmp_path / 'x.txt'}\nx.cls pipe:echo 3\n"
    proc = run_subprocess(["create", "-", "-o", "-"], input=lines.encode())
    assert proc.returncode == 0, proc.stderr
    assert tar_members(proc.stdout) == [("x.txt", b"from a file"), ("x.cls", b"3\n")]
    # And end to end through a pipe into another command reading stdin.
    fastwds_cmd = f"{sys.executable} -m fastwds"
    shell = f"printf '%s' '{lines}' | {fastwds_cmd} create - -o - | {fastwds_cmd} ls --samples -"
    piped = subprocess.run(shell, shell=True, capture_output=True, env=cli_env(), timeout=120, text=True)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == "x  txt=11 cls=2\n"


def test_create_parallel_jobs_keep_list_order(capsys, tmp_path):
    # The first sources finish last; the archive still has the list's order.
    lines = [f"m{i}.txt pipe:sleep 0.{4 - i}; echo {i}" for i in range(5)]
    listfile = write_list(tmp_path / "list.txt", lines)
    result = inprocess(capsys, "create", listfile, "-o", str(tmp_path / "out.tar"), "--jobs", "4")
    assert result.code == 0, result.err
    assert tar_members(tmp_path / "out.tar") == [(f"m{i}.txt", f"{i}\n".encode()) for i in range(5)]


def test_create_missing_file_names_the_line_and_leaves_no_output(cli, tmp_path):
    listfile = write_list(tmp_path / "list.txt", ["a.txt pipe:echo a", f"b.txt {tmp_path / 'nothere.txt'}"])
    out = tmp_path / "out.tar"
    result = cli("create", listfile, "-o", str(out))
    assert result.code == 1
    assert f"{listfile}:2:" in result.err
    assert "nothere.txt" in result.err and "No such file" in result.err
    assert "Traceback" not in result.err
    assert leftovers(tmp_path) == ["list.txt"]


def test_create_failing_command_names_line_status_and_stderr(cli, tmp_path):
    listfile = write_list(
        tmp_path / "list.txt",
        [
            "a.txt pipe:echo a",
            "b.txt pipe:echo b",
            "c.txt pipe:echo partial; echo 'curl: (22) 404 Not Found' >&2; exit 22",
        ],
    )
    out = tmp_path / "out.tar"
    out.write_bytes(b"an older archive")
    result = cli("create", listfile, "-o", str(out))
    assert result.code == 1
    assert f"{listfile}:3:" in result.err
    assert "exit 22" in result.err and "status 22" in result.err
    assert "curl: (22) 404 Not Found" in result.err
    # The older file under the final name is untouched, and no temporary file is left.
    assert out.read_bytes() == b"an older archive"
    assert leftovers(tmp_path) == ["list.txt", "out.tar"]


def test_create_failure_on_stdout_leaves_a_stream_readers_reject(tmp_path):
    lines = "a.txt pipe:echo a\nb.txt pipe:exit 5\n"
    proc = run_subprocess(["create", "-", "-o", "-"], input=lines.encode())
    assert proc.returncode == 1
    assert "<stdin>:2:" in proc.stderr.decode() and "status 5" in proc.stderr.decode()
    partial = tmp_path / "partial.tar"
    partial.write_bytes(proc.stdout)
    # No end-of-archive marker was written, so the cut is detected, not taken for a short archive.
    with pytest.raises(fastwds.ShardError, match="end-of-archive"):
        list(fastwds.ShardReader([str(partial)]))


def test_create_failure_stops_the_commands_still_running(capsys, tmp_path):
    # With --jobs, a failure kills the sources fetched ahead (and what their shells started) at once.
    marker = tmp_path / "finished"
    listfile = write_list(
        tmp_path / "list.txt",
        ["a.txt pipe:sleep 0.3; exit 4", f"b.txt pipe:sleep 20; touch {marker}; echo b"],
    )
    start = time.monotonic()
    result = inprocess(capsys, "create", listfile, "-o", str(tmp_path / "out.tar"), "--jobs", "2")
    assert result.code == 1 and f"{listfile}:1:" in result.err and "status 4" in result.err
    assert time.monotonic() - start < 10
    assert leftovers(tmp_path) == ["list.txt"]


def test_create_rejects_malformed_lines(capsys, tmp_path):
    listfile = write_list(tmp_path / "list.txt", ["ok.txt pipe:echo", "lonely-name"])
    result = inprocess(capsys, "create", listfile, "-o", str(tmp_path / "out.tar"))
    assert result.code == 1
    assert f"{listfile}:2: expected 'ARCHIVE-NAME SOURCE'" in result.err
    assert leftovers(tmp_path) == ["list.txt"]


def test_create_long_and_unicode_names_round_trip(capsys, tmp_path):
    long_name = "d/" * 70 + "sample.txt"
    listfile = write_list(tmp_path / "list.txt", [f"{long_name} pipe:echo long", "é.txt pipe:echo accent"])
    result = inprocess(capsys, "create", listfile, "-o", str(tmp_path / "out.tar"), "--mtime", "1700000000")
    assert result.code == 0, result.err
    assert tar_members(tmp_path / "out.tar") == [(long_name, b"long\n"), ("é.txt", b"accent\n")]
    with tarfile.open(tmp_path / "out.tar") as tar:
        assert {m.mtime for m in tar} == {1700000000}


# ---------------------------------------------------------------------------------------------------------
# ls


def tar_tv_lines(path) -> str:
    """`tar tv`-style lines for the regular members of a tar, from Python's tarfile."""
    lines = []
    with tarfile.open(path) as tar:
        for m in tar:
            if m.isfile():
                mode = stat.filemode(stat.S_IFREG | (m.mode & 0o7777))
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(int(m.mtime // 1)))
                owner = f"{m.uname or m.uid}/{m.gname or m.gid}"
                lines.append(f"{mode} {owner} {m.size:>12} {when} {m.name}\n")
    return "".join(lines)


def test_ls_lists_members_like_tar(cli, tmp_path):
    [path] = write_shards(tmp_path, nshards=1, per_shard=3)
    result = cli("ls", path)
    assert result.code == 0, result.err
    assert result.out == tar_tv_lines(path)
    assert len(result.out.splitlines()) == 9


def test_ls_shows_modes_owners_and_times_from_ustar_gnu_and_pax_headers(capsys, tmp_path):
    members = [
        # (format, name, mode, uid, gid, uname, gname, mtime)
        (tarfile.USTAR_FORMAT, "a.txt", 0o640, 1234, 99, "alice", "staff", 1_700_000_000),
        (tarfile.GNU_FORMAT, "g/" + "n" * 120 + ".bin", 0o755, 0o7777777 + 5, 7, "", "", 86_400),
        (tarfile.PAX_FORMAT, "p.txt", 0o600, 10**10, 3, "bøb", "grüppe", 1_700_000_000.75),
    ]
    data = b"payload"
    for i, (fmt, name, mode, uid, gid, uname, gname, mtime) in enumerate(members):
        with tarfile.open(tmp_path / f"t{i}.tar", "w", format=fmt) as tar:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid = len(data), mode, uid, gid
            info.uname, info.gname, info.mtime = uname, gname, mtime
            tar.addfile(info, io.BytesIO(data))
            directory = tarfile.TarInfo("dir")
            directory.type = tarfile.DIRTYPE
            tar.addfile(directory)  # not a regular file: not listed
        path = tmp_path / f"t{i}.tar"
        [member] = list(fastwds._core.tar_members(str(path), info=True))
        assert (member["mode"], member["uid"], member["gid"]) == (mode, uid, gid)
        assert (member["uname"], member["gname"], member["mtime"]) == (uname, gname, int(mtime))
        result = inprocess(capsys, "ls", str(path))
        assert result.code == 0 and result.out == tar_tv_lines(path)


def test_ls_samples_shows_fields_and_sizes(capsys, tmp_path):
    paths = write_shards(tmp_path, nshards=2, per_shard=2, writer="wds")
    result = inprocess(capsys, "ls", "--samples", str(tmp_path / "shard-{000000..000001}.tar"))
    assert result.code == 0, result.err
    blocks = result.out.split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [f"{p}:" for p in paths]
    lines = [line for b in blocks for line in b.splitlines()[1:]]
    expected = [
        f"{s['__key__']}  " + " ".join(f"{k}={len(v)}" for k, v in s.items() if not k.startswith("__"))
        for s in ref_samples(paths)
    ]
    assert lines == expected


def test_ls_reads_gzip_and_reports_missing_shards(capsys, tmp_path):
    [path] = write_shards(tmp_path, nshards=1, per_shard=1, gz=True)
    result = inprocess(capsys, "ls", path)
    assert result.code == 0 and [line.split()[-1] for line in result.out.splitlines()] == [
        "sample000000.cls",
        "sample000000.txt",
        "sample000000.json",
    ]
    result = inprocess(capsys, "ls", str(tmp_path / "missing.tar"))
    assert result.code == 1
    assert "missing.tar" in result.err and "No such file" in result.err


# ---------------------------------------------------------------------------------------------------------
# stats


def parse_stats(text: str) -> dict:
    lines = text.splitlines()
    stats = {}
    for line in lines:
        parts = line.split()
        if parts[0] in ("shards", "samples", "bytes"):
            stats[parts[0]] = int(parts[1].replace(",", ""))
        elif parts[0] != "field" and len(parts) == 4:
            stats[parts[0]] = (
                int(parts[1].replace(",", "")),
                int(parts[2].replace(",", "")),
                float(parts[3].replace(",", "")),
            )
    return stats


def test_stats_counts_samples_and_field_sizes(cli, tmp_path):
    paths = write_shards(tmp_path, nshards=3, per_shard=4, writer="wds")
    result = cli("stats", str(tmp_path / "shard-{000000..000002}.tar"))
    assert result.code == 0, result.err
    samples = ref_samples(paths)
    stats = parse_stats(result.out)
    assert stats["shards"] == 3 and stats["samples"] == len(samples) == 12
    for field in ("cls", "txt", "json"):
        total = sum(len(s[field]) for s in samples)
        assert stats[field] == (12, total, round(total / 12, 1))
    assert stats["bytes"] == sum(stats[f][1] for f in ("cls", "txt", "json"))


def test_stats_per_shard(capsys, tmp_path):
    paths = write_shards(tmp_path, nshards=2, per_shard=3)
    result = inprocess(capsys, "stats", "--per-shard", *paths)
    assert result.code == 0
    assert result.out.splitlines()[:2] == [f"{3:>10,}  {p}" for p in paths]


def truncate(path: str, keep: int) -> str:
    data = Path(path).read_bytes()
    cut = Path(path).with_name("cut-" + Path(path).name)
    cut.write_bytes(data[:keep])
    return str(cut)


@pytest.mark.parametrize("cut", [3000, 5120 + 100])
def test_stats_names_shard_and_offset_of_corruption(cli, tmp_path, cut):
    paths = write_shards(tmp_path, nshards=2, per_shard=5)
    damaged = truncate(paths[1], cut)
    with pytest.raises(fastwds.ShardError) as info:
        list(fastwds.ShardReader([damaged]))
    result = cli("stats", paths[0], damaged)
    assert result.code == 1
    assert result.out == ""
    match = re.search(r"byte offset (\d+)", result.err)
    assert damaged in result.err and match, result.err
    assert int(match.group(1)) == info.value.offset
    assert 0 < info.value.offset <= cut


def test_stats_keep_going_reports_every_damaged_shard(capsys, tmp_path):
    paths = write_shards(tmp_path, nshards=3, per_shard=5)
    bad1, bad2 = truncate(paths[0], 2000), truncate(paths[2], 4000)
    result = inprocess(capsys, "stats", "--keep-going", bad1, paths[1], bad2)
    assert result.code == 1
    assert bad1 in result.err and bad2 in result.err
    assert "2 of 3 shards are damaged" in result.err
    stats = parse_stats(result.out)
    assert stats["shards"] == 3 and stats["samples"] >= 5


def test_stats_reports_a_field_given_twice(cli, tmp_path):
    path = tmp_path / "dup.tar"
    with tarfile.open(path, "w") as tar:
        for name in ("a.txt", "a.txt", "b.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    result = cli("stats", str(path))
    assert result.code == 1
    assert str(path) in result.err and "twice" in result.err and "Traceback" not in result.err


def test_stats_failing_pipe_names_the_exit_status(capsys, tmp_path):
    [path] = write_shards(tmp_path, nshards=1, per_shard=2)
    result = inprocess(capsys, "stats", f"pipe:cat {path}; exit 3")
    assert result.code == 1
    assert "status 3" in result.err and f"pipe:cat {path}; exit 3" in result.err


# ---------------------------------------------------------------------------------------------------------
# cat


def test_cat_concatenates_in_order(cli, tmp_path):
    paths = write_shards(tmp_path / "in", nshards=3, per_shard=4, writer="wds")
    out = tmp_path / "all.tar"
    result = cli("cat", str(tmp_path / "in" / "shard-{000000..000002}.tar"), "-o", str(out))
    assert result.code == 0, result.err
    assert ref_samples(str(out)) == ref_samples(paths)
    assert leftovers(tmp_path) == ["all.tar", "in"]


def test_cat_slice_and_select(capsys, tmp_path):
    paths = write_shards(tmp_path, nshards=3, per_shard=4)
    out = tmp_path / "out.tgz"
    result = inprocess(capsys, "cat", *paths, "--slice", "3:10", "--select", "txt,cls", "-o", str(out))
    assert result.code == 0, result.err
    assert out.read_bytes()[:2] == b"\x1f\x8b"
    expected = [{"__key__": s["__key__"], "cls": s["cls"], "txt": s["txt"]} for s in ref_samples(paths)[3:10]]
    assert ref_samples(str(out)) == expected
    # Member order inside a sample is the input's, whatever the order of --select.
    assert [name for name, _ in tar_members(out.read_bytes())][:2] == ["sample000003.cls", "sample000003.txt"]


def test_cat_slice_forms(capsys, tmp_path):
    paths = write_shards(tmp_path, nshards=2, per_shard=5)
    keys = [s["__key__"] for s in ref_samples(paths)]
    for spec, expected in (("4", keys[:4]), ("7:", keys[7:]), (":2", keys[:2]), ("1:9:3", keys[1:9:3])):
        out = tmp_path / f"out-{spec.replace(':', '_')}.tar"
        assert inprocess(capsys, "cat", *paths, "--slice", spec, "-o", str(out)).code == 0
        assert [s["__key__"] for s in ref_samples(str(out))] == expected, spec
    result = inprocess(capsys, "cat", *paths, "--slice", "a:b", "-o", str(tmp_path / "x.tar"))
    assert result.code == 2 and "--slice" in result.err


def test_cat_shuffle_is_webdatasets_shuffle_for_the_seed(capsys, tmp_path):
    paths = write_shards(tmp_path, nshards=4, per_shard=10)
    out = tmp_path / "shuffled.tar"
    result = inprocess(capsys, "cat", *paths, "--shuffle", "16", "--seed", "7", "-o", str(out))
    assert result.code == 0, result.err
    original = ref_samples(paths)
    shuffled = ref_samples(str(out))
    expected = list(ref_filters._shuffle(iter(original), bufsize=16, initial=16, rng=random.Random(7)))
    assert shuffled == expected
    assert shuffled != original and sorted(s["__key__"] for s in shuffled) == [s["__key__"] for s in original]


def test_cat_to_stdout(tmp_path):
    paths = write_shards(tmp_path, nshards=2, per_shard=3)
    proc = run_subprocess(["cat", *paths, "-o", "-"])
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "stdout.tar"
    out.write_bytes(proc.stdout)
    assert ref_samples(str(out)) == ref_samples(paths)


def test_cat_with_a_damaged_input_leaves_no_output(cli, tmp_path):
    paths = write_shards(tmp_path / "in", nshards=2, per_shard=5)
    damaged = truncate(paths[1], 3000)
    result = cli("cat", paths[0], damaged, "-o", str(tmp_path / "out.tar"))
    assert result.code == 1
    assert damaged in result.err and "offset" in result.err
    assert leftovers(tmp_path) == ["in"]


def test_cat_keeps_field_name_case(capsys, tmp_path):
    path = tmp_path / "mixed.tar"
    write_wds(path, [("a", {"JPG": b"x", "Txt": b"y"})])
    out = tmp_path / "out.tar"
    assert inprocess(capsys, "cat", str(path), "-o", str(out)).code == 0
    assert [name for name, _ in tar_members(out)] == ["a.JPG", "a.Txt"]


# ---------------------------------------------------------------------------------------------------------
# split


def test_split_by_count(cli, tmp_path):
    paths = write_shards(tmp_path / "in", nshards=3, per_shard=4)
    (tmp_path / "out").mkdir()
    pattern = str(tmp_path / "out" / "part-%03d.tar")
    result = cli("split", *paths, "-o", pattern, "--maxcount", "5")
    assert result.code == 0, result.err
    names = [pattern % i for i in range(3)]
    assert result.out.splitlines() == names
    keys = [s["__key__"] for s in ref_samples(paths)]
    assert [[s["__key__"] for s in ref_samples(n)] for n in names] == [keys[0:5], keys[5:10], keys[10:12]]
    assert leftovers(tmp_path / "out") == ["part-000.tar", "part-001.tar", "part-002.tar"]


@pytest.mark.timeout(120)
def test_split_and_cat_write_to_s3(tmp_path, monkeypatch):
    """`-o s3://...` uploads each output (moto's server, signatures checked): split's shards and cat's
    archive hold the samples a local run writes; a failed split leaves no object for its unfinished shard."""
    paths = write_shards(tmp_path / "in", nshards=3, per_shard=4)
    keys = [s["__key__"] for s in ref_samples(paths)]
    with MotoS3() as server:
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        bucket = unique_bucket("cli")
        server.create_bucket(bucket)
        result = run_subprocess(["split", *paths, "-o", f"s3://{bucket}/part-%03d.tar", "--maxcount", "5"])
        assert result.returncode == 0, result.stderr
        names = [f"s3://{bucket}/part-{i:03d}.tar" for i in range(3)]
        assert result.stdout.decode().splitlines() == names
        assert server.keys(bucket) == [f"part-{i:03d}.tar" for i in range(3)]
        got = [[s["__key__"] for s in fastwds.WebDataset(n, shardshuffle=False)] for n in names]
        assert got == [keys[0:5], keys[5:10], keys[10:12]]
        result = run_subprocess(["cat", *paths, "-o", f"s3://{bucket}/all.tar"])
        assert result.returncode == 0, result.stderr
        assert [
            s["__key__"] for s in fastwds.WebDataset(f"s3://{bucket}/all.tar", shardshuffle=False)
        ] == keys
        # A damaged input stops split: the shards finished before it are there, the one in progress is not.
        damaged = tmp_path / "damaged.tar"
        damaged.write_bytes(Path(paths[0]).read_bytes()[:3000])
        result = run_subprocess(
            ["split", paths[1], str(damaged), "-o", f"s3://{bucket}/cut-%03d.tar", "--maxcount", "3"]
        )
        assert result.returncode != 0
        assert [k for k in server.keys(bucket) if k.startswith("cut-")] == ["cut-000.tar"]


def tar_bytes_of(sample: dict) -> int:
    """Tar bytes a sample adds: one 512-byte header per field plus its data padded to 512."""
    return sum(512 + len(v) + (-len(v)) % 512 for k, v in sample.items() if not k.startswith("__"))


def test_split_by_size_never_overflows(capsys, tmp_path):
    samples = [(f"s{i:03d}", {"bin": bytes(100 + 700 * (i % 5))}) for i in range(30)]
    source = write_wds(tmp_path / "in.tar", samples)
    (tmp_path / "out").mkdir()
    maxsize = 20 * 1024
    result = inprocess(
        capsys, "split", source, "-o", str(tmp_path / "out" / "p-%02d.tar"), "--maxsize", "20KiB"
    )
    assert result.code == 0, result.err
    shards = result.out.split()
    contents = [ref_samples(s) for s in shards]
    assert [s["__key__"] for c in contents for s in c] == [k for k, _ in samples]
    for shard, content, following in zip(shards, contents, contents[1:] + [None]):
        assert os.path.getsize(shard) <= maxsize
        if following:
            # The next shard's first sample would not have fitted (tar end blocks and 10 KiB records count).
            end = sum(tar_bytes_of(s) for s in content) + tar_bytes_of(following[0]) + 1024
            assert end + (-end) % 10240 > maxsize
    assert len(shards) > 2


def test_split_compresses_and_numbers_from_start_shard(capsys, tmp_path):
    paths = write_shards(tmp_path, nshards=1, per_shard=4)
    pattern = str(tmp_path / "z-%04d.tgz")
    result = inprocess(capsys, "split", *paths, "-o", pattern, "--maxcount", "2", "--start-shard", "10")
    assert result.code == 0, result.err
    assert result.out.split() == [pattern % 10, pattern % 11]
    assert Path(pattern % 10).read_bytes()[:2] == b"\x1f\x8b"
    assert [s["__key__"] for s in ref_samples(pattern % 11)] == ["sample000002", "sample000003"]


def test_split_stops_at_a_damaged_input_keeping_complete_shards(capsys, tmp_path):
    paths = write_shards(tmp_path / "in", nshards=2, per_shard=5)
    damaged = truncate(paths[1], 3000)
    (tmp_path / "out").mkdir()
    pattern = str(tmp_path / "out" / "p-%02d.tar")
    result = inprocess(capsys, "split", paths[0], damaged, "-o", pattern, "--maxcount", "3")
    assert result.code == 1 and damaged in result.err
    # Shards finished before the damage are complete and named on stdout; the one being written is gone.
    assert result.out.split() == [pattern % 0]
    assert leftovers(tmp_path / "out") == ["p-00.tar"]
    assert [s["__key__"] for s in ref_samples(pattern % 0)] == [
        "sample000000",
        "sample000001",
        "sample000002",
    ]


def test_split_needs_a_numbered_pattern(capsys, tmp_path):
    paths = write_shards(tmp_path / "in", nshards=1, per_shard=2)
    result = inprocess(capsys, "split", *paths, "-o", str(tmp_path / "out.tar"))
    assert result.code == 1 and "%06d" in result.err
    assert leftovers(tmp_path) == ["in"]


def test_parse_size():
    assert parse_size("3e9") == 3_000_000_000
    assert parse_size("500M") == 500_000_000
    assert parse_size("1GB") == 1_000_000_000
    assert parse_size("64KiB") == 65536
    assert parse_size("1234") == 1234
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


# ---------------------------------------------------------------------------------------------------------
# index


def unindexed_shards(directory: Path, nshards: int = 3, per_shard: int = 7) -> list[str]:
    """Shards written by fastwds's ShardWriter without indexes."""
    directory.mkdir(parents=True, exist_ok=True)
    pattern = str(directory / "shard-%06d.tar")
    with fastwds.ShardWriter(pattern, maxcount=per_shard, verbose=0, index=False) as sink:
        for i in range(nshards * per_shard):
            sink.write({"__key__": f"s{i:05d}", "txt": f"text {i}", "cls": i % 3})
    return [pattern % i for i in range(nshards)]


def test_index_writes_each_shards_index_beside_it(cli, tmp_path):
    paths = unindexed_shards(tmp_path / "d")
    result = cli("index", str(tmp_path / "d" / "shard-{000000..000002}.tar"), "--jobs", "2")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[:2] == ["shards   3 (3 indexed, 0 up to date)", "samples  21"]
    assert re.fullmatch(r"index    [\d,]+ bytes \(\d+\.\d per sample\)", lines[2])
    for path in paths:
        assert shardindex.load_index(path) == shardindex.build_index(path)
        assert shardindex.load_index(path).count == 7
    assert shardindex.dataset_length(paths) == 21
    # Up to date: nothing is rebuilt, unless --force.
    result = cli("index", *paths)
    assert result.code == 0 and result.out.startswith("shards   3 (0 indexed, 3 up to date)")
    result = cli("index", "--force", *paths)
    assert result.code == 0 and result.out.startswith("shards   3 (3 indexed, 0 up to date)")


def test_index_reads_shards_in_parallel(capsys, tmp_path, monkeypatch):
    paths = unindexed_shards(tmp_path, nshards=3)
    together = threading.Barrier(3, timeout=30)
    build = shardindex._build

    def build_when_all_run(url, stop):
        together.wait()  # breaks (and the shard fails) unless three builds run at once
        return build(url, stop)

    monkeypatch.setattr(shardindex, "_build", build_when_all_run)
    result = inprocess(capsys, "index", "--jobs", "3", *paths)
    assert result.code == 0, result.err
    assert all(os.path.exists(path + shardindex.SUFFIX) for path in paths)


def test_index_rebuilds_a_stale_or_damaged_index(capsys, tmp_path):
    paths = unindexed_shards(tmp_path, nshards=2)
    assert inprocess(capsys, "index", *paths).code == 0
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    Path(paths[1] + shardindex.SUFFIX).write_bytes(b"junk")
    result = inprocess(capsys, "index", *paths)
    assert result.code == 0, result.err
    assert result.out.startswith("shards   2 (2 indexed, 0 up to date)")
    assert [shardindex.load_index(p) for p in paths] == [shardindex.build_index(p) for p in paths]


def test_index_of_shards_that_are_not_local_goes_to_the_output_dir(cli, tmp_path):
    (path,) = unindexed_shards(tmp_path / "d", nshards=1)
    url = f"pipe:cat {path}"
    result = cli("index", url)
    assert result.code == 1 and "not a local file" in result.err and "--output-dir" in result.err
    (tmp_path / "idx").mkdir()
    result = cli("index", url, "--output-dir", str(tmp_path / "idx"))
    assert result.code == 0, result.err
    assert os.listdir(tmp_path / "idx") == ["shard-000000.tar.wdsidx"]
    index = shardindex.load_index(url, index_dir=str(tmp_path / "idx"))
    assert index is not None and index.keys == shardindex.build_index(path).keys
    assert not os.path.exists(path + shardindex.SUFFIX)


def test_index_reports_a_damaged_shard_and_indexes_the_others(cli, tmp_path):
    paths = unindexed_shards(tmp_path, nshards=3)
    data = Path(paths[1]).read_bytes()
    Path(paths[1]).write_bytes(data[: len(data) // 3])
    result = cli("index", *paths)
    assert result.code == 1
    assert "shard-000001.tar" in result.err and "1 of 3 shards could not be indexed" in result.err
    assert result.out.startswith("shards   3 (2 indexed, 0 up to date)")
    assert [os.path.exists(p + shardindex.SUFFIX) for p in paths] == [True, False, True]


def test_index_refuses_two_shards_with_one_index(capsys, tmp_path):
    (a,) = unindexed_shards(tmp_path / "a", nshards=1)
    (b,) = unindexed_shards(tmp_path / "b", nshards=1)
    (tmp_path / "idx").mkdir()
    result = inprocess(
        capsys, "index", f"pipe:cat {a}", f"pipe:cat {b}", "--output-dir", str(tmp_path / "idx")
    )
    assert result.code == 1 and "would both have their index at" in result.err


# ---------------------------------------------------------------------------------------------------------
# progress, help, usage


def test_progress_is_quiet_when_piped(tmp_path):
    paths = write_shards(tmp_path, nshards=2, per_shard=3)
    proc = run_subprocess(["stats", *paths])
    assert proc.returncode == 0 and proc.stderr == b""


def test_progress_shows_on_a_terminal(tmp_path):
    paths = write_shards(tmp_path, nshards=2, per_shard=3)
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "fastwds", "stats", *paths],
            stdout=subprocess.PIPE,
            stderr=follower,
            env=cli_env(),
            timeout=120,
        )
        os.close(follower)
        follower = -1
        err = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                break
            if not chunk:
                break
            err += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == 0
    text = err.decode()
    assert "stats: 6 samples" in text and "MB/s" in text and "\r" in text


def test_progress_line_counts_and_rates():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with Progress("copy", stream=stream, interval=0) as progress:
        progress.update(3, 2_000_000)
        progress.update(1, 1_000_000)
    lines = stream.getvalue().split("\r")
    assert lines[1].startswith("copy: 3 samples, 2.0 MB, ")
    assert lines[-1].startswith("copy: 4 samples, 3.0 MB, ") and lines[-1].endswith("\n")
    assert lines[-1].rstrip().endswith("MB/s")
    quiet = io.StringIO()
    with Progress("copy", stream=quiet) as progress:
        progress.update(5, 10)
    assert quiet.getvalue() == "" and progress.count == 5


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_shows_an_example(capsys, command):
    result = inprocess(capsys, command, "--help")
    assert result.code == 0
    assert "example" in result.out
    assert re.search(rf"^\s+\$ fastwds {command} ", result.out, re.M), result.out


def test_top_level_usage(cli):
    result = cli("--help")
    assert result.code == 0
    for command in COMMANDS:
        assert f"fastwds {command} " in result.out
    result = cli("frobnicate")
    assert result.code == 2 and "invalid choice" in result.err


# ---------------------------------------------------------------------------------------------------------
# bench


def test_bench_on_urls_prints_a_table(capsys, tmp_path):
    paths = write_shards(tmp_path, nshards=2, per_shard=5)
    result = inprocess(capsys, "bench", *paths, "--min-time", "0")
    assert result.code == 0, result.err
    rows = {
        line.split("|")[1].strip(): line.split("|")
        for line in result.out.splitlines()
        if line.startswith("| ")
    }
    assert set(rows) == {"reader", "fastwds.ShardReader", "fastwds.WebDataset", "webdataset"}
    for name in ("fastwds.ShardReader", "fastwds.WebDataset", "webdataset"):
        assert rows[name][2].strip() == "10"  # one full pass over 10 samples
    assert rows["webdataset"][6].strip() == "1.00x"


def test_bench_builtin_sample_set(capsys, tmp_path):
    result = inprocess(
        capsys, "bench", "--builtin", "--data", str(tmp_path), "--scale", "0.02", "--min-time", "0"
    )
    assert result.code == 0, result.err
    shards = sorted(tmp_path.glob("imagenet-*.tar"))
    assert len(shards) == 4
    samples = ref_samples([str(s) for s in shards])
    assert len(samples) == 20 and {"jpg", "cls", "json"} <= set(samples[0])
    assert "| fastwds.ShardReader | 20 |" in result.out


def test_bench_without_urls_runs_the_checkout_harness(tmp_path):
    from fastwds.cli.bench import find_harness

    if find_harness() is None:
        pytest.skip("not running from a checkout with benches/harness.py")
    args = ["bench", "--data", str(tmp_path), "--scale", "0.005", "--only", "imagenet,tar,raw,fastwds-core"]
    proc = run_subprocess([*args, "--min-time", "0", "--budget", "5"])
    assert proc.returncode == 0, proc.stderr
    table = [line for line in proc.stdout.decode().splitlines() if line.startswith("| imagenet")]
    assert len(table) == 1 and "| fastwds.ShardReader | 80 |" in table[0]
    assert len(list(tmp_path.glob("imagenet-*/*.tar"))) == 16
