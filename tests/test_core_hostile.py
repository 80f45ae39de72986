"""Hostile and broken sources as a user meets them: secure mode refuses commands and local files before
anything runs, endless zeros and oversized members end with an error or a clean end instead of a hang or a
memory blow-up, a stalled server cannot hold an abandoned iterator, tar and gzip edge cases that GNU tar and
tarfile accept are read, and a `pipe:` command cut short by a corrupt stream is not blamed for it."""

from __future__ import annotations

import gzip
import io
import os
import signal
import socket
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import webdataset

import fastwds
from conftest import pids_with, reference, wait_until, write_shards

# ---------------------------------------------------------------------------------------------------------
# Secure mode
# ---------------------------------------------------------------------------------------------------------


def run_secure(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter with WDS_SECURE=1."""
    env = {**os.environ, "WDS_SECURE": "1"}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "how",
    [
        "list(w.WebDataset(URL, shardshuffle=False))",
        "list(w.WebDataset(URL, resampled=True).with_epoch(3))",
        "list(w.DataPipeline(w.SimpleShardList(URL), w.tarfile_to_samples()))",
        "list(w.ShardReader([URL]))",
        "list(w.tar_samples(URL))",
    ],
)
def test_secure_mode_refuses_a_pipe_url_before_it_runs(tmp_path: Path, how: str) -> None:
    (shard,) = write_shards(tmp_path, nshards=1)
    url = f"pipe:touch touch-me; cat {shard}"
    code = f"""
        import fastwds as w
        URL = {url!r}
        try:
            {how}
        except ValueError as e:
            assert isinstance(e, w.InsecureURLError), type(e)
            assert e.url == URL and e.kind == "insecure", (e.url, e.kind)
            print("refused:", e)
        else:
            print("read")
    """
    result = run_secure(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "refused:" in result.stdout and "secure mode" in result.stdout
    assert not (tmp_path / "touch-me").exists(), "the command ran"


def test_secure_mode_reads_local_files_as_the_reference_webdataset_does(tmp_path: Path) -> None:
    (shard,) = write_shards(tmp_path, nshards=1)
    code = f"""
        import webdataset, fastwds
        for lib in (webdataset, fastwds):
            for url in ({shard!r}, "file:" + {shard!r}):
                print(lib.__name__, len(list(lib.WebDataset(url, shardshuffle=False))))
    """
    result = run_secure(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:4] == ["webdataset 5"] * 2 + ["fastwds 5"] * 2


def test_secure_mode_follows_enforce_security_set_by_the_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (shard,) = write_shards(tmp_path, nshards=1, per_shard=3)
    monkeypatch.setattr(fastwds.utils, "enforce_security", True)
    with pytest.raises(fastwds.InsecureURLError):
        list(fastwds.ShardReader([f"pipe:cat {shard}"]))
    # A handler that continues skips the refused shard, as any other shard that cannot be opened.
    seen: list[BaseException] = []
    got = list(fastwds.ShardReader([f"pipe:cat {shard}"], handler=lambda e: seen.append(e) or True))
    assert got == [] and isinstance(seen[0], ValueError)
    monkeypatch.setattr(fastwds.utils, "enforce_security", False)
    assert len(list(fastwds.ShardReader([f"pipe:cat {shard}"]))) == 3


# ---------------------------------------------------------------------------------------------------------
# Endless and oversized input
# ---------------------------------------------------------------------------------------------------------


def processes_running(marker: str) -> list[int]:
    """Running processes (zombies left out) whose command line contains `marker`."""
    return pids_with(marker, zombies=False)


def test_endless_zero_blocks_after_a_shard_end_it_instead_of_spinning(tmp_path: Path) -> None:
    (shard,) = write_shards(tmp_path, nshards=1, per_shard=4)
    want = [s["__key__"] for s in fastwds.ShardReader([shard])]
    start = time.monotonic()
    got = [s["__key__"] for s in fastwds.ShardReader([f"pipe:cat {shard} /dev/zero # zeros-5150"])]
    assert got == want
    assert time.monotonic() - start < 30
    assert wait_until(lambda: not processes_running("zeros-5150"))
    # Nothing but zeros is an empty archive, as `tar tf /dev/zero` says.
    assert list(fastwds.ShardReader(["pipe:cat /dev/zero"])) == []


def member_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def test_a_member_larger_than_the_limit_is_an_error_before_it_is_buffered(tmp_path: Path) -> None:
    # A header declaring 3 GiB in a tiny .tar.gz: the error comes from the header, not from reading 3 GiB.
    bomb = tmp_path / "bomb.tgz"
    first = tarfile.TarInfo("a.txt")
    first.size = 1
    bomb.write_bytes(gzip.compress(first.tobuf() + b"1".ljust(512, b"\0") + member_header("b.bin", 3 << 30)))
    with pytest.raises(fastwds.ShardError) as info:
        list(fastwds.WebDataset(str(bomb), shardshuffle=False))
    err = info.value
    assert err.kind == "too_large" and err.member == "b.bin" and err.offset == 1024
    assert "max_member_bytes" in str(err)
    # The limit is a reader option; a continuing handler reads on past the member.
    (shard,) = write_shards(tmp_path, nshards=1, per_shard=3)
    seen: list[BaseException] = []
    dataset = fastwds.WebDataset(
        shard,
        shardshuffle=False,
        handler=lambda e: seen.append(e) or True,
        reader_options={"max_member_bytes": 16},
    )
    got = list(dataset)
    assert [sorted(k for k in s if not k.startswith("__")) for s in got] == [["cls", "txt"]] * 3
    assert {e.kind for e in seen} == {"too_large"} and len(seen) == 3  # each sample's json is over 16 bytes


def progressive_jpeg_with_scans(extra_scans: int) -> bytes:
    """A progressive JPEG whose last scan is repeated `extra_scans` more times."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 200)).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    last_sos = data.rfind(b"\xff\xda")
    scan = data[last_sos:-2]
    return data[:-2] + scan * extra_scans + b"\xff\xd9"


def test_a_jpeg_with_thousands_of_scans_is_refused_quickly() -> None:
    data = progressive_jpeg_with_scans(2000)
    start = time.monotonic()
    with pytest.raises(ValueError, match="scans"):
        fastwds._core.decode_image(data)
    assert time.monotonic() - start < 5
    # A normal progressive image decodes.
    assert fastwds._core.decode_image(progressive_jpeg_with_scans(0)).shape == (64, 64, 3)


def test_a_jpeg_with_thousands_of_scans_is_a_decoding_error_not_handed_to_pillow(tmp_path: Path) -> None:
    path = tmp_path / "scans.tar"
    with fastwds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "ok", "jpg": progressive_jpeg_with_scans(0), "cls": b"0"})
        sink.write({"__key__": "hostile", "jpg": progressive_jpeg_with_scans(20000), "cls": b"1"})
    # Even where failed fields keep their bytes for a later decoder, this one is final.
    got = list(fastwds.ShardReader([str(path)], images={"keep_bytes_on_error": True}))
    assert got[0]["jpg"].shape == (64, 64, 3)
    assert isinstance(got[1]["jpg"], fastwds.ImageDecodeError) and "scans" in str(got[1]["jpg"])
    start = time.monotonic()
    with pytest.raises(fastwds.DecodingError) as info:
        list(fastwds.WebDataset(str(path), shardshuffle=False).decode("rgb8"))
    assert time.monotonic() - start < 5, "the image went to Pillow"
    assert "hostile" in str(info.value)


