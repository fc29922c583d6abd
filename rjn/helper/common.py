"""What every action shares: JSON lines out, the one failure type, the project's layout
on the remote, private files, child processes, and noticing that the local rjn went away."""

import contextlib
import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from ..shared.folders import RJN_DIR, private
from ..shared.protocol import HelperError

SOCKET_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS


def emit(**message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def emit_blob(content, /, **message):
    """A message followed by `content`, raw: its "blob" says how many bytes follow its line (base64
    inside the JSON would cost a third more on the wire). Callers that emit from several
    threads hold their lock across it, as for emit."""
    message["blob"] = len(content)
    sys.stdout.flush()
    sys.stdout.buffer.write(json.dumps(message).encode() + b"\n")
    sys.stdout.buffer.write(content)
    sys.stdout.buffer.flush()


def log(text):
    emit(log=text)


# Entries per message of a long answer: each line stays small, whatever the project's size.
PART = 2000


def in_parts(mapping, of):
    """A long mapping of an answer sent ahead in `part` messages ({"part": {...}, "of": where
    in the answer, as "tree.files"}); what is left for the answer itself."""
    items = list(mapping.items())
    pieces = [dict(items[start:start + PART]) for start in range(0, len(items), PART)] or [{}]
    for piece in pieces[:-1]:
        emit(part=piece, of=of)
    return pieces[-1]


def project_dir(raw):
    path = os.path.abspath(os.path.expanduser(raw))
    try:
        os.makedirs(os.path.join(path, RJN_DIR), mode=0o700, exist_ok=True)
    except OSError as exc:
        raise HelperError(
            "cannot create the project directory %s: %s" % (path, exc.strerror),
            "set [remote] dir to a folder you can write to",
        )
    return path


def data_home():
    return os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")


def cache_dir():
    """rjn's folder in the user's cache (the helper's zipapp is kept there too)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "rjn")


def socket_folder():
    """A private folder for unix sockets, short enough for their paths: in the session's
    XDG_RUNTIME_DIR (the system's, the user's alone), else in rjn's cache folder at home, else
    in /tmp. Sockets live where no other user can reach or race them; what another user made
    is never used (private() refuses it, naming it)."""
    candidates = []
    run = os.environ.get("XDG_RUNTIME_DIR")
    if run and os.path.isdir(run):
        candidates.append(os.path.join(run, "rjn"))
    candidates.append(os.path.join(cache_dir(), "s"))
    candidates.append(os.path.join(tempfile.gettempdir(), "rjn-%d" % os.getuid()))
    # The longest name put in it: "helper-<pid>.sock" or "<16 hex>.sock".
    fits = [c for c in candidates if len(c.encode()) + 24 < SOCKET_MAX]
    return private(fits[0] if fits else candidates[-1])


def socket_path(project):
    """A private unix socket for Jupyter: in the project if short enough, else in the
    private socket folder."""
    path = os.path.join(project, RJN_DIR, "jupyter.sock")
    if len(path.encode()) < SOCKET_MAX and ":" not in path:
        return path
    digest = hashlib.sha256(project.encode()).hexdigest()[:16]
    return os.path.join(socket_folder(), digest + ".sock")


def read_json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def write_private(path, text):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def api(server, method, path, timeout):
    """One request to `server` (as server.json has it: its socket, or address and port), with
    its token; the HTTP status, or None if nothing answered."""
    request = (
        "%s %s HTTP/1.1\r\nHost: localhost\r\nAuthorization: token %s\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n" % (method, path, server.get("token", ""))
    ).encode()
    try:
        if server.get("sock"):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(timeout)
            conn.connect(server["sock"])
        else:
            address = (server.get("addr", "127.0.0.1"), server["port"])
            conn = socket.create_connection(address, timeout=timeout)
        with conn:
            conn.sendall(request)
            head = conn.recv(64).decode("latin-1")
        return int(head.split()[1])
    except (OSError, ValueError, IndexError, KeyError):
        return None


def http_status(server, timeout=3.0):
    """GET /api/status: 200 when the server is up and the token is right."""
    return api(server, "GET", "/api/status", timeout)


def process_start(pid):
    """When a process started (clock ticks since boot, /proc), or None without /proc."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(") ", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def tail(path, lines=8):
    try:
        with open(path, errors="replace") as handle:
            return " / ".join(line.strip() for line in handle.readlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_pid(pid, grace=10.0):
    """Stop a server's process group: SIGTERM, then SIGKILL after `grace` seconds."""
    stop_group(pid, ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)), alive_pid)


def stop_group(pgid, steps, alive):
    """Signal a process group step by step, each signal given its time, until `alive(pgid)`
    is false."""
    for sig, wait in steps:
        try:
            os.killpg(pgid, sig)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pgid):
                return
            time.sleep(0.05)


def alive_pid(pid):
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def wait_for_hangup():
    """Block until the local rjn closes our stdin (it went away, or the link dropped).

    The descriptor is read, not sys.stdin: a thread blocked in the buffered reader holds its
    lock, and at exit the interpreter waits a second for that lock, then aborts (measured:
    every `rjn run` ended 1 s late, and the helper died of SIGABRT)."""
    with contextlib.suppress(OSError):
        while os.read(0, 65536):
            pass


def run_logged(argv, **kwargs):
    """Run a command, streaming its output as log lines; return (code, last lines)."""
    log("$ " + " ".join(argv))
    lines = []
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            **kwargs,
        )
    except OSError as exc:
        return 127, [str(exc)]
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        if line:
            lines.append(line)
            del lines[:-40]
            log(line)
    return proc.wait(), lines


def exit_when_stdin_closes():
    """End this helper when the local rjn goes away (Ctrl-C, or a lost connection)."""

    def wait():
        wait_for_hangup()
        os._exit(0)

    threading.Thread(target=wait, daemon=True).start()
