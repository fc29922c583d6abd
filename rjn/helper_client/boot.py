"""How the helper starts on the remote: the zipapp (rjn/helper with rjn/shared, kept there
under its content hash) and the command that boots it, after [remote] setup."""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Sequence
from functools import cache
from typing import Any

from rjn.errors import RemoteError

# What the helper's zipapp holds: these packages of rjn, under a package `rjn` of their own
# (an empty __init__), so that the helper's relative imports of the shared modules work there
# as they do here.
ZIPPED = ("helper", "shared")
# Exit code of the boot when the helper it is told to run is not in the remote's cache.
NEED_HELPER = 97
# Exit code of the boot when the interpreter is older than the helper needs (3.8).
OLD_PYTHON = 96
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


def setup_failed(host: str, err: str) -> RemoteError:
    last = [line for line in err.splitlines() if line.strip()][-6:]
    return RemoteError(
        f"{host}: " + (" / ".join(last)[:1000] or "[remote] setup failed"),
        hint="run the line in a shell there (`rjn shell`) to see why; `module avail` lists "
        "the modules the cluster has",
    )


# Arguments longer than this go on stdin: Linux allows one argument 128 KiB (MAX_ARG_STRLEN),
# and a push's list of what it expects there is far longer for a large project.
ARGS_INLINE_MAX = 32 * 1024


def boot_command(
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


