"""One OpenSSH ControlMaster per host carries every command, rsync and tunnel."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shlex
import socket
import sys
import time
import zipfile
from collections.abc import Callable, Sequence
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from rjn import places, proc
from rjn.config import RemoteConfig
from rjn.errors import ConnectionFailed, RemoteError, RjnError, Timeout
from rjn.helper import protocol

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


# The helper's package name inside its zipapp (its modules import each other relatively).
HELPER_PACKAGE = "rjn_helper"
# Exit code of the boot when the helper it is told to run is not in the remote's cache.
NEED_HELPER = 97
# Exit code of the boot when the interpreter is older than the helper needs (3.8).
OLD_PYTHON = 96
# Tried, newest first, where the remote's python3 is too old (RHEL 8's is 3.6).
NEWER_PYTHONS = [f"python3.{minor}" for minor in range(14, 7, -1)]


@cache
def helper_zipapp() -> tuple[bytes, str]:
    """The remote helper (rjn/helper) as a zipapp, built the same way every time (sorted,
    fixed times), and its content hash, which names it in the remote's cache."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:

        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            archive.writestr(info, data)

        modules = resources.files("rjn.helper")
        for name in sorted(p.name for p in modules.iterdir() if p.name.endswith(".py")):
            add(f"{HELPER_PACKAGE}/{name}", (modules / name).read_bytes())
        add("__main__.py", f"import sys\nfrom {HELPER_PACKAGE}.main import main\n"
                           "sys.exit(main(sys.argv))\n".encode())  # fmt: skip
    data = buffer.getvalue()
    return data, hashlib.sha256(data).hexdigest()[:24]


# Its first lines run on any Python, 2 included: an interpreter older than 3.8 says its version
# (exit 96) and nothing else runs. Then it runs the helper from the remote's cache
# (~/.cache/rjn/helper-HASH.pyz), checked against its hash; with SIZE > 0 the zipapp comes first
# on stdin and is kept there (written aside, then renamed). Without it, a missing or different
# file answers "need" (exit 97), and rjn sends it.
# Arguments given as @N are the N bytes that follow on stdin; whatever stdin carries afterwards
# stays free for the helper (it watches for our hangup).
_BOOT = """\
import hashlib, json, os, sys
if sys.version_info < (3, 8):
    print(json.dumps({"old_python": "%d.%d.%d" % tuple(sys.version_info[:3])}))
    sys.exit(96)
h, n = sys.argv[1], int(sys.argv[2])
d = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rjn")
p = os.path.join(d, "helper-%s.pyz" % h)
same = lambda b: hashlib.sha256(b).hexdigest()[:len(h)] == h
if n:
    b = sys.stdin.buffer.read(n)
    if not same(b):
        sys.exit("rjn: the helper arrived damaged")
    try:
        os.makedirs(d, 0o700, exist_ok=True)
        os.chmod(d, 0o700)
        t = "%s.%d" % (p, os.getpid())
        with open(t, "wb") as f:
            f.write(b)
        os.replace(t, p)
    except OSError as e:
        print(json.dumps({"error": {"message": "cannot keep rjn's helper in %s: %s" % (d, e),
              "hint": "free space there, or set XDG_CACHE_HOME on the remote"}}))
        sys.exit(3)
else:
    try:
        with open(p, "rb") as f:
            b = f.read()
    except OSError:
        b = b""
    if not same(b):
        print(json.dumps({"need": "helper"}))
        sys.exit(97)
if sys.argv[4].startswith("@"):
    sys.argv[4] = sys.stdin.buffer.read(int(sys.argv[4][1:])).decode()
sys.argv = [p] + sys.argv[3:]
sys.path.insert(0, p)
from rjn_helper.main import main
sys.exit(main(sys.argv))
"""


def master_pid_at(control_path: str) -> int | None:
    """The pid of the master listening at a control socket, if one is up (a local check)."""
    if not Path(control_path).exists():
        return None
    argv = ["ssh", "-o", f"ControlPath={_ssh_quote(control_path)}", "-O", "check", "--", "rjn"]
    check = proc.run(argv, timeout=10)
    found = re.search(r"pid=(\d+)", check.err)
    return int(found.group(1)) if check.ok and found else None


