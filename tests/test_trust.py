"""The trust boundary: what the remote sends never steers this machine, and another account on
either side (a neighbour on a shared login node) cannot reach into rjn's folders and sockets.

The neighbour is a real second account, `rjn-mallory`, made here (root is needed for that, and
to plant files in her name: CI runs as root)."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import run_rjn

from rjn import config as cfg
from rjn import places, requirements
from rjn.errors import RjnError
from rjn.helper import places as helper_places
from rjn.shared import folders
from rjn.shared.protocol import HelperError

MALLORY = "rjn-mallory"


@pytest.fixture(scope="session")
def mallory() -> tuple[int, int]:
    """(uid, gid) of a second account on this machine (and so on the test host, which shares
    its users)."""
    if os.getuid() != 0:
        pytest.skip("needs root, to make a second account and plant files in its name")
    try:
        entry = pwd.getpwnam(MALLORY)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", MALLORY], check=True)  # fmt: skip
        entry = pwd.getpwnam(MALLORY)
    return entry.pw_uid, entry.pw_gid


def plant(kind: str, at: Path, owner: tuple[int, int], target: Path) -> None:
    """What the neighbour leaves where rjn will look: a link to `target`, or a folder."""
    if kind == "link":
        at.symlink_to(target)
        os.lchown(at, *owner)
    else:
        at.mkdir(mode=0o777)
        os.chmod(at, 0o777)
        os.chown(at, *owner)


# -- folders and sockets in places others can write ------------------------------------------


@pytest.fixture
def shared_tmp(tmp_path: Path) -> Path:
    """A folder like /tmp: anyone writes, the sticky bit on."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    folder.chmod(0o1777)
    return folder


@pytest.fixture
def victim_dir(tmp_path: Path) -> Iterator[Path]:
    """Where a planted link points: its mode must not change."""
    folder = tmp_path / "victim"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    yield folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755, "a planted link was followed"
    assert list(folder.iterdir()) == [], "something was made through a planted link"


# Where each side makes its sockets' folder, and the error it refuses a planted one with.
SOCKET_FOLDERS = {
    "remote": (helper_places.socket_folder, HelperError),
    "local": (places.runtime_dir, RjnError),
}


@pytest.mark.parametrize("side", sorted(SOCKET_FOLDERS))
@pytest.mark.parametrize("kind", ["link", "folder"])
def test_a_socket_folder_refuses_what_a_neighbour_planted(
    side: str, kind: str, mallory, shared_tmp: Path, victim_dir: Path, monkeypatch
) -> None:
    # The last resort, /tmp, is where a neighbour can plant first: home too long, no runtime dir.
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/" + "c" * 120)
    monkeypatch.setattr(tempfile, "tempdir", str(shared_tmp))
    planted = shared_tmp / f"rjn-{os.getuid()}"
    plant(kind, planted, mallory, victim_dir)
    make, error = SOCKET_FOLDERS[side]
    with pytest.raises(error) as failed:
        make()
    message = failed.value.message
    assert str(planted) in message
    assert "not a folder of yours" in message or "another user" in message


def test_the_remote_sockets_live_where_no_neighbour_reaches(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = Path(helper_places.socket_folder())
    assert folder == tmp_path / "cache" / "rjn" / "s"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    assert Path(helper_places.socket_folder()) == run / "rjn"
    # A long project path puts Jupyter's socket there too, never in /tmp.
    long_project = str(tmp_path / ("p" * 120))
    assert Path(helper_places.socket_path(long_project)).parent == run / "rjn"


def test_an_own_folder_open_to_others_is_closed(tmp_path: Path) -> None:
    mine = tmp_path / "state"
    mine.mkdir(mode=0o755)
    mine.chmod(0o755)
    assert places.private_dir(mine) == mine
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    theirs = Path(folders.private(str(tmp_path / "h")))
    assert stat.S_IMODE(theirs.stat().st_mode) == 0o700


def test_a_planted_runtime_dir_fails_the_command_with_a_clear_line(
    make_project: Callable[..., Path], mallory, short_tmp: Path, victim_dir: Path
) -> None:
    project = make_project("planted")
    run = short_tmp / "planted-run"  # short: a socket's folder
    run.mkdir(mode=0o700)
    plant("link", run / "rjn", mallory, victim_dir)
    result = run_rjn("open", "--no-browser", "--no-watch", cwd=project,
                     env={"XDG_RUNTIME_DIR": str(run)})  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert f"error: {run / 'rjn'} is not a folder of yours" in result.stderr
    assert "hint:" in result.stderr and "Traceback" not in result.stderr


# -- rjn never changes the mode of the user's folders --------------------------------------


def test_requirements_leave_the_project_folder_and_file_modes_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o775)
    (tmp_path / "main.py").write_text("import requests\n")
    (tmp_path / "remote.toml").write_text('[remote]\nhost = "gpu-box"\n')
    config = cfg.load(tmp_path / "remote.toml")
    requirements.write(config)
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o775
    written = tmp_path / "requirements.txt"
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    written.chmod(0o664)  # shared with the group on purpose: kept so when rewritten
    (tmp_path / "main.py").write_text("import requests\nimport yaml\n")
    requirements.write(config)
    assert "pyyaml" in written.read_text().lower()
    assert stat.S_IMODE(written.stat().st_mode) == 0o664


