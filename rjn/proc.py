"""The only module that runs subprocesses: argv lists through `sh`, never a shell string."""

from __future__ import annotations

import contextlib
import os
import queue
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sh

from rjn.errors import RjnError, Timeout

# Every exit status is data for the caller, signals included.
_ALL_CODES = list(range(-64, 256))
_LINE_END = re.compile(r"[\r\n]+")


@dataclass(frozen=True)
class Completed:
    """A finished command: exit code and what it printed."""

    argv: tuple[str, ...]
    code: int
    out: str
    err: str

    @property
    def ok(self) -> bool:
        return self.code == 0


def _command(name: str) -> sh.Command:
    try:
        return sh.Command(name)
    except sh.CommandNotFound:
        package = {"ssh": "openssh-client", "rsync": "rsync"}.get(name, name)
        raise RjnError(
            f"'{name}' is not installed on this machine",
            hint=f"install it (Debian/Ubuntu: apt install {package}; macOS: brew install {name})",
        ) from None


def run(
    argv: Sequence[str],
    *,
    input: str | bytes | None = None,
    timeout: float | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    on_out: Callable[[str], Any] | None = None,
    on_err: Callable[[str], Any] | None = None,
) -> Completed:
    """Run argv to completion; stream stdout/stderr lines to callbacks if given.

    Lines are split on both \\r and \\n so progress meters arrive as they are drawn.
    """
    out_lines: list[str] = []
    err_lines: list[str] = []
    kwargs: dict[str, Any] = {
        "_in": input,
        "_ok_code": _ALL_CODES,
        "_return_cmd": True,
        "_tty_out": False,
        "_cwd": str(cwd) if cwd else None,
        "_env": env,
        "_timeout": timeout,
        "_decode_errors": "replace",
        "_out": _splitter(on_out, out_lines),
        "_err": _splitter(on_err, err_lines),
        "_out_bufsize": 0,
        "_err_bufsize": 0,
    }
    try:
        proc = _command(argv[0])(*argv[1:], **kwargs)
    except sh.TimeoutException:
        raise Timeout(f"'{argv[0]}' did not finish within {timeout:.0f}s") from None
    finally:
        for handler in (kwargs["_out"], kwargs["_err"]):
            handler.flush()
    return Completed(tuple(argv), proc.exit_code, "".join(out_lines), "".join(err_lines))


class _splitter:
    """Collects a stream and hands complete lines to a callback."""

    def __init__(self, callback: Callable[[str], Any] | None, sink: list[str] | None) -> None:
        self.callback = callback
        self.sink = sink
        self.pending = ""

    def __call__(self, chunk: str | bytes) -> None:
        text = chunk.decode(errors="replace") if isinstance(chunk, bytes) else chunk
        if self.sink is not None:
            self.sink.append(text)
        if self.callback is None:
            return
        self.pending += text
        *lines, self.pending = _LINE_END.split(self.pending)
        for line in lines:
            if line:
                self.callback(line)

    def flush(self) -> None:
        if self.callback is not None and self.pending:
            self.callback(self.pending)
        self.pending = ""


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
        try:
            proc = _command(argv[0])(
                *argv[1:],
                _in=devnull_in,
                _out=devnull_out,
                _err=err,
                _ok_code=_ALL_CODES,
                _return_cmd=True,
                _timeout=timeout,
            )
        except sh.TimeoutException:
            raise Timeout(f"'{argv[0]}' did not finish within {timeout:.0f}s") from None
    code: int = proc.exit_code
    return code


def foreground(argv: Sequence[str], *, cwd: Path | None = None) -> int:
    """Run argv attached to this terminal (interactive shells, streamed runs); return its code."""
    try:
        _command(argv[0])(*argv[1:], _fg=True, _cwd=str(cwd) if cwd else None)
    except sh.ErrorReturnCode as exc:
        code: int = exc.exit_code
        return code
    return 0


class Background:
    """A command running in the background whose stdin stays open until `close`."""

    def __init__(self, command: Any, feed: queue.Queue[bytes | None], err: list[str]) -> None:
        self._command = command
        self._feed = feed
        self._err = err

    def alive(self) -> bool:
        return bool(self._command.is_alive())

    @property
    def code(self) -> int | None:
        code: int | None = None if self.alive() else self._command.exit_code
        return code

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def close(self, timeout: float = 10) -> int | None:
        """Close its stdin (the polite stop), then terminate it if it lingers."""
        self._feed.put(None)
        try:
            self._command.wait(timeout=timeout)
        except sh.TimeoutException:
            self._command.terminate()
            with contextlib.suppress(sh.TimeoutException):
                self._command.wait(timeout=5)
        except sh.ErrorReturnCode:
            pass
        return self.code


def start(argv: Sequence[str], *, stdin: bytes, on_out: Callable[[str], Any]) -> Background:
    """Start argv in the background: feed it `stdin` (kept open) and hand its stdout lines over."""
    feed: queue.Queue[bytes | None] = queue.Queue()
    feed.put(stdin)
    err: list[str] = []
    command = _command(argv[0])(
        *argv[1:],
        _in=feed,
        _out=_splitter(on_out, None),
        _err=_splitter(None, err),
        _out_bufsize=0,
        _bg=True,
        _bg_exc=False,
        _tty_out=False,
        _ok_code=_ALL_CODES,
        _decode_errors="replace",
    )
    return Background(command, feed, err)
