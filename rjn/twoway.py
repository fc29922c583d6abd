"""The project kept in step both ways: the version both sides last agreed on decides what moves.

Scan, decide, apply. Per file, rjn remembers the agreed version (size and time on each side,
and a content hash) for one pair of copies: this folder, and one remote folder known by its
host, its path and the replica id rjn keeps in its `.rjn/`. Changed on one side since: the
other side gets it. Changed on both: a conflict; notebooks are merged cell by cell
(nbmerge.py) where that is clean, else the remote version lands beside the local one. Deleted
on one side while the other is unchanged: the deletion travels, into a trash folder
(`.rjn/trash/`) on the other side. No decision compares the clocks of two machines.

Every transition is compare and swap: a file is placed, replaced or trashed only if its
destination still is what the plan was made from (type, size, time, and the hash where those
are equal); otherwise it is left as it is and the next pass decides again. On the remote, rsync
carries the bytes into a staging folder and the helper places them; here, pulls are staged and
placed the same way (transfer/). A new, emptied or purged remote folder is a new pair: nothing is
deleted anywhere. One pass runs at a time per project (a lock): open's watch, sync and run take
turns. Results folders are not part of this: they only come home (`transfer.pull`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import fields
from pathlib import Path
from typing import Any

from rjn import nbmerge, places, portable, state, transfer
from rjn.archive import (
    Agreed,
    Archive,
    Clean,
    Conflict,
    Head,
    Pair,
    load_archive,
    load_head,
    save_archive,
)
from rjn.config import DEFAULT_EXCLUDES, Config, guarded
from rjn.helper_client import HelperClient
from rjn.helper_client.answers import read
from rjn.records import Outcome
from rjn.shared import protocol
from rjn.shared import tree as shared_tree
from rjn.shared.protocol import HelperError
from rjn.shared.record import record

# A file's state on one side: [size, mtime_ns, sha256].
Tree = Mapping[str, Sequence[Any]]

# Deletions that travel without asking: at most this many, and never most of one side.
FEW_DELETIONS = 20


def filters(config: Config) -> tuple[list[str], list[str]]:
    """(exclude, include) patterns of what travels both ways: never results (they only come
    home), never environments, caches, checkpoints or rjn's own folders."""
    exclude = [*DEFAULT_EXCLUDES, *config.sync.exclude]
    exclude += [f"/{folder.strip('/')}/" for folder in config.sync.results]
    return exclude, list(config.sync.include)


# -- decide: the table ------------------------------------------------------------------------


@record
class Plan:
    """What one sync will do, path by path (pure: decided from the listings)."""

    push: tuple[str, ...] = ()
    pull: tuple[str, ...] = ()
    trash_remote: tuple[str, ...] = ()
    trash_local: tuple[str, ...] = ()
    conflict: tuple[str, ...] = ()
    agree: tuple[str, ...] = ()
    forget: tuple[str, ...] = ()
    # Guarded files the remote changed (or made, or both sides did): left there, not brought.
    kept_there: tuple[str, ...] = ()
    # Paths that are a file on one side and a folder (or a link) on the other, or would be once
    # the plan ran: nothing under them moves, both sides keep what they have.
    clash: tuple[str, ...] = ()


_TABLE = {
    ("new", "absent"): "push",
    ("absent", "new"): "pull",
    ("new", "new"): "conflict",
    ("changed", "same"): "push",
    ("same", "changed"): "pull",
    ("deleted", "same"): "trash_remote",
    ("same", "deleted"): "trash_local",
    ("deleted", "deleted"): "forget",
    ("deleted", "changed"): "pull",
    ("changed", "deleted"): "push",
    ("changed", "changed"): "conflict",
}


