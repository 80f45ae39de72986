"""Open URLs for reading or writing: local paths, `file:`, `-`, `pipe:CMD`, http(s) and friends via commands.

`gopen(url, mode)` dispatches on the URL scheme through the `gopen_schemes` table (users may register
their own schemes there). Commands run as `Pipe` objects: file-like wrappers that raise an error naming the
command and its exit status when it fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any
from urllib.parse import urlparse
from urllib.request import url2pathname

from . import utils

__all__ = [
    "Pipe",
    "gopen",
    "gopen_ais",
    "gopen_curl",
    "gopen_error",
    "gopen_file",
    "gopen_gsutil",
    "gopen_hf",
    "gopen_htgs",
    "gopen_pipe",
    "gopen_schemes",
    "info",
    "reader",
    "rewrite_url",
    "set_options",
]

# Extra node information printed with verbose output (GOPEN_VERBOSE), as in webdataset.
info: dict[str, Any] = {}

# Exit statuses meaning "killed by SIGPIPE": 141 from a shell, -13 from a directly executed command.
_SIGPIPE_STATUSES = (141, -13)
# How much of a command's stderr an error message quotes (its end).
_STDERR_TAIL = 2000


def _security_enforced() -> bool:
    """True when local files, pipes and URL rewriting are refused (`utils.enforce_security`, WDS_SECURE=1)."""
    return bool(utils.enforce_security)


def _verbose() -> int:
    return int(os.environ.get("GOPEN_VERBOSE", "0") or "0")


class Pipe:
    """A subprocess's stdout (mode "r...") or stdin (mode "w...") as a binary file object.

    Reads and writes check whether the command has exited; a failed exit status (not 0 and not in
    `ignore_status`) raises `OSError` naming the command, the status and the end of its stderr, at the
    latest on `close()`; so does a command that exits before reading all its input (`BrokenPipeError`).
    The command's stderr still reaches this process's stderr as it is written. Closing a read pipe before
    the end of its output stops the command without reporting an error. Arguments other than the keywords
    below go to `subprocess.Popen`.
    """

    def __init__(
        self,
        *args: Any,
        mode: str = "rb",
        timeout: float = 7200.0,
        ignore_errors: bool = False,
        ignore_status: list[int] | None = None,
        **kw: Any,
    ) -> None:
        if not mode or mode[0] not in "rw":
            raise ValueError(f"Pipe: unknown mode {mode!r}")
        self.ignore_errors = ignore_errors
        self.ignore_status = [0] + list(ignore_status or [])
        self.timeout = timeout
        self.args = (args, kw)
        self.mode = mode
        self.status: int | None = None
        self.handler: Callable[..., Any] | None = None
        self._eof = False
        self._reported = False
        self._stderr_tail = bytearray()
        self._stderr_thread: threading.Thread | None = None
        tee = "stderr" not in kw
        if tee:
            kw = dict(kw, stderr=subprocess.PIPE)
        if mode[0] == "r":
            # (mypy finds no Popen overload for arguments passed on as *args and **kw)
            proc = subprocess.Popen(*args, stdout=subprocess.PIPE, **kw)  # type: ignore[call-overload]
            stream = proc.stdout
        else:
            proc = subprocess.Popen(*args, stdin=subprocess.PIPE, **kw)  # type: ignore[call-overload]
            stream = proc.stdin
        self.proc: subprocess.Popen[bytes] = proc
        self.stream: IO[bytes] = stream
        if tee and self.proc.stderr is not None:
            self._stderr_thread = threading.Thread(
                target=self._tee_stderr, args=(self.proc.stderr,), name="fastwds-pipe-stderr", daemon=True
            )
            self._stderr_thread.start()
        if self.stream is None:
            raise ValueError(f"{self.command}: could not open")

    def _tee_stderr(self, stderr: IO[bytes]) -> None:
        """Copies the command's stderr to ours as it comes, keeping its end for error messages."""
        tail = self._stderr_tail
        try:
            fd = stderr.fileno()
            while data := os.read(fd, 65536):
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(2, view) :]
                except OSError:
                    pass  # our stderr is gone; keep reading, so the command never blocks on it
                tail += data
                del tail[:-_STDERR_TAIL]
        except (OSError, ValueError):
            pass
        finally:
            stderr.close()

    def stderr_tail(self) -> str:
        """The end of what the command wrote to its stderr so far (waits briefly for it after the exit)."""
        thread = self._stderr_thread
        if thread is not None and self.proc.poll() is not None:
            thread.join(1.0)  # a background grandchild may hold stderr open: do not wait for it
        return bytes(self._stderr_tail).decode("utf-8", "replace").strip()

    def _failure(self, what: str) -> str:
        """A message naming the command, `what` happened, and the end of its stderr."""
        message = f"command {self.command!r} {what}"
        tail = self.stderr_tail()
        if tail:
            message += "; its stderr ends with:\n" + "\n".join("  " + t for t in tail.splitlines()[-10:])
        return message

    @property
    def command(self) -> str:
        """The command being run, as text."""
        cmd = self.args[0][0] if self.args[0] else self.args[1].get("args", "")
        return cmd if isinstance(cmd, str) else " ".join(str(c) for c in cmd)

    def __str__(self) -> str:
        return f"<Pipe {self.command!r}>"

    __repr__ = __str__

    @property
    def closed(self) -> bool:
        """True once the pipe is closed."""
        return self.stream.closed

    def check_status(self) -> None:
        """Raises if the command has already exited with a failed status."""
        if self.proc.poll() is not None:
            self.wait_for_child()

    def wait_for_child(self) -> None:
        """Waits for the command and raises `OSError` if its exit status is a failure."""
        if self.status is None:
            self.status = self.proc.wait()
        if self._reported:
            return
        self._reported = True
        if _verbose():
            print(
                f"pipe exit [{self.status} {os.getpid()}:{self.proc.pid}] {self.command!r} {info}",
                file=sys.stderr,
            )
        if self.status not in self.ignore_status and not self.ignore_errors:
            direction = "reading from" if self.mode[0] == "r" else "writing to"
            what = f"exited with status {self.status} while {direction} it {info or ''}".rstrip()
            raise OSError(self._failure(what))

    def read(self, *args: Any, **kw: Any) -> bytes:
        """Reads from the command's output."""
        result = self.stream.read(*args, **kw)
        if not result:
            self._eof = True
        self.check_status()
        return result

    def readinto(self, buffer: Any) -> int:
        """Reads from the command's output into a buffer."""
        n = self.stream.readinto(buffer)  # type: ignore[attr-defined]
        if not n:
            self._eof = True
        self.check_status()
        return n

    def readline(self, *args: Any, **kw: Any) -> bytes:
        """Reads a line from the command's output."""
        result = self.stream.readline(*args, **kw)
        if not result:
            self._eof = True
        self.check_status()
        return result

    readLine = readline  # the reference's spelling

    def write(self, *args: Any, **kw: Any) -> int:
        """Writes to the command's input."""
        try:
            result = self.stream.write(*args, **kw)
        except BrokenPipeError as exn:
            self._broken_pipe(exn)
        self.check_status()
        return result

    def _broken_pipe(self, exn: BrokenPipeError) -> None:
        """The command stopped reading: raises its failed exit status, or else a `BrokenPipeError` that says
        the command exited (or closed its input) before reading everything, with the end of its stderr."""
        try:
            self.status = self.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            raise BrokenPipeError(
                exn.errno, self._failure("closed its input before reading everything written to it")
            ) from exn
        self.wait_for_child()
        raise BrokenPipeError(
            exn.errno, self._failure(f"exited with status {self.status} before reading all its input")
        ) from exn

    def flush(self) -> None:
        """Flushes buffered input to the command."""
        if not self.stream.closed:
            try:
                self.stream.flush()
            except BrokenPipeError as exn:
                self._broken_pipe(exn)

    def readable(self) -> bool:
        return self.mode[0] == "r"

    def writable(self) -> bool:
        return self.mode[0] == "w"

    def fileno(self) -> int:
        return self.stream.fileno()

    def close(self) -> None:
        """Closes the stream, waits for the command, and raises if it failed."""
        if self.stream.closed:
            return
        # A reader that stops before the end of the output does not want the rest: the command's exit
        # status only counts when it had already exited on its own.
        early = self.mode[0] == "r" and not self._eof and self.proc.poll() is None
        broken = None
        try:
            self.stream.close()
        except BrokenPipeError as exn:  # the command stopped reading; its status says why
            broken = exn
        if early and self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.status = self.proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.status = self.proc.wait()
            raise OSError(f"command {self.command!r} did not exit within {self.timeout} s") from None
        if early:
            self._reported = True
            return
        self.wait_for_child()
        if self._stderr_thread is not None:
            self._stderr_thread.join(1.0)
        if broken is not None and not self.ignore_errors:
            raise OSError(
                self._failure(f"exited with status {self.status} before reading all its input")
            ) from broken

    def __enter__(self) -> Pipe:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    def __iter__(self) -> Any:
        return iter(self.stream)

    def __del__(self) -> None:
        # A fallback for users that never close: exceptions cannot propagate from here.
        try:
            self.close()
        except Exception:
            pass


