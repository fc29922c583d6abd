"""`nox -s remote`: a user's noxfile runs sessions on the remote, in the synced environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

NOXFILE = """
import nox


@nox.session(python=False)
def remote(session):
    session.run("rjn", "run", "--", *(session.posargs or ["pytest", "-q"]), external=True)
"""


@pytest.fixture(scope="module")
def project(make_project: Callable[..., Path]) -> Path:
    root = make_project("theta")
    (root / "noxfile.py").write_text(NOXFILE)
    return root


def nox(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # The rjn and nox of this test run, as a user's shell would find them.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [sys.executable, "-m", "nox", "-s", "remote", "--", *args],
        cwd=project, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=600,
    )  # fmt: skip


def test_a_nox_session_runs_on_the_remote(project: Path, short_tmp: Path) -> None:
    result = nox(project, "python", "-c", "import os, yaml; print('on', os.getcwd())")
    assert result.returncode == 0, result.stderr
    assert f"on {short_tmp / 'remote' / 'theta'}" in result.stdout + result.stderr
    assert "Session remote was successful" in result.stderr


def test_a_failing_remote_command_fails_the_session(project: Path) -> None:
    result = nox(project, "python", "-c", "raise SystemExit(3)")
    assert result.returncode != 0
    assert "Session remote failed" in result.stderr


def test_a_tool_the_environment_lacks_says_how_to_add_it(project: Path) -> None:
    result = nox(project, "no-such-tool", "-q")  # as pytest where the project names none
    said = result.stdout + result.stderr  # (nox passes the command's output on)
    assert result.returncode != 0
    assert "cannot run no-such-tool" in said and 'packages = ["no-such-tool"]' in said, said
