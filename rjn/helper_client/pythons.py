"""Which Python runs rjn's helper on a remote: [remote] python, one uv finds or installs
there, python3, or, where that is too old, the newest python3.X the remote has (found once,
remembered per host)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from rjn import places
from rjn.connection import Connection
from rjn.errors import RemoteError
from rjn.helper_client.boot import SETUP_FAILED, setup_failed, with_setup

# Tried, newest first, where the remote's python3 is too old (RHEL 8's is 3.6).
NEWER_PYTHONS = [f"python3.{minor}" for minor in range(14, 7, -1)]


class Pythons:
    """The helper's interpreter on one connection; what rjn chose for the user goes to
    `notes`, to be said once."""

    def __init__(self, connection: Connection, notes: list[str]) -> None:
        self.connection, self.config, self.host = connection, connection.config, connection.host
        self.notes = notes

    def _remote(self, argv: list[str]) -> list[str]:
        return with_setup(self.config.setup, argv)

    @property
    def current(self) -> str:
        """The interpreter rjn's helper runs under: [remote] python (with "uv:VERSION", the one
        uv finds or installs there); else python3, or, where that is older than 3.8, the newest
        python3.X this host was found to have."""
        spec = self.config.python
        if spec and not spec.startswith("uv:"):
            return spec
        try:
            found = self._mark(spec).read_text().strip()
        except OSError:
            found = ""
        if found or not spec:
            return found or "python3"
        return self._from_uv(spec.removeprefix("uv:"))

    def _mark(self, spec: str | None = None) -> Path:
        """Where the interpreter chosen for this host (and a uv: spec, and [remote] setup:
        a module's python3 is another) is remembered."""
        key = "\n".join([spec or "", *self.config.setup])
        tag = f".{hashlib.sha256(key.encode()).hexdigest()[:8]}" if key.strip() else ""
        return places.state_dir() / "pythons" / f"{self.connection.control_path.name}{tag}"

    def _from_uv(self, version: str) -> str:
        """The interpreter uv has for `version` on the remote: found (a managed install, or
        one on its PATH), else installed by uv (which downloads it); one exec, remembered."""
        script = ('uv python find "$1" 2>/dev/null || { uv python install "$1" >&2 && '
                  'uv python find "$1"; }')  # fmt: skip
        done = self.connection.run(self._remote(["sh", "-c", script, "rjn", version]), timeout=900)
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
        places.write_private(self._mark(f"uv:{version}"), found[-1])
        self.notes.append(f'[remote] python = "uv:{version}": rjn uses {found[-1]}')
        return found[-1]

    def newer(self, python: str, version: str) -> str:
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
        tried = self.connection.run(self._remote(["sh", "-c", script]), timeout=60)
        if tried.code == SETUP_FAILED:
            raise setup_failed(self.host, tried.err)
        found = tried.out.strip().splitlines()
        if not found or not found[-1].startswith("/"):
            raise RemoteError(
                f"{self.host}: the remote's python3 is Python {version}, and no python3.8 or "
                f"newer is on its PATH; {needs}",
                hint="load a newer one in your shell's startup file (`module load python/3.11` "
                "on many clusters), install one (RHEL/Rocky 8: dnf install python3.11; Ubuntu "
                "18.04: apt install python3.8), or set [remote] python to its path",
            )
        places.write_private(self._mark(), found[-1])
        self.notes.append(
            f"the remote's python3 is Python {version}: rjn uses {found[-1]} (set [remote] "
            "python to choose another)"
        )
        return found[-1]
