"""Watching: result files reported once closed (inline when small), and saved project files."""

import contextlib
import json
import os
import signal
import stat
import threading
import time

from ..shared.folders import rjn_dir
from ..shared.protocol import Ready
from ..shared.tree import is_environment, scan_tree, travels
from .places import project_dir, read_json, write_private
from .processes import exit_when_stdin_closes, process_start
from .say import emit, emit_blob

# Where inotify sees only this host's writes (or none): the writer is usually another node.
NETWORK_FS = {
    "nfs",
    "nfs4",
    "lustre",
    "gpfs",
    "cifs",
    "smb3",
    "smbfs",
    "beegfs",
    "ceph",
    "fuse.sshfs",
    "fuse.glusterfs",
    "glusterfs",
    "panfs",
    "afs",
    "9p",
    "fuse.juicefs",
}


def fs_type(path):
    """The filesystem type of the mount holding `path` (Linux /proc/mounts), or ''."""
    best, kind = "", ""
    try:
        with open("/proc/mounts") as handle:
            for line in handle:
                fields = line.split()
                mount = fields[1].replace("\\040", " ")
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, fields[2]
    except OSError:
        pass
    return kind


def watch(request):
    """Stream {"file": relpath} for each result file closed after writing or moved into place.

    Runs until stdin closes (the local rjn went away). Falls back to polling where inotify
    cannot see writes; polling reports a file once its size and mtime held still for a round.
    """
    import fnmatch

    project = project_dir(request.dir)
    folders = [os.path.join(project, f) for f in request.results]
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
    patterns, interval, inline_max = request.patterns, request.interval, request.inline_max
    lock = threading.Lock()

    def report(path):
        if not any(fnmatch.fnmatch(os.path.basename(path), p) for p in patterns):
            return
        rel = os.path.relpath(path, project)
        inline = read_whole(path, inline_max)
        with lock:
            if inline:
                emit_blob(inline[0], file=rel, mtime_ns=inline[1])
            else:
                emit(file=rel)

    tree = request.tree  # the project's own files, where asked for

    def changed(path):
        rel = os.path.relpath(path, project)
        if not rel.startswith("..") and travels_path(rel, tree):
            with lock:
                emit(changed=rel)

    mode, kind, reason = watch_mode(project, request.mode)
    exit_when_stdin_closes()
    if request.owner:
        take_over(project, request.owner, lock)
    if mode == "events":
        watch_events(project, folders, tree, report, changed)
        emit(ready=Ready(mode="events", fs=kind, reason=reason).to_json())
        while True:
            time.sleep(3600)
    emit(ready=Ready(mode="poll", fs=kind, reason=reason, interval=interval).to_json())
    if tree:
        polling = threading.Thread(target=poll_tree, args=(project, tree, changed, interval))
        polling.daemon = True
        polling.start()
    poll(folders, report, interval)


def take_over(project, owner, lock):
    """One watcher per clone of the project (`owner`): the one it started before is told to
    end, and this one is named in its place (.rjn/watch-OWNER.json). That one is a watcher
    whose link stalled and was given up on the other side (its sshd has not noticed yet, and
    it would watch on, inotify's watches and all), or another `rjn watch` of the same folder,
    which then hears that it was superseded and stops."""
    path = os.path.join(rjn_dir(project), "watch-%s.json" % (owner if owner.isalnum() else "x"))
    before = read_json(path)
    if isinstance(before, dict) and isinstance(before.get("pid"), int):
        pid, started = before["pid"], before.get("start")
        # The very process that wrote it: a pid since reused started at another time.
        if pid != os.getpid() and started is not None and process_start(pid) == started:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
    write_private(path, json.dumps({"pid": os.getpid(), "start": process_start(os.getpid())}))

    def superseded(signum, frame):
        # Said if the link still carries it; gone within 2 s either way (a stalled link may
        # block the write, and a thread may hold the lock).
        threading.Thread(target=lambda: (time.sleep(2), os._exit(0)), daemon=True).start()
        with lock:
            emit(superseded=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, superseded)


def watch_mode(project, wanted):
    """How to watch ("events" or "poll"), the project's file system, and why it is polled:
    inotify does not see other hosts' writes on a network file system, and needs watchdog."""
    mode, reason = wanted, ""
    kind = fs_type(project)
    if mode == "auto":
        mode = "poll" if kind in NETWORK_FS else "events"
        if mode == "poll":
            reason = "%s does not report other hosts' writes to inotify" % kind
    if mode == "events":
        try:
            import watchdog.observers.inotify  # noqa: F401
        except ImportError:
            mode, reason = "poll", "watchdog with inotify is not available here"
    return mode, kind, reason


