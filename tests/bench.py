"""Benchmarks (`nox -s bench`): what a user waits for, against the separate test host.

Not a test: it prints numbers. Where root allows, the remote is a host of its own behind a link
with 25 ms each way (50 ms round trip) and 100 Mbit, as users have one; elsewhere an sshd on
loopback (then network latency is near zero and only rjn's own overhead shows). Every row is
printed in seconds (or ms) and as a ratio to a bare `ssh host true` on a new connection,
measured in the same run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from helpers import Kernel
from hosts import netns
from hosts.loopback import ALIAS, TestHost

FIGURES = 30
BURST = 200
LARGE, LARGE_TIMES = 5_000_000, 3
SAVES = 10
STALLS = 3
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def timed(argv: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return time.perf_counter() - started


def rjn(*args: str, cwd: Path) -> float:
    return timed([sys.executable, "-m", "rjn", *args], cwd)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def wait(check: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.001)


def watched(process: subprocess.Popen[str]) -> list[str]:
    """A process's stderr lines, read as they come (in a thread) into the list returned."""
    lines: list[str] = []

    def read() -> None:
        assert process.stderr
        for line in process.stderr:
            lines.append(line.rstrip())

    threading.Thread(target=read, daemon=True).start()
    return lines


def row(what: str, seconds: float, login: float) -> None:
    print(f"  {what:<44} {seconds:7.2f} s  {seconds / login:5.2f}x ssh")


def spread(what: str, values: list[float]) -> None:
    ms = [v * 1000 for v in values]
    print(f"  {what:<44} p50 {percentile(ms, 0.5):7.1f} ms   p99 {percentile(ms, 0.99):7.1f} ms")


CORE = (
    ("open, warm (all reused), median of 5", ("open", "--no-browser", "--no-watch")),
    ("status, median of 5", ("status",)),
    ("sync, nothing changed, median of 5", ("sync",)),
    ("run -- python -c pass, median of 5", ("run", "--", "python", "-c", "pass")),
)


