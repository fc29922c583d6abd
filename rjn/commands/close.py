"""`rjn close`: the tunnel; with --server, Jupyter and the connection too."""

from __future__ import annotations

import time
from pathlib import Path

from rjn import config as config_module
from rjn import server, state, tunnel
from rjn.commands.common import reach
from rjn.config import Config
from rjn.connection import Connection
from rjn.errors import RjnError
from rjn.records import Closed


def close(config: Config, *, stop_server: bool, force: bool = False) -> Closed:
    """Close the tunnel; with stop_server, stop Jupyter and release the master if unused. A
    run or sync under way over that master is named, and stopped only with `force`."""
    root = config.root
    with state.locked(root, config.remote_name):
        saved = state.load(root, config.remote_name)
        helper = reach(config)
        remote = helper.connection
        releases = stop_server and not _master_in_use(remote, config)
        busy = remote.users() if releases else []
        if busy and not force:
            now = time.time()
            doing = "; ".join(f"{use.what} in {use.project} (pid {use.pid}, "
                              f"{now - use.since:.0f} s)" for use in busy)  # fmt: skip
            raise RjnError(
                f"{remote.host}: closing the connection would stop what runs over it: {doing}",
                hint="wait for it to finish, or `rjn close --server --force` to stop it",
            )
        carrier = tunnel.carrier(remote, saved.via_node if saved else None)
        tunnel_closed = False
        if saved and saved.local_port and saved.forward_target:
            tunnel.close(carrier, saved.local_port, saved.forward_target)
            tunnel_closed = True
        stopped = released = False
        if stop_server:
            remote.connect()
            stopped = server.stop(helper, config.remote_dir)
            if carrier is not remote:
                carrier.disconnect()  # the hop to the node: its job is gone
            state.forget(root, config.remote_name)
            if releases:
                if busy:
                    remote.mark_closed()  # what it cuts short says so
                remote.disconnect()
                released = True
        elif saved:
            saved.local_port = None
            state.save(saved)
    return Closed(config.name, tunnel_closed, stopped, released)


def _master_in_use(remote: Connection, config: Config) -> bool:
    """Whether another open project's tunnel rides on this master."""
    mine, me = str(remote.control_path), (str(config.root), config.remote_name)
    return any(
        s.control_path == mine and s.local_port and (s.root, s.remote_name) != me
        for s in state.all_projects()
    )


def close_all(stop_server: bool, force: bool = False) -> tuple[list[Closed], list[str]]:
    """`rjn close` for every open project (each with its own remote.toml and remote); what
    could not be closed is said, and does not stop the others."""
    closed, failed = [], []
    for saved in state.all_projects():
        if not saved.local_port and not stop_server:
            continue
        where = Path(saved.root) / config_module.CONFIG_NAME
        try:
            config = config_module.load(where, remote=saved.remote_name)
            closed.append(close(config, stop_server=stop_server, force=force))
        except RjnError as error:
            failed.append(f"{saved.root}: {error.message}")
    return closed, failed