class Remote:
    """A remote host reached through one OpenSSH ControlMaster."""

    def __init__(self, config: RemoteConfig, control_dir: Path, log_dir: Path) -> None:
        self.config = config
        self.host = config.host
        self.control_template = str(control_dir / "%C")
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in config.host)
        self.log_path = log_dir / f"ssh-{safe}.log"
        # What the user should hear once (a choice rjn made for them), for the use case to say.
        self.notes: list[str] = []

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
        """A command ended with its connection gone: lost under it (the master's log says why,
        a stall say), or, if ssh had to connect on its own and could not, explain() that."""
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

    def to_node(self, node: str) -> Remote:
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
        return Remote(config, Path(self.control_template).parent, self.log_path.parent)

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
            "ssh", *self.options(),
            "-o", "ControlMaster=yes",
            "-o", "ControlPersist=yes",
            "-o", f"ConnectTimeout={timeout}",
            # A link that stalls (wifi gone, laptop lid, a dead NAT entry) drops no connection:
            # only missing answers tell. Asked every second, four missed answers end the
            # master, and with it every command and tunnel on it, so that a stall is said
            # within about 5 s and a fresh connection can take over (see watch.follow).
            "-o", f"ServerAliveInterval={KEEPALIVE_INTERVAL}",
            "-o", f"ServerAliveCountMax={KEEPALIVE_COUNT}",
            # Without a terminal nobody can answer a prompt: fail at once instead of hanging.
            "-o", f"BatchMode={'no' if interactive else 'yes'}",
            "-E", str(self.log_path),
            "-N", "-f", "--", self.host,
        ]  # fmt: skip
        code = proc.spawn_detached(
            argv, log=self.log_path, timeout=timeout + (600 if interactive else 30)
        )
        if code != 0 or not self.master_alive():
            raise self.explain(self.log_path.read_text(errors="replace"))
        return True

    def responsive(self, timeout: float) -> bool:
        """Whether the remote answers a no-op through the master within `timeout` seconds."""
        try:
            return proc.run(self.ssh_argv("-T", command=["true"]), timeout=timeout).ok
        except RjnError:
            return False

    def disconnect(self) -> None:
        """Stop the master (and every tunnel it carries)."""
        if self.master_alive():
            proc.run(self.ssh_argv("-O", "exit"), timeout=15)

    # -- commands, helper and tunnels -----------------------------------------------------

    def run(
        self,
        command: Sequence[str],
        *,
        input: str | bytes | None = None,
        timeout: float | None = None,
        on_out: Callable[[str], Any] | None = None,
        on_err: Callable[[str], Any] | None = None,
    ) -> proc.Completed:
        """Run a command on the remote; its argv reaches the remote shell quoted, as data."""
        result = proc.run(
            self.ssh_argv("-T", command=command),
            input=input,
            timeout=timeout,
            on_out=on_out,
            on_err=on_err,
        )
        if result.code == 255 and not self.master_alive():
            raise self.lost(result.err)
        return result

    # -- the helper, cached on the remote ------------------------------------------------

    def _helper_mark(self) -> Path:
        """A local note that this host keeps the current helper: then it is not sent."""
        return places.state_dir() / "helpers" / f"{self.control_path.name}-{helper_zipapp()[1]}"

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

    def _serving_socket(self) -> Path:
        """The local end of the forward to this connection's serving helper, of this rjn and
        this [remote] python (its answers, the environment's check above all, are that
        interpreter's: projects with another python have their own)."""
        python = hashlib.sha256(self.python.encode()).hexdigest()[:8]
        name = f"{self.control_path.name}.{helper_zipapp()[1][:12]}.{python}"
        return places.runtime_dir() / f"{name}.sock"

    def _served(self, action: str, args: dict[str, Any], timeout: float) -> list[str] | None:
        """The answer's lines from the serving helper (one round trip, no new remote process),
        or None where it cannot answer: not started, or gone with its connection."""
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
            argv = self.ssh_argv(
                "-T", command=_agent_command(self.python, "serve", {}, size)[0]
            )
            running = proc.leave_running(argv, stdin=given, out=out)
            where = _serving_at(out, running, deadline=time.monotonic() + 15)
            given.unlink(missing_ok=True)
            if isinstance(where, str):
                self._helper_kept(size)
                path.unlink(missing_ok=True)  # a forward of a master that is gone
                spec = f"{path}:{where}"
                if proc.run(self.ssh_argv("-O", "forward", "-L", spec), timeout=15).ok:
                    refused.unlink(missing_ok=True)
                    return
            elif where == "need":
                self._helper_lost()
            places.write_private(refused, "")

    def agent(
        self,
        action: str,
        args: dict[str, Any],
        *,
        python: str | None = None,
        on_log: Callable[[str], Any] | None = None,
        timeout: float | None = None,
        hold: bool = False,
        send: bool = False,
    ) -> dict[str, Any]:
        """Run one action of rjn's remote helper in one exec; return its JSON answer.

        With `hold`, its stdin stays open until it answers (see the helper's start)."""
        python = python or self.python
        answer: dict[str, Any] = {}
        parts = Parts(self.host)

        def on_message(message: dict[str, Any]) -> None:
            if "log" in message and on_log:
                on_log(str(message["log"]))
            if "part" in message:
                parts.add(message)
            kinds = ("ok", "error", "need", "old_python")
            answer.update({k: v for k, v in message.items() if k in kinds})

        def settled() -> dict[str, Any] | None:
            """The helper's answer, once it came: its ok, or its error raised."""
            if "error" in answer:
                raise helper_error(self.host, answer["error"])
            ok: dict[str, Any] | None = answer.get("ok")
            return parts.joined(ok) if ok is not None else None

        parse = _messages(on_message)
        if action in self.SERVED and python == self.python and not hold and not send:
            served = self._served(action, args, timeout or 300)
            if served is None:
                if not self.master_alive():
                    raise self.lost("")  # the connection went while we asked
                self._start_serving()
                served = self._served(action, args, timeout or 300)
            for line in served or ():
                parse(line)
            if (done := settled()) is not None:
                return done
            parts = Parts(self.host)  # asked again by exec: from the start
        payload, size = self._helper_payload(send)
        command, rest = _agent_command(python, action, args, size)
        payload += rest
        if hold:
            # Our end of its stdin stays open while it works: if we go away (Ctrl-C, a lost
            # link), the helper sees it close and can undo what it started.
            running = proc.start(self.ssh_argv("-T", command=command), stdin=payload,
                                 on_out=parse)  # fmt: skip
            try:
                code, err = running.wait(timeout), running.stderr
            finally:
                running.close()
            if code is None:
                raise Timeout(f"{self.host}: rjn's remote helper did not finish {action} "
                              f"within {timeout:g}s")  # fmt: skip
            if code == 255 and not self.master_alive():
                raise self.lost(err)
        else:
            # Parse as lines arrive only when someone is watching the log; else at the end.
            result = self.run(
                command, input=payload, timeout=timeout, on_out=parse if on_log else None
            )
            if not on_log:
                for line in result.out.splitlines():
                    parse(line)
            code, err = result.code, result.err
        if code == NEED_HELPER and "need" in answer and not size:
            # The host no longer keeps this helper (a cleaned cache): send it, once.
            self._helper_lost()
            return self.agent(action, args, python=python, on_log=on_log, timeout=timeout,
                              hold=hold, send=True)  # fmt: skip
        if code == OLD_PYTHON and "old_python" in answer:
            newer = self._newer_python(python, str(answer["old_python"])[:20])
            return self.agent(action, args, python=newer, on_log=on_log, timeout=timeout,
                              hold=hold, send=send)  # fmt: skip
        if "ok" in answer or "error" in answer:
            self._helper_kept(size)
        if (done := settled()) is not None:
            return done
        if code == 127:
            cannot = next((ln for ln in err.splitlines() if "error while loading" in ln), "")
            raise RemoteError(
                f"{self.host}: the remote python '{python}' "
                + (f"cannot start: {cannot.strip()[:300]}" if cannot else "was not found"),
                hint="install Python 3.8+ on the remote, or set [remote] python to its path",
            )
        tail = " / ".join(err.strip().splitlines()[-5:])
        raise RemoteError(f"{self.host}: rjn's remote helper failed (exit {code}): {tail}")

    @property
    def python(self) -> str:
        """The interpreter rjn's helper runs under: [remote] python (with "uv:VERSION", the one
        uv finds or installs there); else python3, or, where that is older than 3.8, the newest
        python3.X this host was found to have."""
        spec = self.config.python
        if spec and not spec.startswith("uv:"):
            return spec
        try:
            found = self._python_mark(spec).read_text().strip()
        except OSError:
            found = ""
        if found or not spec:
            return found or "python3"
        return self._uv_python(spec.removeprefix("uv:"))

    def _python_mark(self, spec: str | None = None) -> Path:
        """Where the interpreter chosen for this host (and a uv: spec) is remembered."""
        tag = f".{hashlib.sha256(spec.encode()).hexdigest()[:8]}" if spec else ""
        return places.state_dir() / "pythons" / f"{self.control_path.name}{tag}"

    def _uv_python(self, version: str) -> str:
        """The interpreter uv has for `version` on the remote: found (a managed install, or
        one on its PATH), else installed by uv (which downloads it); one exec, remembered."""
        script = ('uv python find "$1" 2>/dev/null || { uv python install "$1" >&2 && '
                  'uv python find "$1"; }')  # fmt: skip
        done = self.run(["sh", "-c", script, "rjn", version], timeout=900)
        found = done.out.strip().splitlines()
        if done.code != 0 or not found or not found[-1].startswith("/"):
            said = " / ".join(done.err.strip().splitlines()[-3:])[:300]
            raise RemoteError(
                f"{self.host}: uv could not find or install Python {version} there"
                + (f": {said}" if said else ""),
                hint="uv must be on the remote's PATH, and to install a Python it must reach "
                "its downloads (GitHub, or a mirror in UV_PYTHON_INSTALL_MIRROR); else set "
                "[remote] python to an interpreter the remote has",
            )
        places.write_private(self._python_mark(f"uv:{version}"), found[-1])
        self.notes.append(f"[remote] python = \"uv:{version}\": rjn uses {found[-1]}")
        return found[-1]

    def _newer_python(self, python: str, version: str) -> str:
        """`python` is too old: the newest python3.X (3.8 or later) on the remote's PATH, if
        [remote] python left the choice to rjn; remembered for this host, and said once."""
        needs = "rjn's helper needs Python 3.8 or newer"
        if self.config.python:
            raise RemoteError(
                f"{self.host}: [remote] python ({python}) is Python {version}; {needs}",
                hint="set [remote] python to a newer interpreter (its path, or python3.11), or "
                "remove the key: rjn then picks the newest python3.X on the remote's PATH",
            )
        # Each is run, not just looked up: a stub or a broken shim on the PATH is no interpreter.
        script = " ".join(f"{name} -c 'import sys; print(sys.executable)' 2>/dev/null && exit 0;"
                          for name in NEWER_PYTHONS) + " exit 1"  # fmt: skip
        found = self.run(["sh", "-c", script], timeout=60).out.strip().splitlines()
        if not found or not found[-1].startswith("/"):
            raise RemoteError(
                f"{self.host}: the remote's python3 is Python {version}, and no python3.8 or "
                f"newer is on its PATH; {needs}",
                hint="load a newer one in your shell's startup file (`module load python/3.11` "
                "on many clusters), install one (RHEL/Rocky 8: dnf install python3.11; Ubuntu "
                "18.04: apt install python3.8), or set [remote] python to its path",
            )
        places.write_private(self._python_mark(), found[-1])
        self.notes.append(
            f"the remote's python3 is Python {version}: rjn uses {found[-1]} (set [remote] "
            "python to choose another)"
        )
        return found[-1]

    def agent_stream(
        self,
        action: str,
        args: dict[str, Any],
        *,
        python: str,
        on_message: Callable[[dict[str, Any]], Any],
    ) -> proc.Background:
        """Start a long-running helper action; its JSON messages go to `on_message`.

        It stops when we close its stdin (or the connection drops).
        """
        payload, size = self._helper_payload(send=False)
        command, rest = _agent_command(python, action, args, size)
        argv = self.ssh_argv("-T", command=command)
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

        return proc.start(argv, stdin=payload, on_out=_messages(message))

    def forward(self, local_port: int, target: str) -> None:
        """Forward 127.0.0.1:local_port to `target` (a remote unix socket or host:port)."""
        spec = f"127.0.0.1:{local_port}:{target}"
        result = proc.run(self.ssh_argv("-O", "forward", "-L", spec), timeout=15)
        if not result.ok:
            raise RjnError(
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


def _serving_at(out: Path, running: Callable[[], bool], deadline: float) -> str | None:
    """Where the serving helper listens, from its first line in `out` (checked: an absolute
    path that can be forwarded); "need" if the remote does not keep the helper; else None
    (it ended, or said nothing in time)."""
    while time.monotonic() < deadline:
        ended = not running()
        seen: list[dict[str, Any]] = []
        parse = _messages(seen.append)  # as every answer of the helper: untrusted
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


# Arguments longer than this go on stdin: Linux allows one argument 128 KiB (MAX_ARG_STRLEN),
# and a push's list of what it expects there is far longer for a large project.
ARGS_INLINE_MAX = 32 * 1024


def _agent_command(
    python: str, action: str, args: dict[str, Any], size: int
) -> tuple[list[str], bytes]:
    """The boot runs the helper kept on the remote, or the one that comes first on stdin
    (`size` bytes), so the remote needs nothing installed beforehand; and what must follow
    the helper on stdin: the arguments, when they are too long for the command line."""
    raw = json.dumps(args)
    if len(raw) <= ARGS_INLINE_MAX:
        return [python, "-c", _BOOT, helper_zipapp()[1], str(size), action, raw], b""
    data = raw.encode()
    return [python, "-c", _BOOT, helper_zipapp()[1], str(size), action, f"@{len(data)}"], data


# The largest message the helper sends: a small file inline (base64) with its name.
MESSAGE_MAX = 4 * 1024 * 1024
# The most a served answer may hold in all (a listing in many messages), and the most files a
# listing may name: what a project of a million files needs, and a bound on memory.
ANSWER_MAX = 1024**3
LISTED_MAX = 2_000_000


class Parts:
    """A long answer's mappings, sent ahead in `part` messages ({"part": {...}, "of": where in
    the answer, as "tree.files"}; helper/common.in_parts): gathered as they come, checked as
    untrusted input, and joined into the answer where `of` says."""

    PLACES = ("tree.files", "placed", "kept", "moved")

    def __init__(self, host: str) -> None:
        self.host = host
        self.found: dict[str, dict[str, Any]] = {}
        self.count = 0

    def add(self, message: dict[str, Any]) -> None:
        part, where = message.get("part"), message.get("of")
        if not isinstance(part, dict) or where not in self.PLACES:
            raise RemoteError(f"{self.host}: rjn's remote helper sent a malformed part")
        self.found.setdefault(where, {}).update(part)
        self.count += len(part)
        if self.count > LISTED_MAX:
            raise RemoteError(
                f"{self.host}: the remote project lists more than {LISTED_MAX:,} files",
                hint="exclude what need not travel with [sync] exclude in remote.toml",
            )

    def joined(self, ok: Any) -> Any:
        """The answer with the parts in it (an answer without parts as it is)."""
        if not isinstance(ok, dict):
            return ok
        ok = dict(ok)
        for where, found in self.found.items():
            *path, key = where.split(".")
            holder = ok
            for step in path:
                holder[step] = dict(holder.get(step) or {})
                holder = holder[step]
            if not isinstance(holder.get(key, {}), dict):
                raise RemoteError(f"{self.host}: rjn's remote helper sent parts of nothing")
            holder[key] = {**found, **holder.get(key, {})}
        return ok


def _messages(handler: Callable[[dict[str, Any]], Any]) -> Callable[[str], None]:
    """Parse the helper's JSON lines as untrusted input. A line that is not JSON (a chatty login
    script) becomes a log; an oversized one, or JSON that is not an object, becomes an error."""

    def line(text: str) -> None:
        if len(text) > MESSAGE_MAX:
            handler(_bad(f"a line of {len(text)} bytes (more than {MESSAGE_MAX})"))
            return
        try:
            message = json.loads(text)
        except ValueError:
            message = {"log": text}
        if isinstance(message, dict):
            handler(message)
        else:
            handler(_bad(f"{type(message).__name__} instead of an object"))

    return line


def helper_error(host: str, error: object) -> RemoteError:
    """The helper's {"error": {"message", "hint"}} as an error for the user, checked as the
    untrusted input it is."""
    try:
        failure = protocol.Failure.parse(error)
    except protocol.Malformed:
        return RemoteError(f"{host}: rjn's remote helper sent a malformed error: {error!r:.200}")
    return RemoteError(f"{host}: {failure.message}", hint=failure.hint)


def _bad(what: str) -> dict[str, Any]:
    return {"error": {"message": f"rjn's remote helper sent {what}", "hint": None}}


def _ssh_quote(value: str) -> str:
    return f'"{value}"' if any(c.isspace() for c in value) else value
