"""Progress lines on stderr for long work, at most a few per second so logs stay readable."""
from __future__ import annotations

import sys
import time


class Progress:
    """Call with (done, total); prints `label: done/total (rate/s)` on stderr, throttled."""

    def __init__(self, label: str, every_s: float = 2.0, stream=None):
        self.label, self.every_s, self.stream = label, every_s, stream or sys.stderr
        self.started = self.last = time.monotonic()

    def __call__(self, done: int, total: int | None = None) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if now - self.last < self.every_s and not finished:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        of = f"/{total}" if total is not None else ""
        print(f"{self.label}: {done}{of} ({rate:,.0f}/s)", file=self.stream, flush=True)
