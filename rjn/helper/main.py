"""The entry point: one action per call; its answer, or an expected failure, as a JSON line."""

from __future__ import annotations

import errno
import json
import sys
from typing import Any, Callable

from ..shared import protocol
from ..shared.protocol import Failure, HelperError
from .env import ensure_env
from .files import receive, send
from .probe import probe
from .runs import logs, run
from .say import emit
from .serve import serve
from .server import renew, start, stop
from .tree import place, scan, trash
from .watch import watch

# Each action: the request it reads (its arguments), the function that answers it.
_ANSWERS: list[tuple[type[protocol.Request], Callable[[Any], Any]]] = [
    (protocol.ProbeRequest, probe),
    (protocol.ScanRequest, scan),
    (protocol.TrashRequest, trash),
    (protocol.PlaceRequest, place),
    (protocol.SendRequest, send),
    (protocol.ReceiveRequest, receive),
    (protocol.EnvRequest, ensure_env),
    (protocol.StartRequest, start),
    (protocol.StopRequest, stop),
    (protocol.RenewRequest, renew),
    (protocol.WatchRequest, watch),
    (protocol.RunRequest, run),
    (protocol.LogsRequest, logs),
    (protocol.ServeRequest, lambda request: serve(main)),
    (protocol.PingRequest, lambda request: {}),
]
ACTIONS = {request.action: (request, function) for request, function in _ANSWERS}


def main(argv):
    action, raw = argv[1], argv[2]
    try:
        if sys.version_info < (3, 8):
            raise HelperError(
                "the remote Python is %d.%d; rjn needs 3.8 or newer" % sys.version_info[:2],
                "set [remote] python to a newer interpreter",
            )
        if action not in ACTIONS:
            raise HelperError("rjn's helper has no action %r" % action[:40])
        kind, function = ACTIONS[action]
        try:
            request = kind.parse(json.loads(raw))
        except protocol.Malformed as exc:  # a bug: each rjn runs the helper of its own hash
            raise HelperError("%s: the request's %s is malformed" % (action, exc.field)) from None
        emit(ok=function(request))
    except HelperError as exc:
        emit(error=Failure(exc.message, exc.hint).to_json())
        return 3
    except OSError as exc:
        hint = None
        if exc.errno == errno.ENOSPC:
            hint = "the remote disk is full: free space, or set [remote] dir elsewhere"
        emit(error=Failure("%s: %s" % (action, exc), hint).to_json())
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
