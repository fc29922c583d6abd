"""rjn's remote helper: runs on the remote host, standard library only (Python 3.8+).

It is sent over ssh's stdin on each call, runs one action and answers with JSON lines
on stdout: {"log": ...} while it works, then {"ok": {...}} or {"error": {...}}.
It keeps its records in <project>/.rjn/, private to the user.
"""

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

RJN_DIR = ".rjn"
SOCKET_MAX = 100  # sun_path is 108 bytes on Linux, 104 on macOS


def emit(**message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def log(text):
    emit(log=text)


class Fail(Exception):
    def __init__(self, message, hint=None):
        super().__init__(message)
        self.message = message
        self.hint = hint


# -- places -------------------------------------------------------------------------


def project_dir(raw):
    path = os.path.abspath(os.path.expanduser(raw))
    try:
        os.makedirs(os.path.join(path, RJN_DIR), mode=0o700, exist_ok=True)
    except OSError as exc:
        raise Fail(
            "cannot create the project directory %s: %s" % (path, exc.strerror),
            "set [remote] dir to a folder you can write to",
        )
    return path


def private(path):
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def rjn_dir(project):
    return private(os.path.join(project, RJN_DIR))


def data_home():
    return os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")


def venv_dir(project):
    """The project's environment: the one place the remote layout spells it."""
    return os.path.join(project, RJN_DIR, "venv")


def venv_bin(project, name):
    return os.path.join(venv_dir(project), "bin", name)


def venv_python(project):
    return venv_bin(project, "python")


def socket_path(project):
    """A private unix socket for Jupyter: in the project if short enough, else in /tmp."""
    path = os.path.join(project, RJN_DIR, "jupyter.sock")
    if len(path.encode()) < SOCKET_MAX and ":" not in path:
        return path
    digest = hashlib.sha256(project.encode()).hexdigest()[:16]
    folder = os.path.join("/tmp", "rjn-%d" % os.getuid())
    private(folder)
    if os.stat(folder).st_uid != os.getuid():
        raise Fail("%s belongs to another user" % folder)
    return os.path.join(folder, digest + ".sock")


def read_json(path):
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def write_private(path, text):
    tmp = "%s.%d.tmp" % (path, os.getpid())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


# -- the Jupyter server ----------------------------------------------------------------


def api(record, method, path, timeout):
    """One request to the server in `record` (its socket, or address and port), with its
    token; the HTTP status, or None if nothing answered."""
    request = (
        "%s %s HTTP/1.1\r\nHost: localhost\r\nAuthorization: token %s\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n" % (method, path, record.get("token", ""))
    ).encode()
    try:
        if record.get("sock"):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.settimeout(timeout)
            conn.connect(record["sock"])
        else:
            address = (record.get("addr", "127.0.0.1"), record["port"])
            conn = socket.create_connection(address, timeout=timeout)
        with conn:
            conn.sendall(request)
            head = conn.recv(64).decode("latin-1")
        return int(head.split()[1])
    except (OSError, ValueError, IndexError, KeyError):
        return None


def http_status(record, timeout=3.0):
    """GET /api/status: 200 when the server is up and the token is right."""
    return api(record, "GET", "/api/status", timeout)


def process_start(pid):
    """When a process started (clock ticks since boot, /proc), or None without /proc."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(") ", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_is_server(record):
    """Whether the recorded pid is still the server rjn started: a reused pid (another
    project's Jupyter, anything) has another start time, and is never signalled."""
    pid = record.get("pid", -1)
    if record.get("pid_start") is not None:
        return process_start(pid) == record["pid_start"]
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            cmdline = handle.read()
        return b"jupyter" in cmdline and record.get("dir", "").encode() in cmdline
    except OSError:
        # No /proc (macOS): signal 0 tells whether the process exists at all.
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def server_state(project):
    """The project's server as recorded, with whether it is alive and answering."""
    record = read_json(os.path.join(project, RJN_DIR, "server.json"))
    if not record:
        return {"alive": False}
    token = read_json(os.path.join(project, RJN_DIR, "token.json")) or {}
    record["token"] = token.get("token", "")
    if record.get("job"):
        queue = squeue(record["job"])
        if queue is None:
            record.update(job_state=sacct_state(record["job"]), alive=False, running=False)
            return record
        record.update(job_info(queue))
        alive = queue["state"] == "RUNNING" and ("port" in record or "sock" in record)
        record["running"] = queue["state"] in ("RUNNING", "PENDING", "CONFIGURING", "UNKNOWN")
        # A socket on the node cannot be asked from here: the tunnel's probe tells.
        record["alive"] = alive and ("sock" in record or http_status(record) == 200)
        return record
    alive = pid_is_server(record)
    status = http_status(record) if alive else None
    record["alive"] = status == 200
    record["running"] = alive
    return record


def start(args):
    project = project_dir(args["dir"])
    current = server_state(project)
    if current["alive"]:
        current["started"] = False
        return current
    if current.get("running") and current.get("job"):
        # Pending, or running but not answering: this job will not serve; start afresh.
        scancel(str(current["job"]))
    elif current.get("running"):
        stop_pid(current["pid"])
    python = venv_python(project)
    jupyter = os.path.join(os.path.dirname(python), "jupyter")
    if not os.path.exists(jupyter):
        raise Fail(
            "Jupyter is not installed in %s" % os.path.dirname(os.path.dirname(python)),
            "run `rjn open` again; it installs the environment first",
        )
    folder = rjn_dir(project)
    token = secrets.token_urlsafe(32)
    write_private(os.path.join(folder, "token.json"), json.dumps({"token": token}))
    record = {"app": args.get("app", "lab"), "dir": project}
    argv = [jupyter, record["app"], "--no-browser", "--ServerApp.root_dir=" + project]
    idle = int(float(args.get("idle_timeout", 0)) * 60)
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
    if args.get("slurm") is not None:
        return slurm_start(project, args, argv, folder, env)
    # The token travels in the environment, never in argv, and Jupyter logs it masked.
    env["JUPYTER_TOKEN"] = token
    if args.get("listen", "socket") == "socket":
        record["sock"] = socket_path(project)
        if os.path.exists(record["sock"]):
            os.unlink(record["sock"])
        argv += ["--ServerApp.sock=" + record["sock"], "--ServerApp.sock_mode=0600"]
    else:
        record["port"] = free_port()
        argv += [
            "--ServerApp.ip=127.0.0.1",
            "--ServerApp.port=%d" % record["port"],
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
    record["pid"] = proc.pid
    record["pid_start"] = process_start(proc.pid)
    record["started_at"] = time.time()
    write_private(os.path.join(folder, "server.json"), json.dumps(record))
    record["token"] = token
    deadline = time.monotonic() + float(args.get("ready_timeout", 120))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Fail(
                "Jupyter exited at start (code %s): %s" % (proc.returncode, tail(logfile)),
                "the full log is %s on the remote" % logfile,
            )
        if http_status(record, timeout=2) == 200:
            record.update(alive=True, running=True, started=True)
            return record
        time.sleep(0.1)
    stop_pid(proc.pid)
    raise Fail(
        "Jupyter did not answer within %ss: %s" % (args.get("ready_timeout", 120), tail(logfile)),
        "raise [jupyter] ready_timeout if the remote is slow; the log is " + logfile,
    )


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tail(path, lines=8):
    try:
        with open(path, errors="replace") as handle:
            return " / ".join(line.strip() for line in handle.readlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_pid(pid, grace=10.0):
    """Stop a server's process group: SIGTERM, then SIGKILL after `grace` seconds."""
    stop_group(pid, ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)), alive_pid)


def stop_group(pgid, steps, alive):
    """Signal a process group step by step, each signal given its time, until `alive(pgid)`
    is false."""
    for sig, wait in steps:
        try:
            os.killpg(pgid, sig)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pgid):
                return
            time.sleep(0.05)


def alive_pid(pid):
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
        if waited:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return True


def stop(args):
    project = project_dir(args["dir"])
    current = server_state(project)
    stopped = False
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
    return {"stopped": stopped}


def shutdown(record):
    """Ask Jupyter to shut down through its API: kernels are stopped cleanly."""
    api(record, "POST", "/api/shutdown", timeout=5)


# -- SLURM: Jupyter as a batch job on a compute node --------------------------------------

# Runs on the compute node as the job's main process: picks the address the login node can
# reach and a free port, records them, then becomes Jupyter (exec), so the scheduler tracks
# Jupyter itself. The address is the one the node's routing table uses toward the login node
# (or [slurm] interface's); the node's own name is not resolved: on many machines it means
# loopback (127.0.1.1).
LAUNCHER = """
import fcntl, json, os, socket, stat, struct, sys
project, job = sys.argv[1], os.environ.get("SLURM_JOB_ID", "0")
spec = json.loads(sys.argv[3])
rjn = os.path.join(project, ".rjn")
with open(os.path.join(rjn, "token.json")) as handle:
    token = json.load(handle)["token"]

def interface_address(name):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))
    return socket.inet_ntoa(packed[20:24])

def route_source(target):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((target, 9))
        return probe.getsockname()[0]

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

record = {"node": socket.gethostname().split(".")[0], "host": socket.gethostname()}
try:
    if spec.get("socket"):
        sock = private_socket()
        record.update(sock=sock, why="a private socket on the node")
        listen = ["--ServerApp.sock=" + sock, "--ServerApp.sock_mode=0600"]
    else:
        addr, why = choose()
        with socket.socket() as probe:
            probe.bind((addr, 0))
            port = probe.getsockname()[1]
        record.update(addr=addr, port=port, why=why)
        listen = ["--ServerApp.ip=" + addr, "--ServerApp.port=%d" % port,
                  "--ServerApp.port_retries=0"]
except OSError as exc:
    record["fault"] = "cannot pick where to listen: %s" % exc
tmp = os.path.join(rjn, "slurm-%s.json.tmp" % job)
with open(tmp, "w") as handle:
    json.dump(record, handle)
os.replace(tmp, os.path.join(rjn, "slurm-%s.json" % job))
if "fault" in record:
    sys.exit(record["fault"])
argv = json.loads(sys.argv[2]) + listen
env = dict(os.environ, JUPYTER_TOKEN=token)
os.execve(argv[0], argv, env)
"""

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


def connect_error(record, timeout=2.0):
    """None if a TCP connection to the record's address opens, else the errno (or 'timeout')."""
    try:
        with socket.create_connection((record["addr"], record["port"]), timeout=timeout):
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


def sacct_state(job):
    """A finished job's final state, from accounting when the cluster keeps it."""
    out = (scheduler(["sacct", "-n", "-X", "-j", str(job), "-o", "State"]) or "").split()
    return out[0] if out else "ENDED"


def scancel(job):
    scheduler(["scancel", str(job)])


def slurm_script(project, args, jupyter_argv):
    """The batch script: directives from [slurm], the setup lines, then Jupyter (exec)."""
    import shlex

    slurm = args["slurm"]
    lines = [
        "#!/bin/bash",
        "#SBATCH --job-name=" + shlex.quote("rjn-" + os.path.basename(project)),
        "#SBATCH --output=" + shlex.quote(os.path.join(project, RJN_DIR, "slurm-%j.log")),
        "#SBATCH --ntasks=1",
    ]
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


def slurm_start(project, args, argv, folder, env):
    """Submit Jupyter as a job; wait for RUNNING (reporting the queue) and for it to answer."""
    slurm = args["slurm"]
    script = os.path.join(folder, "jupyter.sbatch")
    write_private(script, slurm_script(project, args, argv))
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
        raise Fail(
            "sbatch is not available on this host",
            "point [remote] host at the cluster's login node, or remove [slurm]",
        )
    if submitted.returncode:
        raise Fail(
            "sbatch refused the job: " + submitted.stderr.strip(),
            "check [slurm] partition, account and limits in remote.toml",
        )
    job = submitted.stdout.strip().split(";")[0]
    partition = slurm.get("partition") or "the default partition"
    record = {"app": args.get("app", "lab"), "dir": project, "job": job, "partition": partition}
    write_private(os.path.join(folder, "server.json"), json.dumps(record))
    job_log = os.path.join(folder, "slurm-%s.log" % job)
    log("submitted job %s" % job)
    # From here on, any way out but success cancels the job: a failed or abandoned open must
    # not leave an allocation burning until its time limit.
    cancel_on_hangup(job)
    try:
        return wait_for_job(job, record, slurm, args, folder, job_log, partition)
    except BaseException:
        scancel(job)
        raise


def wait_for_hangup():
    """Block until the local rjn closes our stdin (it went away, or the link dropped).

    The descriptor is read, not sys.stdin: a thread blocked in the buffered reader holds its
    lock, and at exit the interpreter waits a second for that lock, then aborts (measured:
    every `rjn run` ended 1 s late, and the helper died of SIGABRT)."""
    with contextlib.suppress(OSError):
        while os.read(0, 65536):
            pass


def cancel_on_hangup(job):
    """Cancel the job and exit if the local rjn goes away (Ctrl-C, a dropped link) while we
    wait: its end of our stdin closes."""

    def wait():
        wait_for_hangup()
        scancel(job)
        os._exit(3)

    threading.Thread(target=wait, daemon=True).start()


def wait_for_job(job, record, slurm, args, folder, job_log, partition):
    """Wait for RUNNING (reporting the queue), then for Jupyter to answer from here."""
    queue_deadline = time.monotonic() + float(slurm.get("queue_timeout", 600))
    ready_deadline = None
    unreachable_since = None
    seen = None
    while True:
        queue = squeue(job)
        if queue is None:
            raise Fail(
                "job %s ended before Jupyter answered (%s): %s"
                % (job, sacct_state(job), tail(job_log)),
                "the job's log is %s on the cluster" % job_log,
            )
        if (queue["state"], queue["reason"]) != seen:
            seen = (queue["state"], queue["reason"])
            why = queue["reason"] if queue["reason"] not in ("", "None") else ""
            log("job %s: %s%s" % (job, queue["state"], " (%s)" % why if why else ""))
        if queue["state"] == "RUNNING":
            if ready_deadline is None:
                ready_deadline = time.monotonic() + float(args.get("ready_timeout", 120))
            placed = read_json(os.path.join(folder, "slurm-%s.json" % job))
            if placed:
                check_placement(job, placed)
                record.update(placed)
                write_private(os.path.join(folder, "server.json"), json.dumps(record))
                record["token"] = read_json(os.path.join(folder, "token.json"))["token"]
                if "sock" in record:
                    # A socket on the node: only a connection to the node can ask it. The
                    # local side does, through the tunnel, and cancels the job if it fails.
                    record.update(alive=True, running=True, started=True, **job_info(queue))
                    return record
                if http_status(record, timeout=2) == 200:
                    record.update(alive=True, running=True, started=True, **job_info(queue))
                    return record
                error = connect_error(record)
                if error is None or error == errno.ECONNREFUSED:
                    unreachable_since = None  # reached the node: Jupyter is still starting
                elif unreachable_since is None:
                    unreachable_since = time.monotonic()
                elif time.monotonic() - unreachable_since > UNREACHABLE_AFTER:
                    raise unreachable(job, record, error)
            if time.monotonic() > ready_deadline:
                raise Fail(
                    "job %s runs on %s but Jupyter did not answer within %ss; the job was "
                    "cancelled: %s"
                    % (job, queue["node"], args.get("ready_timeout", 120), tail(job_log)),
                    "the job's log is %s on the cluster; raise [jupyter] ready_timeout if "
                    "the node is slow" % job_log,
                )
        elif time.monotonic() > queue_deadline:
            raise Fail(
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


def check_placement(job, placed):
    """Fail at once on an address that cannot work from here: no waiting on what cannot change."""
    if "fault" in placed:
        raise Fail(
            "job %s on %s: %s; the job was cancelled" % (job, placed.get("node"), placed["fault"]),
            "check [slurm] interface: it must name a network interface of the compute nodes",
        )
    here = socket.gethostname()
    if "addr" in placed and placed["addr"].startswith("127.") and placed.get("host") != here:
        raise unreachable(job, placed, "a loopback address of another host")


def unreachable(job, record, error):
    why = os.strerror(error) if isinstance(error, int) else error
    return Fail(
        "job %s: Jupyter on node %s listens on %s:%s (%s), which this login node cannot "
        "reach (%s); the job was cancelled"
        % (job, record.get("node"), record["addr"], record["port"], record.get("why"), why),
        "set [slurm] interface to the compute nodes' network interface that the login node "
        'reaches (e.g. "ib0" or "eth1"; `ip -br addr` on a node lists them)',
    )


def job_info(queue):
    return {"job_state": queue["state"], "node": queue["node"], "time_left": queue["left"]}


# -- the environment -------------------------------------------------------------------


def env_record(project):
    return read_json(os.path.join(project, RJN_DIR, "env.json")) or {}


def run_logged(argv, **kwargs):
    """Run a command, streaming its output as log lines; return (code, last lines)."""
    log("$ " + " ".join(argv))
    lines = []
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            **kwargs,
        )
    except OSError as exc:
        return 127, [str(exc)]
    for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        if line:
            lines.append(line)
            del lines[:-40]
            log(line)
    return proc.wait(), lines


# uv's release files, as the package index lists them.
UV_RELEASE = "https://pypi.org/pypi/uv/json"
UV_WHEEL_MAX = 200 * 1024 * 1024


def download_uv(scratch):
    """uv's binary straight out of its wheel on the package index, its digest checked: no
    venv, no pip (seconds faster on a fresh remote). False where that cannot be done here:
    not Linux with glibc on x86_64 or aarch64, or the index not reached (a cluster with a
    mirror of its own); then pip's route is taken."""
    import io
    import platform
    import urllib.parse
    import urllib.request
    import zipfile

    machine, (libc, version) = platform.machine(), platform.libc_ver()
    if (
        not sys.platform.startswith("linux")
        or libc != "glibc"
        or machine not in ("x86_64", "aarch64")
    ):
        return False
    have = tuple(int(part) for part in version.split(".")[:2])

    def fits(name):
        # manylinux_2_17_x86_64 (and its manylinux2014 alias) within this machine's glibc
        for tag in name[:-4].split("-")[-1].split("."):
            parts = tag.split("_")
            if tag.endswith("_" + machine) and parts[0] == "manylinux" and parts[1].isdigit():
                return (int(parts[1]), int(parts[2])) <= have
        return False

    try:
        with urllib.request.urlopen(UV_RELEASE, timeout=15) as response:
            files = json.loads(response.read(64 * 1024 * 1024))["urls"]
        wheel = next(f for f in files if f["filename"].endswith(".whl") and fits(f["filename"]))
        # A mirror may list its files relative to the page: urljoin takes either.
        url = urllib.parse.urljoin(UV_RELEASE, wheel["url"])
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read(UV_WHEEL_MAX + 1)
        if (
            len(data) > UV_WHEEL_MAX
            or hashlib.sha256(data).hexdigest() != wheel["digests"]["sha256"]
        ):
            return False
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            member = next(n for n in archive.namelist() if n.endswith(".data/scripts/uv"))
            binary = archive.read(member)
    except (OSError, ValueError, KeyError, TypeError, StopIteration, zipfile.BadZipFile):
        return False
    os.makedirs(os.path.join(scratch, "bin"), exist_ok=True)
    target = os.path.join(scratch, "bin", "uv")
    with open(target, "wb") as handle:
        handle.write(binary)
    os.chmod(target, 0o755)
    return subprocess.call([target, "--version"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL) == 0  # fmt: skip


def find_uv():
    """uv on PATH, or rjn's own copy: fetched from the package index, else installed with pip
    into a small venv.

    Either builds in a scratch folder renamed into place under a lock, so a second rjn at the
    same moment waits and then uses it, and never sees half of it.
    """
    import fcntl

    found = shutil.which("uv")
    if found:
        return found
    base = private(os.path.join(data_home(), "rjn"))
    home = os.path.join(base, "uv")
    uv = os.path.join(home, "bin", "uv")
    if os.path.exists(uv):
        return uv
    with open(os.path.join(base, "uv.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(uv):
            return uv
        log("uv not found on the remote: installing it into " + home)
        scratch = "%s.%d" % (home, os.getpid())
        shutil.rmtree(scratch, ignore_errors=True)
        if download_uv(scratch):
            os.rename(scratch, home)
            return uv
        shutil.rmtree(scratch, ignore_errors=True)
        code, _ = run_logged([sys.executable, "-m", "venv", scratch])
        if code == 0:
            code, _ = run_logged(
                [os.path.join(scratch, "bin", "python"), "-m", "pip", "install", "--quiet", "uv"]
            )
        if code == 0 and os.path.exists(os.path.join(scratch, "bin", "uv")):
            # Only bin/uv is used, a standalone binary: the venv can move into place.
            os.rename(scratch, home)
            return uv
        shutil.rmtree(scratch, ignore_errors=True)
    log("could not install uv; falling back to pip")
    return None


def failing_package(lines):
    """The package an installer choked on, if its output names one."""
    markers = (
        "No matching distribution found for ",
        "Because ",
        "Failed to build ",
        "× No solution found",
        "error: ",
        "ERROR: ",
    )
    for line in reversed(lines):
        for marker in markers:
            if marker in line:
                return line.strip()
    return lines[-1] if lines else "no output"


def ensure_env(args):
    project = project_dir(args["dir"])
    wanted = {"hash": args["hash"], "python": sys.version}
    if env_record(project) == wanted and os.path.exists(venv_python(project)):
        return {"changed": False}
    venv = venv_dir(project)
    requirements = os.path.join(project, args["requirements"])
    packages = list(args.get("packages", []))
    req = ["-r", requirements] if os.path.exists(requirements) else []
    started = time.monotonic()
    uv = None if args.get("no_uv") else find_uv()
    # uv trusts its own CA bundle by default; a site CA (proxies, clusters) is in the system's.
    uv_env = dict(
        os.environ,
        UV_SYSTEM_CERTS=os.environ.get("UV_SYSTEM_CERTS", "1"),
        UV_NATIVE_TLS=os.environ.get("UV_NATIVE_TLS", "1"),
    )
    if uv:
        if not os.path.exists(venv_python(project)):
            code, lines = run_logged([uv, "venv", "--python", sys.executable, venv], env=uv_env)
            if code:
                raise Fail("could not create the environment: " + failing_package(lines))
        code, lines = run_logged(
            [uv, "pip", "install", "--python", venv_python(project)] + req + packages, env=uv_env
        )
    else:
        if not os.path.exists(venv_python(project)):
            code, lines = run_logged([sys.executable, "-m", "venv", venv])
            if code:
                raise Fail(
                    "could not create the environment: " + failing_package(lines),
                    "install the venv module on the remote (Debian: python3-venv)",
                )
        code, lines = run_logged(
            [venv_python(project), "-m", "pip", "install", "--disable-pip-version-check"]
            + req
            + packages
        )
    if code and any("No space left on device" in line for line in lines):
        usage = shutil.disk_usage(project)
        raise Fail(
            "the remote disk is full (%d MB free in %s): the environment could not be "
            "installed" % (usage.free // 10**6, project),
            "free space on the remote (uv's and pip's caches are in ~/.cache), or set "
            "[remote] dir to a folder on a larger disk",
        )
    if code:
        raise Fail(
            "installing the requirements failed: " + failing_package(lines),
            "fix or pin that package in remote.toml [requirements] (extra, map, ignore) "
            "or in your own requirements.txt; `rjn open -v` shows the installer's output",
        )
    write_private(os.path.join(project, RJN_DIR, "env.json"), json.dumps(wanted))
    return {
        "changed": True,
        "seconds": round(time.monotonic() - started, 1),
        "installer": "uv" if uv else "pip",
    }


# -- watching results -------------------------------------------------------------------

# Where inotify sees only this host's writes (or none): the writer is usually another node.
NETWORK_FS = {
    "nfs",
    "nfs4",
    "lustre",
    "gpfs",
    "cifs",
    "smb3",
    "smbfs",
    "beegfs",
    "ceph",
    "fuse.sshfs",
    "fuse.glusterfs",
    "glusterfs",
    "panfs",
    "afs",
    "9p",
    "fuse.juicefs",
}


def fs_type(path):
    """The filesystem type of the mount holding `path` (Linux /proc/mounts), or ''."""
    best, kind = "", ""
    try:
        with open("/proc/mounts") as handle:
            for line in handle:
                fields = line.split()
                mount = fields[1].replace("\\040", " ")
                inside = path == mount or path.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best):
                    best, kind = mount, fields[2]
    except OSError:
        pass
    return kind


def watch(args):
    """Stream {"file": relpath} for each result file closed after writing or moved into place.

    Runs until stdin closes (the local rjn went away). Falls back to polling where inotify
    cannot see writes; polling reports a file once its size and mtime held still for a round.
    """
    import fnmatch

    project = project_dir(args["dir"])
    folders = [os.path.join(project, f) for f in args["results"]]
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
    patterns = args["patterns"]
    interval = float(args.get("interval", 1.0))
    lock = threading.Lock()

    inline_max = int(args.get("inline_max", 0))

    def report(path):
        if not any(fnmatch.fnmatch(os.path.basename(path), p) for p in patterns):
            return
        message = {"file": os.path.relpath(path, project)}
        inline = read_whole(path, inline_max)
        if inline:
            message.update(inline)
        with lock:
            emit(**message)

    tree = args.get("tree")
    if tree:
        tree = {"exclude": list(tree["exclude"]), "include": list(tree.get("include", []))}

    def changed(path):
        rel = os.path.relpath(path, project)
        if not rel.startswith("..") and travels_path(rel, tree):
            with lock:
                emit(changed=rel)

    mode, reason = args.get("mode", "auto"), ""
    kind = fs_type(project)
    if mode == "auto":
        mode = "poll" if kind in NETWORK_FS else "events"
        if mode == "poll":
            reason = "%s does not report other hosts' writes to inotify" % kind
    if mode == "events":
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers.inotify import InotifyObserver
        except ImportError:
            mode, reason = "poll", "watchdog with inotify is not available here"
    exit_when_stdin_closes()
    if mode == "events":

        class Handler(FileSystemEventHandler):
            def on_closed(self, event):  # closed after writing: complete
                report(event.src_path)

            def on_moved(self, event):  # renamed into place: complete
                report(event.dest_path)

            def on_created(self, event):
                # Files written into a brand-new folder before its watch was added send no
                # close event of their own: report those no process still has open to write.
                if event.is_directory:
                    for root, _, files in os.walk(event.src_path):
                        for name in files:
                            path = os.path.join(root, name)
                            if not open_for_writing(path):
                                report(path)

        observer = InotifyObserver()
        for folder in folders:
            observer.schedule(Handler(), folder, recursive=True)
        if tree:
            watch_tree(observer, project, tree, changed)
        observer.start()
        emit(ready={"mode": "events", "fs": kind, "reason": reason})
        while True:
            time.sleep(3600)
    emit(ready={"mode": "poll", "fs": kind, "reason": reason, "interval": interval})
    if tree:
        polling = threading.Thread(target=poll_tree, args=(project, tree, changed, interval))
        polling.daemon = True
        polling.start()
    poll(folders, report, interval)


def travels_path(rel, tree):
    """Whether a path and every folder above it travel both ways."""
    parts = rel.split("/")
    return all(
        travels("/".join(parts[: i + 1]), i < len(parts) - 1, tree["exclude"], tree["include"])
        for i in range(len(parts))
    )


def watch_tree(observer, project, tree, changed):
    """Events for the project's own files (a notebook saved in Jupyter, a script edited here),
    without watching what never travels (the environment in .rjn/ holds thousands of folders)."""
    from watchdog.events import FileSystemEventHandler

    def top_level(path):
        rel = os.path.relpath(path, project)
        if "/" not in rel and os.path.isdir(path) and travels(rel, True, **tree):
            observer.schedule(Tree(), path, recursive=True)

    class Tree(FileSystemEventHandler):
        def on_closed(self, event):
            changed(event.src_path)

        def on_moved(self, event):
            changed(event.dest_path)

        def on_deleted(self, event):
            changed(event.src_path)

        def on_created(self, event):
            if event.is_directory:
                top_level(event.src_path)

    observer.schedule(Tree(), project, recursive=False)
    for name in os.listdir(project):
        top_level(os.path.join(project, name))


def poll_tree(project, tree, changed, interval):
    """Polling for the project's own files: a change reported once it held still a round."""
    previous = scan_tree(project, tree["exclude"], tree["include"])
    while True:
        time.sleep(interval)
        current = scan_tree(project, tree["exclude"], tree["include"], previous)
        for rel in set(current) ^ set(previous) | {
            r for r in current if r in previous and current[r] != previous[r]
        }:
            changed(os.path.join(project, rel))
        previous = current


def exit_when_stdin_closes():
    """End this helper when the local rjn goes away (Ctrl-C, or a lost connection)."""

    def wait():
        wait_for_hangup()
        os._exit(0)

    threading.Thread(target=wait, daemon=True).start()


def read_whole(path, limit):
    """A small file's bytes (base64) and mtime, sent in the event itself: it saves the pull
    its own round trip. None if it is too big, or changed while we read it."""
    import base64

    try:
        # A link is never read through (it may point at ~/.ssh): it travels as a link, and
        # the local side judges where it points.
        before = os.lstat(path)
        if before.st_size > limit or not stat.S_ISREG(before.st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(limit + 1)
            after = os.fstat(handle.fileno())
    except OSError:
        return None
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        return None  # rewritten meanwhile: its own close event follows
    if len(data) != after.st_size:
        return None
    return {"data": base64.b64encode(data).decode(), "mtime_ns": after.st_mtime_ns}


def open_for_writing(path):
    """Whether any of our processes holds `path` open for writing (Linux /proc)."""
    target = os.path.realpath(path)
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        fd_dir = "/proc/%s/fd" % pid
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(os.path.join(fd_dir, fd)) != target:
                    continue
                with open("/proc/%s/fdinfo/%s" % (pid, fd)) as info:
                    flags = int(info.readline().split()[1], 8)
                if flags & (os.O_WRONLY | os.O_RDWR):
                    return True
            except (OSError, ValueError, IndexError):
                continue
    return False


def poll(folders, report, interval):
    def scan():
        seen = {}
        for folder in folders:
            for root, _, files in os.walk(folder):
                for name in files:
                    path = os.path.join(root, name)
                    try:
                        info = os.stat(path)
                    except OSError:
                        continue
                    seen[path] = (info.st_size, info.st_mtime_ns)
        return seen

    reported = scan()  # what is there at start is not new
    previous = dict(reported)
    while True:
        time.sleep(interval)
        current = scan()
        for path, stamp in current.items():
            # Unchanged for a whole round, and not yet reported in this state: complete.
            if previous.get(path) == stamp and reported.get(path) != stamp:
                reported[path] = stamp
                report(path)
        previous = current


# -- running commands --------------------------------------------------------------------


def run(args):
    """Run argv in the project with its environment; stream its output as JSON lines.

    The command gets a process group of its own: when our stdin closes (Ctrl-C or a lost
    connection on the other side) the whole group is interrupted, then terminated.
    """
    project = project_dir(args["dir"])
    venv_bin = os.path.dirname(venv_python(project))
    env = dict(os.environ, VIRTUAL_ENV=os.path.dirname(venv_bin), PYTHONUNBUFFERED="1")
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    argv = list(args["argv"])
    if os.path.exists(os.path.join(venv_bin, argv[0])):
        argv[0] = os.path.join(venv_bin, argv[0])
    if args.get("detach"):
        return detach(project, argv, env)
    try:
        proc = subprocess.Popen(
            argv,
            cwd=project,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise Fail(
            "cannot run %s: %s" % (argv[0], exc.strerror),
            "check the command; it runs in %s with the environment active" % project,
        )
    lock = threading.Lock()

    def pump(stream, key):
        for raw in iter(stream.readline, b""):
            with lock:
                emit(**{key: raw.decode(errors="replace").rstrip("\n")})

    def until_stdin_closes():
        wait_for_hangup()
        if proc.poll() is None:
            # proc.poll, not waitpid: the exit code must stay ours to read.
            steps = ((signal.SIGINT, 5.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 1.0))
            stop_group(proc.pid, steps, lambda _: proc.poll() is None)

    pumps = [
        threading.Thread(target=pump, args=(proc.stdout, "out")),
        threading.Thread(target=pump, args=(proc.stderr, "err")),
    ]
    for thread in pumps:
        thread.start()
    threading.Thread(target=until_stdin_closes, daemon=True).start()
    code = proc.wait()
    for thread in pumps:
        thread.join()
    # What the run left, in the same answer: the local side pulls only if there is something.
    return dict(listings(project, args), exit=code if code >= 0 else 128 - code)


# A detached run's supervisor: runs the command with output to the log, then records its exit code.
SUPERVISOR = """
import json, subprocess, sys
a = json.loads(sys.argv[1])
with open(a["log"], "ab") as out:
    try:
        code = subprocess.call(a["argv"], cwd=a["cwd"], stdin=subprocess.DEVNULL, stdout=out,
                               stderr=subprocess.STDOUT)
    except OSError as exc:
        out.write(("cannot run %s: %s\\n" % (a["argv"][0], exc.strerror)).encode())
        code = 127
with open(a["exit"] + ".tmp", "w") as done:
    done.write(str(code))
import os
os.replace(a["exit"] + ".tmp", a["exit"])
"""


def detach(project, argv, env):
    """Start argv in a session of its own that outlives the connection; output to a log."""
    runs = private(os.path.join(project, RJN_DIR, "runs"))
    run_id = time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)
    spec = {
        "argv": argv,
        "cwd": project,
        "log": os.path.join(runs, run_id + ".log"),
        "exit": os.path.join(runs, run_id + ".exit"),
    }
    with open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            [sys.executable, "-c", SUPERVISOR, json.dumps(spec)],
            cwd=project,
            env=env,
            stdin=devnull,
            stdout=devnull,
            stderr=devnull,
            start_new_session=True,
            close_fds=True,
        )
    return {"run": run_id, "pid": proc.pid, "log": spec["log"]}


def logs(args):
    """Stream a run's log as {"out": line}; with follow, until the run ends or stdin closes."""
    project = project_dir(args["dir"])
    runs = os.path.join(project, RJN_DIR, "runs")
    names = (
        sorted(n[:-4] for n in os.listdir(runs) if n.endswith(".log"))
        if os.path.isdir(runs)
        else []
    )
    run_id = args.get("run") or (names[-1] if names else None)
    if run_id not in names:
        raise Fail(
            "no run %s" % run_id if run_id else "no detached runs yet",
            "start one with `rjn run --detach -- CMD`",
        )
    log_path, exit_path = (os.path.join(runs, run_id + ext) for ext in (".log", ".exit"))
    if args.get("follow"):
        exit_when_stdin_closes()
    with open(log_path, "rb") as log_file:
        pending = b""
        while True:
            finished = os.path.exists(exit_path)
            chunk = log_file.read()
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                emit(out=line.decode(errors="replace"))
            if chunk:
                continue
            if finished or not args.get("follow"):
                break
            time.sleep(0.2)
        if pending:
            emit(out=pending.decode(errors="replace"))
    code = None
    if os.path.exists(exit_path):
        with open(exit_path) as handle:
            code = int(handle.read().strip() or 0)
    return {"run": run_id, "exit": code}


# -- the project tree, both ways ---------------------------------------------------------
# What travels is decided by one matcher, imported by the local side too (rjn.agent.travels),
# so both sides list the same files.


def travels(rel, is_dir, exclude, include=()):
    """Whether a project path (posix, relative) is kept in step: rsync-style patterns, where
    "name/" matches folders only, a pattern with a slash is anchored at the project, and
    `include` wins over `exclude`."""
    import fnmatch

    name = rel.rsplit("/", 1)[-1]

    def matches(pattern):
        folder_only = pattern.endswith("/")
        pattern = pattern.rstrip("/")
        if folder_only and not is_dir:
            return False
        if "/" in pattern:
            return fnmatch.fnmatchcase(rel, pattern.lstrip("/"))
        return fnmatch.fnmatchcase(name, pattern)

    if any(matches(p) for p in include):
        return True
    return not any(matches(p) for p in exclude)


def file_hash(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scan_tree(project, exclude, include=(), known=None):
    """{relpath: [size, mtime_ns, sha256]} of every regular file that travels; links are not
    followed, and a file whose size and time match `known` keeps its known hash unread."""
    known = known or {}
    found = {}
    for folder, dirs, files in os.walk(project):
        base = os.path.relpath(folder, project)
        base = "" if base == "." else base + "/"
        dirs[:] = [d for d in dirs if travels(base + d, True, exclude, include)]
        for name in files:
            rel = base + name
            if not travels(rel, False, exclude, include):
                continue
            try:
                info = os.lstat(os.path.join(folder, name))
                if not stat.S_ISREG(info.st_mode):
                    continue
                stamp = [info.st_size, info.st_mtime_ns]
                seen = known.get(rel)
                if seen and seen[:2] == stamp and seen[2]:
                    digest = seen[2]
                else:
                    digest = file_hash(os.path.join(folder, name))
            except OSError:
                continue  # vanished while we looked: the next scan sees it as it is
            found[rel] = stamp + [digest]
    return found


# Beyond this many files, the results are not listed (a pull by rsync decides instead).
RESULTS_LISTED_MAX = 20000


def results_listing(project, folders):
    """{relpath: [mtime_ns, size]} of every file in the results folders, for the local side
    to see whether a pull would bring anything (then it skips rsync's round trips); None
    where only a pull can tell: a link in there, or more files than are listed."""
    found = {}
    for folder in folders:
        name = folder.strip("/")
        # A results folder that is a link (to scratch space) is entered, as rsync does.
        for root, dirs, files in os.walk(os.path.join(project, name)):
            base = name + "/" + os.path.relpath(root, os.path.join(project, name)) + "/"
            base = base.replace("/./", "/")
            for entry in dirs + files:
                try:
                    info = os.lstat(os.path.join(root, entry))
                except OSError:
                    return None  # changing while we look: let rsync see it
                if stat.S_ISLNK(info.st_mode):
                    return None
                if stat.S_ISREG(info.st_mode):
                    found[base + entry] = [info.st_mtime_ns, info.st_size]
            if len(found) > RESULTS_LISTED_MAX:
                return None
    return found


def scan(args):
    project = project_dir(args["dir"])
    return {"files": scan_tree(project, args["exclude"], args.get("include", ()), args["known"])}


def trash(args):
    """Move files to <project>/.rjn/trash/<time>/ (recoverable), each only if it is still the
    version the caller saw (size and time): a file changed since is left alone."""
    project = project_dir(args["dir"])
    when = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for rel, stamp in sorted(args["files"].items()):
        path = os.path.join(project, rel)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if [info.st_size, info.st_mtime_ns] != stamp[:2] or not stat.S_ISREG(info.st_mode):
            continue
        target = os.path.join(rjn_dir(project), "trash", when, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(path, target)
        moved.append(rel)
    return {"moved": moved, "trash": os.path.join(project, RJN_DIR, "trash", when)}


# -- probing -----------------------------------------------------------------------------


def machine(project):
    """What a user checks first: GPUs (nvidia-smi, where there is one), load, free memory,
    and free disk where the project is."""
    usage = shutil.disk_usage(project)
    found = {"disk_free": usage.free, "disk_total": usage.total, "gpus": []}
    with contextlib.suppress(OSError):
        found["load"] = list(os.getloadavg())
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        found["mem_total"] = int(fields["MemTotal"].split()[0]) * 1024
        found["mem_free"] = int(fields["MemAvailable"].split()[0]) * 1024
    smi = shutil.which("nvidia-smi")
    if smi:
        query = "name,memory.used,memory.total,utilization.gpu"
        out = scheduler([smi, "--query-gpu=" + query, "--format=csv,noheader,nounits"]) or ""
        for line in out.strip().splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) == 4:
                with contextlib.suppress(ValueError):
                    found["gpus"].append({
                        "name": parts[0], "mem_used_mb": int(parts[1]),
                        "mem_total_mb": int(parts[2]), "util_percent": int(parts[3]),
                    })  # fmt: skip
    return found


def probe(args):
    """Everything `rjn open` needs to decide what to skip, in one round trip."""
    project = project_dir(args["dir"])
    usage = shutil.disk_usage(project)
    return {
        "dir": project,
        "python": "%d.%d.%d" % sys.version_info[:3],
        "env_current": (
            env_record(project) == {"hash": args.get("env_hash"), "python": sys.version}
            and os.path.exists(venv_python(project))
        ),
        "server": server_state(project),
        "disk_free": usage.free,
        "has_rsync": shutil.which("rsync") is not None,
        "machine": machine(project) if args.get("machine") else None,
        # The tree and the results, when asked: sync decides in the same round trip.
        **listings(project, args),
    }


def listings(project, args):
    """The project's tree (two-way sync) and the results' files, as far as `args` asks."""
    return {
        "files": (
            scan_tree(project, args["exclude"], args.get("include", ()), args.get("known"))
            if "exclude" in args
            else None
        ),
        "results": (
            results_listing(project, args["results"]) if args.get("results") is not None else None
        ),
    }


ACTIONS = {
    "probe": probe,
    "scan": scan,
    "trash": trash,
    "env": ensure_env,
    "start": start,
    "stop": stop,
    "watch": watch,
    "run": run,
    "logs": logs,
}


def main(argv):
    action, raw = argv[1], argv[2]
    try:
        if sys.version_info < (3, 8):
            raise Fail(
                "the remote Python is %d.%d; rjn needs 3.8 or newer" % sys.version_info[:2],
                "set [remote] python to a newer interpreter",
            )
        emit(ok=ACTIONS[action](json.loads(raw)))
    except Fail as exc:
        emit(error={"message": exc.message, "hint": exc.hint})
        return 3
    except OSError as exc:
        hint = None
        if exc.errno == errno.ENOSPC:
            hint = "the remote disk is full: free space, or set [remote] dir elsewhere"
        emit(error={"message": "%s: %s" % (action, exc), "hint": hint})
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
