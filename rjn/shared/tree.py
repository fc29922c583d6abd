"""The project's tree, as both sides see it (this runs here and on the remote): what travels,
listings with hashes, walking and placing through folder descriptors (never through a link),
compare and swap, and the trash. The remote's actions on it are helper/tree.py."""

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import stat
import time

from .folders import RJN_DIR, rjn_dir
from .protocol import HelperError


def travels(rel, is_dir, exclude, include=()):
    """Whether a project path (posix, relative) is kept in step: rsync-style patterns, where
    "name/" matches folders only, a pattern with a slash is anchored at the project, and
    `include` wins over `exclude`."""
    name = rel.rsplit("/", 1)[-1]
    excluded, included = _patterns(tuple(exclude), tuple(include))
    return included(rel, name, is_dir) or not excluded(rel, name, is_dir)


@functools.lru_cache(maxsize=32)
def _patterns(exclude, include):
    """Each list of patterns as one test (compiled regular expressions): a project of 100,000
    files asks it for every path."""
    return _compiled(exclude), _compiled(include)


def _compiled(patterns):
    import fnmatch

    def joined(chosen):
        return re.compile("|".join(fnmatch.translate(p) for p in chosen)) if chosen else None

    kinds = {}
    for folder_only in (False, True):
        chosen = [p.rstrip("/") for p in patterns if p.endswith("/") == folder_only]
        kinds[folder_only] = (
            joined([p for p in chosen if "/" not in p]),
            joined([p.lstrip("/") for p in chosen if "/" in p]),
        )

    def test(rel, name, is_dir):
        for folder_only in (False, True) if is_dir else (False,):
            by_name, by_path = kinds[folder_only]
            if (by_name and by_name.match(name)) or (by_path and by_path.match(rel)):
                return True
        return False

    return test


def file_hash(path, dir_fd=None):
    """SHA-256 of a regular file's content; with `dir_fd`, `path` is a name in that folder and
    is opened without following a link."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0), dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# A control character in a name (a line break, a tab, ESC): such names never travel.
CONTROL = re.compile("[\x00-\x1f\x7f]")


def odd_name(rel):
    """Why a name cannot travel, or None: it is not UTF-8 (the listing is JSON, and the other
    side may not store it), or it holds a control character (a line break, a tab)."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not UTF-8"
    if CONTROL.search(rel):
        return "its name has a control character"
    return None


def shown(rel):
    """A name as text that survives JSON: undecodable bytes as \\xNN."""
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def is_environment(path):
    """A Python environment (venv, virtualenv, conda's venv): it never travels, whatever its
    folder is called (a user's data folder named env/ does)."""
    return os.path.isfile(os.path.join(path, "pyvenv.cfg"))


def list_tree(project, exclude, include=(), known=None, hashed=True):
    """The project as two-way sync sees it: "files", {rel: [size, mtime_ns, sha256]} of every
    regular file that travels; "others", {rel: "link" | "other"} of what is there but never
    travels (it still blocks a file or folder of that name); "skipped", [[name, why]] of names
    that cannot travel (and of what cannot be read: "unreadable" in others, which nothing on
    either side moves over). Links are not followed; a file whose size and time match `known`
    keeps its known hash unread. Without `hashed`, the hashes are None (see hash_listed)."""
    known = known or {}
    files, others, skipped = {}, {}, []
    me = os.geteuid() if hasattr(os, "geteuid") else None

    def unreadable(rel, why):
        """A file or folder rjn cannot read here: listed, so that the other side never takes
        it for deleted; nothing of it moves either way."""
        others[rel] = "unreadable"
        skipped.append([shown(rel), "it cannot be read (%s): left as it is on both sides" % why])

    def walk_failed(error):
        rel = os.path.relpath(error.filename or project, project).replace(os.sep, "/")
        if rel != ".":
            unreadable(rel, error.strerror or "no access")

    def admitted(rel, is_dir):
        """Whether a path travels; one whose name cannot is noted in `skipped`."""
        if not travels(rel, is_dir, exclude, include):
            return False
        why = odd_name(rel)
        if why:
            skipped.append([shown(rel), why])
        return not why

    for folder, dirs, names in os.walk(project, onerror=walk_failed):
        base = os.path.relpath(folder, project)
        base = "" if base == "." else base + "/"
        entered = []
        for name in dirs:
            rel = base + name
            if not admitted(rel, True):
                continue
            if os.path.islink(os.path.join(folder, name)):
                others[rel] = "link"
            elif not is_environment(os.path.join(folder, name)):
                entered.append(name)
        dirs[:] = entered
        for name in names:
            rel = base + name
            if not admitted(rel, False):
                continue
            try:
                info = os.lstat(os.path.join(folder, name))
            except FileNotFoundError:
                continue  # vanished while we looked: the next scan sees it as it is
            except OSError as error:  # a folder we may list but not enter
                unreadable(rel, error.strerror or "no access")
                continue
            if not stat.S_ISREG(info.st_mode):
                others[rel] = "link" if stat.S_ISLNK(info.st_mode) else "other"
                continue
            # Our own readable file needs no question (nearly all); any other is asked.
            mine = me is not None and info.st_uid == me and info.st_mode & stat.S_IRUSR
            if me is not None and not mine and not os.access(os.path.join(folder, name), os.R_OK):
                unreadable(rel, "permission denied")
                continue
            files[rel] = [info.st_size, info.st_mtime_ns, None]
    if hashed:
        hash_listed(project, files, known)
    return {"files": files, "others": others, "skipped": skipped}