def decide(
    local: Tree,
    remote: Tree,
    agreed: Mapping[str, str],
    local_others: Iterable[str] = (),
    remote_others: Iterable[str] = (),
) -> Plan:
    """The decision table. `agreed` maps a path to the hash both sides last agreed on;
    `*_others` are what is there but never travels (links, sockets): they block their name.

    A guarded file only ever goes out: what would bring the remote's version home keeps it
    there, and a remote deletion of one is undone by sending ours again. A file that would
    meet a folder of its name (or a link) on either side is a clash: nothing under that name
    moves, so nothing either side changed is lost."""
    plan: dict[str, list[str]] = {f.name: [] for f in fields(Plan)}
    for rel in sorted({*local, *remote, *agreed}):
        here, there, base = local.get(rel), remote.get(rel), agreed.get(rel)
        if here and there and here[2] == there[2]:
            if base != here[2]:
                plan["agree"].append(rel)
            continue
        action = _TABLE.get((_change(here, base), _change(there, base)))
        if action and guarded(rel):
            action = {"pull": "kept_there", "conflict": "kept_there",
                      "trash_local": "push"}.get(action, action)  # fmt: skip
        if action:
            plan[action].append(rel)
    after_here = (set(local) - set(plan["trash_local"])) | set(plan["pull"])
    after_there = (set(remote) - set(plan["trash_remote"])) | set(plan["push"])
    clashes = _clashes(after_here, set(local_others)) | _clashes(after_there, set(remote_others))
    if clashes:
        moving = ("push", "pull", "conflict", "trash_local", "trash_remote")
        for action in moving:
            plan[action] = [r for r in plan[action] if not _under_any(r, clashes)]
        plan["clash"] = sorted(clashes)
    return Plan(**{k: tuple(v) for k, v in plan.items()})


def _change(entry: Sequence[Any] | None, base: str | None) -> str:
    if base is None:
        return "absent" if entry is None else "new"
    if entry is None:
        return "deleted"
    return "same" if entry[2] == base else "changed"


def _clashes(files: set[str], blockers: set[str]) -> set[str]:
    """Names on one side that would be a file and a folder at once, or that a link holds, or
    that would be a file where something that stays (a link, a kept file) needs a folder."""
    folders = _folders(files)
    found = {rel for rel in files if rel in folders or rel in _folders(blockers)}
    found |= {rel for rel in blockers if rel in folders or rel in files}
    return found


def _folders(files: Iterable[str]) -> set[str]:
    """Every folder the files are in, up to the top (each folder's ancestors added once)."""
    folders: set[str] = set()
    for rel in files:
        end = rel.rfind("/")
        while end > 0 and rel[:end] not in folders:
            folders.add(rel[:end])
            end = rel.rfind("/", 0, end)
    return folders


def _under_any(rel: str, roots: set[str]) -> bool:
    parts = rel.split("/")
    return any("/".join(parts[: i + 1]) in roots for i in range(len(parts)))


def too_many(count: int, side: int) -> bool:
    """Whether deleting `count` of a side's `side` files waits until the user allows it: more than a
    few, or most of that side."""
    return count > FEW_DELETIONS or (count > 3 and 2 * count > side)


# -- what the archive keeps beside it -----------------------------------------------------------


def _bases(config: Config) -> Path:
    """Agreed versions of notebooks, by hash: the base of a three-way merge."""
    project = state.project_file(config.root, config.remote_name)
    return places.private_dir(project.with_suffix(".bases"))


def conflicts(config: Config) -> dict[str, str]:
    """Unresolved conflicts: {path: the remote version's copy beside it} whose copy still
    exists (deleting the copy resolves the conflict in favour of the local version)."""
    found = load_head(config.root, config.remote_name).conflicts
    return {rel: c.copy for rel, c in found.items() if (config.root / c.copy).exists()}


def tree_query(config: Config, head: Head | None = None) -> protocol.TreeQuery:
    """What the helper lists of the remote tree (in a probe, a run's end, or alone):
    what travels; the archive's generation (echoed back, so that a listing made before another
    pass is told apart); this machine's id (the remote keeps the last listing it sent us, as
    its hash cache, and cleans our leftover staging) and that listing's id, `since` which only
    what changed is sent. `head` is the archive's, where the caller has it."""
    exclude, include = filters(config)
    head = head or load_head(config.root, config.remote_name)
    return protocol.TreeQuery(exclude=exclude, include=include, gen=head.gen,
                              mine=places.copy_id(config.root), since=head.listing)  # fmt: skip


def _listing_path(config: Config) -> Path:
    return state.project_file(config.root, config.remote_name, ".listing")


def _kept_listing(config: Config) -> dict[str, Any]:
    """The remote's last full listing, as it sent it: {"id", "files"}."""
    try:
        data = json.loads(_listing_path(config).read_text())
    except (OSError, ValueError):
        return {}
    ok = isinstance(data, dict) and isinstance(data.get("files"), dict)
    return data if ok and isinstance(data.get("id"), str) else {}


