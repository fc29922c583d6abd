"""The project kept in step both ways: the version both sides last agreed on decides what moves.

Per file, rjn remembers the agreed version (size and time on each side, and a content hash).
Changed on one side since: the other side gets it. Changed on both: a conflict; notebooks are
merged cell-wise (nbdime) where that is clean, else the remote version lands beside the local
one. Deleted on one side while the other is unchanged: the deletion travels, into a trash
folder (`.rjn/trash/`) on the other side. No decision compares the clocks of two machines.
Results folders are not part of this: they only come home (`sync.pull`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rjn import places, state, sync
from rjn.config import DEFAULT_EXCLUDES, Config, guarded
from rjn.helper import tree as helper_tree
from rjn.remote import Remote

# A file's state on one side: [size, mtime_ns, sha256].
Tree = Mapping[str, Sequence[Any]]
TRASH = ".rjn/trash"


def filters(config: Config) -> tuple[list[str], list[str]]:
    """(exclude, include) patterns of what travels both ways: never results (they only come
    home), never environments, caches, checkpoints or rjn's own folders."""
    exclude = [*DEFAULT_EXCLUDES, *config.sync.exclude]
    exclude += [f"/{folder.strip('/')}/" for folder in config.sync.results]
    return exclude, list(config.sync.include)


@dataclass(frozen=True)
class Plan:
    """What one sync will do, path by path (pure: decided from three listings)."""

    push: tuple[str, ...] = ()
    pull: tuple[str, ...] = ()
    trash_remote: tuple[str, ...] = ()
    trash_local: tuple[str, ...] = ()
    conflict: tuple[str, ...] = ()
    agree: tuple[str, ...] = ()
    forget: tuple[str, ...] = ()
    # Guarded files the remote changed (or made, or both sides did): left there, not brought.
    kept_there: tuple[str, ...] = ()


def decide(local: Tree, remote: Tree, agreed: Mapping[str, str]) -> Plan:
    """The decision table. `agreed` maps a path to the hash both sides last agreed on. A
    guarded file only ever goes out: what would bring the remote's version home keeps it
    there, and a remote deletion of one is undone by sending ours again."""
    plan: dict[str, list[str]] = {k: [] for k in Plan.__dataclass_fields__}
    for rel in sorted({*local, *remote, *agreed}):
        here, there, base = local.get(rel), remote.get(rel), agreed.get(rel)
        if here and there and here[2] == there[2]:
            if base != here[2]:
                plan["agree"].append(rel)
            continue
        mine, theirs = _change(here, base), _change(there, base)
        action = {
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
        }.get((mine, theirs))
        if action and guarded(rel):
            action = {"pull": "kept_there", "conflict": "kept_there",
                      "trash_local": "push"}.get(action, action)  # fmt: skip
        if action:
            plan[action].append(rel)
    return Plan(**{k: tuple(v) for k, v in plan.items()})


def _change(entry: Sequence[Any] | None, base: str | None) -> str:
    if base is None:
        return "absent" if entry is None else "new"
    if entry is None:
        return "deleted"
    return "same" if entry[2] == base else "changed"


# -- the record of agreed versions ------------------------------------------------------------


def _record_path(config: Config) -> Path:
    return state.project_file(config.root, config.remote_name, ".agreed")


def load(config: Config) -> dict[str, Any]:
    """{"files": {rel: {"local", "remote", "hash"}}, "conflicts": {rel: {"copy", "remote"}}}."""
    try:
        data = json.loads(_record_path(config).read_text())
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    data.setdefault("files", {})
    data.setdefault("conflicts", {})
    return data


def _save(config: Config, record: dict[str, Any]) -> None:
    places.write_private(_record_path(config), json.dumps(record))


def _bases(config: Config) -> Path:
    """Agreed versions of notebooks, by hash: the base of a three-way merge."""
    record = state.project_file(config.root, config.remote_name)
    return places.private_dir(record.with_suffix(".bases"))


def conflicts(config: Config) -> dict[str, str]:
    """Unresolved conflicts: {path: the remote version's copy beside it} whose copy still
    exists (deleting the copy resolves the conflict in favour of the local version)."""
    found = load(config)["conflicts"]
    return {rel: c["copy"] for rel, c in found.items() if (config.root / c["copy"]).exists()}


# -- one sync ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one two-way sync did."""

    pushed: tuple[str, ...] = ()
    pulled: tuple[sync.Pulled, ...] = ()
    trashed_here: tuple[str, ...] = ()
    trashed_there: tuple[str, ...] = ()
    merged: tuple[str, ...] = ()
    conflicts: dict[str, str] = field(default_factory=dict)
    # Left for a sync both ways: changed there (after a push-only sync), or here (after a
    # pull-only one).
    held: tuple[str, ...] = ()
    unsent: tuple[str, ...] = ()
    # Guarded files (see GUARDED_NAMES) changed on the remote, said once per remote version.
    kept_there: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.pushed or self.pulled or self.trashed_here or self.trashed_there)


