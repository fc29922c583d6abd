"""The project's Jupyter server: started detached on a private socket (or loopback), found
again by what it wrote of it (.rjn/server.json), stopped through its API."""

import contextlib
import json
import os
import pkgutil
import secrets
import socket
import subprocess
import threading
import time

from ..shared.folders import RJN_DIR, private, rjn_dir, venv_dir, venv_python
from ..shared.protocol import HelperError, Renewed, Stopped
from .jupyter_api import api, http_status
from .places import project_dir, read_json, socket_path, tail, write_private
from .processes import alive_pid, process_start, stop_pid, wait_for_hangup
from .slurm import (
    NEVER_STARTS,
    job_info,
    job_state_text,
    never_starts,
    partition_of,
    sacct_state,
    scancel,
    slurm_start,
    squeue,
    submit,
    take_over,
)


def pid_is_server(server):
    """Whether server.json's pid is still the server rjn started: a reused pid (another
    project's Jupyter, anything) has another start time, and is never signalled."""
    pid = server.get("pid", -1)
    if server.get("pid_start") is not None:
        return process_start(pid) == server["pid_start"]
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            cmdline = handle.read()
        return b"jupyter" in cmdline and server.get("dir", "").encode() in cmdline
    except OSError:
        # No /proc (macOS): signal 0 tells whether the process exists at all.
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def server_state(project):
    """The project's server as server.json has it, with whether it is alive and answering."""
    server = read_json(os.path.join(project, RJN_DIR, "server.json"))
    if not server:
        return {"alive": False}
    token = read_json(os.path.join(project, RJN_DIR, "token.json")) or {}
    server["token"] = token.get("token", "")
    if server.get("job"):
        if server.get("next"):
            queued = squeue(server["next"])
            if queued is None:
                del server["next"]  # it ran and ended, or was cancelled: nothing follows
            else:
                server["next_state"] = job_state_text(queued)
        queue = squeue(server["job"])
        if queue is None:
            server.update(job_state=sacct_state(server["job"]), alive=False, running=False)
            if idle_ended(project, server["job"]):
                server["ended"] = "idle"
            return server
        server.update(job_info(queue))
        alive = queue["state"] == "RUNNING" and ("port" in server or "sock" in server)
        server["running"] = queue["state"] in ("RUNNING", "PENDING", "CONFIGURING", "UNKNOWN")
        # A socket on the node cannot be asked from here: the tunnel's first request tells.
        server["alive"] = alive and ("sock" in server or http_status(server) == 200)
        return server
    alive = pid_is_server(server)
    status = http_status(server) if alive else None
    server["alive"] = status == 200
    server["running"] = alive
    return server


def idle_ended(project, job):
    """Whether the job's Jupyter stopped itself for inactivity ([jupyter] idle_timeout)."""
    return "No kernels for" in tail(os.path.join(project, RJN_DIR, "slurm-%s.log" % job), 40)


def start(request):
    project = project_dir(request.dir)
    current = server_state(project)
    if current["alive"]:
        current["started"] = False
        return current
    if current.get("running") and current.get("job"):
        # Pending, or running but not answering: this job will not serve; start afresh.
        scancel(str(current["job"]))
    elif current.get("running"):
        stop_pid(current["pid"])
    folder = rjn_dir(project)
    if request.slurm is not None and current.get("next_state"):
        # A follow-on job (`rjn renew`) takes over, with the token the open browser has (its
        # script was written when it was queued).
        return take_over(project, request, folder, current["next"])
    argv, env = jupyter_command(project, request, folder)
    token = secrets.token_urlsafe(32)
    write_private(os.path.join(folder, "token.json"), json.dumps({"token": token}))
    if request.slurm is not None:
        return slurm_start(project, request, argv, folder, env)
    return start_here(project, folder, request, argv, env, token)


