"""Child processes (started with their output logged, stopped by group, told apart from a
reused pid), and noticing that the local rjn went away (our stdin closes)."""

import contextlib
import errno
import os
import signal
import subprocess
import threading
import time

from .say import log


def process_start(pid):
    """When a process started (clock ticks since boot, /proc), or None without /proc."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(") ", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


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


def wait_for_hangup():
    """Block until the local rjn closes our stdin (it went away, or the link dropped).

    The descriptor is read, not sys.stdin: a thread blocked in the buffered reader holds its
    lock, and at exit the interpreter waits a second for that lock, then aborts (measured:
    every `rjn run` ended 1 s late, and the helper died of SIGABRT)."""
    with contextlib.suppress(OSError):
        while os.read(0, 65536):
            pass


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


def exit_when_stdin_closes():
    """End this helper when the local rjn goes away (Ctrl-C, or a lost connection)."""

    def wait():
        wait_for_hangup()
        os._exit(0)

    threading.Thread(target=wait, daemon=True).start()
