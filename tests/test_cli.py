"""The command line as users of typer/click CLIs expect it: -V, -h, shell completion."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import rjn

REMOTES = '[remote]\nhost = "a"\n[remotes.cluster]\nhost = "b"\n[remotes.box]\nhost = "c"\n'


def rjn_said(*args: str, cwd: Path | None = None, **env: str) -> str:
    done = subprocess.run([sys.executable, "-m", "rjn", *args], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("flag", ["-V", "--version"])
def test_the_version_has_one_source(flag: str) -> None:
    assert rjn_said(flag).strip() == f"rjn {rjn.__version__}"
    assert metadata.version("rjn") == rjn.__version__


def test_help_is_short_and_long() -> None:
    assert rjn_said("-h") == rjn_said("--help")
    assert "--install-completion" in rjn_said("--help")


def test_bash_completes_commands_options_and_named_remotes(tmp_path: Path) -> None:
    (tmp_path / "remote.toml").write_text(REMOTES)

    def bash(line: str) -> list[str]:
        words = line.split(" ")
        return rjn_said(cwd=tmp_path, COMP_WORDS=line, COMP_CWORD=str(len(words) - 1),
                        _RJN_COMPLETE="complete_bash").split()  # fmt: skip

    assert bash("rjn cl") == ["close"]
    assert {"--server", "--all", "--force"} <= set(bash("rjn close --"))
    assert bash("rjn open ") == ["box", "cluster"]
    assert bash("rjn -r c") == ["cluster"]


def test_zsh_and_fish_complete_named_remotes(tmp_path: Path) -> None:
    (tmp_path / "remote.toml").write_text(REMOTES)
    zsh = rjn_said(cwd=tmp_path, _TYPER_COMPLETE_ARGS="rjn open ", _RJN_COMPLETE="complete_zsh")
    assert '"box"' in zsh and '"cluster"' in zsh
    fish = rjn_said(cwd=tmp_path, _TYPER_COMPLETE_ARGS="rjn open c",
                    _TYPER_COMPLETE_FISH_ACTION="get-args",
                    _RJN_COMPLETE="complete_fish")  # fmt: skip
    assert fish.split() == ["cluster"]


def test_completion_outside_a_project_offers_no_remote_and_says_nothing(tmp_path: Path) -> None:
    line = "rjn open "
    assert rjn_said(cwd=tmp_path, COMP_WORDS=line, COMP_CWORD="2",
                    _RJN_COMPLETE="complete_bash").split() == []  # fmt: skip
