"""Presentation: progress while work runs, results as text or JSON, errors rendered once."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO

from rjn import places
from rjn.errors import RjnError
from rjn.records import (
    TRASH,
    Away,
    Closed,
    Listed,
    Opened,
    Outcome,
    Pulled,
    Ready,
    Renewal,
    Status,
    Synced,
)

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

# rich's console markup: a tag is `[style]` or `[/]`, and `\[` keeps a bracket literal.
_TAG = re.compile(r"(\\*)\[([a-z#/@][^[]*?)]")
_STYLES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34"}


class Printer:
    """Lines in rich's markup (the same strings a live progress display takes), written to
    stdout or stderr: styled on a terminal, plain elsewhere. rich's console would make every
    command import rich before it printed a line: it is loaded for live progress alone."""

    def __init__(self, stderr: bool = False) -> None:
        self.stderr = stderr

    @property
    def file(self) -> TextIO:
        # Looked up at each write: a live display swaps sys.stderr for a proxy that prints
        # above it.
        return sys.stderr if self.stderr else sys.stdout

    @property
    def is_terminal(self) -> bool:
        isatty = getattr(self.file, "isatty", None)
        return bool(isatty and isatty())

    def print(self, markup: str = "") -> None:
        styled = self.is_terminal and _colors()
        self.file.write(render(markup, styled) + "\n")
        self.file.flush()


@functools.cache
def _colors() -> bool:
    """Whether a terminal gets colors: NO_COLOR and TERM=dumb say no, FORCE_COLOR yes."""
    if os.environ.get("FORCE_COLOR"):
        return True
    if sys.platform == "win32" and not (os.environ.get("WT_SESSION") or os.environ.get("TERM")):
        return False  # Windows' classic console shows ANSI codes as text (Windows Terminal: not)
    return not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def render(markup: str, styled: bool) -> str:
    """Markup as text, with ANSI styles if `styled`; unknown styles are dropped."""
    parts: list[str] = []
    stack: list[str] = []
    position = 0
    for match in _TAG.finditer(markup):
        escapes, tag = match.groups()
        parts.append(markup[position : match.start()])
        position = match.end()
        backslashes, escaped = divmod(len(escapes), 2)
        parts.append("\\" * backslashes)
        if escaped:
            parts.append(f"[{tag}]")
            continue
        if tag.startswith("/"):
            if stack:
                stack.pop()
        else:
            stack.append(";".join(_STYLES[word] for word in tag.split() if word in _STYLES))
        if styled:
            parts.append("\x1b[0m" + "".join(f"\x1b[{codes}m" for codes in stack if codes))
    parts.append(markup[position:])
    if styled and stack:
        parts.append("\x1b[0m")
    return "".join(parts)


out = Printer()
err = Printer(stderr=True)


@functools.cache
def _live_console() -> Console:
    """The rich console a live progress display draws on (stderr)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


# C0 and C1 controls but tab and newline, and the marks that reorder text: a remote that sends
# ESC or OSC sequences (a clipboard write, a window title, cursor moves) or a reversed name
# must not drive the terminal.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape(text: str) -> str:
    """Text for the terminal from anywhere (the remote above all): markup escaped (as
    rich.markup.escape does) and control characters shown as `\\x1b` and the like. A run's
    own output is not this (raw)."""
    # As rich.markup.escape(): a `[` that would open a tag, and the backslashes before it.
    text = _TAG.sub(lambda m: f"{m[1]}{m[1]}\\[{m[2]}]", _CONTROL.sub(_visible, text))
    return text + "\\" if text.endswith("\\") and not text.endswith("\\\\") else text


def escape_name(name: str) -> str:
    """A file name for the terminal: escape(), and its line breaks and tabs shown too (a name
    on one line)."""
    return escape(name).replace("\n", "\\x0a").replace("\t", "\\x09")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# A step that may prompt (ssh logging in) and ended sooner than this asked nobody anything.
ANSWERED_BY_NOBODY = 2.5


