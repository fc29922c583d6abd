"""What the end-to-end tests share: the CLI as a user runs it, the server's API through the
tunnel, `rjn watch` in the background, the master's control socket, waiting for a condition."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import websocket
from hosts.loopback import TestHost


def run_rjn(
    *args: str, cwd: Path, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The real CLI, as a user runs it, with no terminal (`env`: variables to change)."""
    return subprocess.run(
        [sys.executable, "-m", "rjn", *args],
        cwd=cwd,
        env={**os.environ, **env} if env else None,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


_PEAK = """import json, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True, stdin=subprocess.DEVNULL)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps([done.returncode, done.stdout, done.stderr, peak]))
"""


def run_rjn_measured(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], int]:
    """run_rjn, and the most memory (MiB) rjn, or any process it waited for, held at once."""
    argv = [sys.executable, "-m", "rjn", *args]
    said = subprocess.run([sys.executable, "-c", _PEAK, *argv], cwd=cwd, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=600, check=True)  # fmt: skip
    code, out, err, peak = json.loads(said.stdout)
    return subprocess.CompletedProcess(argv, code, out, err), peak // 1024


def status(project: Path) -> dict:
    """`rjn status --json`, parsed."""
    result = run_rjn("status", "--json", cwd=project)
    assert result.returncode == 0, result.stderr
    answer: dict = json.loads(result.stdout)
    return answer


DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
URL = re.compile(r"http://127\.0\.0\.1:(\d+)/lab\?token=([\w-]+)")


def api(
    port: int, path: str, token: str | None, method: str = "GET", body: dict | None = None
) -> tuple[int, dict]:
    headers = {"Authorization": f"token {token}"} if token else {}
    data = json.dumps(body).encode() if body is not None else None
    if data:
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers=headers, method=method, data=data
    )
    try:
        with DIRECT.open(request, timeout=10) as response:
            body = response.read()
            return response.status, json.loads(body) if body else {}
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except urllib.error.URLError:
        return 0, {}


def opened(result: subprocess.CompletedProcess[str]) -> tuple[int, str]:
    assert result.returncode == 0, result.stderr
    match = URL.search(result.stdout)
    assert match, result.stdout
    return int(match.group(1)), match.group(2)


class Kernel:
    """One kernel of the remote Jupyter, driven through the tunnel as a browser drives it."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token

    def __enter__(self) -> Kernel:
        status, kernel = api(self.port, "/api/kernels", self.token, method="POST")
        assert status == 201
        self.id = kernel["id"]
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{self.port}/api/kernels/{self.id}/channels",
            header=[f"Authorization: token {self.token}"],
            timeout=60,
        )
        return self

    def run(self, code: str) -> str:
        """Execute `code`; its stdout once the kernel is idle again."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": msg_id,
                       "msg_type": "execute_request", "version": "5.3"},
            "parent_header": {}, "metadata": {}, "channel": "shell",
            "content": {"code": code, "silent": False, "store_history": False,
                        "user_expressions": {}, "allow_stdin": False},
        }))  # fmt: skip
        output = []
        while True:
            message = json.loads(self.ws.recv())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = message["msg_type"]
            if kind == "stream":
                output.append(message["content"]["text"])
            elif kind == "error":
                raise AssertionError(message["content"]["evalue"])
            elif kind == "status" and message["content"]["execution_state"] == "idle":
                return "".join(output)

    def __exit__(self, *exc: object) -> None:
        self.ws.close()
        api(self.port, f"/api/kernels/{self.id}", self.token, method="DELETE")


def execute(port: int, token: str, code: str) -> str:
    """Run code in a new kernel through the tunnel, over the kernel's websocket; return stdout."""
    with Kernel(port, token) as kernel:
        return kernel.run(code)


def wait_for(check: Callable[[], object], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Watcher:
    """`rjn watch` running in the background, its stderr collected line by line."""

    def __init__(self, project: Path) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rjn", "watch"],
            cwd=project,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            # SIGABRT then prints every thread's stack: a watch that does not stop says where.
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
            # Ctrl-C reaches it however the tests were started (a job started in the
            # background by a shell without job control ignores SIGINT, and so would the watch).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        threading.Thread(target=self._read, daemon=True).start()
        wait_for(
            lambda: any("watching results" in ln for ln in self.lines) or self.proc.poll(),
            what="the watcher to start",
        )
        assert self.proc.poll() is None, self.lines

    def _read(self) -> None:
        assert self.proc.stderr
        for line in self.proc.stderr:
            self.lines.append(line.rstrip())

    def stop(self) -> int:
        self.proc.send_signal(2)  # Ctrl-C
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(6)  # SIGABRT: the fault handler dumps the threads' stacks
            self.proc.wait(timeout=30)
            time.sleep(1)  # the reader takes the last lines
            stacks = "\n".join(self.lines[-150:])
            said = f"rjn watch did not stop within 60 s of Ctrl-C:\n{stacks}"
            raise AssertionError(said) from None


def master(host: TestHost, rjn_env: dict[str, str], command: str) -> str:
    """`ssh -O command` to the test host's master; what ssh said."""
    control = Path(rjn_env["XDG_RUNTIME_DIR"]) / "rjn" / "%C"
    argv = ["ssh", "-F", str(host.ssh_config), "-o", f"ControlPath={control}", "-O", command]
    return subprocess.run([*argv, "rjn-test"], capture_output=True, text=True).stderr


def master_pid(host: TestHost, rjn_env: dict[str, str]) -> int:
    check = master(host, rjn_env, "check")
    match = re.search(r"pid=(\d+)", check)
    assert match, check
    return int(match.group(1))