def no_way_out(host: TestHost, base: Path, login: float) -> None:
    """A fresh project's first open where the remote cannot reach the package index (every
    proxy there points at a closed port): the wheels come from here. First with this
    machine's caches empty (pip and the wheels downloaded), then a second fresh project, whose
    wheels the remote's wheelhouse has."""
    closed = " ".join(f"{name}=http://127.0.0.1:9" for name in
                      ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"))  # fmt: skip
    caches = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(base / "local-cache")
    try:
        rows = (("offline", "open, cold, no way out: wheels from here (empty caches)"),
                ("offline2", "open, cold, no way out: the wheelhouse has all"))
        for name, what in rows:
            root = base / name
            root.mkdir()
            extra = f'setup = ["export {closed}"]\n'
            (root / "remote.toml").write_text(host.remote_toml(base / f"{name}-remote", extra))
            (root / "analysis.py").write_text("import yaml\n")
            row(what, rjn("open", "--no-browser", "--no-watch", cwd=root), login)
            subprocess.run([sys.executable, "-m", "rjn", "close", "--server"], cwd=root,
                           capture_output=True)  # fmt: skip
    finally:
        if caches is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = caches


def single_mode(host: TestHost, base: Path, login: float) -> None:
    """The core timings again with [remote] multiplex = "single" (one ssh session held by
    rjn, as where the ssh client cannot multiplex), on a project of its own."""
    solo = base / "solo"
    solo.mkdir()
    toml = host.remote_toml(base / "solo-remote", 'multiplex = "single"\n')
    (solo / "remote.toml").write_text(toml)
    (solo / "analysis.py").write_text("import yaml\n")
    print("single mode (one ssh session held by rjn, no ControlMaster):")
    row("open, cold (install, start Jupyter)", rjn("open", "--no-browser", "--no-watch",
                                                   cwd=solo), login)  # fmt: skip
    for what, args in CORE:
        row(what, statistics.median(rjn(*args, cwd=solo) for _ in range(5)), login)
    rjn("close", "--server", cwd=solo)


def start_up(base: Path) -> None:
    """Each command's start-up (imports and parsing, up to reading remote.toml: where none is,
    it stops there) over `python -c pass`, best of 15 each (a busy machine adds, never takes)."""
    bare = base / "no-project"
    bare.mkdir()

    def once(argv: list[str]) -> float:
        started = time.perf_counter()
        subprocess.run(argv, cwd=bare, stdin=subprocess.DEVNULL, capture_output=True)
        return time.perf_counter() - started

    def best(*argv: str) -> float:  # exit 2, no remote.toml: that is the point
        return min(once([sys.executable, *argv]) for _ in range(15))

    python = best("-c", "pass")
    print(f"  {'start-up: --help over python -c pass':<44} "
          f"{(best('-m', 'rjn', '--help') - python) * 1000:7.0f} ms")
    worst = max((best("-m", "rjn", command), command)
                for command in ("open", "status", "sync", "run", "close"))  # fmt: skip
    print(f"  {'start-up over python -c pass, slowest: ' + worst[1]:<44} "
          f"{(worst[0] - python) * 1000:7.0f} ms")


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="rjn-bench"))
    os.environ.update(XDG_STATE_HOME=str(base / "state"), XDG_RUNTIME_DIR=str(base / "run"))
    env = {"XDG_DATA_HOME": str(base / "rdata"), "XDG_CACHE_HOME": str(base / "rcache")}
    separate = netns.available() is None
    host = netns.NetnsHost(base / "host", env) if separate else TestHost(base / "host", env)
    host.start()
    project, remote = base / "project", base / "remote"
    project.mkdir()
    (project / "remote.toml").write_text(host.remote_toml(remote))
    (project / "analysis.py").write_text("import yaml\n")
    (project / "notes.ipynb").write_text(
        json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    )
    watcher = None
    said: list[str] = []
    try:
        ssh = ["ssh", "-F", str(host.ssh_config), "-o", "ControlPath=none", ALIAS, "true"]
        login = statistics.median(timed(ssh, project) for _ in range(5))
        where = "a separate host, 50 ms round trip, 100 Mbit" if separate else "loopback"
        print(f"remote: {where}; bare `ssh host true` (new connection): {login:.2f} s")
        row("open, cold (install, start Jupyter)", rjn("open", "--no-browser", "--no-watch",
                                                       cwd=project), login)  # fmt: skip
        for what, args in CORE:
            row(what, statistics.median(rjn(*args, cwd=project) for _ in range(5)), login)
        stopped = []
        for _ in range(3):  # the server gone (a reboot, an idle stop), the environment kept
            pid = json.loads((remote / ".rjn" / "server.json").read_text())["pid"]
            os.kill(pid, signal.SIGTERM)
            wait(lambda pid=pid: not Path(f"/proc/{pid}").exists(), 30, "Jupyter to stop")
            stopped.append(rjn("open", "--no-browser", "--no-watch", cwd=project))
        row("open, server stopped (environment kept), median of 3",
            statistics.median(stopped), login)  # fmt: skip
        opened = []
        for n in range(3):  # each a new folder there: the environment made, Jupyter started
            fresh = base / f"fresh{n}"
            fresh.mkdir()
            (fresh / "remote.toml").write_text(host.remote_toml(base / f"fresh-remote{n}"))
            (fresh / "analysis.py").write_text("import yaml\n")
            opened.append(rjn("open", "--no-browser", "--no-watch", cwd=fresh))
            subprocess.run([sys.executable, "-m", "rjn", "close", "--server"], cwd=fresh,
                           capture_output=True)  # fmt: skip
        row("open, a fresh remote folder (uv's cache there warm), median of 3",
            statistics.median(opened), login)  # fmt: skip
        start_up(base)
        single_mode(host, base, login)
        no_way_out(host, base, login)

        watcher = subprocess.Popen(
            [sys.executable, "-m", "rjn", "watch"], cwd=project, stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True,
            # SIGABRT then prints every thread's stack: a watch that does not stop says where.
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
            # Ctrl-C reaches it however the bench was started (a job started in the background
            # by a shell without job control ignores SIGINT, and so would the watch).
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )  # fmt: skip
        # Its output is read all along: a pipe nobody reads fills, and the watch then waits
        # on its next line (as no terminal would make it).
        said = watched(watcher)
        wait(lambda: any("watching results" in line for line in said) or watcher.poll(), 60,
             "the watcher to start")  # fmt: skip
        (remote / "results").mkdir(exist_ok=True)
        figures = []
        for n in range(FIGURES):
            local = project / "results" / f"fig{n:03}.png"
            (remote / "results" / local.name).write_bytes(os.urandom(20_000))
            closed = time.perf_counter()
            wait(local.exists, 30, local.name)
            figures.append(time.perf_counter() - closed)
            time.sleep(0.1)
        spread(f"figure, remote close -> local file ({FIGURES})", figures)
        # A burst: BURST figures closed at once (a notebook saving a sweep).
        burst = {}
        for n in range(BURST):
            (remote / "results" / f"burst{n:03}.png").write_bytes(os.urandom(30_000))
            burst[project / "results" / f"burst{n:03}.png"] = time.perf_counter()
        arrived: dict[Path, float] = {}
        deadline = time.monotonic() + 120
        while len(arrived) < len(burst) and time.monotonic() < deadline:
            now = time.perf_counter()
            for local, closed in burst.items():
                if local not in arrived and local.exists():
                    arrived[local] = now - closed
            time.sleep(0.002)
        if len(arrived) < len(burst):
            raise SystemExit(f"bench: {len(burst) - len(arrived)} figures of the burst missing")
        spread(f"burst of {BURST} figures, each close -> local file", list(arrived.values()))
        large = []
        for n in range(LARGE_TIMES):
            (remote / "results" / f"large{n}.png").write_bytes(os.urandom(LARGE))
            closed = time.perf_counter()
            wait((project / "results" / f"large{n}.png").exists, 60, "the large figure")
            large.append(time.perf_counter() - closed)
            time.sleep(0.3)
        spread(f"one {LARGE // 10**6} MB figure, close -> local file ({LARGE_TIMES})", large)
        saves = []
        for n in range(SAVES):
            # As Jupyter saves: a temporary file renamed over the notebook.
            text = json.dumps({"cells": [], "metadata": {"n": n}, "nbformat": 4,
                               "nbformat_minor": 5})  # fmt: skip
            (remote / ".~notes.ipynb").write_text(text)
            os.replace(remote / ".~notes.ipynb", remote / "notes.ipynb")
            saved = time.perf_counter()
            wait(lambda t=text: (project / "notes.ipynb").read_text() == t, 30, "the notebook")
            saves.append(time.perf_counter() - saved)
            time.sleep(0.2)
        spread(f"notebook saved remotely -> file home ({SAVES})", saves)
        # The same saves while a run streams results (a figure every 0.1 s): none may wait.
        streaming = threading.Event()
        streaming.set()

        def stream() -> None:
            n = 0
            while streaming.is_set():
                (remote / "results" / f"stream{n:04}.png").write_bytes(os.urandom(20_000))
                n += 1
                time.sleep(0.1)

        writer = threading.Thread(target=stream)
        writer.start()
        streamed = []
        try:
            for n in range(SAVES):
                text = f"print({n})  # saved while results stream\n"
                (remote / "edit.py").write_text(text)
                saved = time.perf_counter()
                home = project / "edit.py"
                wait(lambda t=text, home=home: home.is_file() and home.read_text() == t, 30,
                     "a save while results stream")  # fmt: skip
                streamed.append(time.perf_counter() - saved)
                time.sleep(0.3)
        finally:
            streaming.clear()
            writer.join()
        spread(f"save home while results stream ({SAVES})", streamed)
        # The common case: a figure saved by a notebook's kernel, whose output streams back
        # through the tunnel on the same connection as the watcher's event.
        state = json.loads(subprocess.run(
            [sys.executable, "-m", "rjn", "status", "--json"], cwd=project,
            capture_output=True, text=True, check=True).stdout)  # fmt: skip
        port, token = state["port"], state["tokened_url"].split("token=")[1]
        kernel_saves = []
        with Kernel(port, token) as kernel:
            for n in range(FIGURES):
                code = (f"import os, time\nwith open('results/kernel{n:03}.png', 'wb') as f:\n"
                        "    f.write(os.urandom(20_000))\nprint(repr(time.time()))")  # fmt: skip
                closed = float(kernel.run(code))
                local = project / "results" / f"kernel{n:03}.png"
                wait(local.exists, 30, local.name)
                kernel_saves.append(time.time() - closed)
                time.sleep(0.1)
        spread(f"figure written by a kernel -> local file ({FIGURES})", kernel_saves)
        if separate:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {token}"}
            )

            def answers() -> bool:
                try:
                    with DIRECT.open(request, timeout=1) as response:
                        return bool(response.status == 200)
                except (urllib.error.URLError, OSError):
                    return False

            # A long stall too: reconnection must not slow down the longer the link is gone.
            for seconds, times in ((10, STALLS), (90, 1)):
                recoveries = []
                for _ in range(times):
                    host.stall()
                    time.sleep(seconds)
                    host.resume()
                    back = time.perf_counter()
                    wait(answers, 60, "the tunnel after a stall")
                    recoveries.append(time.perf_counter() - back)
                    time.sleep(1)
                spread(f"stall of {seconds} s: link back -> tunnel answers ({times})", recoveries)
        scale(host, base, login)
    finally:
        if watcher:
            watcher.send_signal(2)
            try:
                watcher.wait(timeout=30)
            except subprocess.TimeoutExpired:
                watcher.send_signal(signal.SIGABRT)
                watcher.wait(timeout=30)
                time.sleep(1)  # the reader takes the last lines
                print("bench: rjn watch did not stop within 30 s of Ctrl-C; its last lines:\n"
                      + "\n".join(said[-150:]))  # fmt: skip
        subprocess.run([sys.executable, "-m", "rjn", "close", "--server"], cwd=project,
                       capture_output=True, stdin=subprocess.DEVNULL)  # fmt: skip
        host.teardown()
        shutil.rmtree(base, ignore_errors=True)


