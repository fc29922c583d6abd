"""The only module that runs subprocesses: argv lists, never a shell string. Plain pipes for
what is captured or streamed (most calls: fast); `sh` for the terminal-attached and
self-daemonizing ones, imported only there."""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from rjn import portable
from rjn.errors import RjnError, Timeout
from rjn.shared.record import record

# Every exit status is data for the caller, signals included.
_ALL_CODES = list(range(-64, 256))
_LINE_END = re.compile(rb"[\r\n]")
# A line longer than this is handed over in pieces: a remote that never ends its line must
# not grow our memory without bound (whoever parses lines rejects the oversized piece).
MAX_LINE = 16 * 1024 * 1024
# What a command may print that is kept whole for its caller (its `out`): more, and it is
# stopped with an error (a remote that floods must not grow our memory). Of its stderr only
# the last STDERR_TAIL characters are kept: what callers show is the end of it.
MAX_OUTPUT = 64 * 1024 * 1024
STDERR_TAIL = 256 * 1024


class TooMuchOutput(RjnError):
    """A command printed more than rjn keeps (MAX_OUTPUT): it was stopped."""

    exit_code = 4

    @classmethod
    def of(cls, what: str) -> TooMuchOutput:
        return cls(
            f"{what} printed more than {MAX_OUTPUT >> 20} MiB: stopped it",
            hint="on a remote, a program that floods its output answered instead of rjn's: "
            "check [remote] python and your shell's startup files there",
        )


@record
class Completed:
    """A finished command: exit code and what it printed."""

    argv: tuple[str, ...]
    code: int
    out: str
    err: str

    @property
    def ok(self) -> bool:
        return self.code == 0


def _require(name: str) -> None:
    """A missing program is an RjnError that says how to install it."""
    if shutil.which(name) is None:
        package = {"ssh": "openssh-client", "rsync": "rsync"}.get(name, name)
        raise RjnError(
            f"'{name}' is not installed on this machine",
            hint=f"install it (Debian/Ubuntu: apt install {package}; macOS: brew install {name})",
        )


def run(
    argv: Sequence[str],
    *,
    input: str | bytes | Iterable[bytes] | None = None,
    timeout: float | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    on_out: Callable[[str], Any] | None = None,
    on_err: Callable[[str], Any] | None = None,
    abort_when: Callable[[], bool] | None = None,
) -> Completed:
    """Run argv to completion; stream stdout/stderr lines to callbacks if given; kill it as
    soon as `abort_when()` is true (checked a few times a second).

    Lines are split on both \\r and \\n so progress meters arrive as they are drawn.
    Plain pipes read in whatever chunks they hold, not sh: its machinery and imports cost
    every call, which the many short ssh calls (and every command's start-up) should not pay,
    and it reads an unbuffered stream one byte at a time (rsync's progress for 100,000 files
    crawled). What is kept is bounded: stdout up to MAX_OUTPUT (past it the command
    is stopped: TooMuchOutput), or its tail where `on_out` takes the lines; the tail of stderr.
    """
    _require(argv[0])
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cwd, env=env)  # fmt: skip
    # Lines handed to a callback are its to keep: of those only the tail stays (rsync's
    # summary); a stream kept for the caller is kept whole, up to MAX_OUTPUT.
    kept = _Kept(STDERR_TAIL, tail=True) if on_out else _Kept(MAX_OUTPUT)
    kept_err = _Kept(STDERR_TAIL, tail=True)
    readers = [
        threading.Thread(target=_pump, args=(proc.stdout, _splitter(on_out, kept))),
        threading.Thread(target=_pump, args=(proc.stderr, _splitter(on_err, kept_err))),
    ]
    for reader in readers:
        reader.daemon = True
        reader.start()

    def feed() -> None:
        assert proc.stdin
        with contextlib.suppress(OSError, ValueError):
            if isinstance(input, (str, bytes)):
                proc.stdin.write(input.encode() if isinstance(input, str) else input)
            else:  # a stream, written as the other end takes it: memory stays bounded
                for chunk in input or ():
                    proc.stdin.write(chunk)
            proc.stdin.close()

    threading.Thread(target=feed, daemon=True).start()
    deadline = time.monotonic() + timeout if timeout else None
    expired = False
    while proc.poll() is None:
        expired = bool(deadline and time.monotonic() > deadline)
        if expired or kept.over or (abort_when and abort_when()):
            proc.kill()
            proc.wait()
            break
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.2)
    for reader in readers:
        reader.join(timeout=10)
    name = os.path.basename(argv[0])
    if expired:
        raise Timeout(f"'{name}' did not finish within {timeout:g}s")
    if kept.over:
        raise TooMuchOutput.of(f"'{name}'" + (f" ({argv[-1][:80]!r})" if name == "ssh" else ""))
    return Completed(tuple(argv), proc.returncode, kept.text(), kept_err.text())


