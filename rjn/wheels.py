"""The offline route: wheels for a remote that cannot reach the package index, resolved and
fetched here for its platform and Python, and sent over the connection into its wheelhouse
(only the ones it does not keep already).

pip resolves and downloads (`pip download --platform ... --only-binary=:all:`): this
machine's pip, or pip run by uv (`uv tool run pip`) where rjn's own environment has none.
uv cannot download wheels for another platform yet (astral-sh/uv#3163).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rjn import proc
from rjn.errors import RemoteError, RjnError
from rjn.shared.record import record


@record
class Target:
    """The remote's platform, as its helper output it (untrusted: checked before any use)."""

    python: str  # 3.11.7
    machine: str  # x86_64, aarch64
    glibc: str  # 2.36

    @classmethod
    def parse(cls, host: str, output: Any) -> Target:
        named = ("python", "machine", "libc", "libc_version")
        if not (isinstance(output, dict) and all(isinstance(output.get(k), str) for k in named)):
            raise RemoteError(f"{host}: rjn's remote helper sent a malformed platform")
        if output.get("system") != "linux" or output["libc"] != "glibc" or output.get(
            "implementation"
        ) != "cpython":
            raise RemoteError(
                f"{host} cannot reach the package index, and rjn brings wheels only for Linux "
                f"with glibc and CPython (the remote: {output.get('system')}, {output['libc']}, "
                f"{output.get('implementation')})",
                hint="give the remote a route to the index (or a mirror: PIP_INDEX_URL there)",
            )
        fields = [output["python"], output["machine"], output["libc_version"]]
        patterns = (r"3\.\d+\.\d+", r"[a-z0-9_]{1,20}", r"\d+\.\d+")
        if not all(re.fullmatch(p, f) for p, f in zip(patterns, fields, strict=True)):
            raise RemoteError(f"{host}: rjn's remote helper sent a malformed platform")
        return cls(*fields)

    @property
    def tags(self) -> list[str]:
        """pip's options for wheels that install there: every manylinux up to the remote's
        glibc (pip counts no older one in by itself), its Python and ABI."""
        major, minor = self.python.split(".")[:2]
        glibc_major, glibc_minor = (int(part) for part in self.glibc.split(".")[:2])
        platforms = [f"manylinux_{glibc_major}_{m}_{self.machine}" for m in
                     range(glibc_minor, 4, -1)] if glibc_major == 2 else []  # fmt: skip
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        platforms += [f"{name}_{self.machine}" for at, name in legacy.items()
                      if glibc_major == 2 and glibc_minor >= at]  # fmt: skip
        options = [option for platform in platforms for option in ("--platform", platform)]
        return [*options, "--python-version", f"{major}.{minor}",
                "--implementation", "cp", "--abi", f"cp{major}{minor}"]  # fmt: skip

    @property
    def key(self) -> str:
        major, minor = self.python.split(".")[:2]
        return f"cp{major}{minor}-manylinux_{self.glibc.replace('.', '_')}_{self.machine}"


def pip() -> list[str]:
    """A pip to run: this Python's, else pip run by uv."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    uv = shutil.which("uv")
    if uv:
        return [uv, "tool", "run", "pip"]
    raise RjnError(
        "the remote cannot reach the package index, and this machine has neither pip nor uv "
        "to fetch wheels for it",
        hint="install uv (or pip) here, or give the remote a route to the index",
    )


def cache(target: Target) -> Path:
    """This machine's wheels for that platform: kept, so the next fresh remote costs less."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    folder = Path(base) / "rjn" / "wheels" / target.key
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fetch(
    host: str, target: Target, requirements: Path | None, packages: Sequence[str]
) -> list[Path]:
    """Every wheel the environment needs on the remote (uv's own too), downloaded here."""
    folder = cache(target)
    argv = [*pip(), "download", "--only-binary=:all:", "--disable-pip-version-check",
            "--no-input", "--dest", str(folder), *target.tags,
            *(["-r", str(requirements)] if requirements and requirements.exists() else []),
            *packages, "uv"]  # fmt: skip
    done = proc.run(argv, timeout=3600)
    output = done.out + "\n" + done.err
    if done.code:
        missing = re.findall(r"No matching distribution found for ([^\s]+)", output)
        if missing:
            raise RjnError(
                f"{host} cannot reach the package index, and {missing[0]} has no wheel for it "
                f"(Python {target.python}, {target.machine}, glibc {target.glibc})",
                hint=f"pin a version of {missing[0]} that has one, build a wheel on a machine "
                "like the remote, or leave it out ([requirements] ignore in remote.toml)",
            )
        tail = " / ".join(output.strip().splitlines()[-3:])
        raise RjnError(f"fetching wheels for {host} failed: {tail[:600]}",
                       hint="run it again; `rjn open -v` shows pip's output")  # fmt: skip
    found = re.findall(r"(?:Saved|File was already downloaded) (\S+\.whl)", output)
    return sorted({Path(name) for name in found}, key=lambda p: p.name)