def scan_args(config: Config) -> dict[str, Any]:
    """The helper's arguments for listing the remote tree (in a probe, or alone)."""
    exclude, include = filters(config)
    record = load(config)["files"]
    known = {rel: [*a["remote"], a["hash"]] for rel, a in record.items() if a.get("remote")}
    return {"exclude": exclude, "include": include, "known": known}


def run(
    remote: Remote,
    config: Config,
    remote_dir: str,
    remote_tree: Tree | None = None,
    *,
    direction: str = "both",
    progress: sync.Progress | None = None,
) -> Outcome:
    """Bring both sides in step. direction "push" only sends (nothing local changes); "pull"
    only brings home (nothing remote changes; both-sided changes keep both versions)."""
    if remote_tree is None:
        remote_tree = remote.agent("scan", {"dir": remote_dir, **scan_args(config)}, timeout=300)[
            "files"
        ]
    exclude, include = filters(config)
    remote_tree = _checked_tree(remote_tree, exclude, include)
    record = load(config)
    files: dict[str, Any] = record["files"]
    known = {rel: [*a["local"], a["hash"]] for rel, a in files.items() if a.get("local")}
    local_tree = helper_tree.scan_tree(str(config.root), exclude, include, known)
    agreed = {rel: a["hash"] for rel, a in files.items()}
    # A conflict whose copy the user deleted is resolved: the remote version they saw is
    # taken as agreed, so their local version goes out.
    for rel, conflict in list(record["conflicts"].items()):
        if not (config.root / conflict["copy"]).exists():
            agreed[rel] = conflict["remote"]
            del record["conflicts"][rel]
    held = tuple(rel for rel in record["conflicts"])
    plan = decide(
        {k: v for k, v in local_tree.items() if k not in held},
        {k: v for k, v in remote_tree.items() if k not in held},
        {k: v for k, v in agreed.items() if k not in held},
    )
    outcome = _apply(remote, config, remote_dir, plan, local_tree, remote_tree, record,
                     direction, progress)  # fmt: skip
    _save(config, record)
    return outcome


def _apply(
    remote: Remote,
    config: Config,
    remote_dir: str,
    plan: Plan,
    local_tree: Tree,
    remote_tree: Tree,
    record: dict[str, Any],
    direction: str,
    progress: sync.Progress | None,
) -> Outcome:
    files: dict[str, Any] = record["files"]
    if direction == "pull":
        held = plan.push + plan.trash_remote
        plan = dataclasses.replace(plan, push=(), trash_remote=())
    else:
        held = ()
    for rel in plan.agree:
        _agreed(config, files, rel, local_tree[rel], remote_tree[rel])
    for rel in plan.forget:
        files.pop(rel, None)
    said = record.get("kept_there") or {}
    record["kept_there"] = {rel: remote_tree[rel][2] for rel in plan.kept_there}
    kept_there = tuple(r for r in plan.kept_there if said.get(r) != record["kept_there"][r])
    pushed: list[str] = []
    if plan.push:
        sync.push_decided(remote, config, remote_dir, plan.push, progress)
        for rel in plan.push:
            entry = local_tree[rel]
            _agreed(config, files, rel, entry, entry)  # --times: the remote copy has our stamp
            pushed.append(rel)
    trashed_there: list[str] = []
    if plan.trash_remote:
        stamps = {rel: list(remote_tree[rel][:2]) for rel in plan.trash_remote}
        moved = remote.agent("trash", {"dir": remote_dir, "files": stamps}, timeout=120)["moved"]
        for rel in moved:
            files.pop(rel, None)
            trashed_there.append(rel)
    if direction == "push":
        return Outcome(pushed=tuple(pushed), trashed_there=tuple(trashed_there),
                       held=plan.conflict + plan.pull + plan.trash_local,
                       kept_there=kept_there)  # fmt: skip
    pulled, trashed_here, merged = [], [], []
    wanted = {rel: _expected(local_tree.get(rel)) for rel in plan.pull}
    # A stamp no file has: the remote version of a conflict always lands beside the local one.
    wanted.update({rel: (-1, -1) for rel in plan.conflict})
    if wanted:
        for item in sync.pull_decided(remote, config, remote_dir, wanted, progress):
            pulled.append(item)
            if item.refused:
                continue
            if item.conflict_copy is None:
                _agreed(config, files, item.path, _local_entry(config, item.path),
                        remote_tree[item.path])  # fmt: skip
            elif (
                direction == "both"
                and item.path in plan.conflict
                and _merge(config, files, item, remote_tree)
            ):
                merged.append(item.path)
            else:
                record["conflicts"][item.path] = {
                    "copy": item.conflict_copy,
                    "remote": remote_tree[item.path][2],
                }
    for rel in plan.trash_local:
        if _trash_here(config, rel, local_tree[rel]):
            files.pop(rel, None)
            trashed_here.append(rel)
    if merged:
        sync.push_decided(remote, config, remote_dir, merged, progress)
        for rel in merged:
            entry = _local_entry(config, rel)
            _agreed(config, files, rel, entry, entry)
    return Outcome(
        pushed=tuple(pushed),
        pulled=tuple(p for p in pulled if p.path not in merged),
        trashed_here=tuple(trashed_here),
        trashed_there=tuple(trashed_there),
        merged=tuple(merged),
        conflicts={rel: c["copy"] for rel, c in record["conflicts"].items()},
        unsent=held,
        kept_there=kept_there,
    )