class Steps:
    """A Reporter that shows each step with a spinner, a bar when progress is known, and time."""

    def __init__(self, verbose: bool = False) -> None:
        self.verbose = verbose
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._title = ""

    @contextlib.contextmanager
    def step(self, title: str, prompts: bool = False) -> Iterator[None]:
        started = time.monotonic()
        self._title = title
        # Imported when a step starts: a command that only prints (status) does not pay it.
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            console=_live_console(),
            transient=True,
        )
        self._bar, self._task = bar, bar.add_task(title, total=None)
        # Off a terminal a live display has nothing to redraw: just print the outcome lines.
        # Where ssh may ask something, a spinner would draw over its prompt: say what is
        # happening on a line of its own and leave the terminal to ssh.
        live: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        on_own_line = err.is_terminal and prompts
        if on_own_line:
            err.print(f"[dim]…[/] {escape(title)}")
        elif err.is_terminal:
            live = bar
        try:
            with live:
                yield
        except BaseException:
            err.print(f"[red]✗[/] {escape(title)}")
            raise
        finally:
            self._bar = self._task = None
        took = time.monotonic() - started
        if on_own_line and took < ANSWERED_BY_NOBODY:
            # Too quick for anyone to have answered a prompt: nothing was asked below the
            # line, so the outcome takes its place instead of standing under it.
            err.file.write("\x1b[1A\x1b[2K")
        err.print(f"[green]✓[/] {escape(title)} [dim]({took:.1f}s)[/]")

    def log(self, line: str) -> None:
        if self.verbose:
            err.print(f"  [dim]{escape(line)}[/]")
        elif self._bar is not None and self._task is not None:
            short = line if len(line) < 70 else line[:67] + "..."
            self._bar.update(self._task, description=f"{self._title} [dim]{escape(short)}[/]")

    def progress(self, percent: int) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, total=100, completed=percent)


def print_json(value: Any) -> None:
    """A result as JSON on stdout (dataclasses become objects)."""
    is_record = dataclasses.is_dataclass(value) and not isinstance(value, type)
    data = dataclasses.asdict(value) if is_record else value
    if isinstance(value, list):
        data = [
            dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v
            for v in value
        ]
    # ASCII: a name the remote sent cannot carry a raw control character to the terminal.
    sys.stdout.write(json.dumps(data, default=str, indent=2) + "\n")


def show_opened(result: Opened) -> None:
    """The outcome of `rjn open`: what was reused, and the URL, always."""
    if result.requirements_generated:
        listed = escape(", ".join(result.requirements)) or "(none beyond Jupyter)"
        err.print(f"  requirements: {listed}")
    else:
        err.print("  requirements: kept your own requirements.txt")
    for name in result.unreadable:
        err.print(f"  [yellow]note:[/] could not read imports from {escape(name)}")
    show_tree(result.synced, sent=False)
    reused = [
        what
        for what, fresh in (
            ("connection", result.logged_in),
            ("environment", result.env_installed),
            ("server", result.server_started),
        )
        if not fresh
    ]
    if reused:
        err.print(f"  reused: {', '.join(reused)}")
    for note in result.notes:
        err.print(f"  [yellow]note:[/] {escape(note)}")
    for line in away_lines(result.away):
        err.print(f"  {line}")
    err.print(f"[bold]{escape(result.project)}[/] is open on {escape(result.host)}:")
    out.print(escape(result.tokened_url))


