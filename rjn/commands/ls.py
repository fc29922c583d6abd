"""`rjn ls`: every open project on this machine, each checked live."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rjn import state, transfer, tunnel
from rjn.connection import master_pid_at
from rjn.records import Listed


def list_open(show_token: bool = False) -> list[Listed]:
    """Every open project on this machine, each checked live (in parallel: one local check of
    its master and one request through its tunnel, no remote command)."""
    records = [s for s in state.all_projects() if s.local_port]

    def check(saved: state.ProjectState) -> Listed:
        pid = master_pid_at(saved.control_path) or _holder_pid(saved.control_path)
        port = saved.local_port or 0
        held = tunnel.held(port, pid)
        up = held and tunnel.answer_status(port, saved.token or "") == 200
        root = Path(saved.root)
        return Listed(
            project=root.name,
            root=saved.root,
            remote=saved.remote_name or "remote",
            host=saved.host,
            port=saved.local_port,
            url=saved.url,
            tokened_url=saved.tokened_url() if show_token and up else None,
            connection=pid is not None,
            tunnel=up,
            job=saved.job,
            node=saved.node,
            uptime=time.time() - saved.opened_at if saved.opened_at else None,
            time_left_s=max(0, int(saved.job_ends_at - time.time())) if saved.job_ends_at else None,
            last_pulled=transfer.last_pulled(root, saved.remote_name),
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(check, records))


def _holder_pid(control_path: str) -> int | None:
    """Single mode: the process that holds the host's session."""
    from rjn.connection.single import held, hold_file

    found = held(hold_file(control_path)) if hold_file(control_path).exists() else None
    return found.pid if found else None
