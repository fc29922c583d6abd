"""`rjn open`, `status` and `close` end to end: real sshd, rsync, uv and JupyterLab."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import api, execute, opened, run_rjn, wait_for


@pytest.fixture(scope="module")
def project(make_project: Callable[..., Path]) -> Path:
    return make_project("alpha")


@pytest.fixture(scope="module")
def first_open(project: Path) -> subprocess.CompletedProcess[str]:
    return run_rjn("open", "--no-browser", "--no-watch", cwd=project)


def test_open_serves_jupyter_through_the_tunnel(first_open, project: Path) -> None:
    port, token = opened(first_open)
    assert api(port, "/api/status", token)[0] == 200
    assert api(port, "/api/status", None)[0] == 403  # the token is required
    assert "Installing the environment" in first_open.stderr
    assert "Starting Jupyter" in first_open.stderr


def test_jupyterlab_does_not_ask_about_news_in_an_environment_rjn_made(first_open) -> None:
    port, token = opened(first_open)
    code, setting = api(port, "/lab/api/settings/@jupyterlab/apputils-extension:notification",
                        token)  # fmt: skip
    # The environment's overrides become the setting's default (a user's own choice still wins).
    assert code == 200 and setting["schema"]["properties"]["fetchNews"]["default"] == "false"


def test_open_writes_requirements_from_code_and_notebooks(first_open, project: Path) -> None:
    lines = (project / "requirements.txt").read_text().splitlines()
    assert lines[0].startswith("# Written by rjn")
    # yaml comes from the notebook; helpers is local; magics and markdown are not code.
    assert lines[1:] == ["pyyaml"]


def test_open_pushes_code_notebooks_and_data_but_not_git(
    first_open, project: Path, short_tmp: Path
) -> None:
    remote = short_tmp / "remote" / "alpha"
    assert (remote / "helpers.py").read_text() == (project / "helpers.py").read_text()
    assert (remote / "analysis.ipynb").exists()
    assert (remote / "data" / "points.csv").read_text() == "x,y\n1,2\n3,4\n"
    assert (remote / "requirements.txt").exists()
    assert not (remote / ".git").exists()
    # Its requirements name packages alone: they went with the install, beside the sync.
    sent = (remote / ".rjn" / "requirements.txt").read_text()
    assert sent == (project / "requirements.txt").read_text()


def test_the_results_folders_exist_on_both_sides_from_the_first_open(
    first_open, project: Path, short_tmp: Path
) -> None:
    """A notebook in notebooks/ that saves ../results/fig.png works on a fresh remote."""
    port, token = opened(first_open)
    remote = short_tmp / "remote" / "alpha"
    for folder in ("results", "figures"):
        assert (remote / folder).is_dir() and (project / folder).is_dir(), folder
    (remote / "notebooks").mkdir(exist_ok=True)
    code = ("import os; os.chdir('notebooks'); "
            "open('../results/quick.png', 'wb').write(b'png'); print('saved')")  # fmt: skip
    assert execute(port, token, code).strip() == "saved"


def test_kernel_runs_code_in_the_project_environment(first_open) -> None:
    port, token = opened(first_open)
    out = execute(
        port,
        token,
        "import yaml, helpers, os\nprint(helpers.twice(21), os.path.exists('data/points.csv'))",
    )
    assert out.strip() == "42 True"


def test_server_is_private(first_open, short_tmp: Path) -> None:
    _, token = opened(first_open)
    sock = short_tmp / "remote" / "alpha" / ".rjn" / "jupyter.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode)
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    # The token is in no process's arguments and in no log.
    ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    assert "jupyter" in ps and token not in ps
    log = (short_tmp / "remote" / "alpha" / ".rjn" / "jupyter.log").read_text()
    assert "ServerApp" in log and token not in log
    # What Jupyter writes (its log, runtime files that name the token) is the user's alone.
    rjn_dir = short_tmp / "remote" / "alpha" / ".rjn"
    written = [rjn_dir / "jupyter.log", *(rjn_dir / "runtime").rglob("*")]
    assert written and all(stat.S_IMODE(f.stat().st_mode) & 0o077 == 0 for f in written), written


def test_open_again_reuses_everything(first_open, project: Path) -> None:
    port, token = opened(first_open)
    again = run_rjn("open", "--no-browser", "--no-watch", cwd=project)
    assert opened(again) == (port, token)
    assert "reused: connection, environment, server" in again.stderr
    assert "Installing" not in again.stderr and "Starting" not in again.stderr


def test_status_reports_what_is_up(first_open, project: Path, host) -> None:
    port, _ = opened(first_open)
    result = run_rjn("status", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["master"] and status["tunnel"] and status["server"]
    assert status["port"] == port and not status["problems"]
    # The server (detached from its login) is one of the host's own: its teardown stops it.
    assert status["server_pid"] in host.processes()


def test_status_and_sync_on_a_macs_routes(first_open, project: Path) -> None:
    """No /proc (lsof tells whose the tunnel's port is), no unix sockets (no serving helper):
    the answers are the same."""
    forced = {"RJN_ROUTES": "lsof,no-unix-sockets"}
    status = json.loads(run_rjn("status", "--json", cwd=project, env=forced).stdout)
    assert status["master"] and status["tunnel"] and status["server"] and not status["problems"]
    synced = run_rjn("sync", cwd=project, env=forced)
    assert synced.returncode == 0, synced.stderr


def test_push_never_overwrites_newer_remote_work(
    first_open, project: Path, short_tmp: Path
) -> None:
    remote_nb = short_tmp / "remote" / "alpha" / "analysis.ipynb"
    remote_nb.write_text('{"edited": "in the remote Jupyter"}')
    past = time.time() - 3600
    os.utime(project / "analysis.ipynb", (past, past))
    result = run_rjn("open", "--no-browser", "--no-watch", cwd=project)
    assert result.returncode == 0, result.stderr
    assert remote_nb.read_text() == '{"edited": "in the remote Jupyter"}'


def test_changed_imports_update_the_environment(first_open, project: Path) -> None:
    (project / "model.py").write_text("import tomli_w\n")
    result = run_rjn("open", "--no-browser", "--no-watch", cwd=project)
    port, token = opened(result)
    assert "tomli_w" in (project / "requirements.txt").read_text()
    assert "Installing the environment" in result.stderr
    assert "restart running kernels" in result.stderr
    assert execute(port, token, "import tomli_w; print('ok')").strip() == "ok"


def test_two_projects_at_once_then_close(
    first_open, project: Path, make_project, short_tmp
) -> None:
    port_a, token_a = opened(first_open)
    beta = make_project("beta")
    port_b, token_b = opened(run_rjn("open", "--no-browser", "--no-watch", cwd=beta))
    assert port_b != port_a
    assert api(port_a, "/api/status", token_a)[0] == 200
    assert api(port_b, "/api/status", token_b)[0] == 200

    # close: the tunnel goes, the server stays.
    closed = run_rjn("close", cwd=beta)
    assert closed.returncode == 0, closed.stderr
    assert api(port_b, "/api/status", token_b)[0] != 200
    status = json.loads(run_rjn("status", "--json", cwd=beta).stdout)
    assert status["server"] is True and status["tunnel"] is False

    # close --server: beta's Jupyter is gone, alpha (same master) still answers.
    closed = run_rjn("close", "--server", cwd=beta)
    assert closed.returncode == 0, closed.stderr
    assert "server stopped" in closed.stderr
    assert "connection released" not in closed.stderr
    ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    assert str(short_tmp / "remote" / "beta") not in ps
    assert api(port_a, "/api/status", token_a)[0] == 200

    # The last project out releases the master.
    closed = run_rjn("close", "--server", cwd=project)
    assert "server stopped" in closed.stderr and "connection released" in closed.stderr
    status = json.loads(run_rjn("status", "--json", cwd=project).stdout)
    assert status["open"] is False


def test_pip_installs_the_environment_where_uv_is_not_wanted(make_project, short_tmp) -> None:
    project = make_project("pipenv", remote_extra='installer = "pip"\n')
    result = run_rjn("open", "--no-browser", "--no-watch", cwd=project)
    port, token = opened(result)
    venv = short_tmp / "remote" / "pipenv" / ".rjn" / "venv"
    assert (venv / "bin" / "pip").exists()  # a venv made by uv has no pip
    assert execute(port, token, "import yaml; print('ok')").strip() == "ok"
    run_rjn("close", "--server", cwd=project)


def test_requirements_naming_the_projects_own_files_are_installed_after_the_sync(
    make_project, short_tmp
) -> None:
    """A first open installs beside the sync where the requirements name only packages of the
    index (alpha's); a requirement that is a file of the project's waits for it to arrive."""
    import base64
    import hashlib
    import zipfile

    project = make_project("ownwheel")
    files = {
        "tinypkg/__init__.py": "ANSWER = 42\n",
        "tinypkg-0.1.dist-info/METADATA": "Metadata-Version: 2.1\nName: tinypkg\nVersion: 0.1\n",
        "tinypkg-0.1.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    def digest(text: str) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).decode().rstrip("=")

    record = [f"{name},sha256={digest(text)},{len(text)}" for name, text in files.items()]
    files["tinypkg-0.1.dist-info/RECORD"] = "\n".join([*record, "tinypkg-0.1.dist-info/RECORD,,"])
    (project / "wheels").mkdir()
    with zipfile.ZipFile(project / "wheels" / "tinypkg-0.1-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    (project / "requirements.txt").write_text("pyyaml\n./wheels/tinypkg-0.1-py3-none-any.whl\n")
    port, token = opened(run_rjn("open", "--no-browser", "--no-watch", cwd=project))
    assert execute(port, token, "import tinypkg; print(tinypkg.ANSWER)").strip() == "42"
    assert not (short_tmp / "remote" / "ownwheel" / ".rjn" / "requirements.txt").exists()
    run_rjn("close", "--server", cwd=project)


def test_an_edit_of_the_same_size_within_a_second_is_pushed(make_project, short_tmp) -> None:
    project = make_project("lambda")
    opened(run_rjn("open", "--no-browser", "--no-watch", cwd=project))
    remote = short_tmp / "remote" / "lambda" / "helpers.py"
    before = remote.stat().st_mtime_ns
    text = (project / "helpers.py").read_text()
    (project / "helpers.py").write_text(text.replace("2 * x", "x * 2"))  # same size
    os.utime(project / "helpers.py", ns=(before + 1000, before + 1000))  # same second
    opened(run_rjn("open", "--no-browser", "--no-watch", cwd=project))
    assert "x * 2" in remote.read_text()
    run_rjn("close", "--server", cwd=project)


def test_ctrl_c_while_jupyter_starts_leaves_no_server_running(make_project, short_tmp) -> None:
    project = make_project("interrupted")
    # Pushed and installed first, so that the interrupt lands while Jupyter starts.
    prepared = run_rjn("run", "--", "true", cwd=project)
    assert prepared.returncode == 0, prepared.stderr
    record = short_tmp / "remote" / "interrupted" / ".rjn" / "server.json"
    opening = subprocess.Popen(
        [sys.executable, "-m", "rjn", "open", "--no-browser", "--no-watch"], cwd=project,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(record.exists, timeout=120, what="the server to be started")
    started = json.loads(record.read_text())["pid"]
    opening.send_signal(signal.SIGINT)
    assert opening.wait(timeout=30) == 130, opening.communicate()
    # What the interrupted open started is stopped, and no record says otherwise.
    wait_for(lambda: not os.path.exists(f"/proc/{started}"), timeout=15, what="the server gone")
    assert not record.exists()
    status = json.loads(run_rjn("status", "--json", cwd=project).stdout)
    assert status["open"] is False and status["server"] in (None, False)


def test_the_readmes_quickstart_works_as_written_on_a_fresh_remote(host, short_tmp: Path) -> None:
    """From an empty folder: rjn init, rjn open; in JupyterLab a notebooks/ folder and a
    notebook there that saves ../results/first.png; it comes home while watching, and so does
    the notebook; rjn sync; rjn close --server."""
    from helpers import Watcher
    from hosts.loopback import ALIAS

    folder = short_tmp / "local" / "quick"
    folder.mkdir(parents=True)
    remote = short_tmp / "remote" / "quick"
    where = ["--ssh-config", str(host.ssh_config), "--remote-dir", str(remote)]
    made = run_rjn(*where, "init", ALIAS, cwd=folder)
    assert made.returncode == 0 and (folder / "remote.toml").exists(), made.stderr
    port, token = opened(run_rjn("open", "--no-browser", "--no-watch", cwd=folder))
    watcher = Watcher(folder)
    try:
        # As JupyterLab's file browser does it: a new folder, a new notebook in it.
        assert api(port, "/api/contents/notebooks", token, "PUT", {"type": "directory"})[0] == 201
        notebook = {"type": "notebook", "content": {"cells": [], "metadata": {}, "nbformat": 4,
                                                    "nbformat_minor": 5}}  # fmt: skip
        assert api(port, "/api/contents/notebooks/explore.ipynb", token, "PUT", notebook)[0] == 201
        code = ("import os; os.chdir('notebooks'); "
                "open('../results/first.png', 'wb').write(b'\\x89PNG figure'); "
                "print('saved')")  # fmt: skip
        assert execute(port, token, code).strip() == "saved"
        figure = folder / "results" / "first.png"
        wait_for(figure.exists, timeout=30, what="the figure home")
        assert figure.read_bytes() == b"\x89PNG figure"
        wait_for((folder / "notebooks" / "explore.ipynb").exists, timeout=30,
                 what="the notebook home")  # fmt: skip
    finally:
        assert watcher.stop() == 0
    assert any("results/first.png" in line for line in watcher.lines), watcher.lines
    assert run_rjn("sync", cwd=folder).returncode == 0
    closed = run_rjn("close", "--server", cwd=folder)
    assert closed.returncode == 0, closed.stderr
