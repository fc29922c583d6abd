"""Single mode's wire: the frames rjn's holder (connection/single.py) and the far end of its
ssh session (helper/mux.py) exchange, one definition for both.

A frame is a 9-byte header (channel: 4 bytes, kind: 1, length: 4, big-endian) and that many
bytes. The far end is sent alone, as `python3 -c` text, with this file's text in place of its
import: standard library, Python 3.6 and later.
"""

import struct

EXEC, SOCKET, DATA, EOF, OUT, ERR, EXIT, KILL, READY, FAIL = range(1, 11)
HEAD = struct.Struct(">IBI")
CHUNK = 1 << 16


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


def exactly(stream, count):
    data = b""
    while len(data) < count:
        block = stream.read(count - len(data))
        if not block:
            return None
        data += block
    return data
