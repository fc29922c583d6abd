"""`rjn renew`: queue the SLURM job that takes over when the project's job ends."""

from __future__ import annotations

from rjn import server, state
from rjn.commands.common import reach
from rjn.config import Config
from rjn.errors import ConfigError, RjnError
from rjn.records import Renewal


def renew(config: Config) -> Renewal:
    """Queue a follow-on job (once: a second call finds the one queued). It starts when the
    running job ends, with the same token; the watch moves the tunnel to it on the same local
    port, so the open browser tab works again (kernels start afresh)."""
    if config.slurm is None:
        raise ConfigError(
            f"{config.path}: no [slurm] table: only a SLURM job has a time limit to renew"
        )
    saved = state.load(config.root, config.remote_name)
    if saved is None or not saved.job:
        raise RjnError(
            f"{config.name} has no SLURM job open from here",
            hint="`rjn open` starts one",
        )
    helper = reach(config)
    helper.connection.connect()
    done = server.renew(helper, config, saved.remote_dir)
    return Renewal(
        project=config.name,
        job=done.job,
        next_job=done.next,
        next_job_state=done.next_state,
        submitted=done.submitted,
        url=saved.url,
    )
