"""Single mode: one ssh session per host, held by a small rjn process, for ssh clients that cannot
multiplex (Windows' OpenSSH has no ControlMaster). The holder runs the user's own ssh (their
config, agent, keys, host key checks, 2FA prompt: one login) with rjn's multiplexer at the
other end (helper/mux.py), and serves later rjn commands on 127.0.0.1 (a port and a token in
a file of the user's alone): commands, their input and output, and forwarded ports (the
Jupyter tunnel). A port on 127.0.0.1 is anyone's to take once the holder is gone, so each
connection starts with a mutual proof: each side shows it knows the token by an HMAC of the
other's fresh nonce, and the token itself never crosses the socket. A listener that cannot
prove it is not our holder: nothing is sent to it. It ends when its ssh does (a stall ends
that, as it ends a master), when idle, on SIGTERM, and on `rjn close`.

`python -m rjn.connection.single SPEC` is the holder; the rest is its client
(SingleConnection, below).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from rjn import proc
from rjn.connection.master import Connection
from rjn.errors import ConfigError, Timeout
from rjn.shared.frames import (  # the wire, one definition for both ends
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

# With no forward and no command for this long, the holder ends (the next command logs in).
IDLE = 600.0


# A line of the handshake is short; a longer one is not ours.
HELLO_MAX = 4096


def _proof(token: str, role: str, *nonces: str) -> str:
    """What only a knower of the token can say about these nonces, as `role`."""
    message = "\0".join((role, *nonces)).encode()
    return hmac.new(token.encode(), message, "sha256").hexdigest()


def _line(reader: Any, limit: int) -> dict[str, Any]:
    found = json.loads(reader.readline(limit) or b"{}")
    if not isinstance(found, dict):
        raise ValueError("not a JSON object")
    return found


# -- the holder ------------------------------------------------------------------------------------


class Holder:
    """One ssh session and everything it carries."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.lock = threading.Lock()
        self.channels: dict[int, Callable[[int, bytes], None]] = {}
        self.next_channel = 1
        self.forwards: dict[int, socket.socket] = {}
        self.busy = 0
        self.last = time.monotonic()
        self.token = secrets.token_hex(16)
        self.stopping = threading.Event()

    def open(self, kind: int, payload: bytes, on_frame: Callable[[int, bytes], None]) -> int:
        with self.lock:
            channel = self.next_channel
            self.next_channel += 1
            self.channels[channel] = on_frame
        self.write(channel, kind, payload)
        return channel

    def write(self, channel: int, kind: int, payload: bytes = b"") -> None:
        with self.lock:
            stdin = self.ssh.stdin
            assert stdin
            try:
                stdin.write(frame(channel, kind, payload))
                stdin.flush()
            except (OSError, ValueError):
                self.stopping.set()

    def run(self) -> int:
        log = open(self.spec["log"], "ab")  # noqa: SIM115 (the holder's whole life)
        # Ignored before ssh starts, ignored in ssh too: a closing terminal ends neither.
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        # Asked to end (a logout, a shutdown): end as `rjn close` does, control file removed.
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        self.ssh = subprocess.Popen(self.spec["argv"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=log)  # fmt: skip
        assert self.ssh.stdout
        reader = self.ssh.stdout
        first = read_frame(reader)
        if first is None or first[1] != READY:
            log.write(b"rjn: the remote end did not start rjn's multiplexer ([remote] python?)\n")
            log.flush()
            print("failed", flush=True)
            return 255
        server = socket.create_server(("127.0.0.1", 0))
        control = {"pid": os.getpid(), "port": server.getsockname()[1], "token": self.token}
        _write_private(Path(self.spec["control"]), json.dumps(control))
        print("ready", flush=True)  # the command that started us goes on
        # Off the terminal now: the login (and any prompt) is done.
        with contextlib.suppress(OSError, AttributeError):
            os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull if fd != 2 else log.fileno(), fd)
        threading.Thread(target=self.serve, args=(server,), daemon=True).start()
        threading.Thread(target=self.watch_idle, daemon=True).start()
        while not self.stopping.is_set():
            got = read_frame(reader)
            if got is None:
                break
            channel, kind, payload = got
            handler = self.channels.get(channel)
            if handler:
                handler(kind, payload)
            if kind in (EXIT, FAIL):
                self.channels.pop(channel, None)
        self.stopping.set()
        for handler in list(self.channels.values()):
            with contextlib.suppress(Exception):
                handler(EXIT, b"255")
        with contextlib.suppress(OSError):
            Path(self.spec["control"]).unlink()
        with contextlib.suppress(OSError):
            self.ssh.kill()
        return 0

    def watch_idle(self) -> None:
        while not self.stopping.wait(5):
            with self.lock:
                idle = not self.forwards and not self.busy and not self.channels
            if idle and time.monotonic() - self.last > self.spec.get("idle", IDLE):
                self.stop()

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            assert self.ssh.stdin
            self.ssh.stdin.close()  # the session ends, and mux with it
        with contextlib.suppress(OSError):
            self.ssh.terminate()

    def serve(self, server: socket.socket) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=self.client, args=(conn,), daemon=True).start()

    def client(self, conn: socket.socket) -> None:
        """One request of an rjn command: a JSON line, then frames for an exec."""
        with conn:
            reader = conn.makefile("rb")
            try:
                theirs = str(_line(reader, HELLO_MAX).get("hello", ""))
                mine = secrets.token_hex(16)
                proof = _proof(self.token, "holder", theirs, mine)
                conn.sendall(json.dumps({"nonce": mine, "proof": proof}).encode() + b"\n")
                request = _line(reader, 1 << 20)
            except (OSError, ValueError):
                return
            expected = _proof(self.token, "client", mine, theirs)
            if not theirs or not hmac.compare_digest(str(request.get("proof", "")), expected):
                return
            self.last = time.monotonic()
            op = request.get("op")
            if op == "check":
                conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")
            elif op == "exit":
                conn.sendall(b"{}\n")
                self.stop()
            elif op == "forward":
                conn.sendall(json.dumps(self.forward(int(request["port"]),
                                                     str(request["target"]))).encode() + b"\n")
            elif op == "cancel":
                with self.lock:
                    listener = self.forwards.pop(int(request["port"]), None)
                if listener:
                    listener.close()
                conn.sendall(b"{}\n")
            elif op == "exec":
                self.exec(conn, reader, str(request["command"]))

    def exec(self, conn: socket.socket, reader: Any, command: str) -> None:
        ended = threading.Event()

        def back(kind: int, payload: bytes) -> None:
            with contextlib.suppress(OSError):
                conn.sendall(frame(0, kind, payload))
            if kind in (EXIT, FAIL):
                ended.set()

        with self.lock:
            self.busy += 1
        try:
            channel = self.open(EXEC, command.encode(), back)
            while not ended.is_set():
                got = read_frame(reader)
                if got is None:
                    # The command went away (Ctrl-C, killed): its stdin ends, as with ssh, so
                    # what it ran stops cleanly (the helper's actions watch for that); only
                    # what lingers is killed.
                    self.write(channel, EOF)
                    if not ended.wait(15):
                        self.write(channel, KILL)
                    break
                self.write(channel, got[1], got[2])
            ended.wait(30)
        finally:
            with self.lock:
                self.busy -= 1
            self.last = time.monotonic()

    def forward(self, port: int, target: str) -> dict[str, Any]:
        try:
            listener = socket.create_server(("127.0.0.1", port))
        except OSError as exc:
            return {"error": str(exc)}
        with self.lock:
            old = self.forwards.pop(port, None)
            self.forwards[port] = listener
        if old:
            old.close()
        threading.Thread(target=self.accept, args=(listener, target), daemon=True).start()
        return {}

    def accept(self, listener: socket.socket, target: str) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self.last = time.monotonic()

            def back(kind: int, payload: bytes, conn: socket.socket = conn) -> None:
                with contextlib.suppress(OSError):
                    if kind == DATA:
                        conn.sendall(payload)
                    elif kind in (EXIT, FAIL):
                        conn.close()

            channel = self.open(SOCKET, target.encode(), back)
            threading.Thread(target=self.relay, args=(conn, channel), daemon=True).start()

    def relay(self, conn: socket.socket, channel: int) -> None:
        with contextlib.suppress(OSError):
            while block := conn.recv(CHUNK):
                self.write(channel, DATA, block)
        self.write(channel, EOF)


