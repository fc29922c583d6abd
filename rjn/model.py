"""The values use cases hand to the CLI: what moved, what a sync did, how a watch runs. Plain
data, importing nothing of rjn's but how a record is made (`rjn.helper.record`), so that
the records and the display need no action module."""

from __future__ import annotations

from dataclasses import field

from rjn.helper.record import record

# Where deleted files go, on either side (in the project's .rjn/, with a .gitignore here).
TRASH = ".rjn/trash"


@record
class Pulled:
    """One file that came home (or was refused): where it went, whether it was kept beside a
    local edit, and why it was refused."""

    path: str
    size: int
    conflict_copy: str | None = None
    refused: str | None = None
    trashed: bool = False  # deleted on the remote: moved to the local trash folder
    merged: bool = False  # changed on both sides: merged cell by cell (a notebook)
    # What a two-way pull placed here: [size, mtime_ns, sha256] of the file as it was moved in
    # (the sync record takes it from here, never from a second look at a file the user may
    # have saved again meanwhile).
    placed: tuple[int, int, str] | None = None


@record
class Ready:
    """The watcher is running: how it sees changes and why."""

    mode: str
    fs: str
    reason: str


@record
class Away:
    """Cells of one notebook that finished while no browser was attached: their outputs were
    written into it (those whose cell is not in the saved notebook could not be)."""

    path: str
    cells: int
    last: float  # when the last of them finished (epoch seconds)
    unplaced: int = 0


@record
class Outcome:
    """What one two-way sync did, and what it left for the user."""

    pushed: tuple[str, ...] = ()
    pulled: tuple[Pulled, ...] = ()
    trashed_here: tuple[str, ...] = ()
    trashed_there: tuple[str, ...] = ()
    merged: tuple[str, ...] = ()
    conflicts: dict[str, str] = field(default_factory=dict)
    # Left for a sync both ways: changed there (after a push-only sync), or here (after a
    # pull-only one).
    held: tuple[str, ...] = ()
    unsent: tuple[str, ...] = ()
    # Guarded files (see config.GUARDED_NAMES) changed on the remote, said once per version.
    kept_there: tuple[str, ...] = ()
    # Changed on the remote while ours was on its way: left there; the next pass decides.
    raced: tuple[str, ...] = ()
    # A file on one side where the other has a folder or a link: nothing under it moved.
    clashes: tuple[str, ...] = ()
    # Names that cannot travel, [(side, name, why)].
    skipped: tuple[tuple[str, str, str], ...] = ()
    # Deletions not carried out until the user allows them: {"here" | "there": count}.
    deletions_held: dict[str, int] = field(default_factory=dict)
    # The remote copy is not the one last synced with (new, changed, emptied, purged).
    new_pair: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.pushed or self.pulled or self.trashed_here or self.trashed_there)
