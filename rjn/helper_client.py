"""The helper client: rjn's remote helper (rjn/helper), delivered once and run over the
connection, one typed method per action, each answer read back as the untrusted
`protocol` record it must be."""

from __future__ import annotations

import hashlib
import itertools
import json
import shlex
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from rjn import places, portable, proc
from rjn.connection import Connection
from rjn.errors import RemoteError, Timeout
from rjn.shared import protocol

R = TypeVar("R", bound=protocol.Record)

# What the helper's zipapp holds: these packages of rjn, under a package `rjn` of their own
# (an empty __init__), so that the helper's relative imports of the shared modules work there
# as they do here.
ZIPPED = ("helper", "shared")
# Exit code of the boot when the helper it is told to run is not in the remote's cache.
NEED_HELPER = 97
# Exit code of the boot when the interpreter is older than the helper needs (3.8).
OLD_PYTHON = 96
# Tried, newest first, where the remote's python3 is too old (RHEL 8's is 3.6).
NEWER_PYTHONS = [f"python3.{minor}" for minor in range(14, 7, -1)]
# Exit code of a command whose [remote] setup line failed.
SETUP_FAILED = 95

# Before [remote] setup: the module system as a login shell has it (a command over ssh runs
# no login scripts), unless `module` is defined already: the first init script found of
# Lmod's and Environment Modules'.
_MODULES = """\
if ! type module >/dev/null 2>&1; then
  for init in /etc/profile.d/lmod.sh /etc/profile.d/z00_lmod.sh /etc/profile.d/modules.sh \\
      "${LMOD_PKG:-/usr/share/lmod/lmod}/init/bash" /usr/share/Modules/init/bash \\
      /usr/share/modules/init/bash; do
    if [ -r "$init" ]; then . "$init" >/dev/null 2>&1; break; fi
  done
fi
"""


def with_setup(lines: Sequence[str], argv: Sequence[str]) -> list[str]:
    """`argv` run after the [remote] setup lines, in one bash (so `module load` changes its
    environment, and every process the command starts inherits it). Their output goes to
    stderr (stdout carries the helper's answer); the first that fails stops the command with
    SETUP_FAILED, naming itself."""
    if not lines:
        return list(argv)
    script = setup_script(lines) + '\nexec "$@"'
    return ["bash", "--noprofile", "--norc", "-c", script, "rjn-setup", *argv]


def setup_script(lines: Sequence[str]) -> str:
    """The [remote] setup lines as bash runs them (a SLURM job's script starts with them too).
    Each runs in this shell (so `module load` changes it); one that fails, or ends the shell
    itself (`exit`), ends it with SETUP_FAILED and its own line said."""
    steps = [_MODULES, f"trap 'echo \"$rjn_said\" >&2; exit {SETUP_FAILED}' EXIT"]
    for number, line in enumerate(lines, 1):
        steps.append("rjn_said=" + shlex.quote(f"rjn: [remote] setup line {number} failed: {line}"))
        steps.append(f"{{ {line}\n}} >&2 || exit {SETUP_FAILED}")
    steps.append("trap - EXIT")
    return "\n".join(steps)


@cache
def helper_zipapp() -> tuple[bytes, str]:
    """The remote helper (rjn/helper, with rjn/shared) as a zipapp, built the same way every
    time (sorted, fixed times), and its content hash, which names it in the remote's cache."""
    import io  # built once a command, and only by those that reach the remote
    import zipfile
    from importlib import resources

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:

        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            archive.writestr(info, data)

        add("rjn/__init__.py", b"")
        for package in ZIPPED:
            modules = resources.files(f"rjn.{package}")
            for name in sorted(p.name for p in modules.iterdir() if p.name.endswith(".py")):
                add(f"rjn/{package}/{name}", (modules / name).read_bytes())
        add("__main__.py", b"import sys\nfrom rjn.helper.main import main\n"
                           b"sys.exit(main(sys.argv))\n")  # fmt: skip
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
from rjn.helper.main import main
sys.exit(main(sys.argv))
"""


class HelperClient:
    """rjn's helper on one connection: sent once and kept there, served for quick questions,
    run by exec otherwise."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self.host = connection.host
        self.config = connection.config
        # What the user should hear once (a choice rjn made for them), for the use case to say.
        self.notes: list[str] = []

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
            command = self.remote(_agent_command(self.python, "serve", {}, size)[0])
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
        command, rest = _agent_command(python, action, args, size)
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
            newer = self._newer_python(python, str(answer.fields["old_python"])[:20])
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
            return _setup_failed(self.host, err)
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
        """Where the interpreter chosen for this host (and a uv: spec, and [remote] setup:
        a module's python3 is another) is remembered."""
        key = "\n".join([spec or "", *self.config.setup])
        tag = f".{hashlib.sha256(key.encode()).hexdigest()[:8]}" if key.strip() else ""
        return places.state_dir() / "pythons" / f"{self.connection.control_path.name}{tag}"

    def _uv_python(self, version: str) -> str:
        """The interpreter uv has for `version` on the remote: found (a managed install, or
        one on its PATH), else installed by uv (which downloads it); one exec, remembered."""
        script = ('uv python find "$1" 2>/dev/null || { uv python install "$1" >&2 && '
                  'uv python find "$1"; }')  # fmt: skip
        done = self.connection.run(self.remote(["sh", "-c", script, "rjn", version]), timeout=900)
        found = done.out.strip().splitlines()
        if done.code != 0 or not found or not found[-1].startswith("/"):
            why = " / ".join(done.err.strip().splitlines()[-3:])[:300]
            raise RemoteError(
                f"{self.host}: uv could not find or install Python {version} there"
                + (f": {why}" if why else ""),
                hint="uv must be on the remote's PATH, and to install a Python it must reach "
                "its downloads (GitHub, or a mirror in UV_PYTHON_INSTALL_MIRROR); else set "
                "[remote] python to an interpreter the remote has",
            )
        places.write_private(self._python_mark(f"uv:{version}"), found[-1])
        self.notes.append(f'[remote] python = "uv:{version}": rjn uses {found[-1]}')
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
        tried = self.connection.run(self.remote(["sh", "-c", script]), timeout=60)
        if tried.code == SETUP_FAILED:
            raise _setup_failed(self.host, tried.err)
        found = tried.out.strip().splitlines()
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
        command, rest = _agent_command(python, request.action, request.to_json(), size)
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

        return self.connection.start(command, stdin=payload, on_out=_messages(message))


