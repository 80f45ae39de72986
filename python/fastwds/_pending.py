"""A local file that appears under its name only once it is complete: written under a hidden temporary name in
its directory and renamed into place (shards by the writers, indexes by `fastwds.shardindex.write_index`)."""

from __future__ import annotations

import os
import secrets


class PendingFile:
    """A local output written under a hidden temporary name in its directory (`.NAME.XXXXXXXX.tmp`) and renamed
    to its final name by `commit()`; `discard()` removes it. So a shard never appears under its name before
    it is complete, whether the writer fails, is interrupted or is killed."""

    def __init__(self, path: str) -> None:
        directory, base = os.path.split(os.path.abspath(path))
        while True:
            temp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.tmp")
            try:
                # 0o666 less the umask: the permissions a plain open() gives a new file.
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            except FileExistsError:
                continue
            break
        self.path = path
        self.temp: str | None = temp
        try:
            self.stream = open(fd, "wb", buffering=int(os.environ.get("GOPEN_BUFFER", -1)))
        except BaseException:
            os.close(fd)
            self.discard()
            raise

    def commit(self) -> None:
        """Closes the file and gives it its final name."""
        self.stream.close()
        assert self.temp is not None
        os.replace(self.temp, self.path)
        self.temp = None

    def discard(self) -> None:
        """Closes and removes the temporary file (a no-op after `commit`)."""
        if self.temp is None:
            return
        temp, self.temp = self.temp, None
        try:
            stream = getattr(self, "stream", None)
            if stream is not None:
                stream.close()
        except OSError:
            pass  # a full disk fails the flush; the file goes anyway
        finally:
            try:
                os.unlink(temp)
            except FileNotFoundError:
                pass
