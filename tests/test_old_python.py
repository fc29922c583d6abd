"""Remotes whose python3 is older than rjn's helper needs (RHEL/Rocky 8 and Ubuntu 18.04 ship
3.6): rjn takes the newest python3.X on the remote's PATH and says so, or says in one line what
it found and what to do; a [remote] python that cannot start says why. A host of their own,
whose sessions see a PATH where python3 is pyenv's 3.6 (this machine kind has it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import run_rjn
from hosts.loopback import TestHost

OLD = sorted(Path("/root/.pyenv/versions").glob("3.6.*/bin/python3.6"))


@pytest.fixture(scope="module")
def bins(short_tmp: Path) -> Path:
    """Folders for a PATH: `old` (python3 is 3.6), `newer` (python3.11), `tools` (everything
    else in /usr/bin, no Python)."""
    if not OLD:
        pytest.skip("needs pyenv's Python 3.6 (/root/.pyenv/versions/3.6.*), as this machine has")
    base = short_tmp / "bins"
    for name in ("old", "newer", "tools"):
        (base / name).mkdir(parents=True)
    (base / "old" / "python3").symlink_to(OLD[-1])
    # The interpreter running the tests (3.11, its real file: not a shim of pyenv's).
    (base / "newer" / "python3.11").symlink_to(os.path.realpath(sys.executable))
    for tool in Path("/usr/bin").iterdir():
        if not tool.name.startswith("python"):
            (base / "tools" / tool.name).symlink_to(tool)
    return base


def old_host(short_tmp: Path, name: str, path: list[Path], newer: bool) -> TestHost:
    """A host whose python3 is 3.6 (with `newer`, a python3.11 on its PATH too). Where the
    login shell puts pyenv's shims first (this machine's root does), PYENV_VERSION points
    them the same way: 3.6 first, then the system's."""
    env = {"PATH": ":".join(map(str, path)), "XDG_CACHE_HOME": str(short_tmp / f"{name}-c"),
           "XDG_DATA_HOME": str(short_tmp / f"{name}-d"),
           "PYENV_VERSION": OLD[-1].parent.parent.name + (":system" if newer else "")}  # fmt: skip
    return TestHost(short_tmp / name, remote_env=env).start()


@pytest.fixture
def project(short_tmp: Path) -> Iterator[Callable[..., Path]]:
    made: list[TestHost] = []

    def make(name: str, host: TestHost, extra: str = "") -> Path:
        made.append(host)
        root = short_tmp / "local" / name
        root.mkdir(parents=True)
        (root / "remote.toml").write_text(host.remote_toml(short_tmp / "remote" / name, extra))
        (root / "notes.txt").write_text("hello\n")
        return root

    yield make
    for host in made:
        host.teardown()


def test_a_newer_python_beside_an_old_python3_is_taken_and_said(bins, short_tmp, project):
    host = old_host(short_tmp, "py36-newer", [bins / "old", bins / "newer", bins / "tools"], True)
    root = project("py36-newer", host)
    first = run_rjn("sync", cwd=root)
    assert first.returncode == 0, first.stderr
    assert "the remote's python3 is Python 3.6" in first.stderr
    assert "rjn uses " in first.stderr and "python3.11" in first.stderr
    assert (short_tmp / "remote" / "py36-newer" / "notes.txt").read_text() == "hello\n"
    again = run_rjn("sync", cwd=root)  # remembered: said once
    assert again.returncode == 0 and "python3 is Python 3.6" not in again.stderr


def test_no_newer_python_is_one_clear_line(bins, short_tmp, project) -> None:
    host = old_host(short_tmp, "py36-only", [bins / "old", bins / "tools"], False)
    root = project("py36-only", host)
    result = run_rjn("sync", cwd=root)
    assert result.returncode == 4, result.stderr
    assert "the remote's python3 is Python 3.6" in result.stderr
    assert "no python3.8 or newer is on its PATH" in result.stderr
    assert "module load" in result.stderr and "Traceback" not in result.stderr


