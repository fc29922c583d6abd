"""Benchmarks (`nox -s bench`): open cold and warm, and figure latency from remote close to local.

Not a test: it prints numbers. Everything runs on a throwaway sshd on loopback, so network
latency is near zero; what is measured is rjn's own overhead.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from hosts.loopback import TestHost

FILES = 50


def rjn(*args: str, cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "rjn", *args], cwd=cwd, check=True,
                   stdin=subprocess.DEVNULL, capture_output=True)  # fmt: skip
    return time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="rjn-bench"))
    os.environ.update(XDG_STATE_HOME=str(base / "state"), XDG_RUNTIME_DIR=str(base / "run"))
    host = TestHost(base / "host", remote_env={"XDG_DATA_HOME": str(base / "rdata")}).start()
    project, remote = base / "project", base / "remote"
    project.mkdir()
    (project / "remote.toml").write_text(host.remote_toml(remote))
    (project / "analysis.py").write_text("import yaml\n")
    watcher = None
    try:
        cold = rjn("open", "--no-browser", "--no-watch", cwd=project)
        warm = [rjn("open", "--no-browser", "--no-watch", cwd=project) for _ in range(5)]
        print(f"open, cold (login, install, start Jupyter): {cold:6.2f} s")
        print(f"open, warm (all reused), median of 5:       {statistics.median(warm):6.2f} s")

        watcher = subprocess.Popen(
            [sys.executable, "-m", "rjn", "watch"],
            cwd=project,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert watcher.stderr
        while "watching results" not in watcher.stderr.readline():
            pass
        latencies = []
        (remote / "results").mkdir(exist_ok=True)
        for n in range(FILES):
            data = os.urandom(20_000)
            local = project / "results" / f"fig{n:03}.png"
            with open(remote / "results" / local.name, "wb") as handle:
                handle.write(data)
            closed = time.perf_counter()
            deadline = closed + 30
            while not local.exists():
                if time.perf_counter() > deadline:
                    raise SystemExit(f"{local.name} never arrived")
                time.sleep(0.001)
            latencies.append(time.perf_counter() - closed)
            time.sleep(0.1)
        ms = [x * 1000 for x in latencies]
        print(f"figure latency, remote close -> local file, {FILES} files of 20 kB:")
        print(f"  p50 {percentile(ms, 0.5):6.1f} ms   p99 {percentile(ms, 0.99):6.1f} ms"
              f"   max {max(ms):6.1f} ms")  # fmt: skip
    finally:
        if watcher:
            watcher.send_signal(2)
            watcher.wait(timeout=30)
        subprocess.run([sys.executable, "-m", "rjn", "close", "--server"], cwd=project,
                       capture_output=True, stdin=subprocess.DEVNULL)  # fmt: skip
        host.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