def watch_events(project, folders, tree, report, changed):
    """Report each result file complete by inotify's events, in threads of watchdog's (and
    the tree's changes, where `tree` asks for them)."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers.inotify import InotifyObserver

    class Handler(FileSystemEventHandler):
        def on_closed(self, event):  # closed after writing: complete
            report(event.src_path)

        def on_moved(self, event):  # renamed into place: complete
            report(event.dest_path)

        def on_created(self, event):
            # Files written into a brand-new folder before its watch was added send no close
            # event of their own: report those no process still has open to write.
            if event.is_directory:
                for root, _, files in os.walk(event.src_path):
                    for name in files:
                        path = os.path.join(root, name)
                        if not open_for_writing(path):
                            report(path)

    observer = InotifyObserver()
    for folder in folders:
        observer.schedule(Handler(), folder, recursive=True)
    if tree:
        watch_tree(observer, project, tree, changed)
    observer.start()


def travels_path(rel, tree):
    """Whether a path and every folder above it travel both ways."""
    parts = rel.split("/")
    return all(
        travels("/".join(parts[: i + 1]), i < len(parts) - 1, tree.exclude, tree.include)
        for i in range(len(parts))
    )


def watch_tree(observer, project, tree, changed):
    """Events for the project's own files (a notebook saved in Jupyter, a script edited here),
    without watching what never travels (the environment in .rjn/ holds thousands of folders)."""
    from watchdog.events import FileSystemEventHandler

    def top_level(path):
        rel = os.path.relpath(path, project)
        if (
            "/" not in rel
            and os.path.isdir(path)
            and travels(rel, True, tree.exclude, tree.include)
            and not is_environment(path)
        ):
            observer.schedule(Tree(), path, recursive=True)

    class Tree(FileSystemEventHandler):
        def on_closed(self, event):
            changed(event.src_path)

        def on_moved(self, event):
            changed(event.dest_path)

        def on_deleted(self, event):
            changed(event.src_path)

        def on_created(self, event):
            if event.is_directory:
                top_level(event.src_path)

    observer.schedule(Tree(), project, recursive=False)
    for name in os.listdir(project):
        top_level(os.path.join(project, name))


def poll_tree(project, tree, changed, interval):
    """Polling for the project's own files: a change reported once it held still a round."""
    previous = scan_tree(project, tree.exclude, tree.include)
    while True:
        time.sleep(interval)
        current = scan_tree(project, tree.exclude, tree.include, previous)
        for rel in set(current) ^ set(previous) | {
            r for r in current if r in previous and current[r] != previous[r]
        }:
            changed(os.path.join(project, rel))
        previous = current


def read_whole(path, limit):
    """A small file's bytes and mtime, sent with the event itself: it saves the pull its own
    round trip. None if it is too big, or changed while we read it."""
    try:
        # A link is never read through (it may point at ~/.ssh): it travels as a link, and
        # the local side judges where it points.
        before = os.lstat(path)
        if before.st_size > limit or not stat.S_ISREG(before.st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(limit + 1)
            after = os.fstat(handle.fileno())
    except OSError:
        return None
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        return None  # rewritten meanwhile: its own close event follows
    if len(data) != after.st_size:
        return None
    return data, after.st_mtime_ns


def open_for_writing(path):
    """Whether any of our processes holds `path` open for writing (Linux /proc)."""
    target = os.path.realpath(path)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = "/proc/%s/fd" % pid
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(os.path.join(fd_dir, fd)) != target:
                    continue
                with open("/proc/%s/fdinfo/%s" % (pid, fd)) as info:
                    flags = int(info.readline().split()[1], 8)
                if flags & (os.O_WRONLY | os.O_RDWR):
                    return True
            except (OSError, ValueError, IndexError):
                continue
    return False


def poll(folders, report, interval):
    def scan():
        seen = {}
        for folder in folders:
            for root, _, files in os.walk(folder):
                for name in files:
                    path = os.path.join(root, name)
                    try:
                        info = os.stat(path)
                    except OSError:
                        continue
                    seen[path] = (info.st_size, info.st_mtime_ns)
        return seen

    reported = scan()  # what is there at start is not new
    previous = dict(reported)
    while True:
        time.sleep(interval)
        current = scan()
        for path, stamp in current.items():
            # Unchanged for a whole round, and not yet reported in this state: complete.
            if previous.get(path) == stamp and reported.get(path) != stamp:
                reported[path] = stamp
                report(path)
        previous = current
