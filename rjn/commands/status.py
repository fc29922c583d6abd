"""`rjn status`: the connection, server and tunnel of this project, checked now."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rjn import probe, state, tunnel, twoway, walltime
from rjn.commands.common import away_news, reach
from rjn.config import Config
from rjn.records import Away, Status
from rjn.shared import tree as shared_tree


def status(config: Config) -> Status:
    """Check master, tunnel and server; say what is wrong and how to repair it."""
    saved = state.load(config.root, config.remote_name)
    trash = sum(size for _, size in shared_tree.trash_usage(str(config.root)))
    if saved is None:
        return Status(project=config.name, host=config.remote.host, open=False,
                      trash_bytes=trash)  # fmt: skip
    helper = reach(config)
    remote = helper.connection
    master_pid = remote.master_pid()
    master = master_pid is not None
    carrier = tunnel.carrier(remote, saved.via_node if saved else None)
    alive: bool | None = None
    pid = saved.server_pid
    job = probe.Job()
    machine: dict[str, Any] | None = None
    away: tuple[Away, ...] = ()
    with ThreadPoolExecutor(max_workers=1) as pool:
        # One exec answers the rest (the server, a job's state and time left, the machine);
        # it goes while the tunnel is checked.
        asked = (
            pool.submit(probe.look, helper, config.remote_dir, machine=True, away=True, timeout=30)
            if master
            else None
        )
        # The token is sent only to a port our own master holds.
        port = saved.local_port or 0
        held = bool(port) and tunnel.ours(carrier, port, master_pid if carrier is remote else None)
        answered = held and bool(saved.token) and tunnel.answer_status(port, saved.token or "")
        tunnel_ok = answered == 200
        squatted = bool(port) and not held and not tunnel.is_free(port)
        if tunnel_ok:
            alive = True
        if asked:
            info = asked.result()
            machine, job = info.machine, info.job
            away = away_news(config, info.away)
            alive = info.server is not None
            pid = info.server.pid if info.server else None
    conflicts = twoway.conflicts(config)
    problems = _problems(config, saved, job, host=remote.host, master=master, alive=alive,
                         squatted=squatted, tunnel_ok=tunnel_ok, conflicts=conflicts)  # fmt: skip
    return Status(
        project=config.name,
        host=remote.host,
        open=bool(saved.local_port),
        master=master,
        tunnel=tunnel_ok,
        server=alive,
        remote_dir=saved.remote_dir,
        port=saved.local_port,
        url=saved.url,
        tokened_url=saved.tokened_url() if tunnel_ok else None,
        server_pid=pid,
        problems=problems,
        job=job.id,
        job_state=job.state,
        node=job.node,
        time_left=job.time_left,
        time_left_s=walltime.seconds(job.time_left or ""),
        next_job=job.next,
        next_job_state=job.next_state,
        conflicts=conflicts,
        remote_name=config.remote_name,
        machine=machine,
        trash_bytes=trash,
        away=away,
    )


def _problems(
    config: Config,
    saved: state.ProjectState,
    job: probe.Job,
    *,
    host: str,
    master: bool,
    alive: bool | None,
    squatted: bool,
    tunnel_ok: bool,
    conflicts: dict[str, str],
) -> tuple[str, ...]:
    """What is wrong, each with what fixes it: the job, the link, the server, the tunnel (the
    first of those three that fails: the others depend on it), and every conflict."""
    problems = []
    if job.id and job.ended == "idle":
        idle = f"{config.jupyter.idle_timeout:g} min" if config.jupyter.idle_timeout else "long"
        problems.append(f"SLURM job {job.id} ended: idle for {idle} ([jupyter] idle_timeout); "
                        "`rjn open` starts a new one")  # fmt: skip
    elif job.id and job.state not in ("RUNNING", None):
        problems.append(f"SLURM job {job.id} is {job.state}")
    if not master:
        problems.append(f"no SSH master to {host}: `rjn open` reconnects")
    elif alive is False:
        problems.append("the Jupyter server is not running: `rjn open` starts it")
    elif squatted:
        problems.append(
            f"local port {saved.local_port} is taken by another process (not rjn's tunnel): "
            "`rjn open` moves to another port"
        )
    elif not tunnel_ok and saved.local_port:
        problems.append("the tunnel does not answer: `rjn open` repairs it")
    problems += [
        f"{rel} changed on both sides: the remote version is {copy} (delete one to resolve)"
        for rel, copy in conflicts.items()
    ]
    return tuple(problems)
