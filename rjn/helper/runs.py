"""Commands in the project's environment: streamed live, or detached with a log to follow."""

import errno
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time

from ..shared.folders import RJN_DIR, private, venv_python
from ..shared.protocol import Detached, HelperError, RunEnd
from .places import project_dir
from .processes import exit_when_stdin_closes, stop_group, wait_for_hangup
from .say import emit
from .tree import listings


def run(request):
    """Run argv in the project with its environment; stream its output as JSON lines.

    The command gets a process group of its own: when our stdin closes (Ctrl-C or a lost
    connection on the other side) the whole group is interrupted, then terminated.
    """
    project = project_dir(request.dir)
    venv_bin = os.path.dirname(venv_python(project))
    env = dict(os.environ, VIRTUAL_ENV=os.path.dirname(venv_bin), PYTHONUNBUFFERED="1")
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    argv = list(request.argv)
    if os.path.exists(os.path.join(venv_bin, argv[0])):
        argv[0] = os.path.join(venv_bin, argv[0])
    if request.detach:
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
        hint = "check the command; it runs in %s with the environment active" % project
        if exc.errno == errno.ENOENT and os.sep not in argv[0]:
            # A tool the project's imports do not name (pytest above all) is not installed.
            hint = (
                "%s is not in the project's environment: add it to [jupyter] packages in "
                "remote.toml (packages = [\"%s\"]), or run a command it has" % (argv[0], argv[0])
            )
        raise HelperError("cannot run %s: %s" % (argv[0], exc.strerror), hint)
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
    left = listings(project, request.tree, request.results)
    return RunEnd(exit=code if code >= 0 else 128 - code, **left).to_json()


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
        subprocess.Popen(
            [sys.executable, "-c", SUPERVISOR, json.dumps(spec)],
            cwd=project,
            env=env,
            stdin=devnull,
            stdout=devnull,
            stderr=devnull,
            start_new_session=True,
            close_fds=True,
        )
    return Detached(run_id).to_json()


def logs(request):
    """Stream a run's log as {"out": line}; with follow, until the run ends or stdin closes."""
    project = project_dir(request.dir)
    runs = os.path.join(project, RJN_DIR, "runs")
    names = (
        sorted(n[:-4] for n in os.listdir(runs) if n.endswith(".log"))
        if os.path.isdir(runs)
        else []
    )
    run_id = request.run or (names[-1] if names else None)
    if run_id not in names:
        raise HelperError(
            "no run %s" % run_id if run_id else "no detached runs yet",
            "start one with `rjn run --detach -- CMD`",
        )
    log_path, exit_path = (os.path.join(runs, run_id + ext) for ext in (".log", ".exit"))
    if request.follow:
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
            if finished or not request.follow:
                break
            time.sleep(0.2)
        if pending:
            emit(out=pending.decode(errors="replace"))
    code = None
    if os.path.exists(exit_path):
        with open(exit_path) as handle:
            code = int(handle.read().strip() or 0)
    return {"run": run_id, "exit": code}
