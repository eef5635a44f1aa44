"""Send progress: a log line every few seconds (done / total, rate, ETA) and, when the CLI runs in a
terminal, a progress bar on stderr."""

from __future__ import annotations

import sys
import time


class ProgressReporter:
    def __init__(self, log, interactive: bool, every_s: float = 5.0):
        self._log = log
        self._interactive = interactive
        self._every = every_s
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int, rate_per_s: float) -> None:
        now = time.monotonic()
        eta = (total - done) / rate_per_s if rate_per_s > 0 else float("inf")
        if self._interactive:
            width = 30
            filled = int(width * done / total) if total else width
            eta_text = f"{eta:,.0f}s" if eta != float("inf") else "?"
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} "
                             f"{rate_per_s:,.0f}/s ETA {eta_text}   ")
            sys.stderr.flush()
            self._drawn = True
        if now - self._last >= self._every or done == total:
            self._last = now
            eta_text = f"{eta:,.0f} s" if eta != float("inf") else "unknown"
            self._log.info(f"Sending: {done:,} / {total:,} done, {rate_per_s:,.1f} messages/s, ETA {eta_text}")

    def close(self) -> None:
        if self._drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()


def progress_reporter(log, interactive: bool) -> ProgressReporter:
    return ProgressReporter(log, interactive)
