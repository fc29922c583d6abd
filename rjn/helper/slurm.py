"""SLURM: Jupyter as a batch job on a compute node, listening where the login node reaches it."""

import contextlib
import errno
import json
import os
import socket
import subprocess
import threading
import time

from ..shared.folders import RJN_DIR, venv_python
from ..shared.protocol import HelperError
from .jupyter_api import http_status
from .places import read_json, tail, write_private
from .processes import wait_for_hangup
from .say import log

# Runs on the compute node as the job's main process: picks the address the login node can
# reach and a free port, records them, then becomes Jupyter (exec), so the scheduler tracks
# Jupyter itself. The address is the one the node's routing table uses toward the login node
# (or [slurm] interface's); the node's own name is not resolved: on many machines it means
# loopback (127.0.1.1).
LAUNCHER = """
import fcntl, json, os, signal, socket, stat, struct, sys
project, job = sys.argv[1], os.environ.get("SLURM_JOB_ID", "0")
spec = json.loads(sys.argv[3])
rjn = os.path.join(project, ".rjn")
with open(os.path.join(rjn, "token.json")) as handle:
    token = json.load(handle)["token"]

def interface_address(name):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        packed = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
    return socket.inet_ntoa(packed[20:24])

def route_source(target):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((target, 9))  # UDP: nothing is sent, the route is chosen
        return sock.getsockname()[0]

def choose():
    if spec.get("interface"):
        return interface_address(spec["interface"]), "interface " + spec["interface"]
    targets = list(spec.get("login", []))
    submit = os.environ.get("SLURM_SUBMIT_HOST")
    if submit:
        try:
            targets.append(socket.gethostbyname(submit))
        except OSError:
            pass
    found = []
    for target in targets:
        try:
            found.append((route_source(target), "route to the login node " + target))
        except OSError:
            continue
    outside = [f for f in found if not f[0].startswith("127.")]
    return (outside or found or [("127.0.0.1", "no route to the login node")])[0]

def private_socket():
    # Node-local /tmp, a folder only we can enter: the socket is ours alone.
    folder = "/tmp/rjn-%d" % os.getuid()
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(folder)
    if info.st_uid != os.getuid() or not stat.S_ISDIR(info.st_mode):
        raise OSError("%s is not a folder of ours" % folder)
    os.chmod(folder, 0o700)
    path = os.path.join(folder, "job-%s.sock" % job)
    if os.path.lexists(path):
        os.unlink(path)
    return path

server = {"node": socket.gethostname().split(".")[0], "host": socket.gethostname()}
try:
    if spec.get("socket"):
        sock = private_socket()
        server.update(sock=sock, why="a private socket on the node")
        listen = ["--ServerApp.sock=" + sock, "--ServerApp.sock_mode=0600"]
    else:
        addr, why = choose()
        with socket.socket() as sock:
            sock.bind((addr, 0))
            port = sock.getsockname()[1]
        server.update(addr=addr, port=port, why=why)
        listen = ["--ServerApp.ip=" + addr, "--ServerApp.port=%d" % port,
                  "--ServerApp.port_retries=0"]
except OSError as exc:
    server["fault"] = "cannot pick where to listen: %s" % exc
tmp = os.path.join(rjn, "slurm-%s.json.tmp" % job)
with open(tmp, "w") as handle:
    json.dump(server, handle)
os.replace(tmp, os.path.join(rjn, "slurm-%s.json" % job))
if "fault" in server:
    sys.exit(server["fault"])
argv = json.loads(sys.argv[2]) + listen
env = dict(os.environ, JUPYTER_TOKEN=token)
# SLURM signals the job (USR1) ahead of its time limit: ignored unless rjn's server extension
# takes it (it writes what running cells produced); by default it would end Jupyter at once.
signal.signal(signal.SIGUSR1, signal.SIG_IGN)
os.execve(argv[0], argv, env)
"""


