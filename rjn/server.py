"""The remote Jupyter server: started detached on a private socket, reused while it lives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rjn.config import Config
from rjn.remote import Remote


@dataclass(frozen=True)
class Server:
    """A Jupyter server as the remote helper reports it."""

    pid: int
    token: str
    app: str
    sock: str | None = None
    port: int | None = None
    started: bool = False

    @property
    def target(self) -> str:
        """What a tunnel forwards to: the unix socket, or the loopback port."""
        return self.sock or f"127.0.0.1:{self.port}"

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Server | None:
        """A live server from the helper's record, or None if it is not alive."""
        if not record.get("alive"):
            return None
        return cls(
            pid=record["pid"],
            token=record["token"],
            app=record.get("app", "lab"),
            sock=record.get("sock"),
            port=record.get("port"),
            started=bool(record.get("started")),
        )


def start(remote: Remote, config: Config, remote_dir: str) -> Server:
    """Start the project's server, or return the one already running; waits until it answers."""
    jupyter = config.jupyter
    record = remote.agent(
        "start",
        {
            "dir": remote_dir,
            "app": jupyter.app,
            "listen": jupyter.listen,
            "idle_timeout": jupyter.idle_timeout,
            "ready_timeout": jupyter.ready_timeout,
        },
        python=venv_python(remote_dir),
        timeout=jupyter.ready_timeout + 60,
    )
    server = Server.from_record(record)
    assert server is not None  # the helper answers ok only once the server answers
    return server


def stop(remote: Remote, remote_dir: str) -> bool:
    """Shut the project's server down through its API (kernels too); True if one was running."""
    return bool(remote.agent("stop", {"dir": remote_dir}, timeout=60)["stopped"])


def venv_python(remote_dir: str) -> str:
    """The environment's interpreter on the remote (remote_dir is absolute, from the probe)."""
    return f"{remote_dir}/.rjn/venv/bin/python"