SCALE = 100_000
# rjn run in-process, so that the peak of its own memory can be read (ru_maxrss, KiB).
PEAK = ("import resource, runpy, sys\nsys.argv = ['rjn', *sys.argv[1:]]\ntry:\n"
        "    runpy.run_module('rjn', run_name='__main__')\nfinally:\n"
        "    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")


def scale(host: TestHost, base: Path, login: float) -> None:
    """A project of 100,000 small files (a data set of images): the first sync, a sync with
    nothing to do, and rsync's own dry run over the same connection for comparison."""
    project, remote = base / "big", base / "big-remote"
    for folder in range(SCALE // 1000):
        where = project / "images" / f"class-{folder:03}"
        where.mkdir(parents=True)
        for n in range(1000):
            (where / f"{n:05}-{'s' * 119}.png").write_bytes(b"%d-%d" % (folder, n))
    (project / "remote.toml").write_text(host.remote_toml(remote))
    row(f"sync, first, {SCALE:,} files", rjn("sync", cwd=project), login)
    idle, peaks = [], []
    for _ in range(3):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PEAK, "sync"], cwd=project, check=True,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
        idle.append(time.perf_counter() - started)
        peaks.append(int(done.stderr.strip().splitlines()[-1]))
    row(f"sync, nothing changed, {SCALE:,} files, med of 3", statistics.median(idle), login)
    control = Path(os.environ["XDG_RUNTIME_DIR"]) / "rjn" / "%C"
    shell = f"ssh -F {host.ssh_config} -o ControlPath={control} -o ControlMaster=no"
    dry = ["rsync", "-an", "--delete", "--exclude=.rjn/", "-e", shell, "./", f"{ALIAS}:{remote}/"]
    row(f"rsync -an, nothing changed, {SCALE:,} files, med of 3",
        statistics.median(timed(dry, project) for _ in range(3)), login)  # fmt: skip
    print(f"  {'sync, nothing changed: peak memory':<44} {max(peaks) / 1024:7.0f} MiB")


if __name__ == "__main__":
    main()
