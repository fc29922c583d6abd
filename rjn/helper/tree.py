"""The remote's actions on the project's tree: its listings (with this copy's id and the
listing kept for each machine), placing what was pushed (compare and swap), the trash, and the
results' files. The tree logic itself is shared with the local side (shared/tree.py)."""

import json
import os
import shutil
import stat
import time
import uuid

from ..shared.folders import RJN_DIR, rjn_dir
from ..shared.protocol import HelperError, Moved, Placed
from ..shared.tree import (
    STAGING_PREFIX,
    TRASH_BYTES,
    TRASH_DAYS,
    close_folder,
    hash_listed,
    list_tree,
    listing_digest,
    lstat_at,
    move_in,
    move_to_trash,
    open_folder,
    open_root,
    prune_trash,
    replace_checked,
    staging_path,
)
from .places import project_dir, read_json, write_private
from .say import in_parts


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


def place(request):
    """Move what a push left in a staging folder (in .rjn/) into the project, each file only
    if its place still holds what the plan was made from (`files`: {rel: None (absent) or
    [size, mtime_ns, sha256]}). A file changed since is left as it is, and said: the caller
    keeps its own version and decides again. The staging folder goes, whatever is left."""
    project = project_dir(request.dir)
    staging = staging_path(project, request.staging)
    placed, kept = {}, {}
    root_fd = open_root(project)
    try:
        for rel, want in sorted(request.files.items()):
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


def scan(request):
    project = project_dir(request.dir)
    return {"tree": tree_listing(project, request.tree)}


def tree_listing(project, query):
    """The tree (as `query` says), this copy's replica id, and the sync archive's generation
    the caller listed against (echoed: it tells a listing made before another pass from one
    made after); leftovers of cut-short pushes are cleaned first.

    The last listing sent to each machine (`mine`) is kept in .rjn/: it is the hash cache
    (a file whose size and time did not change is not read again), and, when the caller still
    has that listing (`since`: its id), only what changed since is sent (`base`, `files` changed
    or new, `gone`). Beside it, a digest of its names and stamps: where the tree still matches
    it, nothing is read or hashed at all. A large answer's files come first in pieces
    (say.in_parts)."""
    mine = query.mine or ""
    clean_staging(project, STAGING_PREFIX + mine + "-" if mine else None)
    kept_at = os.path.join(rjn_dir(project), "listing-%s.json" % (mine if mine.isalnum() else "x"))
    listed = list_tree(project, query.exclude, query.include, hashed=False)
    digest = listing_digest(listed)
    answer = {
        "others": listed["others"],
        "skipped": listed["skipped"],
        "replica": replica(project),
        "gen": query.gen,
    }
    since = query.since
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


def trash(request):
    """Move files to <project>/.rjn/trash/<time>/ (recoverable), each only if it is still the
    version the caller saw (size, time and hash): a file changed since is left alone. Then
    prune the trash: by age, and the oldest first past its size."""
    project = project_dir(request.dir)
    moved = move_to_trash(project, request.files)
    prune_trash(project, request.days or TRASH_DAYS, request.bytes or TRASH_BYTES)
    return Moved(in_parts(dict.fromkeys(moved, True), "moved")).to_json()


def listings(project, tree, results):
    """The project's tree (two-way sync: `tree` a TreeQuery) and the results' files (in the
    folders `results`), each where asked for."""
    return {
        "tree": tree_listing(project, tree) if tree is not None else None,
        "results": results_listing(project, results) if results is not None else None,
    }