def wait_done(process: Process, timeout: float | None, stop: Callable[[], bool]) -> int | None:
    """Wait for a process's end, its deadline, or `stop()` (looked at a few times a second);
    its exit code, or None."""
    deadline = time.monotonic() + timeout if timeout else None
    while not stop():
        left = deadline - time.monotonic() if deadline else 0.2
        if left <= 0:
            return None
        if (code := process.wait(min(left, 0.2))) is not None:
            return code
    return process.code


def _finish(
    command: Any, timeout: float | None, abort_when: Callable[[], bool] | None = None
) -> Any:
    """Wait for a command started with _bg, killing it at the deadline (or on `abort_when`).

    A timer thread, not sh's _timeout: that one polls, and so adds its poll interval to
    every call, which the many short ssh calls would all pay.
    """
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        with contextlib.suppress(ProcessLookupError, OSError):
            command.kill()

    timer = threading.Timer(timeout, expire) if timeout else None
    if timer:
        timer.daemon = True
        timer.start()
    if abort_when:

        def watch() -> None:
            while command.is_alive():
                if abort_when():
                    with contextlib.suppress(ProcessLookupError, OSError):
                        command.kill()
                    return
                time.sleep(0.2)

        threading.Thread(target=watch, daemon=True).start()
    import sh  # only the commands that use it pay for its import

    try:
        command.wait()
    except sh.ErrorReturnCode:
        pass
    finally:
        if timer:
            timer.cancel()
    if expired.is_set():
        name = os.path.basename(str(command.cmd[0]))
        raise Timeout(f"'{name}' did not finish within {timeout:g}s")
    return command


class _Kept:
    """What is kept of a stream for its caller: all of it up to `limit` characters (then
    `over`, and no more is kept), or with `tail` its last `limit` characters."""

    def __init__(self, limit: int, tail: bool = False) -> None:
        self.limit, self.tail = limit, tail
        self.parts: list[str] = []
        self.size = 0
        self.over = False

    def append(self, text: str) -> None:
        if self.over and not self.tail:
            return
        self.parts.append(text)
        self.size += len(text)
        if self.size <= self.limit:
            return
        if not self.tail:
            self.over = True
            return
        kept = "".join(self.parts)[-self.limit :]
        self.parts, self.size = [kept], len(kept)

    def text(self) -> str:
        return "".join(self.parts)


class Blob(NamedTuple):
    """What a line may ask of its stream: the next `size` bytes, raw, handed to `take`. (A
    file's bytes travel so: base64 inside the JSON line would cost a third more on the wire.)"""

    size: int
    take: Callable[[bytes], Any]


class _splitter:
    """Collects a stream and hands complete lines to a callback; a line that grows past
    MAX_LINE without ending is handed over in pieces (the parser rejects them). A line's
    callback may return a Blob: the bytes after that line are then handed over raw."""

    def __init__(self, callback: Callable[[str], Any] | None, sink: _Kept | None) -> None:
        self.callback = callback
        self.sink = sink
        self.buffer = bytearray()
        self.searched = 0  # no line ends in buffer[:searched]: a long line is scanned once
        self.blob: Blob | None = None
        # With no callback the stream is only kept: a character may be split across chunks.
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, chunk: bytes) -> None:
        if self.callback is None:
            if self.sink is not None:
                self.sink.append(self.decoder.decode(chunk))
            return
        self.buffer += chunk
        start, buffer = 0, self.buffer
        while True:
            if self.blob is not None:
                if len(buffer) - start < self.blob.size:
                    break
                blob, self.blob = self.blob, None
                start += blob.size
                blob.take(bytes(buffer[start - blob.size : start]))
                continue
            end = _LINE_END.search(buffer, max(start, self.searched))
            if end is None:
                break
            line, start = buffer[start : end.start()], end.start() + 1
            if line:
                self._line(line.decode("utf-8", errors="replace"))
        del buffer[:start]
        self.searched = len(buffer) if self.blob is None else 0
        if self.blob is None and len(buffer) > MAX_LINE:
            self.flush()

    def _line(self, text: str) -> None:
        if self.sink is not None:
            self.sink.append(text + "\n")
        asked = self.callback(text) if self.callback else None
        if isinstance(asked, Blob):
            self.blob = asked

    def flush(self) -> None:
        """Hand over what is left: an unfinished line as it is; a blob cut short is dropped."""
        if self.buffer and self.blob is None:
            self._line(self.buffer.decode("utf-8", errors="replace"))
        self.buffer, self.searched, self.blob = bytearray(), 0, None


def spawn_detached(argv: Sequence[str], *, log: Path, timeout: float) -> int:
    """Run a command that daemonizes itself (ssh -f); its stdio goes to files, not pipes.

    A forked daemon that inherited our pipes would keep them open forever, so the
    caller would wait for an EOF that never comes. The terminal stays reachable,
    through /dev/tty, for password and 2FA prompts.
    """
    with (
        open(os.devnull, "rb") as devnull_in,
        open(os.devnull, "wb") as devnull_out,
        open(log, "ab") as err,
    ):
        import sh

        _require(argv[0])
        proc = sh.Command(argv[0])(
            *argv[1:],
            _in=devnull_in,
            _out=devnull_out,
            _err=err,
            _ok_code=_ALL_CODES,
            _return_cmd=True,
            _bg=True,
            _bg_exc=False,
        )
        _finish(proc, timeout)
    code: int = proc.exit_code
    return code


