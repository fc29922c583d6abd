"""Serving: one helper per connection answers short requests over a private unix socket, so
that a command costs one round trip instead of a new remote process.

It is started by an ssh session of the master and ends when that session ends (the master
went away: its parent process changes), so it never outlives the connection. Each request
is a forked child: the request's line comes in on the socket, the answer goes out on it.
"""

import json
import os
import select
import signal
import socket
import sys

from .places import socket_folder
from .say import emit

# The longest request line (the tree's known hashes travel in it).
REQUEST_MAX = 16 * 1024 * 1024


def serve(main):
    """Listen, say where, and answer until the connection that started us is gone; each
    request runs `main` (the entry point, passed in: serving is one of its actions)."""

    path = os.path.join(socket_folder(), "helper-%d.sock" % os.getpid())
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    parent = os.getppid()
    emit(serving={"socket": path})
    try:
        while os.getppid() == parent:
            if not select.select([listener], [], [], 1.0)[0]:
                continue
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            if os.fork() == 0:
                listener.close()
                os._exit(answer(conn, main))
            conn.close()
    finally:
        listener.close()
        os.unlink(path)
    return {"served": True}


def answer(conn, main):
    """One request in a child: the socket becomes its stdin and stdout, then main() runs it
    as if it had come by ssh. The exit code is the child's."""
    # The parent lets the kernel reap its children; this child waits for its own.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    line = b""
    while not line.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk or len(line) > REQUEST_MAX:
            return 2
        line += chunk
    os.dup2(conn.fileno(), 0)
    os.dup2(conn.fileno(), 1)
    conn.close()
    try:
        request = json.loads(line.decode())
        action, args = request["action"], request["args"]
    except (ValueError, KeyError, TypeError):
        return 2
    code = main(["serve", action, json.dumps(args)])
    sys.stdout.flush()
    return code