# Seconds before the time limit at which SLURM sends the job USR1 (SLURM may send it up to a
# minute earlier: it checks on a timer of its own).
SIGNAL_AHEAD = 60

# Why a pending job can never start without someone changing it: said at once, not waited on
# until [slurm] queue_timeout.
NEVER_STARTS = (
    "DependencyNeverSatisfied",
    "PartitionTimeLimit",
    "PartitionNodeLimit",
    "PartitionConfig",
    "AccountNotAllowed",
    "InvalidAccount",
    "InvalidQOS",
    "QOSMaxWallDurationPerJobLimit",
    "AssocMaxWallDurationPerJobLimit",
    "BadConstraints",
    "JobHeldAdmin",
    "JobHeldUser",
)

# How long a job's Jupyter may stay unreachable (no route, no answer) once it has picked its
# address, before rjn says so: a port that is merely not open yet is refused at once instead.
UNREACHABLE_AFTER = 8.0


def login_addresses():
    """This login node's addresses as a compute node can reach them: the one the ssh client
    came in on first, then those its name resolves to."""
    found = []
    connection = os.environ.get("SSH_CONNECTION", "").split()
    if len(connection) == 4:
        found.append(connection[2])
    with contextlib.suppress(OSError):
        found += socket.gethostbyname_ex(socket.gethostname())[2]
    return [a for i, a in enumerate(found) if a not in found[:i] and ":" not in a]


def connect_error(server, timeout=2.0):
    """None if a TCP connection to the server's address opens, else the errno (or 'timeout')."""
    try:
        with socket.create_connection((server["addr"], server["port"]), timeout=timeout):
            return None
    except socket.timeout:
        return "timed out"
    except OSError as exc:
        return exc.errno


def scheduler(argv):
    """A SLURM command's output, or None if it could not run or failed."""
    try:
        done = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            universal_newlines=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def squeue(job):
    """(state, node, reason, time left) of a job; None once it has left the queue."""
    out = scheduler(["squeue", "-h", "-j", str(job), "-o", "%T|%N|%r|%L"])
    if out is None:
        # squeue itself failed (a busy controller, or an id it forgot): not known to be gone.
        return {"state": "UNKNOWN", "node": "", "reason": "squeue failed", "left": ""}
    if not out.strip():
        return None
    state, node, reason, left = (out.strip().splitlines()[0].split("|") + ["", "", "", ""])[:4]
    return {"state": state, "node": node, "reason": reason, "left": left}


def job_state_text(queue):
    """A queued job's state as rjn says it: "PENDING (Dependency)", "RUNNING"."""
    why = queue["reason"] if queue["reason"] not in ("", "None") else ""
    return queue["state"] + (" (%s)" % why if why else "")


def partition_of(request):
    return request.slurm.get("partition") or "the default partition"


def sacct_state(job):
    """A finished job's final state: from accounting when the cluster keeps it, else from the
    controller while it still remembers the job (MinJobAge, five minutes by default)."""
    out = (scheduler(["sacct", "-n", "-X", "-j", str(job), "-o", "State"]) or "").split()
    if not out:
        out = (scheduler(["squeue", "-h", "-t", "all", "-j", str(job), "-o", "%T"]) or "").split()
    return out[0] if out else "ENDED"


def scancel(job):
    scheduler(["scancel", str(job)])


