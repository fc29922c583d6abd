"""The printer that every command's lines go through (rich's markup, without rich's console)."""

from __future__ import annotations

import io
import random

import pytest
from rich.console import Console

from rjn import ui

# (As in rich, a name that ends in one backslash is shown with two: escaped, it could be
# followed by a tag.)
NAMES = ["plain.png", "a [b] c", "[red]x[/]", "[/]", "[bold]", "x\\\\", "x\\\\\\", "a\\[b]",
         "\\[red]", "c:\\dir\\[x]", "emoji :smile: kept", "[#1]", "[@x]", "ü ñ 日本"]  # fmt: skip


def _rich(markup: str) -> str:
    buffer = io.StringIO()
    Console(file=buffer, highlight=False, soft_wrap=True, emoji=False).print(markup)
    return buffer.getvalue()


@pytest.mark.parametrize("name", NAMES)
def test_a_name_is_shown_exactly_whatever_brackets_it_holds(name: str) -> None:
    assert ui.render(f"[green]↓[/] {ui.escape_name(name)} (3 B)", styled=False) == f"↓ {name} (3 B)"


def test_escaped_text_reads_as_rich_reads_it() -> None:
    """The same strings go to rich's live display: escape() is rich's, and a line renders as
    rich renders it (but for backslashes: rich drops the one of a `\\[` that opens no tag,
    we show the name as it is)."""
    rnd = random.Random(7)
    texts = NAMES + ["".join(rnd.choice("ab[]/\\#@ :rx") for _ in range(rnd.randint(0, 14)))
                     for _ in range(3000)]  # fmt: skip
    from rich.markup import escape as rich_escape

    for text in texts:
        assert ui.escape(text) == rich_escape(text), text
        line = f"[bold red]error:[/] {ui.escape(text)} [dim]x[/]"
        if "\\" not in text:
            assert ui.render(line, styled=False) + "\n" == _rich(line), text


def test_styles_on_a_terminal_and_none_elsewhere() -> None:
    line = "[bold red]error:[/] it [dim]failed[/]"
    assert ui.render(line, styled=False) == "error: it failed"
    styled = ui.render(line, styled=True)
    assert "\x1b[1;31merror:" in styled and "\x1b[2mfailed" in styled
    assert styled.endswith("\x1b[0m") and styled.replace("\x1b[0m", "").count("\x1b[") == 2


def test_control_characters_from_the_remote_cannot_drive_the_terminal() -> None:
    name = "a\x1b]52;c;evil\x07b\u202e\n.png"
    shown = ui.render(f"[red]✗[/] {ui.escape_name(name)}", styled=True)
    for raw in ("\x1b]", "\x07", "\u202e", "\n"):
        assert raw not in shown
    assert "a\\x1b]52;c;evil\\x07b\\u202e\\x0a.png" in shown


def test_lines_go_to_the_stream_in_use_now(capsys: pytest.CaptureFixture[str]) -> None:
    ui.err.print("[yellow]note:[/] on stderr")
    ui.out.print("on stdout")
    captured = capsys.readouterr()
    assert captured.err == "note: on stderr\n" and captured.out == "on stdout\n"