def hash_listed(project, files, known):
    """Fill in the hashes of a listing's files ({rel: [size, mtime_ns, None]}, in place): a
    file whose size and time match `known` keeps its known hash unread; one gone meanwhile is
    dropped (the next scan sees it as it is)."""
    for rel, entry in list(files.items()):
        seen = known.get(rel) if known else None
        if seen and seen[:2] == entry[:2] and seen[2]:
            entry[2] = seen[2]
            continue
        try:
            entry[2] = file_hash(os.path.join(project, rel))
        except OSError:
            del files[rel]


def scan_tree(project, exclude, include=(), known=None):
    """{relpath: [size, mtime_ns, sha256]} of every regular file that travels."""
    return list_tree(project, exclude, include, known)["files"]


# Folders are walked by descriptor (openat and friends), never through a link. Where the
# platform has no descriptor-relative calls (Windows' Python), a folder is its path instead,
# each component looked at (lstat) on the way: the same refusals, with a window between the
# look and the use that descriptors close. RJN_ROUTES=no-dir-fd takes that route anywhere.
BY_PATH = (
    os.name == "nt"
    or os.open not in os.supports_dir_fd
    or "no-dir-fd" in os.environ.get("RJN_ROUTES", "").split(",")
)


def open_root(path):
    """The project's folder, as a handle the calls below take."""
    return path if BY_PATH else os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def close_folder(folder):
    if not BY_PATH:
        os.close(folder)


def _at(folder, name):
    """(path, dir_fd) for a call on `name` in `folder`."""
    return (os.path.join(folder, name), None) if BY_PATH else (name, folder)


def rmdir_at(folder, name):
    path, fd = _at(folder, name)
    os.rmdir(path, dir_fd=fd)


def move_in(src, folder, name):
    """Move the file at path `src` to `name` in `folder` (replacing what is there)."""
    path, fd = _at(folder, name)
    os.replace(src, path, dst_dir_fd=fd)


def move_out(folder, name, target):
    """Move `name` in `folder` to the path `target`."""
    path, fd = _at(folder, name)
    os.replace(path, target, src_dir_fd=fd)


def open_folder(root_fd, rel, make):
    """The folder that holds `rel` (a handle: see open_root), walked from the root one
    component at a time and never through a link (made where missing, with `make`). A
    component that is a link or a file fails, naming it."""
    if BY_PATH:
        return _walk_path(root_fd, rel, make)
    fd = os.dup(root_fd)
    walked = []
    try:
        for part in rel.split("/")[:-1]:
            walked.append(part)
            if make:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise HelperError(
                        "%s is a link or a file here: nothing is written through it"
                        % "/".join(walked)
                    )
                raise
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _walk_path(root, rel, make):
    folder, walked = root, []
    for part in rel.split("/")[:-1]:
        walked.append(part)
        folder = os.path.join(folder, part)
        if make:
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o777)
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode):
            raise HelperError(
                "%s is a link or a file here: nothing is written through it" % "/".join(walked)
            )
    return folder