def _made_whole(
    config: Config, listing: protocol.TreeListing, archive: Archive
) -> protocol.TreeListing | None:
    """A listing made whole: a diff (`base`) applied to the last listing kept here, which it
    must have been made from (else None: ask for all of it). The result is kept for the next
    time, as the remote sent it (checking its names comes after, every time); the archive
    names it."""
    files = listing.files
    if listing.base is not None:
        kept = _kept_listing(config)
        if listing.base != kept.get("id") or listing.gone is None:
            return None
        gone_names = {name for name in listing.gone if isinstance(name, str)}
        files = {k: v for k, v in kept["files"].items() if k not in gone_names} | files
    if listing.id is not None and listing.id != archive.listing:
        places.write_private(_listing_path(config), json.dumps({"id": listing.id, "files": files}))
        archive.listing = listing.id
    return dataclasses.replace(listing, files=files)


def _bare(listing: protocol.TreeListing) -> str:
    """A listing's digest without its files (what a no-change pass compares)."""
    return _digest(dataclasses.replace(listing, files={}).to_json())


# -- one sync -----------------------------------------------------------------------------------


def _lock(config: Config) -> contextlib.AbstractContextManager[None]:
    """One pass at a time per project and remote: the watch, sync and run take turns."""
    path = state.project_file(config.root, config.remote_name, ".sync-lock")
    return places.file_lock(path, timeout=900, busy="the project syncing")


def run(
    helper: HelperClient,
    config: Config,
    remote_dir: str,
    remote_tree: dict[str, Any] | None = None,
    *,
    direction: str = "both",
    allow_deletions: bool = False,
    progress: transfer.Progress | None = None,
    here_scan: Future[HereScan] | None = None,
) -> Outcome:
    """Bring both sides in step. direction "push" only sends (nothing local changes); "pull"
    only brings home (nothing remote changes, but a clean merge of a notebook goes back);
    both-sided changes keep both versions. `remote_tree` is a listing the caller already has
    (a probe's), `here_scan` a scan of this side it started meanwhile (scan_here); each is used
    only if no other pass ran since it was made."""
    exclude, include = filters(config)
    with _lock(config):
        transfer.clean_staging(config.root)
        scanned = here_scan.result() if here_scan else None
        # A listing that came with another answer (a probe's, a run's), read as scan's is.
        given = (read(helper.host, protocol.TreeListing, "file listing", remote_tree)
                 if remote_tree is not None else None)  # fmt: skip
        head = load_head(config.root, config.remote_name)
        if _unchanged(head, given, scanned):
            return Outcome()
        archive = _archive(config, head, scanned)
        marks_before, state_before = (archive.gen, archive.listing, archive.clean), _state(archive)
        listing = _remote_listing(helper, config, remote_dir, given, archive)
        there = _checked_listing(listing, exclude, include)
        if scanned and scanned.gen is not None and scanned.gen == archive.gen:
            here, here_digest = scanned.listing, scanned.digest
        else:
            here = _scan_here(config, archive)
            here_digest = _digest(here)
        if portable.folds_case(_own_folder(config)):
            there = _one_per_case(there, here["files"])
        # The remote version of a conflict, kept beside ours, is ours alone: it never goes out.
        copies = {c.copy for c in archive.conflicts.values()}
        here["files"] = {k: v for k, v in here["files"].items() if k not in copies}
        new_pair = _pair(archive, helper.host, remote_dir, there, here["files"])
        plan = _plan(config, archive, here, there, copies)
        plan, deletions_held = _limit_deletions(plan, here["files"], there.files, allow_deletions)
        outcome = _apply(helper, config, remote_dir, plan, here["files"], there.files, archive,
                         direction, progress)  # fmt: skip
        moved = outcome.changed or outcome.merged or plan.agree or plan.forget
        if moved or _state(archive) != state_before:
            archive.gen += 1
        # A pass that found nothing to do, and left nothing for the user, is clean: until either
        # side changes, the next one can tell so from names and stamps alone (_unchanged).
        nothing = not any(getattr(plan, f.name) for f in fields(Plan))
        clean = nothing and not (archive.conflicts or deletions_held or new_pair or moved
                                 or here["skipped"] or there.skipped)  # fmt: skip
        archive.clean = Clean(here_digest, listing.id, _bare(listing)) if clean else None
        # Written only when something changed: a pass with nothing to do writes nothing.
        if (archive.gen, archive.listing, archive.clean) != marks_before:
            save_archive(config.root, config.remote_name, archive)
    skipped = [("here", n, why) for n, why in here["skipped"]] + [
        ("there", n, why) for n, why in there.skipped
    ]
    return dataclasses.replace(outcome, clashes=plan.clash, skipped=tuple(skipped),
                               deletions_held=deletions_held, new_pair=new_pair)  # fmt: skip


