"""`rjn open`: sync, start or reuse Jupyter, tunnel it."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from rjn import server, state, tunnel, walltime
from rjn.commands.common import Reporter, away_news, connect, prepare, reach
from rjn.config import Config
from rjn.errors import RjnError
from rjn.helper_client import HelperClient
from rjn.records import Opened


def open_project(config: Config, report: Reporter) -> Opened:
    """Connect, write requirements, push, install, start Jupyter, tunnel it; reuse what lives."""
    root = config.root
    with state.locked(root, config.remote_name):
        previous = state.load(root, config.remote_name)
        with ThreadPoolExecutor(max_workers=1) as pool:
            # The last open's tunnel is tried while the remote is looked at: both at once.
            answered = pool.submit(_tunnel_answers, config, previous)
            ready = prepare(config, report, previous, "rjn open")
            still_up = answered.result()
        helper, remote_dir, reqs = ready.helper, ready.remote_dir, ready.requirements
        remote = helper.connection
        notes = list(helper.notes)
        live = ready.probe.server
        if live and ready.env_installed:
            notes.append("the environment changed: restart running kernels to use it")
        if live is None:
            where = " as a SLURM job" if config.slurm else ""
            with report.step(f"Starting Jupyter {config.jupyter.app}{where}"):
                live = server.start(helper, config, remote_dir, on_log=report.log)
        port = _tunnel(config, report, helper, remote_dir, live, previous, still_up)
        saved = state.ProjectState(
            root=str(root),
            host=remote.host,
            control_path=str(remote.control_path),
            remote_dir=remote_dir,
            remote_name=config.remote_name,
            opened_at=previous.opened_at if previous and previous.opened_at else time.time(),
            job=live.job,
            node=live.node,
            local_port=port,
            forward_target=live.target,
            token=live.token,
            server_pid=live.pid,
            app=live.app,
            env_hash=ready.env_hash,
            sources_hash=ready.sources_hash,
            via_node=live.via_node,
            job_ends_at=walltime.ends_at(live.time_left),
        )
        state.save(saved)
    return Opened(
        project=config.name,
        host=remote.host,
        remote_dir=remote_dir,
        port=port,
        url=saved.url or "",
        tokened_url=saved.tokened_url() or "",
        logged_in=ready.logged_in,
        synced=ready.synced,
        env_installed=ready.env_installed,
        server_started=live.started,
        requirements=reqs.lines,
        requirements_generated=reqs.generated,
        unreadable=reqs.skipped_files,
        notes=tuple(notes),
        away=away_news(config, ready.probe.away),
    )


def _tunnel(
    config: Config,
    report: Reporter,
    helper: HelperClient,
    remote_dir: str,
    live: server.Server,
    previous: state.ProjectState | None,
    still_up: bool,
) -> int:
    """The tunnel to the server, on the last open's local port where it can be: kept as it is
    where it still answers for this server. A job this open submitted is cancelled if the
    tunnel cannot be made (it must not burn its allocation unused)."""
    try:
        carrier = helper.connection
        if live.via_node:
            carrier = carrier.to_node(live.via_node)
            connect(carrier, report)
        with report.step("Opening the tunnel"):
            return tunnel.ensure(
                carrier,
                config,
                live.target,
                live.token,
                previous.local_port if previous else None,
                previous.forward_target if previous else None,
                known_good=still_up
                and previous is not None
                and (
                    (live.token, live.target, live.via_node)
                    == (previous.token, previous.forward_target, previous.via_node)
                ),
                # Through a hop, the tunnel is the first to ask Jupyter: give it its time.
                wait=config.jupyter.ready_timeout if live.via_node else 15,
            )
    except BaseException:
        if live.started and live.job:
            with report.step(f"Cancelling SLURM job {live.job}"):
                server.stop(helper, remote_dir)
        raise


def _tunnel_answers(config: Config, saved: state.ProjectState | None) -> bool:
    """Whether the project's last tunnel is ours and its server answers with the saved token
    (sent only to a port our own master holds)."""
    if not (saved and saved.local_port and saved.token):
        return False
    try:
        carrier = tunnel.carrier(reach(config).connection, saved.via_node)
        return tunnel.ours(carrier, saved.local_port) and (
            tunnel.answer_status(saved.local_port, saved.token) == 200
        )
    except RjnError:
        return False

