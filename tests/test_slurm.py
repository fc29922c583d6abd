"""Clusters: Jupyter as a SLURM job on a compute node, on a real single-node SLURM."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import api, execute, opened, run_rjn, status, wait_for
from hosts.loopback import TestHost
from hosts.slurm import Cluster, available

SLURM = 'partition = "debug"\ntime = "00:30:00"\ncpus = 1\nsetup = ["export RJN_SETUP=done"]'

pytestmark = pytest.mark.skipif(available() is not None, reason=str(available()))


@pytest.fixture(scope="module")
def cluster(short_tmp: Path, host: TestHost) -> Iterator[Cluster]:
    # The compute node is this machine, as the login node (the test host) reaches it.
    running = Cluster(short_tmp / "slurm", address=getattr(host, "local_address", host.address))
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def project(cluster: Cluster, make_project: Callable[..., Path]) -> Iterator[Path]:
    root = make_project("zeta", slurm=SLURM)
    yield root
    run_rjn("close", "--server", cwd=root)


def queued(cluster: Cluster, job: str) -> str:
    return cluster.run("squeue", "-h", "-j", job, "-o", "%T").stdout.strip()


def test_open_runs_jupyter_as_a_job_and_tunnels_to_the_node(project: Path, cluster, short_tmp):
    result = run_rjn("open", "--no-browser", "--no-watch", cwd=project)
    port, token = opened(result)
    assert "as a SLURM job" in result.stderr
    assert api(port, "/api/status", token)[0] == 200
    seen = status(project)
    assert seen["job"] and seen["job_state"] == "RUNNING" and seen["node"] == cluster.node
    assert seen["time_left"]
    assert queued(cluster, seen["job"]) == "RUNNING"
    # Jupyter is the job's main process (slurmstepd's child), not a background process.
    ps = subprocess.run(["ps", "-eww", "-o", "pid=,ppid=,args="], capture_output=True, text=True)
    jupyter = [ln.split(None, 2) for ln in ps.stdout.splitlines()
               if "jupyter-lab" in ln and str(short_tmp / "remote" / "zeta") in ln]  # fmt: skip
    assert len(jupyter) == 1
    parent = Path(f"/proc/{jupyter[0][1]}/comm").read_text().strip()
    assert parent == "slurmstepd"
    # The setup lines ran, and the kernel runs on the node in the project's environment.
    code = "import os, yaml; print(os.environ.get('RJN_SETUP'), os.environ.get('SLURM_JOB_ID'))"
    assert execute(port, token, code).split() == ["done", seen["job"]]
    # On the node its own name means loopback; Jupyter listens where the login node reaches it.
    code = "import socket; print(socket.gethostbyname(socket.gethostname()))"
    assert execute(port, token, code).strip().startswith("127.")
    record = json.loads((short_tmp / "remote" / "zeta" / ".rjn" / "server.json").read_text())
    assert record["addr"] == cluster.address and "route to the login node" in record["why"]
    # The token is not in the batch script (it is read from a private file on the node).
    script = (short_tmp / "remote" / "zeta" / ".rjn" / "jupyter.sbatch").read_text()
    assert token not in script and "#SBATCH --partition=debug" in script
    # JupyterLab saves every 30 s in a job (its default: 120): less is lost at the limit.
    settings = api(port, "/lab/api/settings/@jupyterlab/docmanager-extension:plugin", token)
    assert settings[1]["schema"]["properties"]["autosaveInterval"]["default"] == 30, settings


def test_open_again_reuses_the_job(project: Path) -> None:
    job = status(project)["job"]
    again = run_rjn("open", "--no-browser", "--no-watch", cwd=project)
    opened(again)
    assert "reused: connection, environment, server" in again.stderr
    assert status(project)["job"] == job


def test_an_ended_job_is_noticed_and_open_submits_a_new_one(project: Path, cluster) -> None:
    """An admin's scancel: the watch says it once with the scheduler's reason (no accounting
    here: the controller's memory of the job), status too; `rjn open` starts a new job."""
    from helpers import Watcher

    job = status(project)["job"]
    watcher = Watcher(project)
    try:
        cluster.run("scancel", job)
        wait_for(lambda: any(f"job {job} ended" in line for line in watcher.lines),
                 timeout=60, what=f"the watch to say the job ended: {watcher.lines}")  # fmt: skip
        wait_for(lambda: watcher.proc.poll() is not None, what="the watch to stop")
    finally:
        watcher.stop()
    [ended] = [line for line in watcher.lines if f"job {job} ended" in line]
    assert f"job {job} ended (CANCELLED)" in ended and "`rjn open` starts a new job" in ended
    wait_for(lambda: status(project)["server"] is False, what="status to notice the job ended")
    assert f"SLURM job {job} is CANCELLED" in status(project)["problems"]
    port, token = opened(run_rjn("open", "--no-browser", "--no-watch", cwd=project))
    assert status(project)["job"] != job
    assert api(port, "/api/status", token)[0] == 200


def test_renew_queues_one_follow_on_job_and_close_cancels_both(project: Path, cluster) -> None:
    """`rjn renew` queues a job that waits for this one (status shows it; a second renew
    finds it); the batch job takes SIGUSR1 (the signal SLURM sends ahead of the limit)
    without ending Jupyter. (`rjn close --server` cancels both: the next test.)"""
    job = status(project)["job"]
    renewed = run_rjn("renew", cwd=project)
    assert renewed.returncode == 0, renewed.stderr
    assert f"when job {job} ends, it takes over on http://127.0.0.1:" in renewed.stdout
    seen = status(project)
    follow_on = seen["next_job"]
    assert follow_on and follow_on != job and "PENDING" in seen["next_job_state"], seen
    assert queued(cluster, follow_on) == "PENDING"
    again = json.loads(run_rjn("renew", "--json", cwd=project).stdout)
    assert again["next_job"] == follow_on and again["submitted"] is False
    shown = run_rjn("status", cwd=project).stdout
    assert f"follow-on   {follow_on} PENDING" in shown, shown
    # The job is told its time is near (USR1): Jupyter writes what it can and goes on.
    port, token = opened(run_rjn("open", "--no-browser", "--no-watch", cwd=project))
    cluster.run("scancel", "--signal=USR1", "--batch", job)
    log = Path(status(project)["remote_dir"]) / ".rjn" / f"slurm-{job}.log"
    wait_for(lambda: "SIGUSR1" in log.read_text(), what="Jupyter to take the signal")
    assert api(port, "/api/status", token)[0] == 200 and queued(cluster, job) == "RUNNING"


def test_close_server_cancels_the_job(project: Path, cluster) -> None:
    seen = status(project)
    job, follow_on = seen["job"], seen["next_job"]  # (queued by the test before)
    closed = run_rjn("close", "--server", cwd=project)
    assert closed.returncode == 0 and "server stopped" in closed.stderr
    wait_for(lambda: queued(cluster, job) == "", what="the job to leave the queue")
    assert follow_on and queued(cluster, follow_on) == ""


def test_a_job_stuck_pending_times_out_naming_partition_and_reason(cluster, make_project):
    blocker = cluster.run(
        "sbatch", "--parsable", "--exclusive", "--output=/dev/null", "--wrap", "sleep 300"
    )
    job = blocker.stdout.strip()
    try:
        wait_for(lambda: queued(cluster, job) == "RUNNING", what="the blocking job")
        project = make_project("eta", slurm=SLURM + "\nqueue_timeout = 4")
        result = run_rjn("open", "--no-browser", "--no-watch", cwd=project)
        assert result.returncode == 4, result.stderr
        assert "still PENDING after 4s in debug" in result.stderr
        assert "reason: Resources" in result.stderr or "reason: Priority" in result.stderr
        assert "cancelled" in result.stderr and "Traceback" not in result.stderr
    finally:
        cluster.run("scancel", job)


def rjn_jobs(cluster: Cluster, name: str) -> list[str]:
    out = cluster.run("squeue", "-h", "-n", f"rjn-{name}", "-o", "%i").stdout
    return out.split()


def test_an_unreachable_address_fails_fast_and_cancels_the_job(cluster, make_project, host):
    if host.kind == "loopback":
        pytest.skip("on one host every address is reachable: needs the separate test host")
    # Loopback on the compute node: the login node (another host) can never reach it.
    project = make_project("unreach", slurm=SLURM + '\ninterface = "lo"')
    result = run_rjn("open", "--no-browser", "--no-watch", cwd=project, timeout=100)
    assert result.returncode == 4, result.stderr
    assert "listens on 127.0.0.1:" in result.stderr and "cannot reach" in result.stderr
    assert "the job was cancelled" in result.stderr and "[slurm] interface" in result.stderr
    assert "Traceback" not in result.stderr
    wait_for(lambda: not rjn_jobs(cluster, "unreach"), what="the job to leave the queue")


def test_ctrl_c_while_the_job_waits_cancels_it(cluster, make_project) -> None:
    blocker = cluster.run(
        "sbatch", "--parsable", "--exclusive", "--output=/dev/null", "--wrap", "sleep 300"
    )
    job = blocker.stdout.strip()
    try:
        wait_for(lambda: queued(cluster, job) == "RUNNING", what="the blocking job")
        project = make_project("iota-slurm", slurm=SLURM)
        opening = subprocess.Popen(
            [sys.executable, "-m", "rjn", "open", "--no-browser", "--no-watch"], cwd=project,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        wait_for(lambda: rjn_jobs(cluster, "iota-slurm"), timeout=300, what="the job submitted")
        assert queued(cluster, rjn_jobs(cluster, "iota-slurm")[0]) == "PENDING"
        opening.send_signal(signal.SIGINT)
        assert opening.wait(timeout=60) == 130
        wait_for(lambda: not rjn_jobs(cluster, "iota-slurm"), what="the job to be cancelled")
    finally:
        cluster.run("scancel", job)


def test_jump_mode_keeps_jupyter_on_a_private_socket_on_the_node(
    cluster: Cluster, host: TestHost, make_project, short_tmp: Path
) -> None:
    if host.kind == "loopback":
        pytest.skip("the node's sshd needs the node's own address: needs the separate test host")
    # The compute node's sshd, on the node's address (reached from the login node only).
    node = TestHost(short_tmp / "node")
    node.address, node.port = cluster.address, 22
    node.start()
    try:
        known = short_tmp / "node_known_hosts"
        kind, key = Path(f"{node.host_key}.pub").read_text().split()[:2]
        known.write_text(f"{cluster.node} {kind} {key}\n")
        config = short_tmp / "cluster_ssh_config"
        config.write_text(
            host.ssh_config.read_text()
            + f"Host {cluster.node}\n    User {node.user}\n    IdentityFile {node.client_key}\n"
            f"    IdentitiesOnly yes\n    UserKnownHostsFile {known}\n"
            "    StrictHostKeyChecking yes\n"
        )
        project = make_project("jumpy", slurm=SLURM + '\nconnect = "jump"')
        toml = (project / "remote.toml").read_text().replace(str(host.ssh_config), str(config))
        (project / "remote.toml").write_text(toml)
        result = run_rjn("open", "--no-browser", "--no-watch", cwd=project)
        port, token = opened(result)
        assert f"Connecting to {cluster.node}" in result.stderr
        assert api(port, "/api/status", token)[0] == 200
        record = json.loads((short_tmp / "remote" / "jumpy" / ".rjn" / "server.json").read_text())
        assert "port" not in record and record["sock"].startswith("/tmp/rjn-")
        sock = Path(record["sock"])
        assert oct(sock.stat().st_mode & 0o777) == "0o600"
        assert oct(sock.parent.stat().st_mode & 0o777) == "0o700"
        assert "Accepted publickey" in node.log.read_text()  # the tunnel hops to the node
        job = status(project)["job"]
        assert opened(run_rjn("open", "--no-browser", "--no-watch", cwd=project)) == (port, token)
        closed = run_rjn("close", "--server", cwd=project)
        assert closed.returncode == 0, closed.stderr
        wait_for(lambda: queued(cluster, job) == "", what="the job to leave the queue")
    finally:
        node.teardown()


def test_the_watch_warns_before_the_time_limit_and_says_the_job_ended(
    cluster: Cluster, make_project: Callable[..., Path]
) -> None:
    """A one-minute job: the watch warns (naming the job and its limit) before the end,
    brings the results home at the last warning, and says the job ended and why."""
    from helpers import Watcher

    root = make_project("walltime", slurm='partition = "debug"\ntime = "00:01:00"\ncpus = 1')
    try:
        port, token = opened(run_rjn("open", "--no-browser", "--no-watch", cwd=root))
        job = status(root)["job"]
        assert 0 < status(root)["time_left_s"] <= 60
        listed = json.loads(run_rjn("ls", "--json", cwd=root).stdout)
        [mine] = [p for p in listed if p["root"] == str(root)]
        assert 0 < mine["time_left_s"] <= 60, mine
        code = "import os; os.makedirs('results', exist_ok=True); open('results/late.csv', 'w')"
        execute(port, token, code + ".write('written before the end')")
        watcher = Watcher(root)
        try:
            wait_for(lambda: any("ended" in line for line in watcher.lines), timeout=300,
                     what=f"the watch to say the job ended: {watcher.lines}")  # fmt: skip
        finally:
            watcher.stop()
        told = [line for line in watcher.lines if f"job {job} on" in line and "left of" in line]
        assert "save your notebooks" not in told[0], watcher.lines  # the start line: time left
        warned = told[1:]
        assert warned and "1m00s limit" in warned[0], watcher.lines
        assert "`rjn renew`" in warned[0], watcher.lines  # [slurm] renew = "ask": how to
        assert "bringing everything home now" in warned[-1], watcher.lines
        [ended] = [line for line in watcher.lines if f"job {job} ended" in line]
        assert f"job {job} ended (TIMEOUT)" in ended, watcher.lines
        assert (root / "results" / "late.csv").read_text() == "written before the end"
    finally:
        run_rjn("close", "--server", cwd=root)


def test_a_follow_on_job_takes_over_the_same_url_at_the_time_limit(
    cluster: Cluster, make_project: Callable[..., Path]
) -> None:
    """[slurm] renew = "always": the first warning queues the follow-on job; at the limit the
    watch moves the tunnel to it on the same local port, and the URL a client holds (same
    token) answers again from the new job."""
    from helpers import Watcher

    slurm = 'partition = "debug"\ntime = "00:01:00"\ncpus = 1\nrenew = "always"'
    root = make_project("renewed", slurm=slurm)
    try:
        port, token = opened(run_rjn("open", "--no-browser", "--no-watch", cwd=root))
        first = status(root)["job"]
        watcher = Watcher(root)
        try:
            wait_for(lambda: any("queued: it takes over" in line for line in watcher.lines),
                     timeout=120, what=f"the follow-on job queued: {watcher.lines}")  # fmt: skip
            [follow_on] = [re.search(r"follow-on job (\d+) queued", line)[1]
                           for line in watcher.lines if "queued: it" in line]  # fmt: skip
            assert status(root)["next_job"] == follow_on
            wait_for(lambda: status(root)["job"] == follow_on and status(root)["tunnel"],
                     timeout=300, what=f"the take-over: {watcher.lines}")  # fmt: skip
            # The client's URL: the same port and token, now served by the new job.
            assert api(port, "/api/status", token)[0] == 200
            assert execute(port, token, "import os; print(os.environ['SLURM_JOB_ID'])").strip() == (
                follow_on
            )
            [ended] = [line for line in watcher.lines if f"job {first} ended" in line]
            assert f"job {follow_on} takes over on this URL" in ended, watcher.lines
            took = f"job {follow_on} took over: http://127.0.0.1:{port}/ works again"
            wait_for(lambda: any(took in line for line in watcher.lines),
                     what=f"the watch to say the new job took over: {watcher.lines}")  # fmt: skip
            assert watcher.proc.poll() is None  # still watching, now the new job
            wait_for(lambda: any(f"job {follow_on} on" in line for line in watcher.lines),
                     what=f"the watch to follow the new job's time: {watcher.lines}")  # fmt: skip
        finally:
            watcher.stop()
    finally:
        run_rjn("close", "--server", cwd=root)
    assert queued(cluster, follow_on) == ""


def test_an_idle_job_ends_itself_and_status_says_it_was_idle(
    cluster: Cluster, make_project: Callable[..., Path]
) -> None:
    """[jupyter] idle_timeout on a cluster: with no kernel and no browser, Jupyter stops and
    so does its job (the allocation stops billing); the watch and `rjn status` say it was
    idle. A busy kernel is never culled (Jupyter's cull_busy is off)."""
    from helpers import Watcher

    root = make_project("idler", slurm=SLURM, jupyter="idle_timeout = 0.25")
    try:
        opened(run_rjn("open", "--no-browser", "--no-watch", cwd=root))
        job = status(root)["job"]
        # A follow-on queued (as `renew = "always"` does near the limit): an idle end cancels it.
        follow_on = json.loads(run_rjn("renew", "--json", cwd=root).stdout)["next_job"]
        watcher = Watcher(root)
        try:
            wait_for(lambda: any(f"job {job} ended" in line for line in watcher.lines),
                     timeout=200, what=f"the idle job to end: {watcher.lines}")  # fmt: skip
        finally:
            watcher.stop()
        [ended] = [line for line in watcher.lines if f"job {job} ended" in line]
        assert "idle" in ended and "`rjn open` starts a new job" in ended, ended
        assert f"its follow-on job {follow_on} was cancelled" in ended, ended
        assert queued(cluster, job) == ""
        wait_for(lambda: queued(cluster, follow_on) == "", what="the follow-on to be cancelled")
        seen = status(root)
        assert any(f"SLURM job {job} ended: idle for 0.25 min" in p for p in seen["problems"]), seen
    finally:
        run_rjn("close", "--server", cwd=root)