def test_an_old_python_set_in_remote_toml_is_not_overridden(bins, short_tmp, project) -> None:
    host = old_host(short_tmp, "py36-set", [bins / "old", bins / "newer", bins / "tools"], True)
    root = project("py36-set", host, f'python = "{OLD[-1]}"')
    result = run_rjn("sync", cwd=root)
    assert result.returncode == 4, result.stderr
    assert f"[remote] python ({OLD[-1]}) is Python 3.6" in result.stderr
    assert "Traceback" not in result.stderr and "SyntaxError" not in result.stderr


def test_a_python_that_cannot_start_says_why(bins, short_tmp, project) -> None:
    if not shutil.which("patchelf"):
        pytest.skip("needs patchelf (apt-get install patchelf; .ci/install has it)")
    broken = bins / "broken-python3"
    shutil.copy(os.path.realpath(sys.executable), broken)
    subprocess.run(["patchelf", "--add-needed", "libnotthere.so.1", str(broken)], check=True)
    host = old_host(short_tmp, "py-broken", [bins / "tools"], False)
    root = project("py-broken", host, f'python = "{broken}"')
    result = run_rjn("sync", cwd=root)
    assert result.returncode == 4, result.stderr
    assert f"the remote python '{broken}' cannot start" in result.stderr
    assert "libnotthere.so.1" in result.stderr and "was not found" not in result.stderr


@pytest.fixture(scope="module")
def uv_bin(bins: Path) -> Path:
    """A folder with uv in it (the binary of the uv wheel the test extras install)."""
    uv = Path(sys.prefix) / "bin" / "uv"
    if not uv.exists():
        pytest.skip("needs uv in the test environment (pip install rjn[test])")
    (bins / "uv").mkdir(exist_ok=True)
    if not (bins / "uv" / "uv").exists():
        (bins / "uv" / "uv").symlink_to(uv)
    return bins / "uv"


def test_uv_finds_the_python_asked_for(bins, uv_bin, short_tmp, project) -> None:
    path = [bins / "old", bins / "newer", uv_bin, bins / "tools"]
    root = project("py-uv", old_host(short_tmp, "py-uv", path, True), 'python = "uv:3.11"')
    result = run_rjn("sync", cwd=root)
    assert result.returncode == 0, result.stderr
    assert '[remote] python = "uv:3.11": rjn uses /' in result.stderr
    assert (short_tmp / "remote" / "py-uv" / "notes.txt").exists()


def test_uv_that_cannot_get_the_python_says_so(bins, uv_bin, short_tmp, project) -> None:
    path = [bins / "old", uv_bin, bins / "tools"]
    root = project("py-uv-none", old_host(short_tmp, "py-uv-none", path, False),
                   'python = "uv:3.99"')  # fmt: skip
    result = run_rjn("sync", cwd=root)
    assert result.returncode == 4, result.stderr
    assert "uv could not find or install Python 3.99 there" in result.stderr
    assert "UV_PYTHON_INSTALL_MIRROR" in result.stderr and "Traceback" not in result.stderr


def test_the_boot_fails_politely_on_python_2(tmp_path: Path) -> None:
    import json

    from rjn.helper_client.boot import OLD_PYTHON, boot_command

    python2 = sorted(Path("/root/.pyenv/versions").glob("2.7.*/bin/python2.7"))
    if not python2:
        pytest.skip("needs pyenv's Python 2.7 (/root/.pyenv/versions/2.7.*), as this machine has")
    argv, _ = boot_command(str(python2[-1]), "probe", {"dir": str(tmp_path)}, 0)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == OLD_PYTHON, done.stderr
    assert json.loads(done.stdout) == {"old_python": json.loads(done.stdout)["old_python"]}
    assert json.loads(done.stdout)["old_python"].startswith("2.7") and not done.stderr

