"""`rjn run`: commands and notebooks on the remote environment, output live, results home."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import master, run_rjn, wait_for


@pytest.fixture(scope="module")
def project(make_project: Callable[..., Path]) -> Path:
    return make_project("delta")


def test_exit_code_and_output_in_order(project: Path) -> None:
    code = "import sys\nfor i in range(50): print(i)\nprint('oops', file=sys.stderr)\nsys.exit(3)"
    result = run_rjn("run", "--", "python", "-c", code, cwd=project)
    assert result.returncode == 3, result.stderr
    assert result.stdout.splitlines() == [str(i) for i in range(50)]
    assert "oops" in result.stderr


def test_runs_in_the_project_with_its_environment(project: Path, short_tmp: Path) -> None:
    code = "import os, sys, yaml; print(os.getcwd()); print(sys.prefix)"
    result = run_rjn("run", "--", "python", "-c", code, cwd=project)
    assert result.returncode == 0, result.stderr
    cwd, prefix = result.stdout.splitlines()
    assert cwd == str(short_tmp / "remote" / "delta")
    assert prefix == str(short_tmp / "remote" / "delta" / ".rjn" / "venv")


def test_figures_made_by_a_run_come_home(project: Path) -> None:
    code = (
        "import os\nos.makedirs('results', exist_ok=True)\nopen('results/run.png','wb').write(b'p')"
    )
    result = run_rjn("run", "--", "python", "-c", code, cwd=project)
    assert result.returncode == 0, result.stderr
    assert (project / "results" / "run.png").read_bytes() == b"p"
    assert "results/run.png" in result.stderr


def test_a_notebook_runs_headless_and_its_executed_copy_comes_home(project: Path) -> None:
    result = run_rjn("run", "--notebook", "analysis.ipynb", cwd=project)
    assert result.returncode == 0, result.stderr
    # The kernel talks over private unix sockets: no TCP port, and no warning of one.
    assert "without encryption" not in result.stderr
    executed = json.loads((project / "results" / "analysis.executed.ipynb").read_text())
    code_cells = [c for c in executed["cells"] if c["cell_type"] == "code"]
    assert code_cells[0]["execution_count"] == 1


def test_a_notebook_in_a_folder_runs_there(project: Path) -> None:
    """nbconvert runs the kernel in the notebook's folder: its sockets are found all the same."""
    cell = {"cell_type": "code", "id": "c1", "metadata": {}, "execution_count": None,
            "outputs": [], "source": "import os; print(os.path.basename(os.getcwd()))"}  # fmt: skip
    notebook = {"cells": [cell], "metadata": {"kernelspec": {"name": "python3",
                "display_name": "Python 3", "language": "python"}}, "nbformat": 4,
                "nbformat_minor": 5}  # fmt: skip
    (project / "notebooks").mkdir(exist_ok=True)
    (project / "notebooks" / "where.ipynb").write_text(json.dumps(notebook))
    result = run_rjn("run", "--notebook", "notebooks/where.ipynb", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "without encryption" not in result.stderr
    executed = json.loads((project / "results" / "where.executed.ipynb").read_text())
    assert "".join(executed["cells"][0]["outputs"][0]["text"]).strip() == "notebooks"


def test_a_missing_command_is_a_clear_error(project: Path) -> None:
    result = run_rjn("run", "--", "no-such-command-xyz", cwd=project)
    # rjn's own failure: 255, never a code the command could have meant (4 here)
    assert result.returncode == 255 and "Traceback" not in result.stderr
    assert "cannot run no-such-command-xyz" in result.stderr


def test_ctrl_c_stops_the_remote_command(project: Path, short_tmp: Path) -> None:
    marker = f"sleeper-{time.time_ns()}"
    code = f"import time, pathlib; pathlib.Path('{marker}').touch(); time.sleep(300)"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rjn", "run", "--", "python", "-c", code],
        cwd=project, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_for((short_tmp / "remote" / "delta" / marker).exists, timeout=120, what="the run")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 130

    def gone() -> bool:
        ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
        return marker not in ps

    wait_for(gone, timeout=20, what="the remote command to stop")


def test_a_detached_run_outlives_the_connection_and_logs_follow_it(
    project: Path, host, rjn_env, short_tmp: Path
) -> None:
    remote = short_tmp / "remote" / "delta"
    tag = f"detached-{time.time_ns()}"
    # It waits for a go-ahead that is given only once the connection is really gone.
    code = (
        f"import os, time\nprint('step 0', flush=True)\nopen('{tag}.up', 'w').close()\n"
        f"while not os.path.exists('{tag}.go'):\n    time.sleep(0.1)\n"
        "for i in (1, 2):\n    print('step', i, flush=True)\nraise SystemExit(7)"
    )
    started = run_rjn("run", "--detach", "--", "python", "-c", code, cwd=project)
    assert started.returncode == 0, started.stderr
    assert "rjn logs -f" in started.stderr
    wait_for((remote / f"{tag}.up").exists, what="the run to start")
    # The link drops for real: sshd and every session it carried are gone, and so is the master.
    host.cut()
    try:
        wait_for(lambda: "Master running" not in master(host, rjn_env, "check"),
                 what="the master to go")  # fmt: skip
        assert run_rjn("status", "--json", cwd=project).stdout.count('"master": false') == 1
        running = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True)
        assert tag in running.stdout, "the run ended with its connection"
    finally:
        host.start()
    (remote / f"{tag}.go").touch()
    followed = run_rjn("logs", "--follow", cwd=project)  # reconnects
    assert followed.stdout.splitlines() == ["step 0", "step 1", "step 2"], followed.stderr
    assert followed.returncode == 7