# -- files that would steer this machine never come home from the remote -------------------


@pytest.fixture(scope="module")
def project(opened_project: Callable[..., Path]) -> Path:
    return opened_project("steer")


def test_a_remote_edit_of_remote_toml_never_runs_anything_here(
    project: Path, short_tmp: Path, tmp_path: Path
) -> None:
    there = short_tmp / "remote" / "steer"
    pwned = tmp_path / "PWNED"
    ours = (project / "remote.toml").read_text()
    proxy = f"ProxyCommand=sh -c 'id > {pwned}'"
    hostile = ours.replace("[remote]\n", f'[remote]\nssh_options = ["{proxy}"]\n', 1)
    assert hostile != ours
    (there / "remote.toml").write_text(hostile)
    (there / "noxfile.py").write_text(f"open({str(pwned)!r}, 'w')\n")
    (there / ".vscode").mkdir()
    (there / ".vscode" / "tasks.json").write_text('{"runOn": "folderOpen"}\n')
    (there / "results").mkdir(exist_ok=True)
    (there / "results" / "remote.toml").write_text(hostile)
    first = run_rjn("sync", cwd=project)
    second = run_rjn("sync", cwd=project)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert not pwned.exists()
    assert (project / "remote.toml").read_text() == ours
    assert not (project / "noxfile.py").exists() and not (project / ".vscode").exists()
    assert not (project / "results" / "remote.toml").exists()
    assert "results/remote.toml not pulled: it would steer this machine" in first.stderr
    for name in ("remote.toml", "noxfile.py", ".vscode/tasks.json"):
        assert f"{name} changed on the remote: left there, not brought home" in first.stderr
        assert f"{name} changed on the remote" not in second.stderr  # said once
    assert (there / "remote.toml").read_text() == hostile  # left there: nothing is lost

    # The user keeps theirs by removing the remote's: then it goes out again.
    (there / "results" / "remote.toml").unlink()
    removed = run_rjn("shell", "--", "rm", "remote.toml", cwd=project)
    assert removed.returncode == 0, removed.stderr
    again = run_rjn("sync", cwd=project)
    assert again.returncode == 0, again.stderr
    assert (there / "remote.toml").read_text() == ours
    assert not pwned.exists()


def test_a_planted_repository_or_a_guarded_name_in_other_case_never_comes_home(
    project: Path, short_tmp: Path, tmp_path: Path
) -> None:
    """A git repository planted in a folder (git would run its core.fsmonitor at a prompt's
    `git status`), and guarded names in another case (a Mac's or Windows' disk ignores it)."""
    there = short_tmp / "remote" / "steer"
    pwned = tmp_path / "PWNED"
    tools = there / "tools"
    for folder in ("objects/info", "refs/heads"):
        (tools / folder).mkdir(parents=True)
        (tools / folder / "keep").write_text("")
    (tools / "HEAD").write_text("ref: refs/heads/main\n")
    (tools / "config").write_text(
        f'[core]\n\trepositoryformatversion = 0\n\tfsmonitor = "touch {pwned}"\n'
        "\tworktree = .\n"
    )
    (there / "sub").mkdir()
    (there / "sub" / ".git").write_text("gitdir: ../tools\n")
    (there / "NOXFILE.py").write_text(f"open({str(pwned)!r}, 'w')\n")
    (there / "analysis").mkdir()
    (there / "analysis" / "Remote.toml").write_text('[remote]\nhost = "elsewhere"\n')
    (there / ".VSCode").mkdir()
    (there / ".VSCode" / "tasks.json").write_text('{"runOn": "folderOpen"}\n')
    result = run_rjn("sync", cwd=project)
    assert result.returncode == 0, result.stderr
    for name in ("tools/HEAD", "sub/.git", "NOXFILE.py", "analysis/Remote.toml",
                 ".VSCode/tasks.json"):  # fmt: skip
        assert not (project / name).exists(), name
        assert f"{name} changed on the remote: left there, not brought home" in result.stderr
    assert (project / "tools" / "config").exists()  # a file like any other, without its HEAD
    for folder in (project / "tools", project / "sub"):
        folder.mkdir(exist_ok=True)  # (sub/ had nothing else: a user may still make it)
        ceiling = {**os.environ, "GIT_CEILING_DIRECTORIES": str(project.parent)}
        subprocess.run(["git", "status"], cwd=folder, capture_output=True, timeout=30, env=ceiling)
    assert not pwned.exists()


def test_a_remote_deletion_of_remote_toml_never_deletes_ours(project: Path, short_tmp: Path):
    there = short_tmp / "remote" / "steer" / "remote.toml"
    ours = (project / "remote.toml").read_text()
    assert run_rjn("sync", cwd=project).returncode == 0
    assert there.read_text() == ours  # agreed
    there.unlink()
    result = run_rjn("sync", cwd=project)
    assert result.returncode == 0, result.stderr
    assert (project / "remote.toml").read_text() == ours
    assert there.read_text() == ours  # sent again
