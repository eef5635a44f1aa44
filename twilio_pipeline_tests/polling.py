"""Waiting for something to happen in a test: poll for the condition instead of sleeping a fixed time,
so a test is as fast as the system under test and fails with what it waited for, not a timing guess."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str = "the condition", *,
               interval: float = 0.02, alive: Callable[[], bool] | None = None) -> T:
    """Call `predicate` every `interval` seconds until it returns something truthy, and return that.

    Fails after `timeout` seconds naming `what`; with `alive`, fails as soon as it returns False (the
    process that was to make the condition true has ended), instead of waiting out the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if alive is not None:
            assert alive(), f"ended before {what}"
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(interval)