def test_shell_runs_a_command_in_the_project_environment(project: Path, short_tmp: Path) -> None:
    code = "import os, sys; print(os.getcwd(), sys.prefix); sys.exit(5)"
    result = run_rjn("shell", "--", "python", "-c", code, cwd=project)
    assert result.returncode == 5, result.stderr
    remote = short_tmp / "remote" / "delta"
    assert result.stdout.split() == [str(remote), str(remote / ".rjn" / "venv")]


def test_close_names_a_run_under_way_and_stops_it_only_with_force(
    project: Path, short_tmp: Path
) -> None:
    """`rjn close --server` while a foreground run goes on: refused, naming the run; with
    --force the run stops and says it was closed (it said the network failed)."""
    started = short_tmp / "remote" / "delta" / "close-started"
    started.unlink(missing_ok=True)
    code = "import pathlib, time; pathlib.Path('close-started').touch(); time.sleep(20)"
    run = subprocess.Popen([sys.executable, "-m", "rjn", "run", "--", "python", "-c", code],
                           cwd=project, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(started.exists, timeout=120, what="the run to start")
        refused = run_rjn("close", "--server", cwd=project)
        assert refused.returncode == 1, refused.stderr
        assert "rjn run -- python -c" in refused.stderr and "--force" in refused.stderr
        assert run.poll() is None  # still running
        forced = run_rjn("close", "--server", "--force", cwd=project)
        assert forced.returncode == 0, forced.stderr
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 255, err
    assert "closed by `rjn close --server --force`" in err, err
    assert "Traceback" not in err
    again = run_rjn("run", "--", "python", "-c", "print('back')", cwd=project)
    assert again.returncode == 0 and again.stdout.strip() == "back", again.stderr


def test_logs_follow_cut_by_a_lost_link_says_to_follow_again(
    project: Path, host, rjn_env, short_tmp: Path
) -> None:
    """`rjn logs -f` of a detached run when the link goes: it says to run `rjn logs -f` again
    (it said `rjn run --detach` keeps long runs going: the run is detached already)."""
    remote = short_tmp / "remote" / "delta"
    tag = f"follow-{time.time_ns()}"
    code = (f"import os, time\nopen('{tag}.up', 'w').close()\n"
            f"while not os.path.exists('{tag}.go'):\n    time.sleep(0.1)\n")  # fmt: skip
    started = run_rjn("run", "--detach", "--", "python", "-c", code, cwd=project)
    assert started.returncode == 0, started.stderr
    wait_for((remote / f"{tag}.up").exists, what="the run to start")
    follow = subprocess.Popen([sys.executable, "-m", "rjn", "logs", "--follow"], cwd=project,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        time.sleep(3)
        master(host, rjn_env, "exit")
        _, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
        (remote / f"{tag}.go").touch()
    assert follow.returncode == 255, err
    assert "run `rjn logs -f` again" in err and "--detach" not in err, err
