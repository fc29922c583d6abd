"""What a route of the transfer does, whichever carries the bytes (rsync.py, own.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

# Told how far a transfer is, in percent.
Progress = Callable[[int], Any]


class Route(Protocol):
    def fetch(
        self,
        remote_dir: str,
        staging: Path,
        names: list[str] | None,
        *,
        results: bool,
        max_bytes: int,
        progress: Progress | None,
    ) -> list[str]:
        """Files from the remote into `staging` (a folder here): the named ones, or (None) the
        results folders whole. With `results`, a results file here with the same size and time
        is not fetched again; without, every named one is (two-way pulls are decided by
        content). More than `max_bytes` stops it with an error. Returns the names of those
        over [sync] max_file_size, which were not fetched."""
        ...

    def send(
        self,
        source: Path,
        remote_dir: str,
        names: list[str],
        progress: Progress | None,
        fresh: Callable[[], str],
    ) -> str:
        """Files from `source` into a new staging folder in the remote's .rjn/ (named by
        `fresh`), whose name it returns; the helper's `place` then moves them in."""
        ...