def lstat_at(folder, name):
    path, fd = _at(folder, name)
    try:
        return os.stat(path, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def still(folder, name, want):
    """Whether `name` in `folder` is still what the plan was made from: absent (None), or a
    regular file with [size, mtime_ns, sha256] (the hash read where the stamps are equal, so
    a same-size rewrite within the clock's resolution is seen too)."""
    now = lstat_at(folder, name)
    if want is None:
        return now is None or stat.S_ISDIR(now.st_mode)  # an empty folder may give way
    if now is None or not stat.S_ISREG(now.st_mode):
        return False
    if [now.st_size, now.st_mtime_ns] != list(want[:2]):
        return False
    path, fd = _at(folder, name)
    try:
        return file_hash(path, dir_fd=fd) == want[2]
    except OSError:
        return False


def replace_checked(folder, name, want, put):
    """Compare and swap: `put(folder, name)` moves the new version in only if `name` is still
    `want`; a folder there gives way only if it is empty. None when done, else why not."""
    if not still(folder, name, want):
        return "changed on this side since it was listed"
    now = lstat_at(folder, name)
    if now is not None and stat.S_ISDIR(now.st_mode):
        try:
            rmdir_at(folder, name)
        except OSError:
            return "a folder of that name is here, and not empty"
    put(folder, name)
    return None


STAGING_PREFIX = "incoming-"


def staging_path(project, name):
    """A push's staging folder in .rjn/, by a name the caller gave: one of ours, or refused."""
    if not name.startswith(STAGING_PREFIX) or "/" in name or name.startswith("."):
        raise HelperError("not a staging folder: %r" % name[:100])
    return os.path.join(project, RJN_DIR, name)


def listing_digest(listing):
    """Every name and stamp of a listing (and what else it holds) as one hash: equal digests,
    nothing changed (the same test as the hash cache's: size and time)."""
    digest = hashlib.sha256()
    for rel in sorted(listing["files"]):
        size, mtime = listing["files"][rel][:2]
        digest.update(("%s\0%d\0%d\n" % (rel, size, mtime)).encode("utf-8", "surrogateescape"))
    rest = [listing.get("others") or {}, listing.get("skipped") or []]
    digest.update(json.dumps(rest, sort_keys=True).encode())
    return digest.hexdigest()


# Defaults of the trash's pruning (days, bytes): the README names them.
TRASH_DAYS = 30
TRASH_BYTES = 2 * 1024**3


def move_to_trash(project, files):
    """{rel: [size, mtime_ns, sha256]} into .rjn/trash/<time>/, compare and swap, never
    through a link; the names moved."""
    when = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    root_fd = open_root(project)
    try:
        for rel, want in sorted(files.items()):
            try:
                folder = open_folder(root_fd, rel, make=False)
            except (HelperError, OSError):
                continue
            try:
                base = rel.rsplit("/", 1)[-1]
                if lstat_at(folder, base) is None or not still(folder, base, want):
                    continue
                target = os.path.join(rjn_dir(project), "trash", when, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                move_out(folder, base, target)
                moved.append(rel)
            finally:
                close_folder(folder)
    finally:
        close_folder(root_fd)
    return moved


def trash_usage(project):
    """[(folder, bytes)] of the trash, oldest first."""
    top = os.path.join(project, RJN_DIR, "trash")
    try:
        names = sorted(os.listdir(top))
    except OSError:
        return []
    found = []
    for name in names:
        size = 0
        for folder, _, files in os.walk(os.path.join(top, name)):
            for file in files:
                with contextlib.suppress(OSError):
                    size += os.lstat(os.path.join(folder, file)).st_size
        found.append((os.path.join(top, name), size))
    return found


def prune_trash(project, days, limit):
    """Drop trash folders older than `days`, then the oldest until the rest fit in `limit`
    bytes (the newest is always kept: it holds what was just moved there)."""
    usage = trash_usage(project)
    total = sum(size for _, size in usage)
    for path, size in usage[:-1]:
        try:
            old = time.time() - os.lstat(path).st_mtime > days * 86400
        except OSError:
            continue
        if old or total > limit:
            shutil.rmtree(path, ignore_errors=True)
            total -= size