def _setup_failed(host: str, err: str) -> RemoteError:
    last = [line for line in err.splitlines() if line.strip()][-6:]
    return RemoteError(
        f"{host}: " + (" / ".join(last)[:1000] or "[remote] setup failed"),
        hint="run the line in a shell there (`rjn shell`) to see why; `module avail` lists "
        "the modules the cluster has",
    )


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


# The largest message the helper sends, and the largest blob after one (a result file inline,
# watch.INLINE_MAX); below proc.MAX_LINE.
MESSAGE_MAX = 12 * 1024 * 1024
# The most a served answer may hold in all (a listing in many messages), and the most files a
# listing may name: what a project of a million files needs, and a bound on memory.
ANSWER_MAX = 1024**3
LISTED_MAX = 2_000_000


class Answer:
    """One call's messages, taken line by line as the untrusted input they are: logs and data
    handed on as they come, parts gathered, and the answer: its ok, or its error raised."""

    KINDS = ("ok", "error", "need", "old_python")

    def __init__(
        self,
        host: str,
        on_log: Callable[[str], Any] | None = None,
        on_data: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.host, self.on_log, self.on_data = host, on_log, on_data
        self.fields: dict[str, Any] = {}
        self.parts = Parts(host)
        self.line = _messages(self._take)

    def _take(self, message: dict[str, Any]) -> None:
        if "log" in message and self.on_log:
            self.on_log(str(message["log"]))
        if "part" in message:
            self.parts.add(message)
        self.fields.update({k: v for k, v in message.items() if k in self.KINDS})
        if self.on_data and not message.keys() & {*self.KINDS, "log", "part"}:
            self.on_data(message)

    def failed(self) -> bool:
        """Whether an error came (the helper's, or a malformed line): nothing more is needed."""
        return "error" in self.fields

    def settled(self) -> dict[str, Any] | None:
        """The helper's answer, once it came: its ok, or its error raised."""
        if "error" in self.fields:
            raise helper_error(self.host, self.fields["error"])
        ok: dict[str, Any] | None = self.fields.get("ok")
        return self.parts.joined(ok) if ok is not None else None


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


def _messages(handler: Callable[[dict[str, Any]], Any]) -> Callable[[str], proc.Blob | None]:
    """Parse the helper's JSON lines as untrusted input. A line that is not JSON (a chatty login
    script) becomes a log; an oversized one, or JSON that is not an object, becomes an error.
    A message with "blob": N is followed by N raw bytes (a file's content), handed on with it
    as its "blob" (bytes, which no JSON line can forge)."""

    def line(text: str) -> proc.Blob | None:
        if len(text) > MESSAGE_MAX:
            handler(_bad(f"a line of {len(text)} bytes (more than {MESSAGE_MAX})"))
            return None
        try:
            message = json.loads(text)
        except ValueError:
            message = {"log": text}
        if not isinstance(message, dict):
            handler(_bad(f"{type(message).__name__} instead of an object"))
        elif "blob" not in message:
            handler(message)
        elif type(size := message["blob"]) is int and 0 <= size <= MESSAGE_MAX:
            return proc.Blob(size, lambda data: handler({**message, "blob": data}))
        else:
            handler(_bad(f"a blob of {str(size)[:20]} bytes (at most {MESSAGE_MAX})"))
        return None

    return line


def read(host: str, record: type[R], what: str, answer: object) -> R:
    """An answer of the helper as its record; a malformed one is a RemoteError naming the
    field (what a remote sends is untrusted)."""
    try:
        return record.parse(answer)
    except protocol.Malformed as bad:
        raise RemoteError(
            f"{host}: rjn's remote helper sent a malformed {what} ({bad.field})"
        ) from None


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