def _remote_listing(
    helper: HelperClient,
    config: Config,
    remote_dir: str,
    given: protocol.TreeListing | None,
    archive: Archive,
) -> protocol.TreeListing:
    """The remote's whole listing: the one given, made whole, if no pass ran since it was
    made; else asked for (a diff against the listing kept here, or all of it)."""
    listing = _made_whole(config, given, archive) if given else None
    if listing is not None and listing.gen == archive.gen:
        return listing
    query = tree_query(config, archive)
    listing = _made_whole(config, helper.scan(protocol.ScanRequest(dir=remote_dir, tree=query)),
                          archive)  # fmt: skip
    if listing is None:  # the listing kept here changed meanwhile: ask for all of it
        query = dataclasses.replace(query, since=None)
        request = protocol.ScanRequest(dir=remote_dir, tree=query)
        listing = _made_whole(config, helper.scan(request), archive)
    if listing is None:
        raise transfer.Refused("the remote sent a diff of a listing it was not asked for")
    return listing


def _plan(
    config: Config, archive: Archive, here: dict[str, Any], there: Listing, copies: set[str]
) -> Plan:
    """The decision table run over both sides against the agreed versions, with conflicts
    still waiting for the user, and what one side cannot read, left out of it."""
    agreed = {rel: a.hash for rel, a in archive.files.items()}
    # A conflict whose copy the user deleted is resolved: the remote version they saw is
    # taken as agreed, so their local version goes out.
    for rel, conflict in list(archive.conflicts.items()):
        if not (config.root / conflict.copy).exists():
            agreed[rel] = conflict.remote
            del archive.conflicts[rel]
    held = set(archive.conflicts)
    # What one side cannot read is neither deleted there nor sent over: out of the plan.
    unreadable = {rel for side in (here["others"], there.others)
                  for rel, kind in side.items() if kind == "unreadable"}  # fmt: skip

    def free(tree: Mapping[str, Any]) -> dict[str, Any]:
        def out(rel: str) -> bool:
            return rel in held or bool(unreadable and _under_any(rel, unreadable))

        return {k: v for k, v in tree.items() if not out(k)}

    # A conflicted name is out of the plan, but where it still holds a file (and here, where
    # its copy lies), that file blocks its name as a link would: nothing may go beneath it,
    # nor replace its folder (a clash, said, not a move refused at every pass).
    copies_here = [copy for copy in copies if (config.root / copy).exists()]
    kept_here = [*(held & here["files"].keys()), *copies_here]
    return decide(free(here["files"]), free(there.files), free(agreed),
                  [*free(here["others"]), *kept_here],
                  [*free(there.others), *(held & there.files.keys())])  # fmt: skip


@record
class HereScan:
    """This side's listing, made while the remote made its own (scan_here)."""

    digest: str  # of every name and stamp: equal to a clean pass's, nothing changed here
    listing: dict[str, Any]  # list_tree's; hashes filled only where `archive` is set
    archive: Archive | None  # the one the hashes were taken against (read for them)

    @property
    def gen(self) -> int | None:
        return self.archive.gen if self.archive else None


def scan_here(config: Config, pool: Executor) -> Future[HereScan]:
    """This side's listing, made in `pool` while the remote is asked for its own. Names and
    stamps first: where they are those of the last clean pass, nothing here changed, and
    neither the archive's files nor any file is read."""

    def scan() -> HereScan:
        exclude, include = filters(config)
        listing = shared_tree.list_tree(str(config.root), exclude, include, hashed=False)
        digest = _digest(listing)
        clean = load_head(config.root, config.remote_name).clean
        if clean and clean.here == digest:
            return HereScan(digest, listing, None)
        archive = load_archive(config.root, config.remote_name)
        _hash_here(config, listing, archive)
        return HereScan(digest, listing, archive)

    return pool.submit(scan)


def _archive(config: Config, head: Head, scanned: HereScan | None) -> Archive:
    """The archive for this pass, read once: the one the scan of this side read, if no pass
    changed it since (its files change only with its generation; the head is read anew)."""
    if scanned is None or scanned.archive is None or scanned.archive.gen != head.gen:
        return load_archive(config.root, config.remote_name)
    fresh = {spec.name: getattr(head, spec.name) for spec in fields(Head)}
    return Archive(**fresh, files=scanned.archive.files)


