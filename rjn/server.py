"""The remote Jupyter server: started detached on a private socket, reused while it lives."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rjn.config import Config
from rjn.helper import common
from rjn.remote import Remote


@dataclass(frozen=True)
class Server:
    """A Jupyter server as the remote helper reports it."""

    pid: int | None
    token: str
    app: str
    sock: str | None = None
    port: int | None = None
    addr: str = "127.0.0.1"
    started: bool = False
    job: str | None = None
    node: str | None = None

    @property
    def via_node(self) -> str | None:
        """The compute node the tunnel must hop to: a job's Jupyter on a socket of the node's."""
        return self.node if self.job and self.sock else None

    @property
    def target(self) -> str:
        """What a tunnel forwards to: the unix socket, or the address and port (on a compute
        node, for a SLURM job)."""
        return self.sock or f"{self.addr}:{self.port}"

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Server | None:
        """A live server from the helper's record, or None if it is not alive."""
        if not record.get("alive"):
            return None
        return cls(
            pid=record.get("pid"),
            token=record["token"],
            app=record.get("app", "lab"),
            sock=record.get("sock"),
            port=record.get("port"),
            addr=record.get("addr", "127.0.0.1"),
            started=bool(record.get("started")),
            job=record.get("job"),
            node=record.get("node"),
        )


def start(
    remote: Remote, config: Config, remote_dir: str, on_log: Callable[[str], Any] | None = None
) -> Server:
    """Start the project's server, or return the one already running; waits until it answers.

    With [slurm] it is a batch job whose main process is Jupyter; the wait covers the queue.
    """
    jupyter = config.jupyter
    slurm = dataclasses.asdict(config.slurm) if config.slurm else None
    record = remote.agent(
        "start",
        {
            "dir": remote_dir,
            "app": jupyter.app,
            "listen": jupyter.listen,
            "idle_timeout": jupyter.idle_timeout,
            "ready_timeout": jupyter.ready_timeout,
            "slurm": slurm,
        },
        python=venv_python(remote_dir),
        on_log=on_log,
        hold=True,
        timeout=jupyter.ready_timeout + 60 + (config.slurm.queue_timeout if config.slurm else 0),
    )
    server = Server.from_record(record)
    assert server is not None  # the helper answers ok only once the server answers
    return server


def stop(remote: Remote, remote_dir: str) -> bool:
    """Shut the project's server down through its API (kernels too); True if one was running."""
    return bool(remote.agent("stop", {"dir": remote_dir}, timeout=60)["stopped"])


def venv_python(remote_dir: str) -> str:
    """The environment's interpreter on the remote (remote_dir is absolute, from the probe);
    the helper's own function, so that the remote layout is spelled in one place."""
    return common.venv_python(remote_dir)


def venv_activate(remote_dir: str) -> str:
    """The environment's activate script on the remote."""
    return common.venv_bin(remote_dir, "activate")