def set_options(
    obj: Any,
    timeout: float | None = None,
    ignore_errors: bool | None = None,
    ignore_status: list[int] | None = None,
    handler: Callable[..., Any] | None = None,
) -> bool:
    """Sets options on a `Pipe`; returns False (doing nothing) for any other stream."""
    if not isinstance(obj, Pipe):
        return False
    if timeout is not None:
        obj.timeout = timeout
    if ignore_errors is not None:
        obj.ignore_errors = ignore_errors
    if ignore_status is not None:
        obj.ignore_status = ignore_status
    if handler is not None:
        obj.handler = handler
    return True


def _check_mode(mode: str) -> None:
    if not mode or mode[0] not in "rw":
        raise ValueError(f"{mode}: unknown mode")


def gopen_file(url: str, mode: str = "rb", bufsize: int = 8192) -> IO[bytes]:
    """Opens a local file given as a path or a `file:` URL."""
    if url.startswith("file:"):
        url = re.sub(r"^file://?", "", url)
    return open(url, mode)


def gopen_pipe(url: str, mode: str = "rb", bufsize: int = 8192) -> Pipe:
    """Runs the shell command of a `pipe:CMD` URL; reads its stdout or writes its stdin."""
    assert url.startswith("pipe:")
    if _security_enforced():
        raise ValueError("gopen_pipe: security is enforced (WDS_SECURE), cannot open pipe URLs")
    _check_mode(mode)
    return Pipe(url[5:], mode=mode, shell=True, bufsize=bufsize, ignore_status=[141])