def leave_running(argv: Sequence[str], *, stdin: Path, out: Path) -> Callable[[], bool]:
    """Start a command that outlives us (a session of its own), stdin from a file and output
    to one: nothing of ours stays attached to it. Returns whether it still runs."""
    _require(argv[0])
    with open(stdin, "rb") as given, open(out, "wb") as written:
        started = subprocess.Popen(list(argv), stdin=given, stdout=written,
                                   stderr=subprocess.STDOUT, close_fds=True,
                                   **portable.detached())  # fmt: skip
    return lambda: started.poll() is None


def start_held(argv: Sequence[str], *, log: Path, timeout: float) -> str:
    """Start a process that stays (single mode's holder) and return the first line it prints
    ("" if it ends or says nothing in time). It starts in our process group, so that the ssh
    it runs can ask at the terminal (a password, a 2FA code); it leaves the terminal itself
    once logged in."""
    with open(os.devnull, "rb") as nothing, open(log, "ab") as err:
        started = subprocess.Popen(list(argv), stdin=nothing, stdout=subprocess.PIPE, stderr=err)
    out = started.stdout
    assert out
    said: list[bytes] = []
    reader = threading.Thread(target=lambda: said.append(out.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not said:
        started.kill()
    out.close()
    return said[0].decode(errors="replace").strip() if said else ""


def foreground(argv: Sequence[str], *, cwd: Path | None = None) -> int:
    """Run argv attached to this terminal (interactive shells, streamed runs); return its code."""
    import sh

    _require(argv[0])
    try:
        sh.Command(argv[0])(*argv[1:], _fg=True, _cwd=str(cwd) if cwd else None)
    except sh.ErrorReturnCode as exc:
        code: int = exc.exit_code
        return code
    return 0


class Process(Protocol):
    """A command that runs on while we talk to it: a Background here, or one carried by
    single mode's holder (connection.single.Running)."""

    @property
    def code(self) -> int | None: ...

    @property
    def stderr(self) -> str: ...

    def alive(self) -> bool: ...

    def wait(self, timeout: float | None, drain: float = 10) -> int | None: ...

    def close(self, timeout: float = 10) -> int | None: ...


class Background:
    """A command running in the background whose stdin stays open until `close`.

    Plain pipes, a reader thread each: output is handed on in whatever chunks the pipe holds,
    at once. (sh reads an unbuffered stream one byte at a time, and a line-buffered one holds
    a line whole however long it grows; neither suits a remote that may be hostile.)
    """

    def __init__(self, argv: Sequence[str], stdin: bytes, on_out: Callable[[str], Any]) -> None:
        _require(argv[0])
        self._proc = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._err = _Kept(STDERR_TAIL, tail=True)
        self._readers = [
            threading.Thread(target=_pump, args=(self._proc.stdout, _splitter(on_out, None))),
            threading.Thread(target=_pump, args=(self._proc.stderr, _splitter(None, self._err))),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()
        threading.Thread(target=self._feed, args=(stdin,), daemon=True).start()

    def _feed(self, data: bytes) -> None:
        assert self._proc.stdin
        with contextlib.suppress(OSError, ValueError):
            self._proc.stdin.write(data)
            self._proc.stdin.flush()

    def alive(self) -> bool:
        return self._proc.poll() is None

    @property
    def code(self) -> int | None:
        return self._proc.poll()

    @property
    def stderr(self) -> str:
        return self._err.text()

    def wait(self, timeout: float | None, drain: float = 10) -> int | None:
        """Wait for it to end (its stdin stays open) and for its output to be handed on (at
        most `drain` seconds more); its exit code, or None at the deadline."""
        try:
            code = self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        for reader in self._readers:
            reader.join(timeout=drain)
        return code

    def close(self, timeout: float = 10) -> int | None:
        """Close its stdin (the polite stop), then terminate it if it lingers. Bounded: what
        stops (a Ctrl-C above all) must not wait on a stream that never ends."""
        with contextlib.suppress(OSError, ValueError):
            assert self._proc.stdin
            self._proc.stdin.close()
        if self.wait(timeout, drain=2) is None:
            self._proc.terminate()
            if self.wait(3, drain=1) is None:
                self._proc.kill()
                self.wait(3, drain=1)
        return self.code


def _pump(stream: Any, sink: _splitter) -> None:
    """Hand a pipe's output on as it arrives, then what is left at its end."""
    with contextlib.suppress(OSError, ValueError):
        while chunk := os.read(stream.fileno(), 65536):
            sink(chunk)
    sink.flush()


def start(argv: Sequence[str], *, stdin: bytes, on_out: Callable[[str], Any]) -> Background:
    """Start argv in the background: feed it `stdin` (kept open) and hand its stdout lines over."""
    return Background(argv, stdin, on_out)