def _write_private(path: Path, text: str) -> None:
    staged = path.with_name(f"{path.name}.{os.getpid()}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(staged, path)


def main() -> int:
    return Holder(json.loads(sys.argv[1])).run()


# -- the client: what SingleConnection asks the holder ---------------------------------------------


class Held:
    """A holder, as its control file names it."""

    def __init__(self, control: Path) -> None:
        seen = json.loads(control.read_text())
        self.pid, self.port, self.token = int(seen["pid"]), int(seen["port"]), str(seen["token"])

    def _request(self, op: str, **fields: Any) -> tuple[socket.socket, Any]:
        """A connection to the holder that proved it is ours, with our request sent."""
        conn = socket.create_connection(("127.0.0.1", self.port), timeout=15)
        try:
            reader = conn.makefile("rb")
            mine = secrets.token_hex(16)
            conn.sendall(json.dumps({"hello": mine}).encode() + b"\n")
            reply = _line(reader, HELLO_MAX)
            theirs = reply.get("nonce")
            if not isinstance(theirs, str) or not hmac.compare_digest(
                str(reply.get("proof", "")), _proof(self.token, "holder", mine, theirs)
            ):
                raise Impostor(self.port)
            proof = _proof(self.token, "client", theirs, mine)
            conn.sendall(json.dumps({"proof": proof, "op": op, **fields}).encode() + b"\n")
        except BaseException:
            conn.close()
            raise
        return conn, reader

    def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        conn, reader = self._request(op, **fields)
        with conn:
            return _line(reader, 1 << 20)

    def exec(self, command: str) -> socket.socket:
        conn, _ = self._request("exec", command=command)
        conn.settimeout(None)
        return conn


class Impostor(ValueError):
    """What listens on the holder's port cannot prove it knows the token: not our holder (it
    died, and another program, perhaps another user's, took the port)."""

    def __init__(self, port: int) -> None:
        super().__init__(f"127.0.0.1:{port} is not rjn's holder")


def held(control: Path) -> Held | None:
    """The holder of this host's session, if it runs, answers and proves it is ours (a
    control file whose port another program holds now is stale: never trusted; the next
    holder replaces it)."""
    try:
        found = Held(control)
        return found if found.ask("check").get("pid") == found.pid else None
    except (OSError, ValueError, KeyError, TypeError):  # Impostor among them
        return None


class Running:
    """A command through the holder, its stdin open until closed (a proc.Process)."""

    def __init__(
        self,
        conn: socket.socket,
        stdin: Iterable[bytes],
        on_out: Callable[[str], Any] | None,
        on_err: Callable[[str], Any] | None = None,
        keep_open: bool = True,
    ) -> None:
        from rjn.proc import MAX_OUTPUT, STDERR_TAIL, _Kept, _splitter  # as rjn splits lines

        self.conn = conn
        self.code: int | None = None
        self.err = _Kept(STDERR_TAIL, tail=True)
        self.out = _Kept(MAX_OUTPUT)
        self._out = _splitter(on_out, None) if on_out else _splitter(None, self.out)
        self._err = _splitter(on_err, self.err)
        self.ended = threading.Event()
        self.send_lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._feed, args=(stdin, keep_open), daemon=True).start()

    def _send(self, kind: int, payload: bytes = b"") -> None:
        with self.send_lock, contextlib.suppress(OSError):
            self.conn.sendall(frame(0, kind, payload))

    def _feed(self, stdin: Iterable[bytes], keep_open: bool) -> None:
        for chunk in stdin:
            for start in range(0, len(chunk), CHUNK):
                self._send(DATA, chunk[start : start + CHUNK])
        if not keep_open:
            self._send(EOF)

    def _read(self) -> None:
        reader = self.conn.makefile("rb")
        try:
            while (got := read_frame(reader)) is not None:
                _, kind, payload = got
                if kind == OUT:
                    self._out(payload)
                elif kind == ERR:
                    self._err(payload)
                elif kind == FAIL:
                    self._err(payload + b"\n")
                    self.code = 127
                    break
                elif kind == EXIT:
                    self.code = int(payload or b"255")
                    break
        except (OSError, ValueError):
            pass
        self._out.flush()
        self._err.flush()
        if self.code is None:
            self.code = 255  # the connection went, as ssh says it
        self.ended.set()

    def alive(self) -> bool:
        return not self.ended.is_set()

    @property
    def stderr(self) -> str:
        return self.err.text()

    def wait(self, timeout: float | None, drain: float = 10) -> int | None:
        return self.code if self.ended.wait(timeout) else None

    def close(self, timeout: float = 10) -> int | None:
        self._send(EOF)
        if not self.ended.wait(timeout):
            self._send(KILL)
            self.ended.wait(3)
        with contextlib.suppress(OSError):
            self.conn.close()
        return self.code