def show_status(result: Status) -> None:
    """`rjn status` as a few aligned lines."""
    if not result.open and result.server is None:
        out.print(f"{escape(result.project)}: not open (host {escape(result.host)}); "
                  "`rjn open` opens it")  # fmt: skip
        return

    def mark(value: bool | None) -> str:
        return {True: "[green]up[/]", False: "[red]down[/]", None: "[yellow]unknown[/]"}[value]

    named = f" (remote {escape(result.remote_name)})" if result.remote_name else ""
    out.print(
        f"[bold]{escape(result.project)}[/] on "
        f"{escape(result.host)}:{escape(result.remote_dir or '')}{named}"
    )
    out.print(f"  connection  {mark(result.master)}")
    pid = f" (pid {result.server_pid})" if result.server and result.server_pid else ""
    out.print(f"  server      {mark(result.server)}{pid}")
    if result.job:
        where = f" on {result.node}" if result.node else ""
        left = f", {result.time_left} left" if result.time_left else ""
        out.print(f"  slurm job   {escape(f'{result.job} {result.job_state}{where}{left}')}")
    if result.next_job:
        follows = f"{result.next_job} {result.next_job_state or ''}".strip()
        out.print(f"  follow-on   {escape(follows)}: takes over on this URL when {result.job} ends")
    out.print(
        f"  tunnel      {mark(result.tunnel)}"
        + (f" 127.0.0.1:{result.port}" if result.port else "")
    )
    if result.tokened_url:
        out.print(f"  url         {escape(result.tokened_url)}")
    for line in _machine_lines(result.machine or {}):
        out.print(f"  {line}")
    if result.trash_bytes:
        out.print(f"  trash       {_size(result.trash_bytes)} in .rjn/trash/ (kept 30 days, 2 GiB)")
    for line in away_lines(result.away):
        out.print(f"  {line}")
    for problem in result.problems:
        out.print(f"  [yellow]![/] {escape(problem)}")


def away_lines(away: tuple[Away, ...]) -> list[str]:
    """"3 cells finished in analysis.ipynb while you were away (last 12:41)", per notebook."""
    lines = []
    for notebook in away:
        cells = "1 cell" if notebook.cells == 1 else f"{notebook.cells} cells"
        last = time.strftime("%H:%M", time.localtime(notebook.last))
        line = f"{cells} finished in {escape_name(notebook.path)} while you were away (last {last})"
        if notebook.unplaced:
            line += (f"; the outputs of {notebook.unplaced} could not be written (the cell is not"
                     " in the saved notebook)")  # fmt: skip
        lines.append(line)
    return lines


def _machine_lines(machine: dict[str, Any]) -> list[str]:
    """The remote's GPUs, load, memory and disk, one line each."""
    lines = []
    for gpu in machine.get("gpus", []):
        lines.append(
            f"gpu         {escape(str(gpu['name']))}: {gpu['mem_used_mb']}/"
            f"{gpu['mem_total_mb']} MB, {gpu['util_percent']}% busy"
        )
    if machine.get("load"):
        lines.append("load        " + " ".join(f"{x:.2f}" for x in machine["load"]))
    if machine.get("mem_total"):
        lines.append(
            f"memory      {_size(machine['mem_free'])} free of {_size(machine['mem_total'])}"
        )
    if machine.get("disk_total"):
        lines.append(
            f"disk        {_size(machine['disk_free'])} free of {_size(machine['disk_total'])}"
            " (where the project is)"
        )
    return lines


def show_renewal(result: Renewal) -> None:
    queued = "queued" if result.submitted else "was queued already"
    where = f" on {result.url}" if result.url else ""
    out.print(escape(
        f"✓ follow-on job {result.next_job} {queued} ({result.next_job_state}): when job "
        f"{result.job} ends, it takes over{where}; the watch moves the tunnel to it (without "
        "one, `rjn open` does); kernels start afresh"
    ))


def show_closed(result: Closed) -> None:
    """What `rjn close` stopped."""
    done = [
        what
        for what, flag in (
            ("tunnel closed", result.tunnel_closed),
            ("server stopped", result.server_stopped),
            ("connection released", result.master_released),
        )
        if flag
    ]
    err.print(f"{escape(result.project)}: {', '.join(done) or 'nothing was open'}")


