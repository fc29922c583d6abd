"""rjn's own file transfer, for where the local rsync cannot serve (macOS's rsync 2.6.9 or its
openrsync, or none at all): files stream over the connection every command already uses,
compressed, each checked by its SHA-256.

`send` streams project files out as JSON lines (each zlib-compressed chunk raw after its
line; links as their text): the local side stages and places them as it places what rsync
brought. `receive` takes files in on stdin, after its arguments, into a staging folder in
.rjn/; `place` then moves each into the project only where the project still holds what the
plan saw.
"""

import hashlib
import os
import stat
import struct
import sys
import zlib

from ..shared.folders import private, rjn_dir
from ..shared.protocol import HelperError
from ..shared.tree import staging_path
from .places import project_dir
from .say import emit, emit_blob

CHUNK = 1 << 20


def _plain(rel):
    """A relative path that stays where it is put: no absolute path, no '..', no empty part."""
    parts = rel.split("/") if isinstance(rel, str) else [""]
    return bool(rel) and not rel.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _wanted(project, names, folders):
    """(rel, path) of each file asked for: named ones, or everything in the folders (a folder
    that is a link is followed into; links inside are sent as links)."""
    if names is not None:
        for rel in names:
            if _plain(rel):
                yield rel, os.path.join(project, rel)
        return
    for folder in folders or ():
        folder = folder.strip("/")
        if not _plain(folder):
            continue
        base = os.path.join(project, folder)
        for where, dirs, files in os.walk(base):
            inner = os.path.relpath(where, base)
            prefix = folder if inner == "." else folder + "/" + inner.replace(os.sep, "/")
            linked = sorted(d for d in dirs if os.path.islink(os.path.join(where, d)))
            for name in sorted(files) + linked:
                yield prefix + "/" + name, os.path.join(where, name)
            dirs[:] = sorted(d for d in dirs if d not in linked)


def send(request):
    project = project_dir(request.dir)
    max_size, budget = request.max_size, request.max_bytes
    skip = request.skip or {}  # rel -> [mtime_ns, size]: the copy there is that one
    files = total = 0
    for rel, path in _wanted(project, request.names, request.folders):
        try:
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                target = os.readlink(path)
                outside = os.path.isabs(target) or ".." in target.split("/")
                if not (request.follow_links and outside):
                    emit(link=rel, target=target)
                    continue
                info = os.stat(path)  # a link that leaves its folder comes as its content
            if not stat.S_ISREG(info.st_mode):
                continue
            if max_size and info.st_size > max_size:
                emit(over=rel)
                continue
            if skip.get(rel) == [info.st_mtime_ns, info.st_size]:
                continue
            if budget is not None and total + info.st_size > budget:
                return {"files": files, "bytes": total, "over_budget": total + info.st_size}
            size, digest = _send_one(rel, path)
        except OSError:
            emit(gone=rel)  # vanished meanwhile: the next pass decides again
            continue
        emit(file=rel, size=size, mtime_ns=info.st_mtime_ns, sha256=digest)
        files += 1
        total += size
    return {"files": files, "bytes": total}


def _send_one(rel, path):
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while True:
            block = handle.read(CHUNK)
            if not block:
                break
            digest.update(block)
            size += len(block)
            emit_blob(zlib.compress(block, 1), data=rel)
    return size, digest.hexdigest()


def receive(request):
    """Files from stdin into .rjn/<staging>/: for each of `files` ([name, mode,
    mtime_ns]), frames of a 4-byte length and that many zlib-compressed bytes, an empty frame,
    then its 32-byte SHA-256. A file whose content does not match its hash is dropped (and
    so does not arrive: placing says so)."""
    project = project_dir(request.dir)
    rjn_dir(project)  # .rjn/ itself checked: a real folder of ours, never a link
    base = private(staging_path(project, request.staging))
    stream = sys.stdin.buffer
    received, damaged = [], []
    for name, mode, mtime_ns in request.files:
        if not _plain(name):
            raise HelperError("not a plain name: %r" % name[:200])
        target = os.path.join(base, name)
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        digest = hashlib.sha256()
        with open(target, "wb") as handle:
            while True:
                (length,) = struct.unpack(">I", _exactly(stream, 4))
                if not length:
                    break
                block = zlib.decompress(_exactly(stream, length))
                digest.update(block)
                handle.write(block)
        if digest.digest() != _exactly(stream, 32):
            os.unlink(target)
            damaged.append(name)
            continue
        os.chmod(target, mode & 0o777)
        os.utime(target, ns=(mtime_ns, mtime_ns))
        received.append(name)
    return {"received": len(received), "damaged": damaged}


def _exactly(stream, count):
    data = stream.read(count)
    if len(data) != count:
        raise HelperError("the transfer was cut short", "run it again")
    return data
