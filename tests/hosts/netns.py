"""A separate network host for the tests: an sshd in its own network namespace, behind a link
with real latency (25 ms each way by default) and a rate limit.

This is where users live: every packet between rjn and the remote crosses the link, so each
round trip costs what it costs on a real network. The host has its own hostname and its own
/etc/hosts (it sees this machine under this machine's hostname, as a cluster's login node sees
its compute nodes), and reaches the package index, and nothing else, through a CONNECT proxy
on the link. The filesystem is shared with this machine, which lets tests look at both sides.

Needs root (namespaces, TUN devices, mounts), iproute2 and util-linux; `available()` says why
not, and the tests fall back to the loopback host then.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from hosts.loopback import TestHost

HERE = Path(__file__).parent
PROXY_PORT = 3128


def available() -> str | None:
    """Why a namespaced host cannot be built here, or None if it can."""
    if os.geteuid() != 0:
        return "a network namespace with a TUN link needs root"
    if not os.path.exists("/dev/net/tun"):
        return "no /dev/net/tun"
    missing = [c for c in ("ip", "tc", "unshare", "mount") if not shutil.which(c)]
    return f"not installed: {', '.join(missing)} (iproute2, util-linux)" if missing else None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _free_subnet() -> int:
    """A third octet for 10.211.N.0/30 that no interface here uses yet."""
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    for n in range(1, 255):
        if f"10.211.{n}." not in used:
            return n
    raise RuntimeError("no free 10.211.N.0 subnet for a test link")


class NetnsHost(TestHost):
    """The test sshd on a host of its own: namespace, TUN link with delay, tbf, proxy."""

    __test__ = False
    kind = "separate host"

    def __init__(
        self,
        base: Path,
        remote_env: dict[str, str] | None = None,
        *,
        hostname: str = "rjn-remote",
        delay_ms: int = 25,
        rate: str | None = "100mbit",
    ) -> None:
        n = _free_subnet()
        self.local_address, self.address = f"10.211.{n}.1", f"10.211.{n}.2"
        proxy = f"http://{self.local_address}:{PROXY_PORT}"
        env = {"HTTPS_PROXY": proxy, "https_proxy": proxy, **(remote_env or {})}
        super().__init__(base, remote_env=env)
        self.port = 22
        self.hostname = hostname
        self.delay_ms = delay_ms
        self.rate = rate
        self.namespace = f"rjn{os.getpid()}-{n}"[:15]
        self.devices = (f"rjn{n}h", f"rjn{n}r")  # this machine's side, the host's side
        self.helpers: list[subprocess.Popen[bytes]] = []
        self.link: subprocess.Popen[bytes] | None = None

    # -- the network ---------------------------------------------------------------------

    def network_up(self) -> None:
        """Namespace, link (delay, rate), the host's /etc/hosts, and the proxy; once."""
        if self.link is not None:
            return
        self.base.mkdir(parents=True, exist_ok=True)
        _ip("netns", "add", self.namespace)
        _ip("-n", self.namespace, "link", "set", "lo", "up")
        self.link = self._helper("delaylink.py", self.namespace, *self.devices, str(self.delay_ms))
        here, there = self.devices
        # A large MTU: fewer packets for the userspace forwarder to carry.
        _ip("addr", "add", self.local_address, "peer", self.address, "dev", here)
        _ip("link", "set", here, "up", "mtu", "65000")
        _ip("-n", self.namespace, "addr", "add", self.address, "peer", self.local_address,
            "dev", there)  # fmt: skip
        _ip("-n", self.namespace, "link", "set", there, "up", "mtu", "65000")
        if self.rate:
            for prefix, dev in (([], here), (["-n", self.namespace], there)):
                subprocess.run(
                    ["tc", *prefix, "qdisc", "replace", "dev", dev, "root", "tbf",
                     "rate", self.rate, "burst", "256kb", "latency", "100ms"],
                    check=True, capture_output=True,
                )  # fmt: skip
        (self.base / "hosts").write_text(
            "127.0.0.1 localhost\n"
            f"{self.address} {self.hostname}\n"
            f"{self.local_address} {socket.gethostname()}\n"
        )
        self.helpers.append(self._helper("proxy.py", self.local_address, str(PROXY_PORT)))

    def _helper(self, script: str, *args: str) -> subprocess.Popen[bytes]:
        """Start one of the link's helper processes and wait for its "ready"."""
        proc = subprocess.Popen(
            [sys.executable, str(HERE / script), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=(self.base / f"{Path(script).stem}.log").open("ab"),
        )
        assert proc.stdout
        if proc.stdout.readline().strip() != b"ready":
            proc.kill()
            raise RuntimeError(f"{script} did not start; see {self.base}")
        return proc

    def sshd_argv(self, argv: list[str]) -> list[str]:
        """sshd inside the namespace, with the host's own hostname and /etc/hosts; mounts made
        here later (a small tmpfs, say) still reach it."""
        self.network_up()
        inner = 'mount --bind "$1" /etc/hosts && hostname "$2" && shift 2 && exec "$@"'
        return [
            "ip", "netns", "exec", self.namespace,
            "unshare", "--uts", "--mount", "--propagation", "slave",
            "sh", "-c", inner, "sh", str(self.base / "hosts"), self.hostname, *argv,
        ]  # fmt: skip

    def run_there(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a command on the host itself: in sshd's network and mount namespaces."""
        assert self.proc
        where = ["nsenter", "-t", str(self.proc.pid), "-m", "-n", "--"]
        return subprocess.run([*where, *argv], capture_output=True, text=True)

    # -- faults ----------------------------------------------------------------------------

    def stall(self) -> None:
        """Drop every packet on the link, silently: connections stay open, nothing is refused."""
        assert self.link
        self.link.send_signal(signal.SIGUSR1)

    def resume(self) -> None:
        """Let packets through again."""
        assert self.link
        self.link.send_signal(signal.SIGUSR2)

    # -- the end -----------------------------------------------------------------------------

    def processes(self) -> list[int]:
        """Every process running on the host (in its namespace), and what its logins started
        elsewhere (a SLURM job on the compute node, which is this machine)."""
        found = subprocess.run(
            ["ip", "netns", "pids", self.namespace], capture_output=True, text=True
        ).stdout.split()
        return sorted({int(pid) for pid in found} | set(super().processes()))

    def teardown(self) -> None:
        """Stop sshd, everything started on the host, the link and the proxy; delete the
        namespace."""
        self.stop()
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in [*self.helpers, *([self.link] if self.link else [])]:
            proc.kill()
            proc.wait(timeout=10)
        self.helpers, self.link = [], None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if subprocess.run(["ip", "netns", "del", self.namespace],
                              capture_output=True).returncode == 0:  # fmt: skip
                return
            time.sleep(0.1)
