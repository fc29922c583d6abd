"""The entry point: one action per call; its answer, or an expected failure, as a JSON line."""

import errno
import json
import sys

from ..shared.protocol import Failure, HelperError
from .common import emit
from .env import ensure_env
from .files import receive, send
from .probe import probe
from .runs import logs, run
from .serve import serve
from .server import renew, start, stop
from .tree import place, scan, trash
from .watch import watch

ACTIONS = {
    "probe": probe,
    "scan": scan,
    "trash": trash,
    "place": place,
    "send": send,
    "receive": receive,
    "env": ensure_env,
    "start": start,
    "stop": stop,
    "renew": renew,
    "watch": watch,
    "run": run,
    "logs": logs,
    "serve": lambda args: serve(args, main),
    "ping": lambda args: {},
}


def main(argv):
    action, raw = argv[1], argv[2]
    try:
        if sys.version_info < (3, 8):
            raise HelperError(
                "the remote Python is %d.%d; rjn needs 3.8 or newer" % sys.version_info[:2],
                "set [remote] python to a newer interpreter",
            )
        emit(ok=ACTIONS[action](json.loads(raw)))
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