def start_here(project, folder, request, argv, env, token):
    """Jupyter started on this machine, in a session of its own (it outlives the connection),
    listening where asked; what server.json says of it once it answers, else it is stopped
    and we say why."""
    server = {"app": request.app, "dir": project}
    # The token travels in the environment, never in argv, and Jupyter logs it masked.
    env["JUPYTER_TOKEN"] = token
    if request.listen == "socket":
        server["sock"] = socket_path(project)
        if os.path.exists(server["sock"]):
            os.unlink(server["sock"])
        argv += ["--ServerApp.sock=" + server["sock"], "--ServerApp.sock_mode=0600"]
    else:
        server["port"] = free_port()
        argv += [
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.port=%d" % server["port"],
            "--ServerApp.port_retries=0",
        ]
    logfile = os.path.join(folder, "jupyter.log")
    # Everything Jupyter writes (its log, runtime files that name the token) is ours alone.
    umask = os.umask(0o077)
    try:
        with open(os.devnull, "rb") as devnull, open(logfile, "ab") as out:
            os.chmod(logfile, 0o600)
            # A session of its own and no tie to ssh's pipes: it outlives the connection.
            proc = subprocess.Popen(
                argv,
                cwd=project,
                env=env,
                stdin=devnull,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
    finally:
        os.umask(umask)
    server["pid"] = proc.pid
    server["pid_start"] = process_start(proc.pid)
    server["started_at"] = time.time()
    write_private(os.path.join(folder, "server.json"), json.dumps(server))
    server["token"] = token
    answered = threading.Event()
    stop_on_hangup(proc.pid, folder, answered)
    deadline = time.monotonic() + request.ready_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise HelperError(
                "Jupyter exited at start (code %s): %s" % (proc.returncode, tail(logfile)),
                "the full log is %s on the remote" % logfile,
            )
        if http_status(server, timeout=2) == 200:
            answered.set()
            server.update(alive=True, running=True, started=True)
            return server
        time.sleep(0.1)
    stop_pid(proc.pid)
    raise HelperError(
        "Jupyter did not answer within %ss: %s" % (request.ready_timeout, tail(logfile)),
        "raise [jupyter] ready_timeout if the remote is slow; the log is " + logfile,
    )


def jupyter_command(project, request, folder):
    """Jupyter's argv and environment for the project (where it listens comes later)."""
    python = venv_python(project)
    jupyter = os.path.join(os.path.dirname(python), "jupyter")
    if not os.path.exists(jupyter):
        raise HelperError(
            "Jupyter is not installed in %s" % os.path.dirname(os.path.dirname(python)),
            "run `rjn open` again; it installs the environment first",
        )
    app = request.app
    argv = [jupyter, app, "--no-browser", "--ServerApp.root_dir=" + project]
    idle = int(request.idle_timeout * 60)
    if idle:
        argv += [
            "--ServerApp.shutdown_no_activity_timeout=%d" % idle,
            "--MappingKernelManager.cull_idle_timeout=%d" % idle,
            "--MappingKernelManager.cull_interval=%d" % max(60, idle // 10),
        ]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    env = dict(os.environ)
    env["JUPYTER_RUNTIME_DIR"] = private(os.path.join(folder, "runtime"))
    env["PATH"] = os.path.dirname(python) + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = os.path.dirname(os.path.dirname(python))
    if request.away:
        keep_away_outputs(folder, env)
    if not os.path.islink(venv_dir(project)):  # nothing is written into a user's own
        save_often(env["VIRTUAL_ENV"], request.slurm is not None)
    return argv, env


# JupyterLab's defaults, overridden in rjn's environment for a job on a cluster: a job ends
# at its time limit with its node, and what the browser had not saved by then is lost.
CLUSTER_SETTINGS = {"@jupyterlab/docmanager-extension:plugin": {"autosaveInterval": 30}}


def save_often(prefix, cluster):
    """JupyterLab saves every 30 s instead of 120 in a job; the file in overrides.d is rjn's
    own (the user's overrides.json stays theirs), removed again for a server off the cluster."""
    path = os.path.join(prefix, "share", "jupyter", "lab", "settings", "overrides.d", "rjn.json")
    if cluster:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_private(path, json.dumps(CLUSTER_SETTINGS))
    elif os.path.exists(path):
        os.unlink(path)


def renew(request):
    """Queue a follow-on job that takes over when the project's job ends (same token, so the
    open browser tab works again once the tunnel moves to it); the one queued, if there is."""
    project = project_dir(request.dir)
    current = server_state(project)
    if not (current.get("job") and current.get("running")):
        raise HelperError(
            "no SLURM job of this project is running: there is nothing to follow",
            "`rjn open` starts a job",
        )
    if current.get("next_state"):
        return Renewed(current["job"], current["next"], current["next_state"], False).to_json()
    folder = rjn_dir(project)
    argv, env = jupyter_command(project, request, folder)
    job = submit(project, request, argv, folder, env, after=current["job"])
    server = read_json(os.path.join(folder, "server.json")) or {}
    server["next"] = job
    write_private(os.path.join(folder, "server.json"), json.dumps(server))
    queued = squeue(job) or {"state": "ENDED", "reason": ""}
    if queued["reason"] in NEVER_STARTS:
        scancel(job)
        raise never_starts(job, queued["reason"], partition_of(request))
    return Renewed(current["job"], job, queued["state"], True).to_json()


# Loads away.py, copied into the project's .rjn/, into the server (not its kernels).
AWAY_CONFIG = """\
import sys
sys.path.insert(0, %s)
c.ServerApp.jpserver_extensions.update({"rjn_away": True})
c.ServerApp.kernel_websocket_connection_class = "rjn_away.KeepingConnection"
"""


def keep_away_outputs(folder, env):
    """Have the server keep what cells output while no browser is attached (away.py): its
    module and a config that loads it, in a folder of the server's config path."""
    config_dir = private(os.path.join(folder, "jupyter-config"))
    source = pkgutil.get_data(__package__, "away.py")
    write_private(os.path.join(config_dir, "rjn_away.py"), source.decode("utf-8"))
    write_private(os.path.join(config_dir, "jupyter_server_config.py"),
                  AWAY_CONFIG % json.dumps(config_dir))  # fmt: skip
    env["JUPYTER_CONFIG_PATH"] = os.pathsep.join(
        p for p in (config_dir, env.get("JUPYTER_CONFIG_PATH")) if p
    )


def stop_on_hangup(pid, folder, answered):
    """If the local rjn goes away (Ctrl-C, a dropped link) before the server answered, stop
    the server we started and forget it: an interrupted open leaves nothing running that
    server.json does not name."""

    def wait():
        wait_for_hangup()
        if not answered.is_set():
            # server.json first: the main thread may end the process once the server is gone.
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, "server.json"))
            stop_pid(pid, grace=3.0)
            os._exit(3)

    threading.Thread(target=wait, daemon=True).start()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(request):
    project = project_dir(request.dir)
    current = server_state(project)
    stopped = False
    if current.get("next_state"):
        scancel(str(current["next"]))  # the follow-on first: it would start as the job ends
    if current.get("job"):
        if current["alive"]:
            shutdown(current)
        if current.get("running"):
            scancel(str(current["job"]))
            stopped = True
    elif current.get("running"):
        pid = current["pid"]
        if current["alive"]:
            shutdown(current)
            deadline = time.monotonic() + 10
            while alive_pid(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
        stop_pid(pid)
        stopped = True
    folder = os.path.join(project, RJN_DIR)
    for name in ("server.json", "token.json"):
        if os.path.exists(os.path.join(folder, name)):
            os.unlink(os.path.join(folder, name))
    if current.get("sock") and os.path.exists(current["sock"]):
        os.unlink(current["sock"])
    return Stopped(stopped).to_json()


def shutdown(server):
    """Ask Jupyter to shut down through its API: kernels are stopped cleanly."""
    api(server, "POST", "/api/shutdown", timeout=5)
