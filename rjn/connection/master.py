"""One OpenSSH ControlMaster per host carries every command, rsync and tunnel.

This module knows ssh only: the master, one command, a forward, a terminal session, and what
ssh's failures mean. Single mode (single.py) is the same interface over a held session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from rjn import places, portable, proc
from rjn.config import RemoteConfig
from rjn.errors import ConfigError, ConnectionFailed, RjnError
from rjn.shared.record import record

# When this process started: a close marked after it cut short what this process did.
_STARTED = time.time()


@record
class Use:
    """Another rjn process's work over a connection, as it said it (Connection.in_use)."""

    pid: int
    what: str
    project: str
    since: float

# What OpenSSH says, mapped to what it means and what to try.
_FAILURES = (
    (
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
        "the host key changed",
        "if the server was really reinstalled, remove the old key with `KEYGEN`; "
        "otherwise someone may be intercepting the connection: do not connect",
    ),
    (
        "Host key verification failed",
        "the host key is not known",
        "connect once with `LOGIN` to check and accept the host key, then run rjn again",
    ),
    (
        "Could not resolve hostname",
        "the host name does not resolve (DNS)",
        "check the spelling of [remote] host, or the Host alias in ~/.ssh/config",
    ),
    (
        "Name or service not known",
        "the host name does not resolve (DNS)",
        "check the spelling of [remote] host, or the Host alias in ~/.ssh/config",
    ),
    (
        "Connection refused",
        "the connection was refused",
        "check that sshd runs on the host and that [remote] port is right",
    ),
    (
        "timed out",
        "the connection timed out",
        "check the network, VPN or ProxyJump; the host may be down",
    ),
    (
        "No route to host",
        "there is no route to the host",
        "check the network or VPN, or the host may be down",
    ),
    (
        "Permission denied",
        "authentication failed",
        "check [remote] user and identity, and that your key is in the server's "
        "authorized_keys; `ssh -v HOST` shows what was tried",
    ),
    (
        "Too many authentication failures",
        "authentication failed",
        "set [remote] identity so that ssh offers only the right key",
    ),
    (
        "Timeout, server",
        "the link stalled: the server stopped answering",
        "check the network or VPN; rjn reconnects once it answers again",
    ),
    (
        "Connection closed",
        "the server closed the connection",
        "check the server's sshd logs, or MaxStartups limits",
    ),
)


# Options of every call that rides the master. Where the master is gone, ssh would log in anew
# by itself (a second login, a 2FA prompt, or, on a stalled link, minutes in TCP's connect):
# the proxy command `false` makes that fail at once instead (it is used only without a master,
# and the first ProxyCommand or ProxyJump given wins, so the user's config never runs).
RIDE_MASTER = ("-o", "ControlMaster=no", "-o", "ProxyCommand=false")

# Keepalives on the master: a stalled link ends it after about INTERVAL * COUNT seconds.
KEEPALIVE_INTERVAL = 1
KEEPALIVE_COUNT = 4


def explain(
    host: str, stderr: str, login: str | None = None, keygen: str | None = None
) -> ConnectionFailed:
    """Turn OpenSSH's stderr into an error that says host, cause and what to try; `login`
    and `keygen` are the exact commands that reach this host as rjn does (config file,
    HostName, port), for the hints."""
    login = login or f"ssh {host}"
    keygen = keygen or f"ssh-keygen -R {host}"
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    detail = next(
        (ln for ln in reversed(lines) if not ln.startswith(("@", "Warning:", "debug"))), ""
    )
    for needle, cause, hint in _FAILURES:
        if needle in stderr:
            return ConnectionFailed(
                f"cannot connect to {host}: {cause}" + (f" ({detail})" if detail else ""),
                hint=hint.replace("HOST", host).replace("LOGIN", login).replace("KEYGEN", keygen),
            )
    return ConnectionFailed(
        f"cannot connect to {host}" + (f": {detail}" if detail else ""),
        hint=f"try `{login}` by hand to see what fails",
    )


def master_pid_at(control_path: str) -> int | None:
    """The pid of the master listening at a control socket, if one is up (a local check)."""
    if not Path(control_path).exists():
        return None
    argv = ["ssh", "-o", f"ControlPath={_ssh_quote(control_path)}", "-O", "check", "--", "rjn"]
    check = proc.run(argv, timeout=10)
    found = re.search(r"pid=(\d+)", check.err)
    return int(found.group(1)) if check.ok and found else None


