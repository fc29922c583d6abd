"""A throwaway OpenSSH server on loopback: its own host key, key-only login, known_hosts written.

Used by the tests and by `nox -s demo`. Works as root and as an ordinary user. The separate
host with latency (`netns.py`) is the same server, moved behind a link of its own.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ALIAS = "rjn-test"
# The variable sshd sets in every session of a test host: which host started a process.
MARK = "RJN_TEST_HOST_ID"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _sshd_binary() -> str:
    found = shutil.which("sshd") or next(
        (p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.path.exists(p)), None
    )
    if not found:
        raise RuntimeError("sshd is not installed (Debian: apt-get install openssh-server)")
    return found


class TestHost:
    """An sshd on 127.0.0.1 and a client config (alias `rjn-test`) that trusts only its key."""

    __test__ = False  # a fixture, not a test class

    address = "127.0.0.1"
    kind = "loopback"

    def __init__(
        self,
        base: Path,
        remote_env: dict[str, str] | None = None,
        *,
        user: str | None = None,
        password_login: bool = False,
    ) -> None:
        self.base = base
        self.port = _free_port()
        self.user = user or getpass.getuser()
        # Passwords only (no keys): a login that must ask the user at the terminal.
        self.password_login = password_login
        self.remote_env = remote_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.ssh_config = base / "ssh_config"
        self.known_hosts = base / "known_hosts"
        self.client_key = base / "id_ed25519"
        self.host_key = base / "ssh_host_ed25519_key"
        self.log = base / "sshd.log"

    def _keygen(self, path: Path) -> None:
        if not path.exists():
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rjn-test", "-f", str(path)],
                check=True,
            )

    @property
    def known_name(self) -> str:
        """How known_hosts names this host."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    def write_files(self) -> None:
        """Keys, sshd_config, known_hosts and the client config."""
        self.base.mkdir(parents=True, exist_ok=True)
        self._keygen(self.host_key)
        self._keygen(self.client_key)
        (self.base / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        host_pub = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"{self.known_name} {host_pub[0]} {host_pub[1]}\n")
        # Every process a login starts carries the mark, detached ones too: teardown finds
        # and stops exactly what this host ran (processes()), nothing else on the machine.
        marked = {**self.remote_env, MARK: str(self.base)}
        setenv = " ".join(f"{k}={v}" for k, v in marked.items())
        (self.base / "sshd_config").write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.address}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.base / 'sshd.pid'}",
                    f"AuthorizedKeysFile {self.base / 'authorized_keys'}",
                    f"PubkeyAuthentication {'no' if self.password_login else 'yes'}",
                    f"PasswordAuthentication {'yes' if self.password_login else 'no'}",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "AllowTcpForwarding yes",
                    "AllowStreamLocalForwarding yes",
                    "MaxSessions 100",
                    "MaxStartups 100",
                    "LogLevel VERBOSE",
                    f"SetEnv {setenv}",
                    "",
                ]
            )
        )
        self.ssh_config.write_text(
            "\n".join(
                [
                    f"Host {ALIAS}",
                    f"    HostName {self.address}",
                    f"    Port {self.port}",
                    f"    User {self.user}",
                    *(
                        ["    PreferredAuthentications password", "    NumberOfPasswordPrompts 1"]
                        if self.password_login
                        else [f"    IdentityFile {self.client_key}", "    IdentitiesOnly yes"]
                    ),
                    f"    UserKnownHostsFile {self.known_hosts}",
                    "    StrictHostKeyChecking yes",
                    "    LogLevel ERROR",
                    "",
                ]
            )
        )

    def start(self) -> TestHost:
        """Start sshd and wait until it greets."""
        self.write_files()
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        self.proc = subprocess.Popen(
            self.sshd_argv([_sshd_binary(), "-D", "-e", "-f", str(self.base / "sshd_config")]),
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.log.read_text()}")
            try:
                with socket.create_connection((self.address, self.port), timeout=1) as conn:
                    if conn.recv(4) == b"SSH-":
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not answer on port {self.port}: {self.log.read_text()}")

    def sshd_argv(self, argv: list[str]) -> list[str]:
        """How sshd is started (a host elsewhere wraps it)."""
        return argv

    def teardown(self) -> None:
        """Stop sshd and everything started on the host (by PID, found by its mark)."""
        self.stop()
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def processes(self) -> list[int]:
        """Every process a login to this host started, and their children, still running."""
        mark = f"{MARK}={self.base}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                with contextlib.suppress(OSError):
                    if mark in (entry / "environ").read_bytes().split(b"\0"):
                        found.append(int(entry.name))
        return found

    def run_there(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a command on the host itself, as root (a mount the remote must see, say)."""
        return subprocess.run(argv, capture_output=True, text=True)

    def stop(self) -> None:
        """Stop sshd (sessions it forked end with their connections)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def cut(self) -> None:
        """Break the link for real: stop listening and drop every open connection.

        Every sshd process below the listener goes, however deep: without privilege
        separation (an ordinary user's sshd) the connection lives in a grandchild.
        """
        if self.proc and self.proc.poll() is None:
            for pid in self._sshd_descendants(self.proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.stop()

    @staticmethod
    def _sshd_descendants(root: int) -> list[int]:
        table = subprocess.run(["ps", "-eo", "pid=,ppid=,comm="], capture_output=True, text=True)
        children: dict[int, list[tuple[int, str]]] = {}
        for line in table.stdout.splitlines():
            pid, ppid, comm = line.split(None, 2)
            children.setdefault(int(ppid), []).append((int(pid), comm))
        found, todo = [], [root]
        while todo:
            for pid, comm in children.get(todo.pop(), []):
                todo.append(pid)
                if comm.startswith("sshd"):
                    found.append(pid)
        return found

    def remote_toml(self, remote_dir: Path, remote_extra: str = "", **extra_tables: str) -> str:
        """A remote.toml that reaches this host through its alias and client config."""
        text = (
            "[remote]\n"
            f'host = "{ALIAS}"\n'
            f'ssh_config = "{self.ssh_config}"\n'
            f"dir = {_toml_string(str(remote_dir))}\n"
            f"{remote_extra}"
        )
        return text + "".join(f"\n[{name}]\n{body}\n" for name, body in extra_tables.items())


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
