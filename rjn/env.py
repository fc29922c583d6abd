"""The remote Python environment: created with uv (pip as fallback), installed only on change."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from rjn.config import Config
from rjn.helper_client import HelperClient
from rjn.requirements import Requirements


def packages(config: Config) -> list[str]:
    """What every rjn environment has besides the project's requirements."""
    app = "jupyterlab" if config.jupyter.app == "lab" else "notebook"
    # watchdog runs the remote side of `rjn watch`.
    return [app, "ipykernel", "watchdog", *config.jupyter.packages]


def wanted_hash(config: Config, requirements: Requirements) -> str:
    """Changes exactly when what would be installed changes (the remote adds its Python version)."""
    digest = hashlib.sha256(requirements.digest().encode())
    digest.update("\n".join(packages(config)).encode())
    return digest.hexdigest()


def ensure(
    helper: HelperClient,
    config: Config,
    remote_dir: str,
    wanted: str,
    on_log: Callable[[str], Any] | None = None,
) -> None:
    """Create or update the environment unless the remote already has exactly this one."""
    helper.ensure_env(
        {
            "dir": remote_dir,
            "hash": wanted,
            "requirements": config.requirements.file,
            "packages": packages(config),
            "no_uv": config.remote.installer == "pip",
        },
        on_log,
    )
