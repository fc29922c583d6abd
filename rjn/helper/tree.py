"""The project's tree for two-way sync: what travels, listings with hashes, this copy's id,
placing what was pushed (compare and swap), the trash, and the results' files. The local side
runs the same code on its own tree."""

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
import uuid

from .common import (
    RJN_DIR,
    HelperError,
    in_parts,
    project_dir,
    read_json,
    rjn_dir,
    write_private,
)
from .protocol import Moved, Placed


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


def replica(project):
    """This copy of the project's id (its .rjn/replica), made on first use. A record of
    agreed versions belongs to one pair of copies: a new, emptied or purged folder has a new
    id, so nothing is ever deleted because it is missing there."""
    path = os.path.join(rjn_dir(project), "replica")
    for _ in range(3):
        try:
            with open(path) as handle:
                found = handle.read().strip()
            if found:
                return found
        except OSError:
            pass
        # Made whole, then linked into place: two helpers at once agree on one id.
        made = uuid.uuid4().hex
        tmp = "%s.%d" % (path, os.getpid())
        with open(tmp, "w") as handle:
            handle.write(made)
        try:
            os.link(tmp, path)
        except FileExistsError:
            continue
        finally:
            os.unlink(tmp)
        return made
    raise HelperError("cannot read or make %s" % path)


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


def place(args):
    """Move what a push left in a staging folder (in .rjn/) into the project, each file only
    if its place still holds what the plan was made from (`files`: {rel: None (absent) or
    [size, mtime_ns, sha256]}). A file changed since is left as it is, and said: the caller
    keeps its own version and decides again. The staging folder goes, whatever is left."""
    project = project_dir(args["dir"])
    staging = staging_path(project, args["staging"])
    placed, kept = {}, {}
    root_fd = open_root(project)
    try:
        for rel, want in sorted(args["files"].items()):
            src = os.path.join(staging, rel)
            try:
                arrived = stat.S_ISREG(os.lstat(src).st_mode)
            except OSError:
                arrived = False
            if not arrived:
                kept[rel] = "it did not arrive (changed or gone here while it was sent)"
                continue
            try:
                folder = open_folder(root_fd, rel, make=True)
            except HelperError as exc:
                kept[rel] = exc.message
                continue
            try:
                base = rel.rsplit("/", 1)[-1]
                why = replace_checked(folder, base, want, lambda f, n, src=src: move_in(src, f, n))
                if why:
                    kept[rel] = why
                else:
                    after = lstat_at(folder, base)
                    placed[rel] = [after.st_size, after.st_mtime_ns] if after else None
            finally:
                close_folder(folder)
    finally:
        close_folder(root_fd)
        shutil.rmtree(staging, ignore_errors=True)
    return Placed(in_parts(placed, "placed"), in_parts(kept, "kept")).to_json()


def clean_staging(project, mine):
    """Staging folders a push left behind when it was cut short: this machine's (prefix
    `mine`; its passes take turns, so any of them is over), and anyone's older than a day."""
    folder = os.path.join(project, RJN_DIR)
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if not name.startswith(STAGING_PREFIX):
            continue
        path = os.path.join(folder, name)
        try:
            old = time.time() - os.lstat(path).st_mtime > 86400
        except OSError:
            continue
        if (mine and name.startswith(mine)) or old:
            shutil.rmtree(path, ignore_errors=True)


# Beyond this many files, the results are not listed (a pull by rsync decides instead).
RESULTS_LISTED_MAX = 20000


def results_listing(project, folders):
    """{relpath: [mtime_ns, size]} of every file in the results folders, for the local side
    to see whether a pull would bring anything (then it skips rsync's round trips); None
    where only a pull can tell: a link in there, or more files than are listed."""
    found = {}
    for folder in folders:
        name = folder.strip("/")
        # A results folder that is a link (to scratch space) is entered, as rsync does.
        for root, dirs, files in os.walk(os.path.join(project, name)):
            base = name + "/" + os.path.relpath(root, os.path.join(project, name)) + "/"
            base = base.replace("/./", "/")
            for entry in dirs + files:
                try:
                    info = os.lstat(os.path.join(root, entry))
                except OSError:
                    return None  # changing while we look: let rsync see it
                if stat.S_ISLNK(info.st_mode):
                    return None
                if stat.S_ISREG(info.st_mode):
                    found[base + entry] = [info.st_mtime_ns, info.st_size]
            if len(found) > RESULTS_LISTED_MAX:
                return None
    return found


def scan(args):
    project = project_dir(args["dir"])
    return {"tree": tree_listing(project, args)}


def tree_listing(project, args):
    """The tree, this copy's replica id, and the record generation the caller listed against
    (echoed: it tells a listing made before another pass from one made after); leftovers of
    cut-short pushes are cleaned first.

    The last listing sent to each machine (`mine`) is kept in .rjn/: it is the hash cache
    (a file whose size and time did not change is not read again), and, when the caller still
    has that listing (`since`: its id), only what changed since is sent (`base`, `files` changed
    or new, `gone`). Beside it, a digest of its names and stamps: where the tree still matches
    it, nothing is read or hashed at all. A large answer's files come first in pieces
    (common.in_parts)."""
    mine = args.get("mine") or ""
    clean_staging(project, STAGING_PREFIX + mine + "-" if mine else None)
    kept_at = os.path.join(rjn_dir(project), "listing-%s.json" % (mine if mine.isalnum() else "x"))
    listed = list_tree(project, args["exclude"], args.get("include", ()), hashed=False)
    digest = listing_digest(listed)
    answer = {
        "others": listed["others"],
        "skipped": listed["skipped"],
        "replica": replica(project),
        "gen": args.get("gen", 0),
    }
    since = args.get("since")
    mark = read_json(kept_at + ".digest")
    if since and isinstance(mark, dict) and (mark.get("id"), mark.get("digest")) == (since, digest):
        answer.update(id=since, base=since, gone=[], files={})  # nothing changed: nothing read
        return answer
    before = read_json(kept_at)
    before = before if isinstance(before, dict) and isinstance(before.get("files"), dict) else {}
    files = listed["files"]
    hash_listed(project, files, before["files"] if before else None)
    same = before.get("id") and before["files"] == files
    answer["id"] = before["id"] if same else uuid.uuid4().hex
    if mine and not same:
        write_private(kept_at, json.dumps({"id": answer["id"], "files": files}))
    if mine:
        write_private(kept_at + ".digest", json.dumps({"id": answer["id"], "digest": digest}))
    if since and since == before.get("id"):
        old = before["files"]
        answer["base"] = since
        answer["gone"] = [rel for rel in old if rel not in files]
        files = {rel: entry for rel, entry in files.items() if old.get(rel) != entry}
    answer["files"] = in_parts(files, "tree.files")
    return answer


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


def trash(args):
    """Move files to <project>/.rjn/trash/<time>/ (recoverable), each only if it is still the
    version the caller saw (size, time and hash): a file changed since is left alone. Then
    prune the trash: by age, and the oldest first past its size."""
    project = project_dir(args["dir"])
    moved = move_to_trash(project, args["files"])
    prune_trash(project, args.get("days", TRASH_DAYS), args.get("bytes", TRASH_BYTES))
    return Moved(in_parts(dict.fromkeys(moved, True), "moved")).to_json()


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


def listings(project, args):
    """The project's tree (two-way sync) and the results' files, as far as `args` asks."""
    return {
        "tree": tree_listing(project, args) if "exclude" in args else None,
        "results": (
            results_listing(project, args["results"]) if args.get("results") is not None else None
        ),
    }