def _checked_tree(tree: object, exclude: list[str], include: list[str]) -> dict[str, list[Any]]:
    """The remote's listing, as untrusted input: plain names of files that travel (never into
    rjn's folders or the results), each [size, mtime_ns, sha256]."""
    if not isinstance(tree, dict):
        raise sync.Refused("the remote sent a file listing that is not one")
    checked = {}
    for name, entry in tree.items():
        rel = sync.checked_name(name, None)
        parts = rel.split("/")
        paths = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if not all(helper_tree.travels(p, p != rel, exclude, include) for p in paths):
            raise sync.Refused(f"the remote listed a file that does not travel: {rel!r:.200}")
        ok = isinstance(entry, list) and len(entry) == 3
        if not ok or not all(type(v) is int for v in entry[:2]) or not isinstance(entry[2], str):
            raise sync.Refused(f"the remote sent a malformed entry for {rel!r:.200}")
        checked[rel] = entry
    return checked


def _expected(entry: Sequence[Any] | None) -> tuple[int, int] | None:
    """A scanned local entry as placement compares it: (mtime_ns, size)."""
    return (entry[1], entry[0]) if entry else None


def _local_entry(config: Config, rel: str) -> list[Any]:
    info = (config.root / rel).lstat()
    return [info.st_size, info.st_mtime_ns, helper_tree.file_hash(str(config.root / rel))]


def _agreed(
    config: Config, files: dict[str, Any], rel: str, here: Sequence[Any], there: Sequence[Any]
) -> None:
    """Both sides hold the same content now: remember it (and a notebook's base)."""
    files[rel] = {"local": list(here[:2]), "remote": list(there[:2]), "hash": here[2]}
    if rel.endswith(".ipynb"):
        base = _bases(config) / here[2]
        if not base.exists():
            with contextlib.suppress(OSError):
                places.write_private(base, (config.root / rel).read_text(encoding="utf-8"))


def _merge(config: Config, files: dict[str, Any], item: sync.Pulled, remote_tree: Tree) -> bool:
    """Merge a notebook changed on both sides, cell by cell, from the agreed base; True if
    the merge was clean (then the local file holds it and the remote copy is gone)."""
    rel, copy = item.path, item.conflict_copy
    agreed = files.get(rel)
    if not rel.endswith(".ipynb") or not agreed or copy is None:
        return False
    base_file = _bases(config) / agreed["hash"]
    if not base_file.exists():
        return False
    local_file, copy_file = config.root / rel, config.root / copy
    try:
        import nbdime
        import nbformat

        read = lambda path: nbformat.reads(path.read_text(encoding="utf-8"), as_version=4)  # noqa: E731
        before = local_file.lstat()
        merged, decisions = nbdime.merge_notebooks(
            read(base_file), read(local_file), read(copy_file)
        )
    except Exception:  # an unreadable notebook is a conflict to keep, not a crash
        return False
    if any(d.conflict for d in decisions):
        return False
    if local_file.lstat().st_mtime_ns != before.st_mtime_ns:
        return False  # edited again while we merged: keep both
    staged = local_file.with_name(f".{local_file.name}.rjn-merge")
    staged.write_text(nbformat.writes(merged), encoding="utf-8")
    os.replace(staged, local_file)
    copy_file.unlink()
    return True


def _trash_here(config: Config, rel: str, entry: Sequence[Any]) -> bool:
    """Move a local file into the project's trash folder, if it is still as scanned."""
    path = config.root / rel
    try:
        info = path.lstat()
    except FileNotFoundError:
        return False
    if [info.st_size, info.st_mtime_ns] != list(entry[:2]):
        return False
    target = config.root / TRASH / time.strftime("%Y%m%d-%H%M%S") / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    ignore = config.root / ".rjn" / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")  # rjn's local folder stays out of the user's repository
    os.rename(path, target)
    return True