def show_listed(projects: list[Listed]) -> None:
    """`rjn ls`: one block per open project."""
    if not projects:
        err.print("no open projects")
    for p in projects:
        up = (
            "[green]up[/]"
            if p.tunnel
            else ("[yellow]down[/]" if p.connection else "[red]no connection[/]")
        )
        named = f" ({escape(p.remote)})" if p.remote != "remote" else ""
        out.print(f"[bold]{escape(p.project)}[/]{named} on {escape(p.host)}  {escape(p.root)}")
        out.print(f"  {escape(p.tokened_url or p.url or '')}  tunnel {up}")
        extra = []
        if p.job:
            on = f" on {p.node}" if p.node else ""
            left = f", {_span(p.time_left_s)} left" if p.time_left_s is not None else ""
            extra.append(f"slurm job {escape(f'{p.job}{on}{left}')}")
        if p.uptime is not None:
            extra.append(f"open for {_span(p.uptime)}")
        if p.last_pulled:
            extra.append(f"last pulled {escape(p.last_pulled)}")
        if extra:
            out.print("  " + ", ".join(extra))


def _span(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def show_ready(ready: Ready) -> None:
    """The watcher is up: say how it watches, and why when it polls."""
    how = "file events" if ready.mode == "events" else "polling"
    why = f" ({ready.reason})" if ready.reason else ""
    err.print(f"watching results by {how}{escape(why)}; Ctrl-C stops watching, the server stays up")


def show_pulled(pulled: Pulled, seconds: float | None = None) -> None:
    """One line per file that came home."""
    took = f" [dim]{_duration(seconds)}[/]" if seconds is not None else ""
    size = _size(pulled.size)
    if pulled.refused:
        err.print(f"[red]✗[/] {escape_name(pulled.path)} not pulled: {escape(pulled.refused)}")
    elif pulled.trashed:
        err.print(f"[yellow]✗[/] {escape_name(pulled.path)} deleted on the remote: moved to "
                  f"{TRASH}/{took}")  # fmt: skip
    elif pulled.merged:
        err.print(f"[green]⇅[/] {escape_name(pulled.path)} changed on both sides: merged cell by "
                  f"cell{took}")  # fmt: skip
    elif pulled.conflict_copy:
        err.print(
            f"[yellow]↓[/] {escape_name(pulled.path)} changed here too: kept yours, "
            f"saved the remote one as {escape_name(pulled.conflict_copy)} ({size}){took}"
        )
    else:
        err.print(f"[green]↓[/] {escape_name(pulled.path)} ({size}){took}")


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    if count < 1024**2:
        return f"{count / 1024:.1f} kB"
    if count < 1024**3:
        return f"{count / 1024**2:.1f} MB"
    return f"{count / 1024**3:.1f} GB"


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def show_link(message: str) -> None:
    """A change in the link while watching (lost, reconnected)."""
    err.print(f"[yellow]~[/] {escape(message)}")


def show_synced(result: Synced) -> None:
    """What `rjn sync` moved."""
    for note in result.notes:
        err.print(f"  [yellow]note:[/] {escape(note)}")
    for pulled in result.files:
        show_pulled(pulled)
    show_tree(result.tree)
    refused = sum(1 for p in (*result.files, *result.tree.pulled) if p.refused)
    came = sum(1 for p in (*result.files, *result.tree.pulled) if not p.refused)
    parts = [f"{len(result.tree.pushed)} sent"]
    if result.direction != "push":
        parts.append(f"{came} file(s) pulled")
    if refused:
        parts.append(f"{refused} refused")
    err.print(f"{escape(result.project)}: {', '.join(parts)}")


# Files moved that are named one by one; past that, a count (100,000 lines help nobody).
LISTED = 20


def show_tree(tree: Outcome, sent: bool = True) -> None:
    """One line per project file a two-way sync moved (with `sent`, the ones sent too), every
    open conflict, and whatever it left for the user to decide."""
    plain = [p for p in tree.pulled if not (p.refused or p.conflict_copy or p.trashed)]
    for pulled in [p for p in tree.pulled if p not in plain] + plain[:LISTED]:
        show_pulled(pulled)
    if len(plain) > LISTED:
        err.print(f"[green]↓[/] … and {len(plain) - LISTED:,} more")
    pushed = tree.pushed if sent else ()
    lines = [f"[blue]↑[/] {escape_name(rel)}" for rel in pushed[:LISTED]]
    if len(pushed) > LISTED:
        lines.append(f"[blue]↑[/] … and {len(pushed) - LISTED:,} more")
    lines += [f"[green]⇅[/] {escape_name(rel)} changed on both sides: merged cell by cell"
              for rel in tree.merged]  # fmt: skip
    lines += [f"[yellow]✗[/] {escape_name(rel)} deleted on the remote: moved to {TRASH}/"
              for rel in tree.trashed_here]  # fmt: skip
    lines += [f"[yellow]✗[/] {escape_name(rel)} deleted here: moved to the remote's "
              f"{TRASH}/" for rel in tree.trashed_there]  # fmt: skip
    lines += [f"[yellow]![/] {escape_name(rel)} changed on the remote: `rjn sync` brings it home"
              for rel in tree.held]  # fmt: skip
    for rel in tree.kept_there:
        quoted = escape(shlex.quote(rel))
        lines.append(
            f"[yellow]![/] {escape_name(rel)} changed on the remote: left there, not brought "
            "home (rjn or another tool would run what it says on this machine). Read it with "
            f"`rjn shell -- cat -v {quoted}` and copy what you want by hand; to keep yours, "
            f"remove the remote's: `rjn shell -- rm {quoted}`"
        )
    lines += [f"[yellow]![/] {escape_name(rel)} changed on both sides: the remote version is "
              f"{escape_name(copy)}; delete one of the two to resolve"
              for rel, copy in tree.conflicts.items()]  # fmt: skip
    lines += [f"[yellow]![/] {escape_name(rel)} changed on the remote while ours was on its "
              "way: left there, nothing replaced; the next sync keeps both"
              for rel in tree.raced]  # fmt: skip
    lines += [f"[yellow]![/] {escape_name(rel)} is a file on one side and a folder or a link "
              "on the other: both kept, nothing under it moved; rename or remove one"
              for rel in tree.clashes]  # fmt: skip
    lines += [f"[yellow]![/] {escape_name(name)} {'here' if side == 'here' else 'on the remote'}"
              f" does not travel: {escape(why)}" for side, name, why in tree.skipped]  # fmt: skip
    for side, count in tree.deletions_held.items():
        gone, kept = ("on the remote", "here") if side == "here" else ("here", "on the remote")
        lines.append(
            f"[yellow]![/] {count} files deleted {gone} are still {kept}: more than a few at "
            f"once; `rjn sync --allow-deletions` moves them to the trash {kept}"
        )
    if tree.new_pair:
        lines.append(f"[yellow]![/] {escape(tree.new_pair)}")
    for line in lines:
        err.print(line)


def print_output(stream: str, line: str) -> None:
    """A line of a remote command's output, as it printed it."""
    target = sys.stdout if stream == "out" else sys.stderr
    target.write(line + "\n")
    target.flush()


def open_browser(tokened_url: str) -> bool:
    """Open the browser through a private redirect file, so the token is in no process's argv."""
    import html
    import webbrowser

    page = places.state_dir() / "open.html"
    target = html.escape(tokened_url, quote=True)
    places.write_private(
        page,
        f'<!doctype html><meta http-equiv="refresh" content="0;url={target}">'
        f'<a href="{target}">Open Jupyter</a>',
    )
    return webbrowser.open(page.as_uri())


def show_error(error: RjnError) -> None:
    """An expected failure: one line of what, one of what to try."""
    err.print(f"[bold red]error:[/] {escape(error.message)}")
    if error.hint:
        err.print(f"[bold]hint:[/] {escape(error.hint)}")


def interrupted() -> None:
    """Ctrl-C."""
    print("\ninterrupted", file=sys.stderr)
