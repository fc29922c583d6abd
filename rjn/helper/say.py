"""What the helper says: JSON lines on stdout (a blob's raw bytes right after its line),
its logs, and a long answer sent ahead in parts."""

import json
import sys


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
