"""The remote end of one ssh session that carries many (single mode: an ssh client without
ControlMaster, as Windows' OpenSSH). rjn's holder (rjn/connection/single.py) sends frames on
our stdin; we run commands and open sockets, and frame their output back on stdout: one login
carries every command, transfer and the Jupyter tunnel.

The frames are rjn/shared/frames.py's. Sent by itself (`python3 -c`, not in the helper's
zipapp), with frames.py's text in place of the import below (connection/single.py builds
it): standard library, Python 3.6 and later. Ends, with everything it runs, when its stdin
ends (the connection went).
"""

import os
import signal
import socket
import subprocess
import sys
import threading

from ..shared.frames import (  # sent alone: frames.py's text stands in for this import
    CHUNK,
    DATA,
    EOF,
    ERR,
    EXEC,
    EXIT,
    FAIL,
    KILL,
    OUT,
    READY,
    SOCKET,
    frame,
    read_frame,
)

out = None  # stdout, once main() runs
out_lock = threading.Lock()
channels = {}  # type: dict


def send(channel, kind, payload=b""):
    with out_lock:
        out.write(frame(channel, kind, payload))
        out.flush()


def pump(channel, stream, kind, done):
    try:
        while True:
            block = stream.read1(CHUNK) if hasattr(stream, "read1") else stream.recv(CHUNK)
            if not block:
                break
            send(channel, kind, block)
    except OSError:
        pass
    done.set()


def run(channel, command):
    shell = os.environ.get("SHELL") or "/bin/sh"
    try:
        child = subprocess.Popen([shell, "-c", command], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        send(channel, FAIL, str(exc).encode())
        return
    channels[channel] = child
    ends = [threading.Event(), threading.Event()]
    for stream, kind, end in ((child.stdout, OUT, ends[0]), (child.stderr, ERR, ends[1])):
        threading.Thread(target=pump, args=(channel, stream, kind, end), daemon=True).start()

    def finish():
        code = child.wait()
        for end in ends:
            end.wait()
        channels.pop(channel, None)
        send(channel, EXIT, str(code if code >= 0 else 128 - code).encode())

    threading.Thread(target=finish, daemon=True).start()


def connect(channel, target):
    try:
        if target.startswith("/"):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(target)
        else:
            host, _, port = target.rpartition(":")
            conn = socket.create_connection((host, int(port)), timeout=30)
            conn.settimeout(None)
    except (OSError, ValueError) as exc:
        send(channel, FAIL, str(exc).encode())
        return
    channels[channel] = conn
    done = threading.Event()

    def relay():
        pump(channel, conn, DATA, done)
        channels.pop(channel, None)
        send(channel, EXIT, b"0")

    threading.Thread(target=relay, daemon=True).start()


def deliver(channel, kind, payload):
    held = channels.get(channel)
    if held is None:
        return
    try:
        if isinstance(held, socket.socket):
            if kind == DATA:
                held.sendall(payload)
            elif kind == EOF:
                held.shutdown(socket.SHUT_WR)
            elif kind == KILL:
                held.close()
        elif kind == DATA:
            held.stdin.write(payload)
            held.stdin.flush()
        elif kind == EOF:
            held.stdin.close()
        elif kind == KILL:
            held.kill()
    except (OSError, ValueError):
        pass


def main():
    global out
    out = sys.stdout.buffer
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    stream = sys.stdin.buffer
    send(0, READY)
    while True:
        got = read_frame(stream)
        if got is None:
            break
        channel, kind, payload = got
        if kind == EXEC:
            run(channel, payload.decode("utf-8", "replace"))
        elif kind == SOCKET:
            connect(channel, payload.decode("utf-8", "replace"))
        else:
            deliver(channel, kind, payload)
    # The connection is gone: whatever runs sees its stdin end (the helper's actions stop).
    for held in list(channels.values()):
        deliver_eof = getattr(held, "stdin", None)
        try:
            if deliver_eof:
                deliver_eof.close()
            else:
                held.close()
        except OSError:
            pass


if __name__ == "__main__":
    main()
