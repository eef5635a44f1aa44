"""Which signal stopped this process, and whether it was acted on.

SIGTERM and SIGINT reach Dagster's handler as the same interrupt (it maps SIGTERM onto SIGINT's handler
and raises DagsterExecutionInterruptedError), so the signal number is taken from the interpreter's wakeup
fd, which every handled signal writes to whatever handler Dagster installs. It also catches a lost
interrupt: Python runs a signal handler wherever the main thread is, and an exception raised inside a
garbage-collection callback (SQLAlchemy and pandas have many) is printed and dropped, so the send would
go on as if nothing happened. `pending_stop()` tells the steps to stop at their next safe point.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_pipe: tuple[int, int] | None = None
_seen: list[int] = []
_handled = False


def record_signals() -> bool:
    """From now on, remember the signals this process receives, and let SIGTERM raise KeyboardInterrupt
    like Ctrl-C (outside a Dagster run too), so that a terminated command cleans up instead of vanishing.
    Main thread only; returns whether recording is on."""
    global _pipe
    if _pipe is not None:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    try:
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:
        os.close(read_fd)
        os.close(write_fd)
        return False
    _pipe = (read_fd, write_fd)
    sys.unraisablehook = _quiet_lost_interrupts(sys.unraisablehook)
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    return True


def stop_signal() -> str | None:
    """The first SIGTERM or SIGINT received since record_signals() (its name), or None."""
    if _pipe is not None:
        while True:
            try:
                data = os.read(_pipe[0], 512)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            _seen.extend(data)
    for number in _seen:
        if number in STOP_SIGNALS:
            return signal.Signals(number).name
    return None


def pending_stop() -> str | None:
    """A stop signal received but not yet acted on (its interrupt was lost), or None."""
    return None if _handled else stop_signal()


def mark_stop_handled() -> None:
    global _handled
    _handled = True


def _quiet_lost_interrupts(previous):
    """An interrupt raised inside a GC callback is not printed as a traceback: pending_stop() acts on it."""
    def hook(unraisable) -> None:
        exc_type = unraisable.exc_type
        if exc_type is not None and (issubclass(exc_type, KeyboardInterrupt)
                                     or exc_type.__name__ == "DagsterExecutionInterruptedError"):
            return
        previous(unraisable)
    return hook


@contextmanager
def signals_deferred() -> Iterator[None]:
    """While the interruption of a send is being recorded, a second Ctrl-C or SIGTERM is ignored rather than
    cutting the record short (it was already stopping). A no-op off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    for s in STOP_SIGNALS:
        signal.signal(s, lambda *_: None)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