# -- the connection --------------------------------------------------------------------------------


class SingleConnection(Connection):
    """A host reached through one held ssh session instead of a ControlMaster ([remote]
    multiplex = "single"; "auto" on Windows). Commands, the helper, rjn's own transfer and
    the tunnel ride it; rsync cannot (it starts its own ssh), nor can a terminal session."""

    CARRIES_RSYNC = False
    SERVES = False  # every command is one channel of the held session already: no serving helper

    @property
    def hold_path(self) -> Path:
        return hold_file(self.control_path)

    def master_pid(self) -> int | None:
        found = held(self.hold_path)
        return found.pid if found else None

    def _start_master(self, timeout: int) -> bool:
        if self.master_alive():
            return False
        self.log_path.write_text("")
        interactive = sys.stdin.isatty()
        python = self.config.python if self.config.python and not self.config.python.startswith(
            "uv:") else "python3"  # fmt: skip
        mux = mux_program()
        ssh = [
            "ssh", "-o", "ControlMaster=no", "-o", "ControlPath=none", *self.options(),
            *self.session_options(timeout, interactive),
            "-T", "--", self.host, shlex.join([python, "-c", mux]),
        ]  # fmt: skip
        spec = {"argv": ssh, "control": str(self.hold_path), "log": str(self.log_path)}
        holder = [sys.executable, "-m", "rjn.connection.single", json.dumps(spec)]
        wait = timeout + (600 if interactive else 30)
        state = proc.start_held(holder, log=self.log_path, timeout=wait)
        if state != "ready" or not self.master_alive():
            raise self.explain(self.log_path.read_text(errors="replace"))
        return True

    def disconnect(self) -> None:
        found = held(self.hold_path)
        if found:
            with contextlib.suppress(OSError, ValueError):
                found.ask("exit")

    def _held(self) -> Held:
        found = held(self.hold_path)
        if found is None:
            raise self.lost("")
        return found

    def run(
        self,
        command: Sequence[str],
        *,
        input: str | bytes | Iterable[bytes] | None = None,
        timeout: float | None = None,
        on_out: Callable[[str], Any] | None = None,
        on_err: Callable[[str], Any] | None = None,
        abort_when: Callable[[], bool] | None = None,
    ) -> proc.Completed:
        given: Iterable[bytes] = (
            [input.encode()] if isinstance(input, str) else [input] if isinstance(input, bytes)
            else input or []
        )  # fmt: skip
        running = Running(self._held().exec(shlex.join(command)), given, on_out, on_err,
                          keep_open=False)  # fmt: skip
        def stop() -> bool:
            return running.out.over or bool(abort_when and abort_when())

        code = proc.wait_done(running, timeout, stop)
        running.close(timeout=1)
        if running.out.over:
            raise proc.TooMuchOutput.of(f"'{command[0]}' on {self.host}")
        if code is None and not stop():
            raise Timeout(f"'{command[0]}' on {self.host} did not finish within {timeout:g}s")
        code = 255 if code is None else code
        if code == 255 and not self.master_alive():
            raise self.lost(running.stderr)
        return proc.Completed(tuple(command), code, running.out.text(), running.stderr)

    def start(
        self, command: Sequence[str], *, stdin: bytes, on_out: Callable[[str], Any]
    ) -> proc.Process:
        return Running(self._held().exec(shlex.join(command)), [stdin], on_out)

    def forward(self, local_port: int, target: str) -> None:
        answer = self._held().ask("forward", port=local_port, target=target)
        if "error" in answer:
            raise ConfigError(
                f"cannot forward local port {local_port} to {self.host}: {answer['error']}",
                hint='another program may use the port; set [jupyter] local_port, or "auto"',
            )

    def cancel_forward(self, local_port: int, target: str) -> None:
        found = held(self.hold_path)
        if found:
            found.ask("cancel", port=local_port)

    def forward_socket(self, local: Path, target: str) -> bool:
        return False

    def to_node(self, node: str) -> Connection:
        raise ConfigError(
            '[slurm] connect = "jump" needs an ssh client that multiplexes (ControlMaster)',
            hint='use [slurm] connect = "tunnel" (the default), or [remote] multiplex = '
            '"controlmaster"',
        )

    def shell(self, command: Sequence[str] | None = None) -> int:
        """A terminal session is an ssh login of its own here (the held session has no
        terminal): one more login, and a prompt if the host asks for one."""
        tty = "-t" if sys.stdin.isatty() else "-T"
        argv = ["ssh", "-o", "ControlMaster=no", "-o", "ControlPath=none", *self.options(), tty,
                "--", self.host]  # fmt: skip
        if command is not None:
            argv.append(shlex.join(command))
        return proc.foreground(argv)


def mux_program() -> str:
    """The far end's program, as `python3 -c` runs it there: helper/mux.py with the frames'
    definitions (shared/frames.py) in place of its import of them."""
    package = resources.files("rjn")
    mux = package.joinpath("helper", "mux.py").read_text()
    frames = package.joinpath("shared", "frames.py").read_text()
    program, found = re.subn(r"^from \.\.shared\.frames import \([^)]*\)[^\n]*$",
                             lambda _: frames, mux, count=1, flags=re.MULTILINE)  # fmt: skip
    if not found:
        raise RuntimeError("helper/mux.py no longer imports shared/frames.py as one statement")
    return program


def hold_file(control_path: Path | str) -> Path:
    """The holder's control file, beside where the host's master would be."""
    return Path(f"{control_path}.hold")


if __name__ == "__main__":
    sys.exit(main())
