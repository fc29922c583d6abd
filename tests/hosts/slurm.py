"""A real single-node SLURM for the tests: munged, slurmctld and slurmd started directly.

The compute node is this machine, at `address`. With the separate test host, that is this
machine's end of the link, and the host is the login node: login and compute node are two
network hosts, as on a real cluster. The node's own name resolves to loopback on the node
(as on many Debian and Ubuntu machines), so nothing may rely on resolving it.

Needs root and Debian's slurmctld, slurmd, slurm-client and munge (`.ci/install` installs them).
The cluster's config lives in its own folder; clients find it through SLURM_CONF.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def available() -> str | None:
    """Why a cluster cannot be started here, or None if it can."""
    if os.geteuid() != 0:
        return "slurmd runs jobs as their users and must start as root"
    missing = [c for c in ("munged", "slurmctld", "slurmd", "sbatch") if not _which(c)]
    return f"not installed: {', '.join(missing)} (run .ci/install)" if missing else None


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)), None
    )


class Cluster:
    """One node, one partition ("debug"), everything under `base`."""

    __test__ = False

    def __init__(self, base: Path, address: str = "127.0.0.1", cpus: int | None = None) -> None:
        self.base = base
        self.address = address
        self.conf = base / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.cpus = cpus or os.cpu_count() or 1
        self.procs: list[int] = []

    def start(self) -> Cluster:
        """Start munged (if none runs), slurmctld and slurmd; wait until the node is idle."""
        for folder in ("ctld", "d"):
            (self.base / folder).mkdir(parents=True, exist_ok=True)
        b = self.base
        self.conf.write_text(
            "\n".join([
                "ClusterName=rjntest",
                f"SlurmctldHost={self.node}({self.address})",
                "SlurmUser=root",
                "SlurmdUser=root",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"StateSaveLocation={b}/ctld",
                f"SlurmdSpoolDir={b}/d",
                f"SlurmctldPidFile={b}/ctld.pid",
                f"SlurmdPidFile={b}/d.pid",
                f"SlurmctldLogFile={b}/ctld.log",
                f"SlurmdLogFile={b}/d.log",
                # No cgroups here: track processes by pid, bind no tasks.
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "JobAcctGatherType=jobacct_gather/none",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core",
                "ReturnToService=2",
                "MpiDefault=none",
                "SchedulerParameters=sched_interval=1",
                f"NodeName={self.node} NodeAddr={self.address} CPUs={self.cpus} RealMemory=1000 "
                "State=UNKNOWN",
                "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
                "",
            ])
        )  # fmt: skip
        self._munge()
        subprocess.run([_which("slurmctld") or "slurmctld", "-f", str(self.conf)], check=True)
        # slurmd, and so every job, sees a /etc/hosts where the node's name means loopback.
        hosts = self.base / "node-hosts"
        hosts.write_text(f"127.0.0.1 localhost\n127.0.1.1 {self.node}\n")
        subprocess.run(
            ["unshare", "--mount", "--propagation", "slave", "sh", "-c",
             'mount --bind "$1" /etc/hosts && shift && exec "$@"', "sh", str(hosts),
             _which("slurmd") or "slurmd", "-f", str(self.conf)],
            check=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T").stdout.strip()
            if state == "idle":
                return self
            time.sleep(0.3)
        raise RuntimeError(f"the node never became idle (sinfo: {state!r}); see {self.base}")

    def _munge(self) -> None:
        """Start munged unless one answers already (then it is not ours to stop)."""
        self.munged_pid: int | None = None
        if subprocess.run(["sh", "-c", "munge -n | unmunge"], capture_output=True).returncode == 0:
            return
        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        if not Path("/etc/munge/munge.key").exists():
            subprocess.run(["mungekey", "--create"], check=True)
            shutil.chown("/etc/munge/munge.key", "munge", "munge")
        subprocess.run(["runuser", "-u", "munge", "--", _which("munged") or "munged"], check=True)
        with contextlib.suppress(OSError, ValueError):
            self.munged_pid = int(Path("/run/munge/munged.pid").read_text())

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **self.env})

    def stop(self) -> None:
        """Cancel every job and stop the daemons, munged too if we started it: the suite
        leaves no daemon of its own running."""
        self.run("scancel", "--full", "--user", "root")
        for pid_file in ("d.pid", "ctld.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((self.base / pid_file).read_text()), 15)
        if munged := getattr(self, "munged_pid", None):
            with contextlib.suppress(OSError):
                os.kill(munged, 15)