class Connection:
    """A remote host reached through one OpenSSH ControlMaster."""

    # rsync can ride it (-e ssh over the master); a serving helper can be forwarded to.
    CARRIES_RSYNC = True
    SERVES = True

    def __init__(self, config: RemoteConfig, control_dir: Path, log_dir: Path) -> None:
        self.config = config
        self.host = config.host
        self.control_template = str(control_dir / "%C")
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in config.host)
        self.log_path = log_dir / f"ssh-{safe}.log"

    # -- argv building ---------------------------------------------------------------

    def explain(self, stderr: str) -> ConnectionFailed:
        """explain() with the exact commands for this host, and the ssh config the user named
        ([remote] ssh_config), in its hints."""
        try:
            seen = self.resolved
        except ConnectionFailed:
            failed = explain(self.host, stderr)
        else:
            name, port = seen.get("hostname", self.host), seen.get("port", "22")
            where = name if port == "22" else f"[{name}]:{port}"
            known = seen.get("userknownhostsfile", "~/.ssh/known_hosts").split()[0]
            login = shlex.join(["ssh", *self.options()[:-2], "--", self.host])  # no ControlPath
            keygen = shlex.join(["ssh-keygen", "-R", where, "-f", os.path.expanduser(known)])
            failed = explain(self.host, stderr, login, keygen)
        if self.config.ssh_config and failed.hint:
            failed.hint = failed.hint.replace("~/.ssh/config", self.config.ssh_config)
        return failed

    def lost(self, stderr: str) -> ConnectionFailed:
        """A command ended with its connection gone: closed by the user, lost under it (the
        master's log says why, a stall say), or, if ssh had to connect on its own and could
        not, explain() that."""
        if self.closed_meanwhile():
            return self._closed()
        # What RIDE_MASTER's `false` says when it refuses a login of its own: no server said it.
        refused = ("kex_exchange_identification: Connection closed", "UNKNOWN port 65535")
        stderr = "\n".join(ln for ln in stderr.splitlines() if not ln.startswith(refused)
                           and refused[1] not in ln)  # fmt: skip
        if any(needle in stderr for needle, _, _ in _FAILURES):
            return self.explain(stderr)
        try:
            log = self.log_path.read_text(errors="replace")
        except OSError:
            log = ""
        why = next(((cause, hint) for needle, cause, hint in _FAILURES if needle in log), None)
        return ConnectionFailed(
            f"the connection to {self.host} was lost" + (f": {why[0]}" if why else ""),
            hint=why[1].replace("HOST", self.host)
            if why
            else "check the network, then run it again",
        )

    def options(self, control: str | None = None) -> list[str]:
        """ssh options shared by every call: the config's, then the control socket."""
        cfg = self.config
        opts: list[str] = []
        if cfg.ssh_config:
            opts += ["-F", os.path.expanduser(cfg.ssh_config)]
        if cfg.user:
            opts += ["-l", cfg.user]
        if cfg.port:
            opts += ["-p", str(cfg.port)]
        if cfg.identity:
            opts += ["-i", os.path.expanduser(cfg.identity), "-o", "IdentitiesOnly=yes"]
        if cfg.proxy_jump:
            opts += ["-J", cfg.proxy_jump]
        for option in cfg.ssh_options:
            opts += ["-o", option]
        # ssh parses option values itself, so a path with spaces needs its own quotes.
        opts += ["-o", f"ControlPath={_ssh_quote(control or self.control_template)}"]
        return opts

    def to_node(self, node: str) -> Connection:
        """A compute node, reached through this host's master: the hop rides the connection
        that is up (no second login to this host); the node is logged in to as ssh is set up
        for it (keys, the user's config for the node's name)."""
        # ProxyCommand expands %-tokens: ours are spelled out, and any other % is escaped.
        hop = ["ssh", *self.options(control=str(self.control_path)), "-o", "ControlMaster=no"]
        proxy = shlex.join(hop).replace("%", "%%") + " -W %h:%p -- "
        proxy += shlex.quote(self.host).replace("%", "%%")
        config = dataclasses.replace(
            self.config,
            host=node,
            port=None,
            proxy_jump=None,
            ssh_options=(*self.config.ssh_options, f"ProxyCommand={proxy}"),
        )
        return Connection(config, Path(self.control_template).parent, self.log_path.parent)

    def ssh_argv(self, *args: str, command: Sequence[str] | None = None) -> list[str]:
        """argv for one ssh call over the master; `command` is quoted once, here."""
        argv = ["ssh", *self.options(), *RIDE_MASTER, *args, "--", self.host]
        if command is not None:
            argv.append(shlex.join(command))
        return argv

    def rsync_shell(self) -> str:
        """The -e value for rsync: ssh over the master (rsync splits it like a shell would)."""
        return shlex.join(["ssh", *self.options(), *RIDE_MASTER])

    def rsync_target(self, path: str) -> str:
        """host:path for rsync."""
        return f"{self.host}:{path}"

    def rsync_sources(self, paths: Sequence[str]) -> list[str]:
        """Several remote sources for one rsync: host:first :second ..."""
        return [self.rsync_target(paths[0]), *(f":{path}" for path in paths[1:])]

    @cached_property
    def resolved(self) -> dict[str, str]:
        """What ~/.ssh/config makes of the host (`ssh -G`): hostname, user, port, controlpath."""
        result = proc.run(["ssh", *self.options(), "-G", "--", self.host], timeout=30)
        if not result.ok:
            raise explain(self.host, result.err)
        values: dict[str, str] = {}
        for line in result.out.splitlines():
            key, _, value = line.partition(" ")
            values.setdefault(key, value)
        return values

    @property
    def control_path(self) -> Path:
        """The master's socket path, as ssh expands %C."""
        return Path(self.resolved["controlpath"])

    # -- who works over it: `rjn close --server` asks before ending what is under way -------

    @property
    def _uses(self) -> Path:
        return Path(f"{self.control_path}.uses")

    @contextlib.contextmanager
    def in_use(self, what: str, project: Path) -> Iterator[None]:
        """While the block runs, this process's `what` (a run, a sync) works over the
        connection: a file in a private folder beside the control socket, locked as long as
        we live (a lock, unlike a pid, cannot outlive its process)."""
        folder = places.private_dir(self._uses)
        path = folder / str(os.getpid())
        with open(path, "w") as handle:
            portable.lock(handle)
            handle.write(json.dumps({"what": what, "project": str(project), "since": time.time()}))
            handle.flush()
            try:
                yield
            finally:
                path.unlink(missing_ok=True)

    def users(self) -> list[Use]:
        """What other rjn processes are doing over this connection now (stale files, whose
        process is gone, are removed)."""
        found = []
        with contextlib.suppress(OSError):
            for path in self._uses.iterdir():
                if path.name == str(os.getpid()):
                    continue
                with contextlib.suppress(OSError, ValueError), open(path, "r+") as handle:
                    if portable.lock(handle):  # nobody holds it: left by a process now gone
                        path.unlink(missing_ok=True)
                        continue
                    use = json.loads(handle.read(4096))
                    found.append(Use(int(path.name), str(use["what"]), str(use["project"]),
                                     float(use["since"])))  # fmt: skip
        return found

    def mark_closed(self) -> None:
        """Note that the user closed the connection on purpose (`close --server --force`),
        so that what it cut short says so instead of blaming the network."""
        places.write_private(Path(f"{self.control_path}.closed"), str(time.time()))

    def closed_meanwhile(self) -> bool:
        """Whether the user closed the connection since this process started."""
        try:
            return Path(f"{self.control_path}.closed").stat().st_mtime >= _STARTED
        except OSError:
            return False

    def _closed(self) -> ConnectionFailed:
        return ConnectionFailed(
            f"the connection to {self.host} was closed by `rjn close --server --force`",
            hint="run it again (it connects again)",
        )

    # -- the master ------------------------------------------------------------------

    def master_alive(self) -> bool:
        """Whether a master for this host is up (a local check, no network)."""
        return self.master_pid() is not None

    def master_pid(self) -> int | None:
        """The master's process id, if it is up (a local check, no network)."""
        return master_pid_at(str(self.control_path))

    def connect(self, timeout: int | None = None) -> bool:
        """Make sure the master is up; returns True if it had to log in. `timeout` bounds the
        TCP connect (a quick retry loop after a drop uses a short one)."""
        if self.master_alive():
            return False
        # Two rjn commands for one host must not both start a master: the second would find
        # the socket taken and stay on as a stray plain connection.
        lock = self.control_path.with_name(self.control_path.name + ".lock")
        with places.file_lock(lock, self.connect_timeout + 600, f"{self.host} connecting"):
            return self._start_master(timeout or self.connect_timeout)

    @property
    def connect_timeout(self) -> int:
        """remote.toml's connect_timeout, else the ssh config's ConnectTimeout, else 20 s."""
        if self.config.connect_timeout:
            return self.config.connect_timeout
        configured = self.resolved.get("connecttimeout", "none")
        return int(configured) if configured.isdigit() else 20

    def _start_master(self, timeout: int) -> bool:
        if self.master_alive():
            return False  # another rjn command started it while we waited
        # A socket left by a dead master would make ssh give up multiplexing.
        self.control_path.unlink(missing_ok=True)
        self.log_path.write_text("")
        interactive = sys.stdin.isatty()
        argv = [
            "ssh", *self.options(), "-o", "ControlMaster=yes", "-o", "ControlPersist=yes",
            *self.session_options(timeout, interactive),
            "-E", str(self.log_path), "-N", "-f", "--", self.host,
        ]  # fmt: skip
        code = proc.spawn_detached(
            argv, log=self.log_path, timeout=timeout + (600 if interactive else 30)
        )
        if code != 0 or not self.master_alive():
            raise self.explain(self.log_path.read_text(errors="replace"))
        return True

    @staticmethod
    def session_options(timeout: int, interactive: bool) -> list[str]:
        """ssh options of the one session that carries a host's work (a master, or single
        mode's held session)."""
        return [
            "-o", f"ConnectTimeout={timeout}",
            # A link that stalls (wifi gone, laptop lid, a dead NAT entry) drops no connection:
            # only missing answers tell. Asked every second, four missed answers end the
            # session, and with it every command and tunnel on it, so that a stall is said
            # within about 5 s and a fresh connection can take over (see watch.follow).
            "-o", f"ServerAliveInterval={KEEPALIVE_INTERVAL}",
            "-o", f"ServerAliveCountMax={KEEPALIVE_COUNT}",
            # Without a terminal nobody can answer a prompt: fail at once instead of hanging.
            "-o", f"BatchMode={'no' if interactive else 'yes'}",
        ]  # fmt: skip

    def responsive(self, timeout: float) -> bool:
        """Whether the remote answers a no-op through the master within `timeout` seconds."""
        try:
            return self.run(["true"], timeout=timeout).ok
        except RjnError:
            return False

    def disconnect(self) -> None:
        """Stop the master (and every tunnel it carries)."""
        if self.master_alive():
            proc.run(self.ssh_argv("-O", "exit"), timeout=15)

    # -- commands and tunnels --------------------------------------------------------

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
        """Run a command on the remote; its argv reaches the remote shell quoted, as data.
        It is stopped as soon as `abort_when()` is true (its answer is already known bad)."""
        result = proc.run(
            self.ssh_argv("-T", command=command),
            input=input,
            timeout=timeout,
            on_out=on_out,
            on_err=on_err,
            abort_when=abort_when,
        )
        if result.code == 255 and not self.master_alive():
            raise self.lost(result.err)
        return result

    def start(
        self, command: Sequence[str], *, stdin: bytes, on_out: Callable[[str], Any]
    ) -> proc.Process:
        """Start a remote command whose stdin stays open (until closed, or the link goes)."""
        return proc.start(self.ssh_argv("-T", command=command), stdin=stdin, on_out=on_out)

    def leave_running(
        self, command: Sequence[str], *, stdin: Path, out: Path
    ) -> Callable[[], bool]:
        """Start a remote command that outlives this rjn process (it ends with the master)."""
        return proc.leave_running(self.ssh_argv("-T", command=command), stdin=stdin, out=out)

    def forward_socket(self, local: Path, target: str) -> bool:
        """Forward a local unix socket to a remote one; whether the master took it."""
        spec = f"{local}:{target}"
        return proc.run(self.ssh_argv("-O", "forward", "-L", spec), timeout=15).ok

    def forward(self, local_port: int, target: str) -> None:
        """Forward 127.0.0.1:local_port to `target` (a remote unix socket or host:port)."""
        spec = f"127.0.0.1:{local_port}:{target}"
        result = proc.run(self.ssh_argv("-O", "forward", "-L", spec), timeout=15)
        if not result.ok:
            raise ConfigError(
                f"cannot forward local port {local_port} to {self.host}: {result.err.strip()}",
                hint='another program may use the port; set [jupyter] local_port, or "auto"',
            )

    def cancel_forward(self, local_port: int, target: str) -> None:
        """Stop forwarding local_port (no error if it was not forwarded)."""
        if self.master_alive():
            spec = f"127.0.0.1:{local_port}:{target}"
            proc.run(self.ssh_argv("-O", "cancel", "-L", spec), timeout=15)

    def shell(self, command: Sequence[str] | None = None) -> int:
        """An interactive session (or a command with a terminal) over the master."""
        tty = "-t" if sys.stdin.isatty() else "-T"
        return proc.foreground(self.ssh_argv(tty, command=command))


def _ssh_quote(value: str) -> str:
    return f'"{value}"' if any(c.isspace() for c in value) else value