def slurm_script(project, request, jupyter_argv, after=None):
    """The batch script: directives from [slurm], the setup lines, then Jupyter (exec). A
    follow-on job starts `after` the given one ends."""
    import shlex

    slurm = request.slurm
    lines = [
        "#!/bin/bash",
        "#SBATCH --job-name=" + shlex.quote("rjn-" + os.path.basename(project)),
        "#SBATCH --output=" + shlex.quote(os.path.join(project, RJN_DIR, "slurm-%j.log")),
        "#SBATCH --ntasks=1",
        "#SBATCH --signal=B:USR1@%d" % SIGNAL_AHEAD,
    ]
    if after:
        lines.append("#SBATCH --dependency=afterany:%d" % int(after))
    for key, flag in (
        ("partition", "--partition"),
        ("account", "--account"),
        ("time", "--time"),
        ("mem", "--mem"),
        ("cpus", "--cpus-per-task"),
        ("gpus", "--gpus"),
    ):
        if slurm.get(key) not in (None, ""):
            lines.append("#SBATCH %s=%s" % (flag, shlex.quote(str(slurm[key]))))
    lines += ["#SBATCH " + extra for extra in slurm.get("extra", [])]
    if request.setup:
        lines.append(request.setup)  # [remote] setup, as every command of rjn's has it
    lines += list(slurm.get("setup", []))
    spec = {
        "login": login_addresses(),
        "interface": slurm.get("interface"),
        "socket": slurm.get("connect") == "jump",
    }
    lines.append(
        "exec %s -c %s %s %s %s"
        % (
            shlex.quote(venv_python(project)),
            shlex.quote(LAUNCHER),
            shlex.quote(project),
            shlex.quote(json.dumps(jupyter_argv)),
            shlex.quote(json.dumps(spec)),
        )
    )
    return "\n".join(lines) + "\n"


