"""The remote Python environment: created with uv (pip as fallback), installed only on change."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from rjn.config import Config
from rjn.helper_client import HelperClient
from rjn.requirements import Requirements


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
) -> None:
    """Create or update the environment unless the remote already has exactly this one; with
    [remote] env, check the user's own and use it as it is (what it lacks becomes a note)."""
    done = helper.ensure_env(
        {
            "dir": remote_dir,
            "hash": wanted,
            "requirements": config.requirements.file,
            "packages": packages(config),
            "serve": serving(config),
            "no_uv": config.remote.installer == "pip",
            "env": config.remote.env,
        },
        on_log,
    )
    if done.env and done.missing:
        lacking = " ".join(str(name)[:100] for name in done.missing[:50])
        helper.notes.append(
            f"[remote] env {done.env} lacks {lacking} ({config.requirements.file}); rjn installs "
            f"nothing there: add them with `{done.env}/bin/python -m pip install {lacking}`"
        )
