"""Files over the connection, into staging on the other side, and what comes home placed
inside the project (never through a link, never over an edit it has not seen).

`Transfer` is the one object callers use: it picks the route once, this machine's rsync
where it can serve (3.1 or newer: rsync.py), else rjn's own transfer (own.py: the helper
reads and writes, the bytes travel with its messages). Either route fetches into a staging
folder here, which placing.py moves into the project, or sends into a staging folder in the
remote's .rjn/, from which the helper places.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rjn import places
from rjn.config import Config
from rjn.errors import ConfigError
from rjn.helper_client import HelperClient
from rjn.records import Pulled
from rjn.transfer.placing import (
    Refused,
    checked_name,
    clean_staging,
    last_pulled,
    place,
    receive,
    replace_unchanged,
    staging_here,
    would_bring,
)
from rjn.transfer.route import Progress, Route

__all__ = [
    "Progress",
    "Refused",
    "Transfer",
    "checked_name",
    "clean_staging",
    "last_pulled",
    "receive",
    "replace_unchanged",
    "staging_here",
    "staging_prefix",
]


class Transfer:
    """Files between this project and its remote folder, over one helper's connection."""

    def __init__(self, helper: HelperClient, config: Config) -> None:
        self.helper, self.config = helper, config
        self.route: Route
        if uses_own(helper, config):
            from rjn.transfer.own import OwnRoute

            self.route = OwnRoute(helper, config)
        else:
            from rjn.transfer.rsync import RsyncRoute

            self.route = RsyncRoute(helper.connection, config)

    def pull(
        self,
        remote_dir: str,
        files: list[str] | None = None,
        progress: Progress | None = None,
        max_bytes: int | None = None,
    ) -> list[Pulled]:
        """Bring results home: the given files, or everything in the results folders; more
        than `max_bytes` (default: [sync] max_pull_size) stops it with nothing placed.

        Files land in a staging folder first and are moved into place one by one, so a
        local file is never half-written and never replaced if it was edited since the last
        pull: the remote version is then kept beside it, under a new name.
        """
        sync = self.config.sync
        names = None if files is None else [checked_name(f, sync.results) for f in files]
        budget = sync.max_pull_size if max_bytes is None else max_bytes
        with staging_here(self.config.root) as staging:
            over = self.route.fetch(remote_dir, staging, names, results=True,
                                    max_bytes=budget, progress=progress)  # fmt: skip
            return _too_big(over) + place(self.config, staging)

    def pull_changed(
        self, remote_dir: str, listing: object, progress: Progress | None = None
    ) -> list[Pulled]:
        """pull(), unless the remote's listing of its results (untrusted: checked here) shows
        that it would bring nothing: every file there is here with its size and time, or is a
        version already kept beside a local edit. Then the transfer's round trips are saved."""
        if listing is None or would_bring(self.config, listing):
            return self.pull(remote_dir, progress=progress)
        return []

    def pull_decided(
        self,
        remote_dir: str,
        expected: dict[str, tuple[int, int] | None],
        progress: Progress | None = None,
        on_staged: Callable[[str, Path], Any] | None = None,
    ) -> list[Pulled]:
        """Bring project files home that two-way sync decided to pull. `expected` is each
        file's local (mtime_ns, size) when the decision was made (None: absent); a file
        changed since is kept, and the remote version lands beside it. `on_staged` sees each
        file as it came, before it is placed."""
        names = [checked_name(name, None) for name in sorted(expected)]
        with staging_here(self.config.root) as staging:
            over = self.route.fetch(remote_dir, staging, names, results=False,
                                    max_bytes=self.config.sync.max_pull_size,
                                    progress=progress)  # fmt: skip
            return _too_big(over) + place(self.config, staging, expected, on_staged)

    def stage(
        self,
        remote_dir: str,
        names: Iterable[str],
        progress: Progress | None = None,
        source: Path | None = None,
    ) -> str:
        """Send project files (names from our own scan) into a new staging folder in the
        remote's .rjn/, whose name is returned: the helper's `place` then moves each in only
        where the remote still holds what the plan saw. `source` is a folder to send the
        named files from instead of the project (a merge's result)."""
        root = self.config.root

        def fresh() -> str:
            return f"{staging_prefix(root)}{secrets.token_hex(6)}"

        return self.route.send(source or root, remote_dir, sorted(names), progress, fresh)


def _too_big(names: list[str]) -> list[Pulled]:
    return [Pulled(name, 0, refused="larger than [sync] max_file_size") for name in names]


# The staging folders a push leaves in the remote's .rjn/ are named by this prefix, then this
# machine's and project folder's id: the next pass of this clone cleans up after one cut short
# (passes of one clone take turns; another clone's staging is never its to clean).
STAGING = "incoming-"


def staging_prefix(root: Path) -> str:
    """This machine's and project folder's part of a staging folder's name (see
    helper/tree.clean_staging)."""
    return f"{STAGING}{places.copy_id(root)}-"


def uses_own(helper: HelperClient, config: Config) -> bool:
    """Whether files travel through rjn's own transfer: [remote] transfer says, or ("auto")
    this machine's rsync cannot serve; then the user hears it, once for that rsync."""
    if config.remote.transfer == "rjn" or not helper.connection.CARRIES_RSYNC:
        return True  # (single mode: rsync would log in again by itself)
    from rjn.transfer.rsync import local_rsync

    found = local_rsync()
    if config.remote.transfer == "rsync" and not found.capable:
        raise ConfigError(
            f'{config.path}: [remote] transfer = "rsync", but '
            + (f"this machine's rsync ({found.version}) lacks what rjn needs" if found.path
               else "this machine has no rsync"),
            hint='install rsync 3.1 or newer (macOS: brew install rsync), or set transfer = "auto"',
        )  # fmt: skip
    if config.remote.transfer == "rsync":
        return False
    if found.capable:
        return False
    why = (f"this machine's rsync ({found.version or found.path}) lacks what rjn needs"
            if found.path else "this machine has no rsync")  # fmt: skip
    note = (f"{why}: files travel through rjn's own transfer (rsync 3.1+ is faster for large "
            "edits: `brew install rsync` on a Mac)")  # fmt: skip
    told = places.state_dir() / "own-transfer-told"
    with contextlib.suppress(OSError):
        if told.read_text() == note:
            return True
    if note not in helper.notes:
        helper.notes.append(note)
        places.write_private(told, note)
    return True
