"""The remote end of one ssh session that carries many (single mode: an ssh client without
ControlMaster, as Windows' OpenSSH). rjn's holder (rjn/connection/single.py) sends frames on
our stdin; we run commands and open sockets, and frame their output back on stdout: one login
carries every command, transfer and the Jupyter tunnel.

A frame is a 9-byte header (channel: 4 bytes, kind: 1, length: 4, big-endian) and that many
bytes. Sent by itself (`python3 -c`, not from the helper's zipapp): standard library, Python
3.6 and later. Ends, with everything it runs, when its stdin ends (the connection went).
rjn/connection/single.py speaks the same frames: it imports them from here (one definition of
the wire).
"""

import os
import signal
import socket
import struct
import subprocess
import sys
import threading

EXEC, SOCKET, DATA, EOF, OUT, ERR, EXIT, KILL, READY, FAIL = range(1, 11)
HEAD = struct.Struct(">IBI")
CHUNK = 1 << 16

out = None  # stdout, once main() runs (the holder imports the frames alone)
out_lock = threading.Lock()
channels = {}  # type: dict


def frame(channel, kind, payload=b""):
    return HEAD.pack(channel, kind, len(payload)) + payload


# No frame either end sends is longer (output and input go in CHUNK blocks, a command line
# is at most what a shell takes): a longer one is not our peer speaking, and is not read (its
# length could ask for gigabytes).
FRAME_MAX = 4 * 1024 * 1024


def read_frame(stream):
    """(channel, kind, payload) of the next frame, or None where the stream ends (or is not
    frames: a header claiming more than FRAME_MAX)."""
    head = exactly(stream, HEAD.size)
    if head is None:
        return None
    channel, kind, length = HEAD.unpack(head)
    if length > FRAME_MAX:
        return None
    payload = exactly(stream, length) if length else b""
    return None if payload is None else (channel, kind, payload)


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


def exactly(stream, count):
    data = b""
    while len(data) < count:
        block = stream.read(count - len(data))
        if not block:
            return None
        data += block
    return data


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
