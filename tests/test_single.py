"""Single mode ([remote] multiplex = "single"): an ssh client that cannot multiplex (Windows'
OpenSSH), so one ssh session is held by an rjn process and carries everything. The core flow,
as test_open, test_run and test_faults run it over a ControlMaster: open, status, sync both
ways, run, watch, a stall recovered, close."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Watcher, api, execute, run_rjn, wait_for
from hosts.loopback import TestHost

SINGLE = 'multiplex = "single"\n'


@pytest.fixture(scope="module")
def project(opened_project: Callable[..., Path]) -> Path:
    return opened_project("solo", remote_extra=SINGLE)


def lab(project: Path) -> tuple[int, str]:
    status = json.loads(run_rjn("status", "--json", cwd=project).stdout)
    found = re.search(r"127\.0\.0\.1:(\d+)/lab\?token=(.+)$", status["tokened_url"] or "")
    assert found, status
    return int(found.group(1)), found.group(2)


def sessions(host: TestHost) -> list[str]:
    """The rjn processes holding a session to the test host, and any master."""
    ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    return [ln for ln in ps.splitlines() if str(host.ssh_config) in ln
            and ("rjn.connection.single" in ln or "ControlMaster=yes" in ln)]  # fmt: skip


def logins(host: TestHost) -> int:
    return host.log.read_text(errors="replace").count("Accepted publickey")


def test_open_serves_jupyter_through_one_held_session(project: Path, host: TestHost) -> None:
    status = json.loads(run_rjn("status", "--json", cwd=project).stdout)
    assert status["master"] and status["tunnel"] and status["server"], status
    assert not status["problems"], status
    port, token = lab(project)
    assert execute(port, token, "print(6 * 7)").strip() == "42"
    held = sessions(host)
    assert len(held) == 1 and "rjn.connection.single" in held[0], held  # no ControlMaster anywhere


def test_sync_run_and_status_ride_that_one_login(
    project: Path, host: TestHost, short_tmp: Path
) -> None:
    there = short_tmp / "remote" / "solo"
    before = logins(host)
    (there / "helpers.py").write_text("def twice(x):\n    return x * 2  # there\n")
    (project / "data" / "points.csv").write_text("x,y\n7,8\n")
    synced = run_rjn("sync", cwd=project)
    assert synced.returncode == 0, synced.stderr
    assert "# there" in (project / "helpers.py").read_text()
    assert (there / "data" / "points.csv").read_text() == "x,y\n7,8\n"
    ran = run_rjn("run", "--", "python", "-c", "import sys; print('ran'); sys.exit(3)",
                  cwd=project)  # fmt: skip
    assert ran.returncode == 3 and ran.stdout.strip() == "ran", ran.stderr
    assert run_rjn("status", cwd=project).returncode == 0
    assert logins(host) == before  # every command rode the held session


def test_ctrl_c_stops_the_remote_command(project: Path, short_tmp: Path) -> None:
    marker = f"solo-sleeper-{time.time_ns()}"
    code = f"import time, pathlib; pathlib.Path('{marker}').touch(); time.sleep(300)"
    running = subprocess.Popen(
        [sys.executable, "-m", "rjn", "run", "--", "python", "-c", code],
        cwd=project, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_for((short_tmp / "remote" / "solo" / marker).exists, timeout=120, what="the run")
    running.send_signal(signal.SIGINT)
    assert running.wait(timeout=30) == 130

    def gone() -> bool:
        ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
        return marker not in ps

    wait_for(gone, timeout=20, what="the remote command to stop")


def test_the_watch_brings_results_home(project: Path, short_tmp: Path) -> None:
    there = short_tmp / "remote" / "solo"
    watcher = Watcher(project)
    try:
        (there / "results").mkdir(exist_ok=True)
        (there / "results" / "solo.png").write_bytes(b"\x89PNG solo")
        wait_for((project / "results" / "solo.png").exists, what="the figure at home")
    finally:
        assert watcher.stop() == 0
    assert (project / "results" / "solo.png").read_bytes() == b"\x89PNG solo"


def test_a_stall_ends_the_session_and_the_watch_brings_it_back(
    project: Path, host: TestHost, short_tmp: Path
) -> None:
    if not hasattr(host, "stall"):
        pytest.skip("stalling a link needs the separate test host")
    port, token = lab(project)
    there = short_tmp / "remote" / "solo"
    watcher = Watcher(project)
    try:
        seen = len(watcher.lines)
        host.stall()
        wait_for(lambda: any("reconnecting" in ln for ln in watcher.lines[seen:]), timeout=15,
                 what="the stall to be noticed")  # fmt: skip
        (there / "results" / "stalled.png").write_bytes(b"written during the stall")
        time.sleep(3)
        host.resume()
        wait_for(lambda: api(port, "/api/status", token)[0] == 200, timeout=15,
                 what="the tunnel on the same port")  # fmt: skip
        wait_for((project / "results" / "stalled.png").exists, timeout=15,
                 what="the file written during the stall")  # fmt: skip
    finally:
        host.resume()
        watcher.stop()
    assert len(sessions(host)) == 1, sessions(host)  # the wedged one retired, no leak


def test_a_dead_holders_port_taken_by_another_program_is_never_trusted(
    project: Path, rjn_env: dict[str, str]
) -> None:
    """The holder dies without cleaning up (SIGKILL, a crash) and another program (another
    local account) takes its port, answering the liveness check with the old pid: it is
    sent no token and no command; rjn holds a new session and the sync succeeds."""
    import os
    import socket
    import threading

    [control] = (Path(rjn_env["XDG_RUNTIME_DIR"]) / "rjn").glob("*.hold")
    seen = json.loads(control.read_text())
    os.kill(seen["pid"], signal.SIGKILL)
    wait_for(lambda: subprocess.run(["kill", "-0", str(seen["pid"])]).returncode != 0,
             what="the holder to die")  # fmt: skip
    impostor = socket.create_server(("127.0.0.1", seen["port"]))
    heard: list[bytes] = []

    def answer() -> None:
        while True:
            try:
                conn, _ = impostor.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                reader = conn.makefile("rb")
                for _ in range(3):  # whatever it is told, it says it is the holder
                    line = reader.readline(1 << 16)
                    heard.append(line)
                    if not line:
                        break
                    reply = {"pid": seen["pid"], "nonce": "n", "proof": "p" * 64}
                    conn.sendall(json.dumps(reply).encode() + b"\n")

    threading.Thread(target=answer, daemon=True).start()
    try:
        (project / "after_impostor.py").write_text("x = 1\n")
        result = run_rjn("sync", cwd=project)
        assert result.returncode == 0, result.stderr
    finally:
        impostor.close()
    said = b"".join(heard)
    assert heard and seen["token"].encode() not in said and b"exec" not in said, said
    assert b"command" not in said and b"after_impostor" not in said, said
    now = json.loads(control.read_text())  # a new holder, on a port of its own
    assert now["pid"] != seen["pid"] and now["token"] != seen["token"]


def test_a_holder_asked_to_end_removes_its_control_file(
    project: Path, rjn_env: dict[str, str]
) -> None:
    [control] = (Path(rjn_env["XDG_RUNTIME_DIR"]) / "rjn").glob("*.hold")
    pid = json.loads(control.read_text())["pid"]
    subprocess.run(["kill", "-TERM", str(pid)], check=True)
    wait_for(lambda: not control.exists(), timeout=15, what="the control file to go")
    result = run_rjn("sync", cwd=project)  # and the next command holds a new session
    assert result.returncode == 0, result.stderr


def test_close_ends_the_held_session(project: Path, host: TestHost) -> None:
    closed = run_rjn("close", "--server", cwd=project)
    assert closed.returncode == 0, closed.stderr
    assert "connection released" in closed.stderr
    wait_for(lambda: not sessions(host), what="the holder to end")