def _scan_here(config: Config, archive: Archive) -> dict[str, Any]:
    """This side's listing with its hashes."""
    exclude, include = filters(config)
    listing = shared_tree.list_tree(str(config.root), exclude, include, hashed=False)
    _hash_here(config, listing, archive)
    return listing


def _hash_here(config: Config, listing: dict[str, Any], archive: Archive) -> None:
    """A listing's hashes: files whose size and time the archive knows keep its hash unread."""
    known = {rel: [*a.local, a.hash] for rel, a in archive.files.items()}
    shared_tree.hash_listed(str(config.root), listing["files"], known)


def _digest(listing: Mapping[str, Any]) -> str:
    """Every name and stamp of a listing, and what else it holds, as one hash."""
    digest: str = shared_tree.listing_digest(listing)
    return digest


def _unchanged(head: Head, listing: protocol.TreeListing | None, here: HereScan | None) -> bool:
    """Whether neither side changed since the last pass that left nothing to do: this side's
    names and stamps are that pass's, and the remote's listing is a diff with nothing in it
    against the listing that pass had (made since no other pass). Then there is nothing to do."""
    clean = head.clean
    if not clean or here is None or here.digest != clean.here:
        return False
    return bool(
        listing is not None
        and listing.base == listing.id == clean.listing
        and listing.files == {}
        and listing.gone == []
        and listing.gen == head.gen
        and _bare(listing) == clean.there
    )


def _state(archive: Archive) -> tuple[Any, ...]:
    """What of the archive can change without a file moving (a copy of it)."""
    return archive.pair, dict(archive.conflicts), dict(archive.kept_there)


def _pair(archive: Archive, host: str, remote_dir: str, there: Listing, here: Tree) -> str | None:
    """Make the archive this pair's: a different copy there (another folder, a new, emptied or
    purged one) starts a new pair with nothing agreed, so nothing is deleted on either side,
    and says so once. So does a side that has no file left at all: a deletion of everything
    never travels."""
    pair = Pair(host, remote_dir, there.replica)
    known, archive.pair = archive.pair, pair
    if not archive.files:
        return None
    where = f"{host}:{remote_dir}"
    if known is not None and known != pair:
        why = f"{where} is not the copy last synced with (another, new or purged folder)"
    elif not there.files:
        why = f"{where} has none of the project's files left (emptied or purged)"
    elif not here:
        why = "this folder has none of the project's files left"
    else:
        return None  # the same pair (an archive from before pairs were kept is taken as this one)
    archive.files.clear()
    archive.conflicts.clear()
    return f"{why}: nothing was deleted on either side; each side gets what the other has"


def _limit_deletions(
    plan: Plan, here: Tree, there: Tree, allowed: bool
) -> tuple[Plan, dict[str, int]]:
    """Deletions beyond a few, or of most of one side, wait until the user allows them."""
    if allowed:
        return plan, {}
    waiting: dict[str, int] = {}
    if too_many(len(plan.trash_local), len(here)):
        waiting["here"] = len(plan.trash_local)
        plan = dataclasses.replace(plan, trash_local=())
    if too_many(len(plan.trash_remote), len(there)):
        waiting["there"] = len(plan.trash_remote)
        plan = dataclasses.replace(plan, trash_remote=())
    return plan, waiting


@record
class Listing:
    """A side's tree, checked: files that travel, what blocks names, names skipped."""

    files: dict[str, list[Any]]
    others: dict[str, str]
    skipped: list[tuple[str, str]]
    replica: str | None
    gen: int | None


