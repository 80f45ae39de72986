"""A one-line progress report (count, MB, MB/s) on stderr, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    """Counts items and bytes and redraws one status line at most every `interval` seconds.

    Shown only when `enabled` is true; by default that is when `stream` (stderr) is a terminal, so piped
    or redirected runs stay quiet. `close()` draws the final line and ends it with a newline.
    """

    def __init__(
        self,
        label: str,
        unit: str = "samples",
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval: float = 0.2,
    ) -> None:
        self.label = label
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.interval = interval
        self.count = 0
        self.nbytes = 0
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._width = 0
        self.closed = False

    def update(self, count: int = 1, nbytes: int = 0) -> None:
        """Adds `count` items and `nbytes` bytes; redraws when the interval has passed."""
        self.count += count
        self.nbytes += nbytes
        if self.enabled:
            now = time.monotonic()
            if now - self._last_draw >= self.interval:
                self._last_draw = now
                self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The status text: label, count, megabytes and the rate since the start."""
        elapsed = max((time.monotonic() if now is None else now) - self.start, 1e-9)
        mb = self.nbytes / 1e6
        return (
            f"{self.label}: {self.count:,} {self.unit}, {mb:,.1f} MB, "
            f"{self.count / elapsed:,.0f} {self.unit}/s, {mb / elapsed:,.1f} MB/s"
        )

    def _draw(self, now: float) -> None:
        text = self.line(now)
        # Pad over what the previous, possibly longer, line left on the terminal.
        padded = text.ljust(self._width)
        self._width = len(text)
        self.stream.write("\r" + padded)
        self.stream.flush()

    def close(self) -> None:
        """Draws the final state and ends the line (only when shown)."""
        if self.closed:
            return
        self.closed = True
        if self.enabled:
            self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()
