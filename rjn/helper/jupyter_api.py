"""Asking the project's Jupyter server over HTTP, through its socket or its port, with its
token (as .rjn/server.json has them)."""

import socket


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
