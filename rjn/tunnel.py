"""The tunnel: a local 127.0.0.1 port forwarded by the master to the remote server."""

from __future__ import annotations

import contextlib
import hashlib
import socket
from pathlib import Path

from rjn import portable, proc
from rjn.config import Config
from rjn.connection import Connection
from rjn.errors import RjnError
from rjn.waits import wait_until

# Stable ports are drawn from here: high enough to avoid common services, below ephemeral ports.
PORT_BASE, PORT_SPAN = 20000, 10000


def answer_status(port: int, token: str, timeout: float = 3.0) -> int | None:
    """HTTP status of GET /api/status through the tunnel, or None if nothing answers.

    One request on a plain socket: straight to loopback (no proxy from the environment sees
    the token), and none of urllib's imports (ssl, email, http: a fifth of a status's time)."""
    request = (f"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Authorization: token {token}\r\nConnection: close\r\n\r\n")  # fmt: skip
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            conn.sendall(request.encode())
            with conn.makefile("rb") as answer:
                first = answer.readline(256).split()  # b"HTTP/1.1 200 OK"
    except (OSError, ValueError):
        return None
    if len(first) >= 2 and first[0].startswith(b"HTTP/") and first[1].isdigit():
        return int(first[1])
    return None


def held(port: int, pid: int | None) -> bool:
    """Whether our ssh (process `pid`, if it is up) is what listens on 127.0.0.1:port; where
    this machine cannot tell (portable.listens: /proc, lsof or netstat), whether it is up.

    The token goes only to a listener that is ours: another local user could listen on a
    port our tunnel used to hold, and collect whatever is sent there."""
    if pid is None:
        return False
    return portable.listens(port, pid, lambda argv: proc.run(argv, timeout=10)) is not False


def ours(remote: Connection, port: int, pid: int | None = None) -> bool:
    """held() by our master (`pid`, if the caller knows it)."""
    return held(port, pid or remote.master_pid())


def is_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:port."""
    with socket.socket() as sock:
        # As ssh binds: a port whose old connections linger in TIME_WAIT is free to listen on.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stable_port(root: Path, remote: str | None = None) -> int:
    """The port a project (on a named remote) gets when it is free: the same every time, so
    bookmarks keep working."""
    key = str(root.resolve()) + (f"@{remote}" if remote else "")
    digest = hashlib.sha256(key.encode()).digest()
    return PORT_BASE + int.from_bytes(digest[:4], "big") % PORT_SPAN


def any_free_port() -> int:
    """A port the kernel says is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def choose_port(config: Config, previous: int | None) -> int:
    """The configured port (which must be free), else the previous or stable one, else any."""
    wanted = config.jupyter.local_port
    if wanted != "auto":
        if not is_free(wanted):
            raise RjnError(
                f"local port {wanted} is in use",
                hint=f'stop what uses it, or set [jupyter] local_port = "auto" in {config.path}',
            )
        return wanted
    for candidate in (previous, stable_port(config.root, config.remote_name)):
        if candidate and is_free(candidate):
            return candidate
    return any_free_port()


def ensure(
    remote: Connection,
    config: Config,
    target: str,
    token: str,
    previous_port: int | None,
    previous_target: str | None,
    wait: float = 15,
    known_good: bool = False,
) -> int:
    """A working tunnel to the server at `target`: the previous one if it answers (or the
    caller saw it answer: `known_good`), else a new forward, on the previous port when it is
    free (so an open browser tab keeps working)."""
    if previous_port and (
        known_good or (ours(remote, previous_port) and answer_status(previous_port, token) == 200)
    ):
        return previous_port
    if previous_port and previous_target:
        remote.cancel_forward(previous_port, previous_target)
    elif previous_port is None:
        # State was lost: a forward of ours may still hold the stable port. Cancelling asks
        # only our master, and no token is sent to whatever else may listen there.
        remote.cancel_forward(stable_port(config.root, config.remote_name), target)
    port = choose_port(config, previous_port)
    remote.forward(port, target)
    if not ours(remote, port):
        raise RjnError(
            f"local port {port} is taken by another process: the token is not sent there",
            hint='set [jupyter] local_port to a free port, or "auto"',
        )
    wait_until(
        lambda: answer_status(port, token) == 200,
        timeout=wait,
        what=f"the tunnel 127.0.0.1:{port} -> {remote.host} did not answer",
        hint=f"run `rjn status`; the master's log is {remote.log_path}",
    )
    return port


def close(remote: Connection, port: int, target: str) -> None:
    """Stop forwarding `port`."""
    with contextlib.suppress(RjnError):
        remote.cancel_forward(port, target)


def carrier(remote: Connection, via_node: str | None) -> Connection:
    """The connection that carries a project's tunnel: the host's master, or the hop to the
    compute node whose socket Jupyter listens on ([slurm] connect = "jump")."""
    return remote.to_node(via_node) if via_node else remote