def _command_pipe(cmd: list[str], mode: str, bufsize: int, read_ok: list[int], write_ok: list[int]) -> Pipe:
    _check_mode(mode)
    return Pipe(cmd, mode=mode, bufsize=bufsize, ignore_status=read_ok if mode[0] == "r" else write_ok)


def gopen_curl(url: str, mode: str = "rb", bufsize: int = 8192) -> Pipe:
    """Reads a URL with `curl` (GET, retrying), or writes it with an HTTP PUT."""
    _check_mode(mode)
    if mode[0] == "r":
        cmd = [
            "curl",
            "--connect-timeout",
            "30",
            "--retry",
            "30",
            "--retry-delay",
            "2",
            "-f",
            "-s",
            "-L",
            url,
        ]
    else:
        cmd = ["curl", "-f", "-s", "-X", "PUT", "-L", "-T", "-", url]
    return _command_pipe(cmd, mode, bufsize, [141, 23], [141, 26])


def gopen_htgs(url: str, mode: str = "rb", bufsize: int = 8192) -> Pipe:
    """Reads an `htgs://` URL as `gs://` through curl (read only)."""
    _check_mode(mode)
    if mode[0] == "w":
        raise ValueError(f"{mode}: cannot write")
    url = re.sub(r"(?i)^htgs://", "gs://", url)
    return _command_pipe(["curl", "-s", "-L", url], mode, bufsize, [141, 23], [141, 26])


def gopen_hf(url: str, mode: str = "rb", bufsize: int = 8192) -> Pipe:
    """Reads an `hf://` URL from the Hugging Face Hub through curl (read only; needs huggingface_hub)."""
    _check_mode(mode)
    if mode[0] == "w":
        raise ValueError(f"{mode}: cannot write")
    from huggingface_hub import HfFileSystem, get_token, hf_hub_url  # type: ignore[import-not-found]

    resolved = HfFileSystem().resolve_path(url)
    http_url = hf_hub_url(
        repo_id=resolved.repo_id,
        filename=resolved.path_in_repo,
        repo_type=resolved.repo_type,
        revision=resolved.revision,
    )
    cmd = ["curl", "--connect-timeout", "30", "--retry", "30", "--retry-delay", "2", "-f", "-s", "-L"]
    cmd += ["-H", f"Authorization:Bearer {get_token()}", http_url]
    return _command_pipe(cmd, mode, bufsize, [141, 23], [141, 26])


def gopen_gsutil(url: str, mode: str = "rb", bufsize: int = 8192) -> Pipe:
    """Reads or writes a `gs://` URL with `gsutil`."""
    _check_mode(mode)
    cmd = ["gsutil", "cat", url] if mode[0] == "r" else ["gsutil", "cp", "-", url]
    return _command_pipe(cmd, mode, bufsize, [141, 23], [141, 26])


def gopen_ais(url: str, mode: str = "rb", bufsize: int = 8192) -> Pipe:
    """Reads or writes a URL with the AIStore `ais` command."""
    _check_mode(mode)
    cmd = ["ais", "get", url, "-"] if mode[0] == "r" else ["ais", "put", "-", url]
    return _command_pipe(cmd, mode, bufsize, [141, 23], [141, 26])


