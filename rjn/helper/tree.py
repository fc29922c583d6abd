"""The project's tree for two-way sync: what travels, listings with hashes, the remote's
trash, and the results' files."""

import hashlib
import os
import stat
import time

from .common import RJN_DIR, project_dir, rjn_dir


def travels(rel, is_dir, exclude, include=()):
    """Whether a project path (posix, relative) is kept in step: rsync-style patterns, where
    "name/" matches folders only, a pattern with a slash is anchored at the project, and
    `include` wins over `exclude`."""
    import fnmatch

    name = rel.rsplit("/", 1)[-1]

    def matches(pattern):
        folder_only = pattern.endswith("/")
        pattern = pattern.rstrip("/")
        if folder_only and not is_dir:
            return False
        if "/" in pattern:
            return fnmatch.fnmatchcase(rel, pattern.lstrip("/"))
        return fnmatch.fnmatchcase(name, pattern)

    if any(matches(p) for p in include):
        return True
    return not any(matches(p) for p in exclude)


def file_hash(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scan_tree(project, exclude, include=(), known=None):
    """{relpath: [size, mtime_ns, sha256]} of every regular file that travels; links are not
    followed, and a file whose size and time match `known` keeps its known hash unread."""
    known = known or {}
    found = {}
    for folder, dirs, files in os.walk(project):
        base = os.path.relpath(folder, project)
        base = "" if base == "." else base + "/"
        dirs[:] = [d for d in dirs if travels(base + d, True, exclude, include)]
        for name in files:
            rel = base + name
            if not travels(rel, False, exclude, include):
                continue
            try:
                info = os.lstat(os.path.join(folder, name))
                if not stat.S_ISREG(info.st_mode):
                    continue
                stamp = [info.st_size, info.st_mtime_ns]
                seen = known.get(rel)
                if seen and seen[:2] == stamp and seen[2]:
                    digest = seen[2]
                else:
                    digest = file_hash(os.path.join(folder, name))
            except OSError:
                continue  # vanished while we looked: the next scan sees it as it is
            found[rel] = stamp + [digest]
    return found


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
    return {"files": scan_tree(project, args["exclude"], args.get("include", ()), args["known"])}


def trash(args):
    """Move files to <project>/.rjn/trash/<time>/ (recoverable), each only if it is still the
    version the caller saw (size and time): a file changed since is left alone."""
    project = project_dir(args["dir"])
    when = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for rel, stamp in sorted(args["files"].items()):
        path = os.path.join(project, rel)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if [info.st_size, info.st_mtime_ns] != stamp[:2] or not stat.S_ISREG(info.st_mode):
            continue
        target = os.path.join(rjn_dir(project), "trash", when, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(path, target)
        moved.append(rel)
    return {"moved": moved, "trash": os.path.join(project, RJN_DIR, "trash", when)}


def listings(project, args):
    """The project's tree (two-way sync) and the results' files, as far as `args` asks."""
    return {
        "files": (
            scan_tree(project, args["exclude"], args.get("include", ()), args.get("known"))
            if "exclude" in args
            else None
        ),
        "results": (
            results_listing(project, args["results"]) if args.get("results") is not None else None
        ),
    }
