"""`rjn sync` and `rjn watch`: both ways now, and results home as they are written."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rjn import probe, requirements, state, transfer, twoway, watch
from rjn.commands.common import Reporter, bring_home, connect, reach, remote_dir
from rjn.config import Config
from rjn.errors import RjnError
from rjn.helper_client import HelperClient
from rjn.records import Ready, Synced


def sync_now(
    config: Config, report: Reporter, *, push: bool = False, allow_deletions: bool = False
) -> Synced:
    """Both ways, now: results and remote edits come home, local edits go out, a file changed
    on both sides keeps both versions. With push, only send: nothing local changes."""
    helper = reach(config)
    with helper.connection.in_use("rjn sync", config.root):
        return _sync(helper, config, report, push, allow_deletions)


def _sync(
    helper: HelperClient, config: Config, report: Reporter, push: bool, allow_deletions: bool
) -> Synced:
    remote = helper.connection
    connect(remote, report)
    where = remote_dir(config, helper)
    if push:
        with report.step("Writing requirements"):
            requirements.write(config)
        with report.step(f"Sending to {remote.host}:{where}"):
            tree = twoway.run(helper, config, where, direction="push",
                              allow_deletions=allow_deletions,
                              progress=report.progress)  # fmt: skip
        return Synced(config.name, "push", tree=tree, notes=tuple(helper.notes))
    step = report.step(f"Syncing with {remote.host}:{where}")
    with step, ThreadPoolExecutor(max_workers=1) as pool:
        here = twoway.scan_here(config, pool)  # while the remote looks at its side
        # One look lists both (the tree, and the results): what has not changed costs nothing.
        seen = probe.look(helper, where, tree=twoway.tree_query(config),
                          results=config.sync.results, timeout=300)  # fmt: skip
        pulled, tree = bring_home(helper, config, where, seen.results, seen.tree, report,
                                   allow_deletions=allow_deletions, here_scan=here)  # fmt: skip
    return Synced(config.name, "both", files=tuple(pulled), tree=tree, notes=tuple(helper.notes))


def watch_results(
    config: Config,
    on_ready: Callable[[Ready], Any],
    on_pulled: Callable[[transfer.Pulled, float], Any],
    on_link: Callable[[str], Any] = lambda message: None,
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Pull each new or changed result file as soon as it is complete, until Ctrl-C; a dropped
    link is repaired (see watch.follow)."""
    saved = state.load(config.root, config.remote_name)
    if saved is None or not saved.remote_dir:
        raise RjnError(f"{config.name} is not open", hint="run `rjn open` first")
    watch.follow(reach(config), config, saved, on_ready, on_pulled, on_link, stop)
