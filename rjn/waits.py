"""Every wait has a deadline: one helper for all of them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from rjn.errors import Timeout

T = TypeVar("T")


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    hint: str | None = None,
    interval: float = 0.1,
) -> T:
    """Call `check` until it returns something truthy; after `timeout` s raise Timeout(what)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise Timeout(f"{what} within {timeout:.0f}s", hint=hint)
        time.sleep(interval)