def _checked_listing(
    listing: protocol.TreeListing, exclude: list[str], include: list[str]
) -> Listing:
    """The remote's listing, as untrusted input: plain names of files that travel (never into
    rjn's folders or the results), each [size, mtime_ns, sha256]. A name that is not one is
    skipped and said, never a reason to stop the others; a listing that is not one stops."""
    files: dict[str, list[Any]] = {}
    others: dict[str, str] = {}
    skipped: list[tuple[str, str]] = []
    folders: dict[str, bool] = {}  # whether a folder, and all above it, travel

    def folder_travels(folder: str) -> bool:
        if folder not in folders:
            parent = folder.rpartition("/")[0]
            folders[folder] = shared_tree.travels(folder, True, exclude, include) and (
                not parent or folder_travels(parent)
            )
        return folders[folder]

    for name, entry in [*listing.files.items(), *listing.others.items()]:
        # Plain names (nearly all) pass a quick screen; checked_name judges the rest (a dot
        # after a slash, an empty part, a control character...): 100,000 names in a moment.
        if (not name or name[0] in "/." or name[-1] == "/" or "//" in name or "/." in name
                or len(name) > 4096 or shared_tree.CONTROL.search(name)):  # fmt: skip
            try:
                transfer.checked_name(name, None)
            except transfer.Refused as refused:
                skipped.append((name[:200], refused.message))
                continue
        parent = name.rpartition("/")[0]
        if not shared_tree.travels(name, False, exclude, include) or (
            parent and not folder_travels(parent)
        ):
            skipped.append((name, "it is not a file that travels"))
        elif (
            type(entry) is list
            and len(entry) == 3
            and type(entry[0]) is int
            and (type(entry[1]) is int and type(entry[2]) is str)
        ):
            files[name] = entry
        elif type(entry) is str:
            others[name] = entry
        else:
            raise transfer.Refused(f"the remote sent a malformed entry for {name!r:.200}")
    for item in listing.skipped:
        ok = isinstance(item, list) and len(item) == 2 and all(isinstance(v, str) for v in item)
        if not ok:
            raise transfer.Refused("the remote sent a malformed list of skipped names")
        skipped.append((item[0][:200], item[1][:200]))
    return Listing(files, others, skipped, listing.replica, listing.gen)


def _one_per_case(there: Listing, here: Mapping[str, Any]) -> Listing:
    """On a disk that takes names differing only by case for one, of remote paths that do
    (`Notes.txt` and `notes.txt`, or `Data/` and `data/`) one spelling travels: the one here,
    else the first; what is under the others is skipped and said, so that nothing there is
    ever written over another here."""
    names = [*there.files, *there.others]
    ours = set(here) | _folders(here)
    spellings = sorted({*names, *_folders(names)}, key=lambda p: (p not in ours, p))
    chosen: dict[str, str] = {}
    for path in spellings:
        chosen.setdefault(path.casefold(), path)

    def other(rel: str) -> str | None:
        """The spelling that travels where `rel`, or a folder of it, is not it."""
        parts = rel.split("/")
        for n in range(1, len(parts) + 1):
            path = "/".join(parts[:n])
            if chosen[path.casefold()] != path:
                return chosen[path.casefold()]
        return None

    left = {rel: found for rel in names if (found := other(rel)) is not None}
    if not left:
        return there
    why = "differs only by case from {}, which this disk takes for the same name: rename one"
    return dataclasses.replace(
        there,
        files={k: v for k, v in there.files.items() if k not in left},
        others={k: v for k, v in there.others.items() if k not in left},
        skipped=[*there.skipped, *((rel, why.format(left[rel])) for rel in sorted(left))],
    )


# -- apply: each transition compare and swap ------------------------------------------------------


