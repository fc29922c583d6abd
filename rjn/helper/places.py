"""Where the helper keeps things on the remote (the project's .rjn/, the user's cache and
data folders, private sockets), and its files: read whole, written privately and atomically."""

import hashlib
import json
import os
import tempfile

from ..shared.folders import RJN_DIR, private
from ..shared.protocol import HelperError

SOCKET_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS


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


def tail(path, lines=8):
    try:
        with open(path, errors="replace") as handle:
            return " / ".join(line.strip() for line in handle.readlines()[-lines:])
    except OSError:
        return "(no log)"
