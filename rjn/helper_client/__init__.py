"""The helper client: rjn's remote helper (rjn/helper), delivered once and run over the
connection (or asked of the connection's serving helper), one typed method per action, each
answer read back as the untrusted `protocol` record it must be.

How it starts there is boot.py, which interpreter runs it pythons.py, how its messages are
read answers.py."""

from __future__ import annotations

import hashlib
import itertools
import json
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from rjn import places, portable, proc
from rjn.connection import Connection
from rjn.errors import RemoteError, Timeout
from rjn.helper_client.answers import ANSWER_MAX, Answer, R, messages, read
from rjn.helper_client.boot import (
    NEED_HELPER,
    OLD_PYTHON,
    SETUP_FAILED,
    boot_command,
    helper_zipapp,
    setup_failed,
    with_setup,
)
from rjn.helper_client.pythons import Pythons
from rjn.shared import protocol


class HelperClient:
    """rjn's helper on one connection: sent once and kept there, served for quick questions,
    run by exec otherwise."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.host = connection.host
        self.config = connection.config
        # What the user should hear once (a choice rjn made for them), for the use case to say.
        self.notes: list[str] = []
        self.pythons = Pythons(connection, self.notes)

    def remote(self, argv: Sequence[str]) -> list[str]:
        """A command as it runs on the remote: after [remote] setup, if there is one."""
        return with_setup(self.config.setup, argv)

    # -- the helper, cached on the remote ------------------------------------------------

    def _helper_mark(self) -> Path:
        """A local note that this host keeps the current helper: then it is not sent."""
        return (
            places.state_dir()
            / "helpers"
            / f"{self.connection.control_path.name}-{helper_zipapp()[1]}"
        )

    def _helper_payload(self, send: bool) -> tuple[bytes, int]:
        """What goes on the helper's stdin first: the zipapp, unless the host keeps it."""
        data = helper_zipapp()[0]
        return (data, len(data)) if send or not self._helper_mark().exists() else (b"", 0)

    def _helper_kept(self, sent: int) -> None:
        if sent:
            places.write_private(self._helper_mark(), "")

    def _helper_lost(self) -> None:
        self._helper_mark().unlink(missing_ok=True)

    # -- the serving helper: one per connection, for quick questions ----------------------

    # Read-only actions: an answer lost on the way can be asked for again by exec.
    SERVED = ("probe", "scan")

    @property
    def _serves(self) -> bool:
        """Whether a serving helper can be had here: a faster path, never a needed one (unix
        sockets on this machine, a connection that forwards to one)."""
        return portable.UNIX_SOCKETS and self.connection.SERVES

    def _serving_socket(self) -> Path:
        """The local end of the forward to this connection's serving helper, of this rjn and
        this [remote] python (its answers, the environment's check above all, are that
        interpreter's: projects with another python have their own)."""
        key = "\n".join([self.python, *self.config.setup])  # a module's python3 is another
        python = hashlib.sha256(key.encode()).hexdigest()[:8]
        name = f"{self.connection.control_path.name}.{helper_zipapp()[1][:12]}.{python}"
        return places.runtime_dir() / f"{name}.sock"

    def _served(self, action: str, args: dict[str, Any], timeout: float) -> list[str] | None:
        """The answer's lines from the serving helper (one round trip, no new remote process),
        or None where it cannot answer: not started, or gone with its connection."""
        if not self._serves:
            return None
        path = self._serving_socket()
        if not path.exists():
            return None
        chunks, size = [], 0
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            try:
                conn.connect(str(path))
                conn.sendall(json.dumps({"action": action, "args": args}).encode() + b"\n")
                conn.shutdown(socket.SHUT_WR)
                while chunk := conn.recv(1 << 16):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > ANSWER_MAX:
                        raise RemoteError(f"{self.host}: rjn's remote helper sent too much")
            except OSError:
                return None
        return b"".join(chunks).decode(errors="replace").splitlines() or None

    def _start_serving(self) -> None:
        """Start this connection's serving helper (an ssh session of the master, which ends
        with it) and forward a local socket to its own: one exec round trip, once. If it
        cannot be done, commands go on by exec, as they always could."""
        if not self._serves:
            return
        path = self._serving_socket()
        refused = path.with_suffix(".refused")
        if refused.exists() and time.time() - refused.stat().st_mtime < 600:
            return  # it failed a moment ago: not at every command
        with places.file_lock(path.with_suffix(".lock"), 60, f"{self.host} helper starting"):
            if self._served("ping", {}, timeout=10):
                return  # another rjn command started it meanwhile
            payload, size = self._helper_payload(send=False)
            given, out = path.with_suffix(".in"), path.with_suffix(".out")
            given.write_bytes(payload)  # in the runtime folder: private already
            command = self.remote(boot_command(self.python, "serve", {}, size)[0])
            running = self.connection.leave_running(command, stdin=given, out=out)
            where = _serving_at(out, running, deadline=time.monotonic() + 15)
            given.unlink(missing_ok=True)
            if isinstance(where, str):
                self._helper_kept(size)
                path.unlink(missing_ok=True)  # a forward of a master that is gone
                if self.connection.forward_socket(path, where):
                    refused.unlink(missing_ok=True)
                    return
            elif where == "need":
                self._helper_lost()
            places.write_private(refused, "")

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
        """Run one action of rjn's remote helper (the request's) in one exec; return its JSON
        answer (the typed methods below read it as its record: use them). `on_data` is handed the
        action's other messages as they come (files it sends); `stream` follows its arguments
        on stdin (files it takes in).

        With `hold`, its stdin stays open until it answers (see the helper's start)."""
        python = python or self.python
        action, args = request.action, request.to_json()
        if action in self.SERVED and python == self.python and not hold and not send:
            done = self._ask_served(action, args, Answer(self.host, on_log, on_data), timeout)
            if done is not None:
                return done  # else asked again by exec, from the start
        answer = Answer(self.host, on_log, on_data)
        payload, size = self._helper_payload(send)
        command, rest = boot_command(python, action, args, size)
        command = self.remote(command)
        payload += rest
        if hold:
            # Our end of its stdin stays open while it works: if we go away (Ctrl-C, a lost
            # link), the helper sees it close and can undo what it started.
            running = self.connection.start(command, stdin=payload, on_out=answer.line)
            try:
                code = proc.wait_done(running, timeout, answer.failed)
                err = running.stderr
            finally:
                running.close()
            if code is None and not answer.failed():
                raise Timeout(f"{self.host}: rjn's remote helper did not finish {action} "
                              f"within {timeout:g}s")  # fmt: skip
            if code == 255 and not self.connection.master_alive():
                raise self.connection.lost(err)
        else:
            # Parsed as lines arrive: nothing of a long answer is held twice, and a line that
            # never ends reaches the parser in pieces (it refuses them).
            given = itertools.chain([payload], stream) if stream else payload
            result = self.connection.run(command, input=given, timeout=timeout,
                                         on_out=answer.line, abort_when=answer.failed)  # fmt: skip
            code, err = result.code, result.err
        if code == NEED_HELPER and "need" in answer.fields and not size:
            # The host no longer keeps this helper (a cleaned cache): send it, once.
            self._helper_lost()
            return self.call(request, python=python, on_log=on_log, timeout=timeout,
                             hold=hold, send=True, on_data=on_data, stream=stream)  # fmt: skip
        if code == OLD_PYTHON and "old_python" in answer.fields:
            newer = self.pythons.newer(python, str(answer.fields["old_python"])[:20])
            return self.call(request, python=newer, on_log=on_log, timeout=timeout,
                             hold=hold, send=send, on_data=on_data, stream=stream)  # fmt: skip
        if "ok" in answer.fields or "error" in answer.fields:
            self._helper_kept(size)
        if (done := answer.settled()) is not None:
            return done
        raise self._failed(code, err, python)

    def _ask_served(
        self, action: str, args: dict[str, Any], answer: Answer, timeout: float | None
    ) -> dict[str, Any] | None:
        """The serving helper's answer (started first where it is not running), or None where
        it gave none: then the caller asks by exec."""
        served = self._served(action, args, timeout or 300)
        if served is None:
            if not self.connection.master_alive():
                raise self.connection.lost("")  # the connection went while we asked
            self._start_serving()
            served = self._served(action, args, timeout or 300)
        for line in served or ():
            answer.line(line)
        return answer.settled()

    def _failed(self, code: int | None, err: str, python: str) -> RemoteError:
        """What a helper that gave no answer means, from its exit code and its stderr."""
        if code == SETUP_FAILED:
            return setup_failed(self.host, err)
        if code == 127:
            cannot = next((ln for ln in err.splitlines() if "error while loading" in ln), "")
            return RemoteError(
                f"{self.host}: the remote python '{python}' "
                + (f"cannot start: {cannot.strip()[:300]}" if cannot else "was not found"),
                hint="install Python 3.8+ on the remote, or set [remote] python to its path",
            )
        tail = " / ".join(err.strip().splitlines()[-5:])
        return RemoteError(f"{self.host}: rjn's remote helper failed (exit {code}): {tail}")

    # -- the actions, one method each: a request in, a checked record out ---------------------

    def probe(self, request: protocol.ProbeRequest, *, timeout: float) -> protocol.ProbeAnswer:
        """One look at the project (helper/probe.py)."""
        return self._read(protocol.ProbeAnswer, "probe", self.call(request, timeout=timeout))

    def scan(self, request: protocol.ScanRequest) -> protocol.TreeListing:
        """The project's tree, or its diff since the listing the request names."""
        answer = self.call(request, timeout=300)
        return self._read(protocol.TreeListing, "file listing", answer.get("tree"))

    def place(self, request: protocol.PlaceRequest) -> protocol.Placed:
        """Move a push's staged files in, each only if its destination is as the plan saw it."""
        return self._read(protocol.Placed, "placing", self.call(request, timeout=600))

    def trash(self, request: protocol.TrashRequest) -> protocol.Moved:
        """Move files to the project's trash, each only if it is as the plan saw it."""
        return self._read(protocol.Moved, "trashing", self.call(request, timeout=600))

    def ensure_env(
        self, request: protocol.EnvRequest, on_log: Callable[[str], Any] | None
    ) -> protocol.EnvDone:
        """Create or update the project's environment unless it is the one wanted already (a
        user's own: check it, and point the project at it)."""
        return self._read(protocol.EnvDone, "environment", self.call(request, on_log=on_log))

    def start(
        self, request: protocol.StartRequest, *, python: str,
        on_log: Callable[[str], Any] | None, timeout: float,
    ) -> protocol.ServerState:  # fmt: skip
        """Start the project's Jupyter server (or find it running); held until it answers: if
        we go away meanwhile, the helper undoes what it started."""
        answer = self.call(request, python=python, on_log=on_log, hold=True, timeout=timeout)
        return self._read(protocol.ServerState, "server", answer)

    def stop(self, remote_dir: str) -> protocol.Stopped:
        """Shut the project's server down through its API, kernels too."""
        answer = self.call(protocol.StopRequest(dir=remote_dir), timeout=60)
        return self._read(protocol.Stopped, "stop", answer)

    def renew(self, request: protocol.RenewRequest, *, python: str) -> protocol.Renewed:
        """Queue a follow-on job for the project's SLURM job (or find the one queued)."""
        answer = self.call(request, python=python, timeout=120)
        return self._read(protocol.Renewed, "renewal", answer)

    def run_detached(self, remote_dir: str, argv: list[str], *, python: str) -> protocol.Detached:
        """Start a run that goes on without the connection."""
        request = protocol.RunRequest(dir=remote_dir, argv=argv, detach=True)
        return self._read(protocol.Detached, "run", self.call(request, python=python, timeout=60))

    def send_files(
        self, request: protocol.SendRequest, on_file: Callable[[dict[str, Any]], Any]
    ) -> dict[str, Any]:
        """rjn's own transfer, out of the remote: each file's messages (helper/files.py) go to
        `on_file` as they come; the answer counts them."""
        return self.call(request, on_data=on_file)

    def receive_files(
        self, request: protocol.ReceiveRequest, stream: Iterable[bytes]
    ) -> dict[str, Any]:
        """rjn's own transfer, into the remote's staging: `stream` is the files' frames."""
        return self.call(request, stream=stream)

    def _read(self, record: type[R], what: str, answer: object) -> R:
        return read(self.host, record, what, answer)

    @property
    def python(self) -> str:
        """The interpreter rjn's helper runs under on this remote (pythons.py)."""
        return self.pythons.current

    def stream(
        self,
        request: protocol.Request,
        *,
        python: str,
        on_message: Callable[[dict[str, Any]], Any],
    ) -> proc.Process:
        """Start a long-running helper action; its JSON messages go to `on_message`.

        It stops when we close its stdin (or the connection drops).
        """
        payload, size = self._helper_payload(send=False)
        command, rest = boot_command(python, request.action, request.to_json(), size)
        command = self.remote(command)
        payload += rest
        started = [False]

        def message(line: dict[str, Any]) -> None:
            if "old_python" in line:
                old = str(line["old_python"])[:20]
                line = {"error": {"message": f"the remote python is {old}; rjn needs 3.8+",
                                  "hint": "set [remote] python to a newer one"}}  # fmt: skip
            elif "need" in line:
                # Not kept there any more: the next call sends it (a stream cannot be re-sent).
                self._helper_lost()
                line = {"error": {"message": f"rjn's helper is no longer kept on {self.host}",
                                  "hint": "run the command again: rjn sends it anew"}}  # fmt: skip
            elif not started[0]:
                started[0] = True
                self._helper_kept(size)
            on_message(line)

        return self.connection.start(command, stdin=payload, on_out=messages(message))


def _serving_at(out: Path, running: Callable[[], bool], deadline: float) -> str | None:
    """Where the serving helper listens, from its first line in `out` (checked: an absolute
    path that can be forwarded); "need" if the remote does not keep the helper; else None
    (it ended, or said nothing in time)."""
    while time.monotonic() < deadline:
        ended = not running()
        seen: list[dict[str, Any]] = []
        parse = messages(seen.append)  # as every answer of the helper: untrusted
        for line in out.read_text(errors="replace").splitlines():
            parse(line)
        for message in seen:
            if "need" in message:
                return "need"
            serving = message.get("serving")
            where = serving.get("socket") if isinstance(serving, dict) else None
            if isinstance(where, str) and where.startswith("/") and len(where) < 100:
                return where if not any(c in where for c in ": \n") else None
            if "error" in message:
                return None
        if ended:
            return None
        time.sleep(0.02)
    return None


