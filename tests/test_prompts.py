"""Prompts are visible: when ssh asks for a password, the display steps aside and the typing
reaches ssh; after the one login of the master nothing asks again. Driven through a real
terminal (a pty), against an sshd that takes passwords only."""

from __future__ import annotations

import os
import pty
import secrets
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hosts.loopback import TestHost

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("useradd"),
        reason="a password login needs a user with a password: root makes one",
    ),
]
USER = "rjnprompt"


@pytest.fixture(scope="module")
def password_host(short_tmp: Path) -> Iterator[tuple[TestHost, str, Path]]:
    home = Path(tempfile.mkdtemp(prefix="rjn-pw"))
    password = secrets.token_urlsafe(12)
    subprocess.run(["userdel", USER], capture_output=True)
    subprocess.run(["useradd", "-d", str(home), "-s", "/bin/sh", USER], check=True)
    subprocess.run(["chpasswd"], input=f"{USER}:{password}\n", text=True, check=True)
    shutil.chown(home, USER, USER)
    host = TestHost(short_tmp / "pwhost", user=USER, password_login=True).start()
    yield host, password, home
    host.teardown()
    subprocess.run(["userdel", USER], capture_output=True)
    shutil.rmtree(home, ignore_errors=True)


class Terminal:
    """rjn on a pty, as a person at a terminal runs it."""

    def __init__(self, args: list[str], cwd: Path, **env_vars: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: become rjn
            os.chdir(cwd)
            env = dict(os.environ, TERM="xterm-256color", COLUMNS="100", **env_vars)
            os.execve(sys.executable, [sys.executable, "-m", "rjn", *args], env)
        self.screen = b""

    def read(self, seconds: float) -> bytes:
        """What the terminal shows over the next `seconds` (or until the program ends)."""
        got = b""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.fd], [], [], left)[0]:
                break
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            got += chunk
        self.screen += got
        return got

    def wait_for(self, text: bytes, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            assert time.monotonic() < deadline, f"no {text!r} on the screen: {self.screen!r}"
            self.read(0.2)

    def type(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\r")

    def finish(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read(0.5)
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.read(0.2)
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, 9)
        raise AssertionError(f"rjn did not finish: {self.screen!r}")


def test_the_password_prompt_shows_and_the_master_asks_once(password_host, short_tmp) -> None:
    host, password, home = password_host
    project = short_tmp / "local" / "prompted"
    project.mkdir(parents=True)
    (project / "remote.toml").write_text(host.remote_toml(home / "project"))

    first = Terminal(["sync"], project)
    first.wait_for(b"password:")
    assert b"Connecting to rjn-test" in first.screen.split(b"password:")[0]
    # Nothing draws over the prompt while ssh waits for the user.
    assert first.read(3.0).strip() == b""
    first.type(password)
    assert first.finish() == 0, first.screen
    # The line that said what ssh was asking for stays above the outcome.
    asked = between(first.screen, b"Connecting to rjn-test", "✓".encode())
    assert b"password:" in asked and ERASE_LINE_ABOVE not in asked
    assert b"Syncing with" in first.screen and password.encode() not in first.screen

    again = Terminal(["sync"], project)
    assert again.finish() == 0, again.screen
    assert b"password" not in again.screen.lower()


def between(screen: bytes, start: bytes, end: bytes) -> bytes:
    """What the terminal showed after the first `start`, up to the next `end`."""
    return screen.split(start, 1)[1].split(end, 1)[0]


# What rjn writes to take back the line above (cursor up, erase the line).
ERASE_LINE_ABOVE = b"\x1b[1A\x1b[2K"


def test_a_login_that_asked_nothing_leaves_no_stray_line(host, make_project, short_tmp) -> None:
    project = make_project("quietlogin")
    fresh = short_tmp / "quiet-run"  # a control folder of its own: this login is new
    fresh.mkdir(mode=0o700)
    terminal = Terminal(["sync"], project, XDG_RUNTIME_DIR=str(fresh))
    try:
        assert terminal.finish() == 0, terminal.screen
        # It was said while ssh might ask; nobody was asked anything: the outcome took the
        # line's place.
        assert "…".encode() in terminal.screen.split(b"Connecting to rjn-test")[0]
        assert ERASE_LINE_ABOVE in between(terminal.screen, b"Connecting to rjn-test", "✓".encode())
    finally:
        closing = Terminal(["close", "--server"], project, XDG_RUNTIME_DIR=str(fresh))
        closing.finish()