def gopen_object(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> Any:
    """Reads an `s3://` or `gs://` object natively (resumed after drops), or writes one by multipart upload
    (the object appears only when the file is closed; `abort()` or an exception in a `with` block leaves
    none). `storage_options` (a dict) adds client settings to the environment's."""
    from . import _core

    _check_mode(mode)
    if mode[0] == "w":
        return _core.ObjectWriter(url, storage_options=kw.get("storage_options"))
    return _core.RemoteReader(url, storage_options=kw.get("storage_options"))


def gopen_http(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> Any:
    """Reads an `http(s)://` or `hf://` URL natively (resumed after drops, `HF_TOKEN` sent to the Hub);
    writes an `http(s)://` URL with an HTTP PUT through curl."""
    from . import _core

    _check_mode(mode)
    if mode[0] == "w":
        if url.startswith("hf:"):
            raise ValueError(f"{url}: cannot write hf:// URLs")
        return gopen_curl(url, mode, bufsize)
    return _core.RemoteReader(url)


def gopen_error(url: str, *args: Any, **kw: Any) -> Any:
    """Raises ValueError: the URL's scheme has no handler."""
    scheme = urlparse(url).scheme
    raise ValueError(
        f'{url}: no gopen handler defined for {scheme!r}: read it through a command (e.g. "pipe:aws s3 cp '
        f'{url} -") or register an opener in fastwds.gopen.gopen_schemes'
    )


# Scheme -> opener(url, mode, bufsize, **kw). "__default__" handles unknown schemes.
gopen_schemes: dict[str, Callable[..., Any]] = dict(
    __default__=gopen_error,
    pipe=gopen_pipe,
    http=gopen_http,
    https=gopen_http,
    ais=gopen_ais,
    sftp=gopen_curl,
    ftps=gopen_curl,
    scp=gopen_curl,
    s3=gopen_object,
    gs=gopen_object,
    htgs=gopen_htgs,
    hf=gopen_http,
)

if "USE_AIS_FOR" in os.environ:
    for _proto in os.environ["USE_AIS_FOR"].split(":"):
        gopen_schemes[_proto] = gopen_ais


def rewrite_url(url: str) -> str:
    """Rewrites a URL with the first matching rule of GOPEN_REWRITE ("prefix=replacement;...")."""
    rules = os.environ.get("GOPEN_REWRITE")
    if rules is None:
        return url
    if _security_enforced():
        raise ValueError("rewrite_url: security is enforced (WDS_SECURE), cannot rewrite URLs")
    for rule in rules.split(";"):
        if not rule:
            continue
        if "=" not in rule:
            raise ValueError(f"GOPEN_REWRITE: rule {rule!r} has no '='")
        pattern, replacement = rule.split("=", 1)
        rewritten = re.sub("^" + pattern, replacement, url)
        if rewritten != url:
            if _verbose():
                print(f"GOPEN REWRITE {url} -> {rewritten}", file=sys.stderr)
            return rewritten
    return url


def gopen(url: str, mode: str = "rb", bufsize: int = 8192, **kw: Any) -> Any:
    """Opens a URL for binary reading ("rb") or writing ("wb") and returns a file-like object.

    `-` is stdin/stdout; a path or `file:` URL is a local file (GOPEN_BUFFER sets its buffer size);
    other schemes go through `gopen_schemes` (`pipe:CMD`; `s3://`, `gs://`, `hf://` and http(s) read natively
    by the core; `s3://` and `gs://` written by multipart upload; ais, ...).
    GOPEN_REWRITE rewrites the URL first; GOPEN_VERBOSE=1 logs opens.
    """
    if _verbose():
        print("GOPEN", url, info, file=sys.stderr)
    if mode not in ("rb", "wb"):
        raise ValueError(f"gopen: mode must be 'rb' or 'wb', not {mode!r}")
    url = os.fspath(url)
    if url == "-":
        return sys.stdin.buffer if mode == "rb" else sys.stdout.buffer
    url = rewrite_url(url)
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        if _security_enforced():
            raise ValueError("gopen: security is enforced (WDS_SECURE), cannot open local files")
        buffering = int(os.environ.get("GOPEN_BUFFER", -1))
        path = url if parsed.scheme == "" else url2pathname(parsed.path)
        return open(path, mode, buffering=buffering)
    handler = gopen_schemes.get(parsed.scheme, gopen_schemes["__default__"])
    return handler(url, mode, bufsize, **kw)


def reader(url: str, **kw: Any) -> Any:
    """Opens a URL for binary reading."""
    return gopen(url, "rb", **kw)