# ---------------------------------------------------------------------------------------------------------
# Tar and gzip edge cases GNU tar and tarfile accept
# ---------------------------------------------------------------------------------------------------------


def keys_and_fields(samples: list[dict]) -> list[tuple]:
    return [(s["__key__"], sorted((k, v) for k, v in s.items() if not k.startswith("__"))) for s in samples]


def test_a_tgz_followed_by_zero_padding_is_read_whole(tmp_path: Path) -> None:
    (shard,) = write_shards(tmp_path, nshards=1, per_shard=6)
    padded = tmp_path / "padded.tgz"
    padded.write_bytes(gzip.compress(Path(shard).read_bytes()) + bytes(10240))
    assert subprocess.run(["gzip", "-t", str(padded)], capture_output=True).returncode in (0, 2)
    want = reference(lambda: list(webdataset.WebDataset(str(padded), shardshuffle=False)))
    got = list(fastwds.WebDataset(str(padded), shardshuffle=False))
    assert len(got) == 6
    assert keys_and_fields(got) == keys_and_fields(want)


def test_a_directory_with_a_size_is_followed_by_the_next_member(tmp_path: Path) -> None:
    (shard,) = write_shards(tmp_path, nshards=1, per_shard=3)
    directory = tarfile.TarInfo("images/")
    directory.type = tarfile.DIRTYPE
    raw = bytearray(directory.tobuf(format=tarfile.GNU_FORMAT))
    raw[124:136] = b"%011o\0" % 4096  # a size field tar and tarfile ignore for directories
    raw[148:156] = b" " * 8
    raw[148:156] = b"%06o\0 " % sum(raw)
    odd = tmp_path / "odd.tar"
    odd.write_bytes(bytes(raw) + Path(shard).read_bytes())
    listed = subprocess.run(["tar", "tf", str(odd)], capture_output=True, text=True)
    assert listed.returncode == 0 and "sample000000.txt" in listed.stdout
    want = reference(lambda: list(webdataset.WebDataset(str(odd), shardshuffle=False)))
    got = list(fastwds.WebDataset(str(odd), shardshuffle=False))
    assert len(got) == 3
    assert keys_and_fields(got) == keys_and_fields(want)


