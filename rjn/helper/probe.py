"""One look at the project, in one call: folder, Python, environment, server, machine, and
the listings sync asks for."""

import contextlib
import json
import os
import shutil
import sys

from ..shared.folders import RJN_DIR, venv_python
from ..shared.protocol import ProbeAnswer
from .env import env_record
from .places import project_dir
from .server import server_state
from .slurm import scheduler
from .tree import listings


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


def away(project):
    """The log of cells whose outputs were kept while no browser was attached (away.py)."""
    try:
        with open(os.path.join(project, RJN_DIR, "away.json")) as handle:
            cells = json.load(handle).get("cells")
    except (OSError, ValueError, AttributeError):
        return []
    return cells if isinstance(cells, list) else []


def probe(request):
    """Everything `rjn open` needs to decide what to skip, in one round trip."""
    project = project_dir(request.dir)
    for folder in request.make or ():  # the results folders: a notebook may save there
        parts = folder.strip("/").split("/")
        if folder and ".." not in parts and not os.path.isabs(folder):
            with contextlib.suppress(OSError):  # a file of that name: the sync says so
                os.makedirs(os.path.join(project, *parts), exist_ok=True)
    usage = shutil.disk_usage(project)
    return ProbeAnswer(
        dir=project,
        python="%d.%d.%d" % sys.version_info[:3],
        env_current=(
            env_record(project) == {"hash": request.env_hash, "python": sys.version}
            and os.path.exists(venv_python(project))
        ),
        server=server_state(project),
        disk_free=usage.free,
        has_rsync=shutil.which("rsync") is not None,
        machine=machine(project) if request.machine else None,
        away=away(project) if request.away else None,
        # The tree and the results, when asked: sync decides in the same round trip.
        **listings(project, request.tree, request.results),
    ).to_json()