def submit(project, request, argv, folder, env, after=None):
    """Submit Jupyter as a batch job (after job `after`, for a follow-on); its id."""
    script = os.path.join(folder, "jupyter-next.sbatch" if after else "jupyter.sbatch")
    write_private(script, slurm_script(project, request, argv, after))
    try:
        submitted = subprocess.run(
            ["sbatch", "--parsable", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            universal_newlines=True,
            timeout=60,
            env=env,
            cwd=project,
        )
    except OSError:
        raise HelperError(
            "sbatch is not available on this host",
            "point [remote] host at the cluster's login node, or remove [slurm]",
        )
    if submitted.returncode:
        raise HelperError(
            "sbatch refused the job: " + submitted.stderr.strip(),
            "check [slurm] partition, account and limits in remote.toml",
        )
    job = submitted.stdout.strip().split(";")[0]
    log("submitted job %s%s" % (job, " to follow job %s" % after if after else ""))
    return job


def slurm_start(project, request, argv, folder, env):
    """Submit Jupyter as a job; wait for RUNNING (reporting the queue) and for it to answer."""
    return take_over(project, request, folder, submit(project, request, argv, folder, env))


def take_over(project, request, folder, job):
    """Make `job` the project's server (a new job, or the follow-on of one that ended) and
    wait for it to run and answer."""
    slurm = request.slurm
    partition = partition_of(request)
    server = {"app": request.app, "dir": project, "job": job, "partition": partition}
    write_private(os.path.join(folder, "server.json"), json.dumps(server))
    job_log = os.path.join(folder, "slurm-%s.log" % job)
    # From here on, any way out but success cancels the job: a failed or abandoned open must
    # not leave an allocation burning until its time limit.
    cancel_on_hangup(job)
    try:
        return wait_for_job(job, server, slurm, request, folder, job_log, partition)
    except BaseException:
        scancel(job)
        raise


def cancel_on_hangup(job):
    """Cancel the job and exit if the local rjn goes away (Ctrl-C, a dropped link) while we
    wait: its end of our stdin closes."""

    def wait():
        wait_for_hangup()
        scancel(job)
        os._exit(3)

    threading.Thread(target=wait, daemon=True).start()


def wait_for_job(job, server, slurm, request, folder, job_log, partition):
    """Wait for RUNNING (reporting the queue), then for Jupyter to answer from here."""
    queue_deadline = time.monotonic() + float(slurm.get("queue_timeout", 600))
    ready_deadline = None
    unreachable_since = None
    seen = None
    while True:
        queue = squeue(job)
        if queue is None:
            raise HelperError(
                "job %s ended before Jupyter answered (%s): %s"
                % (job, sacct_state(job), tail(job_log)),
                "the job's log is %s on the cluster" % job_log,
            )
        if (queue["state"], queue["reason"]) != seen:
            seen = (queue["state"], queue["reason"])
            log("job %s: %s" % (job, job_state_text(queue)))
        if queue["state"] == "RUNNING":
            if ready_deadline is None:
                ready_deadline = time.monotonic() + request.ready_timeout
            placed = read_json(os.path.join(folder, "slurm-%s.json" % job))
            if placed:
                check_placement(job, placed)
                server.update(placed)
                write_private(os.path.join(folder, "server.json"), json.dumps(server))
                server["token"] = read_json(os.path.join(folder, "token.json"))["token"]
                if "sock" in server:
                    # A socket on the node: only a connection to the node can ask it. The
                    # local side does, through the tunnel, and cancels the job if it fails.
                    server.update(alive=True, running=True, started=True, **job_info(queue))
                    return server
                if http_status(server, timeout=2) == 200:
                    server.update(alive=True, running=True, started=True, **job_info(queue))
                    return server
                error = connect_error(server)
                if error is None or error == errno.ECONNREFUSED:
                    unreachable_since = None  # reached the node: Jupyter is still starting
                elif unreachable_since is None:
                    unreachable_since = time.monotonic()
                elif time.monotonic() - unreachable_since > UNREACHABLE_AFTER:
                    raise unreachable(job, server, error)
            if time.monotonic() > ready_deadline:
                raise HelperError(
                    "job %s runs on %s but Jupyter did not answer within %ss; the job was "
                    "cancelled: %s"
                    % (job, queue["node"], request.ready_timeout, tail(job_log)),
                    "the job's log is %s on the cluster; raise [jupyter] ready_timeout if "
                    "the node is slow" % job_log,
                )
        elif queue["reason"] in NEVER_STARTS:
            raise never_starts(job, queue["reason"], partition)
        elif time.monotonic() > queue_deadline:
            raise HelperError(
                "job %s still %s after %ss in %s (reason: %s); it was cancelled"
                % (
                    job,
                    queue["state"],
                    slurm.get("queue_timeout", 600),
                    partition,
                    queue["reason"] or "none given",
                ),
                "choose a less busy partition or smaller resources in [slurm], or raise "
                "[slurm] queue_timeout",
            )
        time.sleep(0.5)


def never_starts(job, reason, partition):
    return HelperError(
        "job %s cannot start as asked in %s (SLURM says %s); it was cancelled"
        % (job, partition, reason),
        "change [slurm] time, partition, account or resources in remote.toml to fit the "
        "cluster's limits (`sinfo` and `sacctmgr show qos` list them)",
    )


def check_placement(job, placed):
    """A HelperError at once on an address that cannot work from here: no waiting on what
    cannot change."""
    if "fault" in placed:
        raise HelperError(
            "job %s on %s: %s; the job was cancelled" % (job, placed.get("node"), placed["fault"]),
            "check [slurm] interface: it must name a network interface of the compute nodes",
        )
    here = socket.gethostname()
    if "addr" in placed and placed["addr"].startswith("127.") and placed.get("host") != here:
        raise unreachable(job, placed, "a loopback address of another host")


def unreachable(job, server, error):
    why = os.strerror(error) if isinstance(error, int) else error
    return HelperError(
        "job %s: Jupyter on node %s listens on %s:%s (%s), which this login node cannot "
        "reach (%s); the job was cancelled"
        % (job, server.get("node"), server["addr"], server["port"], server.get("why"), why),
        "set [slurm] interface to the compute nodes' network interface that the login node "
        'reaches (e.g. "ib0" or "eth1"; `ip -br addr` on a node lists them)',
    )


def job_info(queue):
    return {"job_state": queue["state"], "node": queue["node"], "time_left": queue["left"]}