def test_a_command_cut_short_by_a_corrupt_stream_is_not_blamed_for_it(tmp_path: Path) -> None:
    (shard,) = write_shards(tmp_path, nshards=1, per_shard=2000)
    data = bytearray(Path(shard).read_bytes())
    data[3 * 1024 + 148] ^= 0x55  # a header checksum goes wrong early in a 6 MB stream
    corrupt = tmp_path / "corrupt.tar"
    corrupt.write_bytes(bytes(data))
    # `cat | cat`: the shell reports the pipeline's SIGPIPE as status 141.
    for url in (f"pipe:cat {corrupt}", f"pipe:cat {corrupt} | cat"):
        with pytest.raises(fastwds.ShardError) as info:
            list(fastwds.ShardReader([url]))
        assert info.value.kind == "format", str(info.value)
        assert (
            "checksum" in str(info.value) and "141" not in str(info.value) and "signal" not in str(info.value)
        )


# ---------------------------------------------------------------------------------------------------------
# A stalled server and a killed reader
# ---------------------------------------------------------------------------------------------------------


class StallingServer:
    """An HTTP server on 127.0.0.1 that sends the headers and `send` bytes of a shard, then stalls."""

    def __init__(self, body: bytes, send: int) -> None:
        self.body, self.send = body, send
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.stop = threading.Event()
        self.connections: list[socket.socket] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/shard.tar"

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections.append(conn)
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.body)}\r\n\r\n".encode()
            conn.sendall(head + self.body[: self.send])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for conn in self.connections:
            conn.close()
        self.sock.close()


@pytest.fixture
def stalling(tmp_path: Path) -> Iterator[StallingServer]:
    (shard,) = write_shards(tmp_path, nshards=1, per_shard=200)
    server = StallingServer(Path(shard).read_bytes(), send=20 * 1024)
    try:
        yield server
    finally:
        server.close()


def native_threads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_abandoning_a_stalled_read_returns_at_once_and_leaves_no_thread(stalling: StallingServer) -> None:
    before = native_threads()
    start = time.monotonic()
    for _ in range(20):
        samples = iter(fastwds.ShardReader([stalling.url], threads=1))
        next(samples)
        samples.close()
        assert samples.threads_running == 0
    assert time.monotonic() - start < 10, "closing waited for the stalled reads"
    assert wait_until(lambda: native_threads() <= before + 1), (before, native_threads())


def test_a_stalled_server_fails_the_shard_after_the_read_timeout(stalling: StallingServer) -> None:
    """A server that always stalls: each stalled read is retried from the byte reached, and after
    `max_retries` attempts in a row the shard fails as a timeout, saying so."""
    start = time.monotonic()
    got = []
    with pytest.raises(fastwds.ShardError) as info:
        options = {"read_timeout": 0.5, "max_retries": 2}
        for sample in fastwds.WebDataset(stalling.url, shardshuffle=False, reader_options=options):
            got.append(sample)
    assert info.value.kind == "timeout" and info.value.url == stalling.url
    assert "gave up after 3 attempts" in str(info.value)
    assert 0 < len(got) < 200
    assert time.monotonic() - start < 20


def test_a_reader_killed_by_sigkill_leaves_no_pipe_command_running(tmp_path: Path) -> None:
    marker = "987.654"
    code = f"""
        import fastwds
        for sample in fastwds.ShardReader(["pipe:sleep {marker}"]):
            pass
    """
    reader = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path)
    try:
        assert wait_until(lambda: bool(processes_running(f"sleep {marker}"))), "the command did not start"
        reader.send_signal(signal.SIGKILL)
        reader.wait(10)
        assert wait_until(lambda: not processes_running(f"sleep {marker}"), timeout=5), (
            "the command outlived it"
        )
    finally:
        reader.kill()
        for pid in processes_running(f"sleep {marker}"):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------------------------------------
# Images the writer makes
# ---------------------------------------------------------------------------------------------------------


def test_a_bitmap_the_writer_makes_decodes_natively_as_pillow_reads_it(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    bits = Image.fromarray(
        np.random.default_rng(0).random((13, 21)) > 0.5
    )  # mode "1", width not a multiple of 8
    path = tmp_path / "bitmap.tar"
    with fastwds.TarWriter(str(path)) as sink:
        sink.write({"__key__": "b", "pbm": bits})
    data = next(iter(fastwds.ShardReader([str(path)])))["pbm"]
    assert data.startswith(b"P4")
    for mode, pil_mode in (("l8", "L"), ("rgb8", "RGB")):
        (sample,) = list(fastwds.ShardReader([str(path)], images={"mode": mode}))
        want = np.asarray(Image.open(io.BytesIO(data)).convert(pil_mode))
        assert sample["pbm"].dtype == np.uint8 and np.array_equal(sample["pbm"], want), mode