def _apply(
    helper: HelperClient,
    config: Config,
    remote_dir: str,
    plan: Plan,
    local_tree: Tree,
    remote_tree: Tree,
    archive: Archive,
    direction: str,
    progress: transfer.Progress | None,
) -> Outcome:
    """Carry out the plan, deletions before placements on each side (a folder a file replaces
    must be empty first); the archive's files are updated once, at the end, from what each
    transition reports it did."""
    done: dict[str, Agreed | None] = {}  # rel -> its new agreed version, None: forgotten
    moves = transfer.Transfer(helper, config)  # the route picked once for the pass
    for rel in plan.agree:
        done[rel] = _entry(local_tree[rel], remote_tree[rel])
    for rel in plan.forget:
        done[rel] = None
    told = archive.kept_there
    archive.kept_there = {rel: remote_tree[rel][2] for rel in plan.kept_there}
    kept_there = tuple(r for r in plan.kept_there if told.get(r) != archive.kept_there[r])
    sends = direction != "pull"
    trashed_there: list[str] = []
    if sends and plan.trash_remote:
        wants = {rel: list(remote_tree[rel]) for rel in plan.trash_remote}
        moved = helper.trash(protocol.TrashRequest(dir=remote_dir, files=wants)).moved
        trashed_there = [rel for rel in moved if rel in wants]
        done.update(dict.fromkeys(trashed_there))
    pushed, raced = (
        _push(moves, remote_dir, plan.push, local_tree, remote_tree, done, progress)
        if sends
        else ([], [])
    )
    if direction == "push":
        _agree(config, archive, done)
        return Outcome(pushed=tuple(pushed), trashed_there=tuple(trashed_there),
                       held=plan.conflict + plan.pull + plan.trash_local, raced=tuple(raced),
                       kept_there=kept_there)  # fmt: skip
    trashed_here = _trash_here(config, {rel: local_tree[rel] for rel in plan.trash_local})
    done.update(dict.fromkeys(trashed_here))
    pulled, merges = [], {}
    wanted = {rel: _expected(local_tree.get(rel)) for rel in plan.pull}
    # A stamp no file has: the remote version of a conflict always lands beside the local one.
    wanted.update({rel: (-1, -1) for rel in plan.conflict})
    planned = set(plan.pull)

    def keep_base(rel: str, staged: Path) -> None:
        # A notebook pulled as planned is the base of the next merge: kept as it came, before
        # a save here can replace the file it lands in (_agree's look would find that save).
        # (A conflict's remote version is no base: the merge, or the user, decides.)
        if rel.endswith(".ipynb") and rel in planned:
            with contextlib.suppress(OSError):
                _keep_base(config, staged.read_bytes())

    pulled_now = moves.pull_decided(remote_dir, wanted, progress, keep_base) if wanted else []
    for item in pulled_now:
        pulled.append(item)
        if item.refused:
            continue
        there = remote_tree[item.path]
        if item.conflict_copy is None:
            # Agreed only where what was placed is the version listed there (the remote may
            # have saved it again between its listing and the pull: then the next pass sees).
            if item.placed is not None and item.placed[2] == there[2]:
                done[item.path] = _entry(item.placed, there)
        elif (merge := _merge(config, archive, item)) is not None:
            # A notebook changed on both sides: as planned, or saved here while its pull was
            # on the way (the save was made from the agreed version, the merge's base too).
            merges[item.path] = merge
        else:
            archive.conflicts[item.path] = Conflict(item.conflict_copy, there[2])
    merged_back, raced_merges = _send_merges(moves, remote_dir, merges, remote_tree, done,
                                             progress)  # fmt: skip
    _agree(config, archive, done)
    return Outcome(
        pushed=tuple(pushed),
        pulled=tuple(p for p in pulled if p.path not in merges),
        trashed_here=tuple(trashed_here),
        trashed_there=tuple(trashed_there),
        merged=tuple(merged_back),
        conflicts={rel: c.copy for rel, c in archive.conflicts.items()},
        unsent=() if sends else plan.push + plan.trash_remote,
        kept_there=kept_there,
        raced=tuple(raced + raced_merges),
    )


def _push(
    moves: transfer.Transfer,
    remote_dir: str,
    names: Sequence[str],
    local_tree: Tree,
    remote_tree: Tree,
    done: dict[str, Agreed | None],
    progress: transfer.Progress | None,
) -> tuple[list[str], list[str]]:
    """Send files and have the helper place each only over the remote version the plan saw
    (absent, or its listed entry); (placed, left because the remote changed meanwhile)."""
    if not names:
        return [], []
    wants = {rel: list(remote_tree[rel]) if rel in remote_tree else None for rel in names}
    sent = {rel: local_tree[rel] for rel in names}
    staging = moves.stage(remote_dir, names, progress)
    answer = moves.helper.place(protocol.PlaceRequest(dir=remote_dir, staging=staging, files=wants))
    for rel, stamp in answer.placed.items():
        if rel in sent and isinstance(stamp, list) and len(stamp) == 2:
            done[rel] = _entry(sent[rel], [*stamp, sent[rel][2]])
    return [r for r in names if r in answer.placed], [r for r in names if r in answer.kept]


def _agree(config: Config, archive: Archive, done: dict[str, Agreed | None]) -> None:
    """The archive's agreed versions, from what the transitions did; a notebook's agreed
    version is kept too, as the base of a later merge."""
    files = archive.files
    for rel, agreed in done.items():
        if agreed is None:
            files.pop(rel, None)
            continue
        files[rel] = agreed
        if rel.endswith(".ipynb") and not (_bases(config) / agreed.hash).exists():
            with contextlib.suppress(OSError):
                _keep_base(config, (config.root / rel).read_bytes(), agreed.hash)


def _keep_base(config: Config, content: bytes, expected: str | None = None) -> str:
    """Keep a notebook's content as the base of a later merge, under its hash; only where it
    is the version agreed on (`expected`): the file may have been saved again since."""
    digest = hashlib.sha256(content).hexdigest()
    if expected is None or digest == expected:
        places.write_private(_bases(config) / digest, content)
    return digest


