"""This machine as the remote, without ssh: the helper's actions run in this process on a local
folder (the same code, arguments and answers, parts and errors as over a connection) and rsync
copies between local folders. What rides on the helper (the sync engine above all) is then
tested in milliseconds; the end-to-end tests run the same paths over a real sshd."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rjn import proc
from rjn.config import RemoteConfig
from rjn.connection import Connection
from rjn.helper import main as helper_main
from rjn.helper_client import HelperClient
from rjn.helper_client.answers import Answer
from rjn.shared import protocol


class LocalConnection(Connection):
    """A connection to this machine itself: rsync's remote side is a local path."""

    def __init__(self, state: Path) -> None:
        super().__init__(RemoteConfig(host="here"), state, state)

    def rsync_target(self, path: str) -> str:
        return path

    def rsync_sources(self, paths: Sequence[str]) -> list[str]:
        return list(paths)

    def master_alive(self) -> bool:
        return True


class InProcessHelper(HelperClient):
    """The helper client whose actions run here, through the helper's own entry point."""

    def __init__(self, state: Path) -> None:
        super().__init__(LocalConnection(state))
        self.calls: list[str] = []

    def call(
        self,
        request: protocol.Request,
        *,
        python: str | None = None,
        on_log: Callable[[str], Any] | None = None,
        timeout: float | None = None,
        hold: bool = False,
        send: bool = False,
        on_data: Callable[[dict[str, Any]], Any] | None = None,
        stream: Iterable[bytes] = (),
    ) -> dict[str, Any]:
        self.calls.append(request.action)
        raw = io.BytesIO()
        out = io.TextIOWrapper(raw, write_through=True)  # a blob goes to out.buffer, raw
        given = io.TextIOWrapper(io.BytesIO(b"".join(stream)))  # what follows the arguments
        with contextlib.redirect_stdout(out), _stdin(given):
            helper_main.main(["helper", request.action, json.dumps(request.to_json())])
        out.flush()
        answer = Answer(self.host, on_log, on_data)  # read as over a connection
        split = proc._splitter(answer.line, None)
        split(raw.getvalue())
        split.flush()
        return answer.settled() or {}


@contextlib.contextmanager
def _stdin(given: io.TextIOWrapper) -> Iterator[None]:
    saved, sys.stdin = sys.stdin, given
    try:
        yield
    finally:
        sys.stdin = saved
