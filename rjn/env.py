"""The remote Python environment: created with uv (pip as fallback), installed only on change."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable
from typing import Any

from rjn import transfer, wheels
from rjn.config import Config
from rjn.helper_client import HelperClient
from rjn.requirements import Requirements
from rjn.shared import protocol
from rjn.shared import tree as shared_tree


def serving(config: Config) -> list[str]:
    """What an environment needs to serve the project: the app and the kernel."""
    return ["jupyterlab" if config.jupyter.app == "lab" else "notebook", "ipykernel"]


def packages(config: Config) -> list[str]:
    """What every rjn environment has besides the project's requirements."""
    # watchdog runs the remote side of `rjn watch` (without it, the watch polls).
    return [*serving(config), "watchdog", *config.jupyter.packages]


def wanted_hash(config: Config, requirements: Requirements) -> str:
    """Changes exactly when what would be installed changes (the remote adds its Python version)."""
    digest = hashlib.sha256(requirements.digest().encode())
    digest.update("\n".join(packages(config)).encode())
    digest.update(f"\nenv={config.remote.env or ''}".encode())
    return digest.hexdigest()


def ensure(
    helper: HelperClient,
    config: Config,
    remote_dir: str,
    wanted: str,
    on_log: Callable[[str], Any] | None = None,
    *,
    requirements_text: str | None = None,
) -> None:
    """Create or update the environment unless the remote already has exactly this one; with
    [remote] env, check the user's own and use it as it is (what it lacks becomes a note).

    `requirements_text` (from requirements_to_send()) travels with the request where the
    project's files may not be on the remote yet (this runs beside the sync)."""
    request = protocol.EnvRequest(
        dir=remote_dir,
        hash=wanted,
        requirements=config.requirements.file,
        packages=packages(config),
        serve=serving(config),
        no_uv=config.remote.installer == "pip",
        env=config.remote.env,
        offline=config.remote.offline,
        requirements_text=requirements_text,
    )
    done = helper.ensure_env(request, on_log)
    if done.need_wheels is not None:
        wheels, staged = _send_wheels(helper, config, remote_dir, done, on_log)
        request = dataclasses.replace(request, wheels=wheels, staged=staged)
        done = helper.ensure_env(request, on_log)
    if done.env and done.missing:
        lacking = " ".join(str(name)[:100] for name in done.missing[:50])
        helper.notes.append(
            f"[remote] env {done.env} lacks {lacking} ({config.requirements.file}); rjn installs "
            f"nothing there: add them with `{done.env}/bin/python -m pip install {lacking}`"
        )


# A requirement that names a package on an index (a version, extras, markers): nothing of the
# project's own files, nor an option (-e ., -r other.txt), a path or a URL.
_FROM_INDEX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\s*(\[[A-Za-z0-9._,\s-]*\])?\s*[^@/:]*")


def requirements_to_send(config: Config) -> str | None:
    """The requirements' text, where they can be installed before the project's files are on
    the remote: each names a package of the index, and the file is small enough to send;
    else None (the install reads the file there, after the sync)."""
    text = _requirements_text(config)
    if text is None or len(text) > REQUIREMENTS_SENT_MAX:
        return None
    lines = (line.split(" #", 1)[0].strip() for line in text.splitlines())
    from_index = all(
        _FROM_INDEX.fullmatch(line) and not line.endswith(_ARCHIVES)
        for line in lines
        if line and not line.startswith("#")
    )
    return text if from_index else None


_ARCHIVES = (".whl", ".zip", ".tar.gz", ".tgz", ".tar.bz2")  # a file of the project's, to pip


# Requirements files longer than this are read on the remote, after the sync (never the case
# for pipreqs' output).
REQUIREMENTS_SENT_MAX = 64 * 1024


def _requirements_text(config: Config) -> str | None:
    try:
        return (config.root / config.requirements.file).read_text()
    except FileNotFoundError:
        return ""  # none: the helper installs the packages alone, as from a missing file
    except (OSError, UnicodeDecodeError):
        return None


def _send_wheels(
    helper: HelperClient,
    config: Config,
    remote_dir: str,
    asked: protocol.EnvDone,
    on_log: Callable[[str], Any] | None,
) -> tuple[list[list[str]], str | None]:
    """The remote cannot reach the package index: the wheels it needs, fetched here for its
    platform, those its wheelhouse lacks sent into a staging folder; their names and hashes,
    and that folder (None: nothing was sent)."""
    say = on_log or (lambda line: None)
    target = wheels.Target.parse(helper.host, asked.need_wheels)
    say(f"{helper.host} cannot reach the package index: fetching wheels here for Python "
        f"{target.python} on {target.machine}")  # fmt: skip
    found = wheels.fetch(helper.host, target, config.root / config.requirements.file,
                         packages(config))  # fmt: skip
    folder = wheels.cache(target)
    hashes = {path.name: shared_tree.file_hash(str(path)) for path in found
              if path.parent == folder}  # fmt: skip
    have = set(asked.have or ())
    missing = sorted(name for name, digest in hashes.items() if digest not in have)
    staged = None
    size = sum((folder / name).stat().st_size for name in missing)
    sent = f"{len(missing)} sent, {size / 1e6:.1f} MB" if missing else "its wheelhouse had them all"
    if missing:
        say(f"sending {len(missing)} of {len(hashes)} wheels to the remote's wheelhouse")
        staged = transfer.Transfer(helper, config).stage(remote_dir, missing, source=folder)
    helper.notes.append(f"{helper.host} cannot reach the package index: its {len(hashes)} wheels "
                        f"came from here ({sent})")  # fmt: skip
    return [[name, digest] for name, digest in sorted(hashes.items())], staged