def _base(config: Config, digest: str) -> bytes | None:
    """A kept base, if it is what its name says."""
    try:
        content = (_bases(config) / digest).read_bytes()
    except OSError:
        return None
    return content if hashlib.sha256(content).hexdigest() == digest else None


def _entry(here: Sequence[Any], there: Sequence[Any]) -> Agreed:
    """Both sides hold the same content: its stamp on each side and its hash."""
    return Agreed((here[0], here[1]), (there[0], there[1]), here[2])


def _expected(entry: Sequence[Any] | None) -> tuple[int, int] | None:
    """A scanned local entry as placement compares it: (mtime_ns, size)."""
    return (entry[1], entry[0]) if entry else None


def _own_folder(config: Config) -> Path:
    """rjn's folder in the project (`.rjn/`, never synced), made with a .gitignore that keeps
    it out of the user's repository."""
    ignore = config.root / ".rjn" / ".gitignore"
    if not ignore.exists():
        ignore.parent.mkdir(exist_ok=True)
        ignore.write_text("*\n")
    return ignore.parent


def _trash_here(config: Config, wants: dict[str, Sequence[Any]]) -> list[str]:
    """Move local files into the project's trash folder, each only if it is still as scanned
    (the same compare and swap the remote's helper does), then prune the trash."""
    if not wants:
        return []
    _own_folder(config)
    try:
        moved: list[str] = shared_tree.move_to_trash(str(config.root), wants)
    except HelperError as failed:
        raise transfer.Refused(failed.message) from None
    shared_tree.prune_trash(str(config.root), shared_tree.TRASH_DAYS, shared_tree.TRASH_BYTES)
    return moved


@record
class Merge:
    """A notebook merged cell by cell: the result, and the local version it was made from."""

    content: bytes
    local: tuple[int, int]  # (mtime_ns, size) of the local file merged
    copy: str  # where the remote version was pulled beside it


def _merge(config: Config, archive: Archive, item: transfer.Pulled) -> Merge | None:
    """Merge a notebook changed on both sides, cell by cell, from the agreed base; None
    where that is not clean (then both versions are kept)."""
    rel, copy = item.path, item.conflict_copy
    agreed = archive.files.get(rel)
    if not rel.endswith(".ipynb") or not agreed or copy is None:
        return None
    base = _base(config, agreed.hash)
    if base is None:
        return None
    local_file = config.root / rel
    try:
        before = local_file.lstat()
        ours = local_file.read_bytes()
        theirs = (config.root / copy).read_bytes()
        if local_file.lstat().st_mtime_ns != before.st_mtime_ns:
            return None  # saved again while read: both versions kept, as a conflict
    except OSError:
        return None
    merged = nbmerge.merge(base, ours, theirs)
    if merged is None:
        return None
    return Merge(merged, (before.st_mtime_ns, before.st_size), copy)


def _send_merges(
    moves: transfer.Transfer,
    remote_dir: str,
    merges: dict[str, Merge],
    remote_tree: Tree,
    done: dict[str, Agreed | None],
    progress: transfer.Progress | None,
) -> tuple[list[str], list[str]]:
    """Place clean merges on both sides, each compare and swap: there only over the remote
    version merged, here only over the local one. Agreed only where both took it; else
    nothing is recorded and the next pass merges again from the same base (nothing lost: the
    remote version merged is in what went there, ours is still here). The remote version's
    copy beside ours goes, its edits being in the merge."""
    if not merges:
        return [], []
    config = moves.config
    with transfer.staging_here(config.root) as staging:
        now = time.time_ns()
        for rel, merge in merges.items():
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            (staging / rel).write_bytes(merge.content)
            os.utime(staging / rel, ns=(now, now))
        names = sorted(merges)
        wants = {rel: list(remote_tree[rel]) for rel in names}
        sent = moves.stage(remote_dir, names, progress, source=staging)
        request = protocol.PlaceRequest(dir=remote_dir, staging=sent, files=wants)
        answer = moves.helper.place(request)
        merged, raced = [], []
        for rel in names:
            merge = merges[rel]
            with contextlib.suppress(OSError):
                (config.root / merge.copy).unlink()
            stamp = answer.placed.get(rel)
            there = stamp if isinstance(stamp, list) and len(stamp) == 2 else None
            here = there and transfer.replace_unchanged(config, staging, rel, merge.local)
            if not (here and there):
                raced.append(rel)  # one side saved it again meanwhile
                continue
            merged.append(rel)
            digest = _keep_base(config, merge.content)
            done[rel] = _entry([*here, digest], [*there, digest])
    return merged, raced
