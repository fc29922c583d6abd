"""The `rjn` command line: parse, call a use case, render; errors are caught here and only here.

Use cases and rendering are imported when a command runs: `rjn --help` loads neither (nor
what they load: rich's progress, sh, pipreqs).

Annotations here are not postponed (no `from __future__ import annotations`): typer reads every
command's parameters at each call, and would otherwise eval each annotation's string again
at every command's start-up (`nox -s bench` measures it).
"""

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from rjn import __version__
from rjn.errors import RjnError

if TYPE_CHECKING:
    from rjn import config

cli = typer.Typer(
    name="rjn",
    help="Work in a Jupyter notebook on a remote machine as easily as on your laptop.",
    no_args_is_help=True,
    # --install-completion / --show-completion: bash, zsh, fish and PowerShell, typer's own.
    add_completion=True,
    pretty_exceptions_enable=False,
    # Plain help: rich's help formatter would import rich on every `--help`.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@dataclass
class Globals:
    """The options given before the command (`rjn --host box open`)."""

    config: Path | None = None
    debug: bool = False
    host: str | None = None
    ssh_config: str | None = None
    remote_dir: str | None = None
    remote_name: str | None = None


_globals = Globals()

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="remote.toml to use (default: the nearest one upward).",
        dir_okay=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _remote_names(incomplete: str) -> list[str]:
    """The named remotes of the nearest remote.toml, for shell completion (silent on any
    trouble: a completion must never print an error)."""
    import tomllib

    try:
        from rjn.config import find

        with open(find(Path.cwd()), "rb") as handle:
            names = tomllib.load(handle).get("remotes") or {}
    except Exception:
        return []
    return sorted(n for n in names if isinstance(n, str) and n.startswith(incomplete))


def _version(value: bool) -> None:
    if value:
        print(f"rjn {__version__}")
        raise typer.Exit()


@cli.callback()
def _main(
    config_path: ConfigOption = None,
    host: Annotated[
        str | None,
        typer.Option("--host", "-H", help="Use this ssh host or alias, not remote.toml's."),
    ] = None,
    ssh_config: Annotated[
        str | None, typer.Option("--ssh-config", help="Use this ssh config file (ssh -F).")
    ] = None,
    remote_dir: Annotated[
        str | None, typer.Option("--remote-dir", help="Use this remote project folder.")
    ] = None,
    remote_name: Annotated[
        str | None,
        typer.Option(
            "--remote", "-r", help="Use this named remote ([remotes.NAME]).", show_default=False,
            autocompletion=_remote_names,
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True,
                     help="Show the version."),
    ] = False,
) -> None:
    """rjn opens a project's notebooks on a remote Jupyter server, tunnelled to your browser."""
    global _globals
    _globals = Globals(config_path, debug, host, ssh_config, remote_dir, remote_name)


F = TypeVar("F", bound=Callable[..., Any])


# What `rjn run`, `shell` and `logs` exit with when rjn itself fails: their own exit code is
# the remote command's, so rjn's 2-5 could be taken for it (ssh reserves 255 the same way).
OWN_FAILURE = 255


def command(
    name: str | None = None, passes_code: bool = False, **settings: Any
) -> Callable[[F], F]:
    """Register a command whose expected errors are rendered once, here, without a traceback.
    A command that `passes_code` exits with a remote command's code, and OWN_FAILURE when rjn
    fails."""

    def register(function: F) -> F:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except RjnError as error:
                if _globals.debug:
                    raise
                from rjn import ui

                if kwargs.get("as_json"):  # a script asked for JSON: its failures are JSON too
                    ui.print_json({"error": {"code": error.exit_code, "message": error.message,
                                             "hint": error.hint}})  # fmt: skip
                else:
                    ui.show_error(error)
                raise typer.Exit(OWN_FAILURE if passes_code else error.exit_code) from None
            except KeyboardInterrupt:
                from rjn import ui

                ui.interrupted()
                raise typer.Exit(130) from None

        cli.command(name, **settings)(run)
        return function

    return register


def _config() -> "config.Config":
    from rjn import config

    given = _globals
    overrides = {"remote": {"host": given.host, "ssh_config": given.ssh_config,
                            "dir": given.remote_dir}}  # fmt: skip
    where = given.config or config.find(Path.cwd())
    return config.load(where, overrides, given.remote_name)


@command("open")
def open_(
    remote: Annotated[
        str | None,
        typer.Argument(
            help="A named remote ([remotes.NAME]); default: the file's default.",
            show_default=False, autocompletion=_remote_names,
        ),
    ] = None,
    browser: Annotated[
        bool, typer.Option("--browser/--no-browser", help="Open the browser.")
    ] = True,
    watch: Annotated[
        bool, typer.Option("--watch/--no-watch", help="Keep pulling new figures until Ctrl-C.")
    ] = True,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show installer output.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Sync, start or reuse Jupyter there, and tunnel it.

    Then open the browser on the tokened URL and pull each new figure home until Ctrl-C; the
    server and tunnel stay up after it. REMOTE: a named remote ([remotes.NAME]) instead of
    the file's default.
    """
    from rjn import ui
    from rjn.commands.common import Quiet
    from rjn.commands.open import open_project

    if remote:
        _globals.remote_name = remote
    project = _config()
    result = open_project(project, Quiet() if as_json else ui.Steps(verbose))
    if as_json:
        ui.print_json(result)
    else:
        ui.show_opened(result)
    if browser and not ui.open_browser(result.tokened_url):
        ui.err.print("  (no browser found: open the URL above)")
    if watch:
        _watch(project)


def _watch(project: "config.Config") -> None:
    from rjn import ui
    from rjn.commands.sync import watch_results

    try:
        watch_results(project, ui.show_ready, ui.show_pulled, ui.show_link)
    except KeyboardInterrupt:
        ui.err.print("stopped watching; the server and tunnel stay up (`rjn close` stops them)")
        # The remote watcher is closed already (watch's own cleanup ran): nothing that still
        # waits on the network (a reconnect, a pass cut short) may keep the terminal.
        sys.stderr.flush()
        os._exit(0)


@command()
def watch() -> None:
    """Pull new result figures home as they are written.

    Each new or changed file in the results folders comes home as soon as it is fully
    written, until Ctrl-C; a dropped link is repaired on its own.
    """

    _watch(_config())


@command()
def sync(
    push: Annotated[
        bool, typer.Option("--push", help="Only send local edits: nothing here changes.")
    ] = False,
    allow_deletions: Annotated[
        bool,
        typer.Option(
            "--allow-deletions",
            help="Let more than a few deletions (or most of one side) travel, into the trash.",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Both ways now: remote edits and results home, yours out.

    An edit on both sides keeps both versions (notebooks are merged cell by cell); nothing is
    deleted or overwritten that rjn has not seen.
    """
    from rjn import ui
    from rjn.commands.common import Quiet
    from rjn.commands.sync import sync_now

    report = Quiet() if as_json else ui.Steps()
    result = sync_now(_config(), report, push=push, allow_deletions=allow_deletions)
    ui.print_json(result) if as_json else ui.show_synced(result)


@command()
def init(
    host: Annotated[str, typer.Argument(help="The ssh host, or a Host alias from ~/.ssh/config.")],
    remote: Annotated[
        str | None,
        typer.Option("--remote", help="Add HOST as [remotes.NAME] to the existing remote.toml."),
    ] = None,
    remote_dir: Annotated[
        str | None,
        typer.Option("--dir", help="The project's folder there (default: ~/rjn/FOLDER)."),
    ] = None,
    ssh_config: Annotated[
        str | None, typer.Option("--ssh-config", help="The ssh config file to use (ssh -F).")
    ] = None,
) -> None:
    """Write remote.toml for this folder's project on HOST.

    HOST: the ssh host, or a Host alias of your ssh config. With --remote NAME, add it to the
    existing remote.toml as [remotes.NAME] instead (`rjn open NAME`).
    """
    from rjn import ui
    from rjn.commands.init import init as write_config

    given = _globals
    path = write_config(Path.cwd(), host, remote, ssh_config or given.ssh_config,
                        remote_dir or given.remote_dir)  # fmt: skip
    how = f"`rjn open {remote}`" if remote else "`rjn open`"
    ui.err.print(f"wrote {path}; {how} opens the project on {host}")


@command()
def status(as_json: JsonOption = False) -> None:
    """This project's connection, server and tunnel, checked now."""
    from rjn import ui
    from rjn.commands.status import status as check

    result = check(_config())
    ui.print_json(result) if as_json else ui.show_status(result)


@command()
def close(
    server: Annotated[
        bool, typer.Option("--server", help="Also stop the remote Jupyter server and its kernels.")
    ] = False,
    every: Annotated[
        bool, typer.Option("--all", help="Every open project on this machine, not just this one.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option("--force", help="With --server: stop a run or sync under way over the "
                     "connection too."),
    ] = False,
) -> None:
    """Close the tunnel; with --server, stop Jupyter too.

    With --server the connection is released as well, once no other open project uses it;
    a run or sync under way over it is named, and stopped only with --force.
    """
    from rjn import ui
    from rjn.commands.close import close as close_project
    from rjn.commands.close import close_all

    if not every:
        ui.show_closed(close_project(_config(), stop_server=server, force=force))
        return
    closed, failed = close_all(stop_server=server, force=force)
    for result in closed:
        ui.show_closed(result)
    for line in failed:
        ui.err.print(f"[red]✗[/] {ui.escape(line)}")
    if not closed and not failed:
        ui.err.print("no open projects")
    if failed:
        raise typer.Exit(1)


@command()
def renew(as_json: JsonOption = False) -> None:
    """Queue a SLURM job that takes over when this one reaches its time limit.

    It starts as the running job ends, with the same token: the watch moves the tunnel to
    it on the same local port, so the open browser tab works again (kernels start afresh;
    notebooks are as last saved).
    """
    from rjn import ui
    from rjn.commands.renew import renew as queue

    result = queue(_config())
    ui.print_json(result) if as_json else ui.show_renewal(result)


@command("ls")
def list_(
    show_token: Annotated[
        bool, typer.Option("--show-token", help="Show the URLs with their tokens.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Every open project on this machine.

    Each with its remote, URL, tunnel, SLURM job, uptime and last figure, checked live.
    """
    from rjn import ui
    from rjn.commands.ls import list_open

    found = list_open(show_token=show_token)
    ui.print_json(found) if as_json else ui.show_listed(found)


@command()
def requirements() -> None:
    """Write requirements.txt from the project's imports.

    Read from its code and notebooks (a requirements.txt of your own is kept), then shown.
    """
    from rjn import ui
    from rjn.commands.init import requirements_only

    result = requirements_only(_config())
    where = "written" if result.generated else "kept (your own file)"
    ui.err.print(f"{ui.escape(str(result.path))} {where}:")
    for line in result.lines:
        ui.out.print(ui.escape(line))


@command(passes_code=True, context_settings={"allow_extra_args": True,
                                             "ignore_unknown_options": True})  # fmt: skip
def shell(
    command: Annotated[
        list[str] | None, typer.Argument(help="A command to run instead of a shell.")
    ] = None,
) -> None:
    """A shell (or one command) in the remote project folder.

    The project's environment is active. COMMAND, after --: one command instead of a shell.
    """
    from rjn.commands.run import shell as remote_shell

    raise typer.Exit(remote_shell(_config(), command))


@command(passes_code=True, context_settings={"allow_extra_args": True,
                                             "ignore_unknown_options": True})  # fmt: skip
def run(
    command: Annotated[
        list[str] | None, typer.Argument(help="The command, after --: rjn run -- python train.py")
    ] = None,
    notebook: Annotated[
        str | None,
        typer.Option("--notebook", help="Execute this notebook headless; the copy comes home."),
    ] = None,
    detach: Annotated[
        bool, typer.Option("--detach", help="Keep running without the connection; see rjn logs.")
    ] = False,
) -> None:
    """Run a command or notebook remotely, then pull the results.

    COMMAND, after --: `rjn run -- python train.py`. It runs in the project's environment
    with its output live; rjn exits with its exit code (255 where rjn itself failed), and
    Ctrl-C stops it remotely.
    """
    from rjn import ui
    from rjn.commands.run import checked_notebook
    from rjn.commands.run import run as run_remotely

    project = _config()
    argv = list(command or [])
    if notebook:
        if argv:
            raise RjnError("give either a command or --notebook, not both")
        checked_notebook(project, notebook)  # said before anything connects
    elif not argv:
        raise RjnError("nothing to run", hint="rjn run -- python train.py")
    result = run_remotely(project, argv, ui.Steps(), ui.print_output, detach=detach,
                          notebook=notebook)  # fmt: skip
    if result.run_id:
        ui.err.print(f"started run {result.run_id}; follow it with `rjn logs -f`")
    for pulled in result.pulled:
        ui.show_pulled(pulled)
    ui.show_tree(result.tree)
    raise typer.Exit(result.exit_code)


@command(passes_code=True)
def logs(
    run_id: Annotated[str | None, typer.Argument(help="Which run (default: the latest).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow until it ends.")] = False,
) -> None:
    """The output of a detached run (`rjn run --detach`).

    RUN_ID: which run (default: the latest); exits with its exit code once it has ended.
    """
    from rjn import ui
    from rjn.commands.run import logs as run_logs

    raise typer.Exit(run_logs(_config(), run_id, follow, ui.print_output))


def main() -> None:
    """Entry point for the `rjn` console script."""
    cli(prog_name="rjn")
