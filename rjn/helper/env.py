"""The project's environment: made with uv (on PATH, fetched from the package index, or
installed with pip) or pip, and only when the requirements changed."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

from .common import (
    RJN_DIR,
    HelperError,
    data_home,
    log,
    private,
    project_dir,
    read_json,
    run_logged,
    venv_dir,
    venv_python,
    write_private,
)


def env_record(project):
    return read_json(os.path.join(project, RJN_DIR, "env.json")) or {}


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


# JupyterLab asks every new user whether to fetch Jupyter's news; in an environment rjn made
# the answer is given once, as the environment's own default (a user's setting still wins).
LAB_DEFAULTS = {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false"}}


def quiet_lab(venv):
    """Write JupyterLab's defaults for this environment (share/jupyter/lab/settings), keeping
    any the environment already has."""
    folder = os.path.join(venv, "share", "jupyter", "lab", "settings")
    path = os.path.join(folder, "overrides.json")
    found = read_json(path)
    merged = dict(found) if isinstance(found, dict) else {}
    for plugin, values in LAB_DEFAULTS.items():
        merged[plugin] = dict(values, **(merged.get(plugin) or {}))
    os.makedirs(folder, exist_ok=True)
    write_private(path, json.dumps(merged, indent=2))


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
                raise HelperError("could not create the environment: " + failing_package(lines))
        code, lines = run_logged(
            [uv, "pip", "install", "--python", venv_python(project)] + req + packages, env=uv_env
        )
    else:
        if not os.path.exists(venv_python(project)):
            code, lines = run_logged([sys.executable, "-m", "venv", venv])
            if code:
                raise HelperError(
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
        raise HelperError(
            "the remote disk is full (%d MB free in %s): the environment could not be "
            "installed" % (usage.free // 10**6, project),
            "free space on the remote (uv's and pip's caches are in ~/.cache), or set "
            "[remote] dir to a folder on a larger disk",
        )
    if code:
        raise HelperError(
            "installing the requirements failed: " + failing_package(lines),
            "fix or pin that package in remote.toml [requirements] (extra, map, ignore) "
            "or in your own requirements.txt; `rjn open -v` shows the installer's output",
        )
    quiet_lab(venv)
    write_private(os.path.join(project, RJN_DIR, "env.json"), json.dumps(wanted))
    return {
        "changed": True,
        "seconds": round(time.monotonic() - started, 1),
        "installer": "uv" if uv else "pip",
    }
