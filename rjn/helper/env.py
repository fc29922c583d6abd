"""The project's environment: made with uv (on PATH, fetched from the package index, or
installed with pip) or pip, and only when the requirements changed."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

from ..shared.folders import RJN_DIR, private, rjn_dir, venv_dir, venv_python
from ..shared.protocol import HelperError
from .places import data_home, project_dir, read_json, write_private
from .processes import run_logged
from .say import log


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
    import platform
    import urllib.parse
    import urllib.request

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
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        return False
    return unpack_uv(data, scratch)


def unpack_uv(data, scratch):
    """uv's binary out of its wheel (bytes) into scratch/bin; whether it runs here."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            member = next(n for n in archive.namelist() if n.endswith(".data/scripts/uv"))
            binary = archive.read(member)
    except (OSError, ValueError, KeyError, StopIteration, zipfile.BadZipFile):
        return False
    os.makedirs(os.path.join(scratch, "bin"), exist_ok=True)
    target = os.path.join(scratch, "bin", "uv")
    with open(target, "wb") as handle:
        handle.write(binary)
    os.chmod(target, 0o755)
    return subprocess.call([target, "--version"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL) == 0  # fmt: skip


def find_uv(wheel=None):
    """uv on PATH, or rjn's own copy: out of `wheel` (the offline route brings one), fetched
    from the package index, else installed with pip into a small venv.

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
        if wheel:
            with open(wheel, "rb") as handle:
                unpacked = unpack_uv(handle.read(), scratch)
        else:
            unpacked = download_uv(scratch)
        if unpacked:
            os.rename(scratch, home)
            return uv
        shutil.rmtree(scratch, ignore_errors=True)
        if wheel:  # no index to install it from either
            log("uv's wheel did not run here; falling back to pip")
            return None
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


def ensure_env(request):
    project = project_dir(request.dir)
    wanted = {"hash": request.hash, "python": sys.version}
    if env_record(project) == wanted and os.path.exists(venv_python(project)):
        return {"changed": False}
    requirements = os.path.join(project, request.requirements)
    if request.requirements_text is not None:  # the project's own file may not be here yet
        requirements = os.path.join(rjn_dir(project), "requirements.txt")
        write_private(requirements, request.requirements_text)
    if request.env:
        return use_env(project, request, requirements, wanted)
    if request.wheels is None and (request.offline or not index_reachable()):
        # No way out to the package index: the local side brings the wheels (what the
        # wheelhouse lacks), for this platform, and asks again with them.
        return {"changed": False, "need_wheels": platform_record(), "have": stored_wheels()}
    venv = venv_dir(project)
    if os.path.islink(venv):  # the user's environment was used: rjn's own comes back
        os.unlink(venv)
        if os.path.isdir(venv + ".rjn"):
            os.rename(venv + ".rjn", venv)
    wanted_here = ["-r", requirements] if os.path.exists(requirements) else []
    uv_wheel = None
    if request.wheels is not None:  # the wheelhouse alone
        house = take_wheels(project, request.wheels, request.staged)
        wanted_here = ["--no-index", "--find-links", house] + wanted_here
        uv_wheel = next((os.path.join(house, name) for name, _ in request.wheels
                         if name.startswith("uv-")), None)  # fmt: skip
        log("installing from the wheels sent (the remote cannot reach the package index)")
    started = time.monotonic()
    uv = None if request.no_uv else find_uv(uv_wheel)
    install(project, uv, wanted_here + list(request.packages))
    quiet_lab(venv)
    write_private(os.path.join(project, RJN_DIR, "env.json"), json.dumps(wanted))
    return {
        "changed": True,
        "seconds": round(time.monotonic() - started, 1),
        "installer": "uv" if uv else "pip",
    }


def install(project, uv, arguments):
    """Make the project's environment where it is missing and install into it (`arguments`:
    what, and from where), with uv, else pip. The installer runs in the project folder: a
    requirement that is a path of the project's own (./pkg, -e .) is found there."""
    venv, python = venv_dir(project), venv_python(project)
    if uv:
        # uv trusts its own CA bundle by default; a site CA (proxies, clusters) is the system's.
        env = dict(os.environ, UV_SYSTEM_CERTS=os.environ.get("UV_SYSTEM_CERTS", "1"),
                   UV_NATIVE_TLS=os.environ.get("UV_NATIVE_TLS", "1"))  # fmt: skip
        make = [uv, "venv", "--python", sys.executable, venv]
        command = [uv, "pip", "install", "--python", python] + arguments
        hint = None
    else:
        env = None
        make = [sys.executable, "-m", "venv", venv]
        command = [python, "-m", "pip", "install", "--disable-pip-version-check"] + arguments
        hint = "install the venv module on the remote (Debian: python3-venv)"
    if not os.path.exists(python):
        code, lines = run_logged(make, env=env)
        if code:
            raise HelperError("could not create the environment: " + failing_package(lines), hint)
    code, lines = run_logged(command, env=env, cwd=project)
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


# Run by the user's environment's Python: which of the names given it lacks, and its version.
CHECK_ENV = r"""
import json, re, sys
try:
    from importlib import metadata
    have = {re.sub(r"[-_.]+", "-", d.metadata["Name"] or "").lower()
            for d in metadata.distributions()}
except Exception:
    have = set()
wanted = json.loads(sys.argv[1])
print(json.dumps({"missing": [w for w in wanted if re.sub(r"[-_.]+", "-", w).lower() not in have],
                  "python": "%d.%d.%d" % sys.version_info[:3]}))
"""


def use_env(project, request, requirements, wanted):
    """[remote] env: the user's environment, used as it is. rjn installs nothing into it: it
    checks that it can serve (Jupyter, ipykernel), says which of the project's requirements
    it lacks, and points the project's environment (.rjn/venv) at it."""
    spec = request.env
    prefix = env_prefix(spec)
    python = os.path.join(prefix, "bin", "python")
    if not os.access(python, os.X_OK):
        raise HelperError(
            "[remote] env %s: no environment there (%s is missing)" % (spec, python),
            "set [remote] env to the folder of a venv or conda environment (the one with "
            "bin/python), or conda:NAME",
        )
    serve = list(request.serve)  # the app (jupyterlab or notebook), ipykernel
    extra = requirement_names(requirements) + request.packages
    names = serve + [n for n in extra if n not in serve and n != "watchdog"]
    hint = ("check that the environment works in a shell there (`rjn shell`); a module it "
            "needs goes in [remote] setup")
    try:
        checked = subprocess.run([python, "-c", CHECK_ENV, json.dumps(names)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 universal_newlines=True, timeout=120)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise HelperError("[remote] env %s: its Python (%s) does not run: %s"
                          % (spec, python, exc), hint)  # fmt: skip
    try:
        found = json.loads(checked.stdout)
    except ValueError:
        raise HelperError("[remote] env %s: its Python (%s) does not run: %s"
                          % (spec, python, tail_of(checked.stderr)), hint)  # fmt: skip
    lacking = [n for n in serve if n in found["missing"]]
    if lacking:
        raise HelperError(
            "[remote] env %s has no %s: rjn never installs into an environment it did not "
            "create" % (prefix, " or ".join(lacking)),
            "install them there (`%s -m pip install %s`, or conda install), or remove [remote] "
            "env to let rjn make its own" % (python, " ".join(lacking)),
        )
    own = venv_dir(project)
    if os.path.islink(own):
        os.unlink(own)
    elif os.path.isdir(own):  # rjn's own venv, kept aside while the user's is used
        shutil.rmtree(own + ".rjn", ignore_errors=True)
        os.rename(own, own + ".rjn")
    os.symlink(prefix, own)
    write_private(os.path.join(project, RJN_DIR, "env.json"), json.dumps(wanted))
    return {"changed": True, "env": prefix, "python": found["python"],
            "missing": [n for n in found["missing"] if n not in serve]}  # fmt: skip


def tail_of(text):
    return " / ".join(text.strip().splitlines()[-3:]) or "no output"


def requirement_names(path):
    """The package names of a requirements file (options and URLs left out)."""
    import re

    names = []
    try:
        with open(path) as handle:
            for line in handle:
                found = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#")[0])
                if found and not line.lstrip().startswith("-"):
                    names.append(found.group(1))
    except OSError:
        pass
    return names


def env_prefix(spec):
    """The folder of [remote] env: a path (~ expanded), or conda:NAME, found as conda finds
    it (`conda env list`, else its envs folders: CONDA_ENVS_PATH, ~/.conda/envs, the usual
    installs' envs)."""
    if not spec.startswith("conda:"):
        return os.path.abspath(os.path.expanduser(spec))
    name = spec[len("conda:"):]
    if os.sep in name:
        return os.path.abspath(os.path.expanduser(name))
    listed = []
    for tool in (os.environ.get("CONDA_EXE"), "conda", "mamba", "micromamba"):
        exe = tool and shutil.which(tool)
        if not exe:
            continue
        try:
            out = subprocess.run([exe, "env", "list", "--json"], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, universal_newlines=True, timeout=60)
            listed = json.loads(out.stdout).get("envs", [])
        except (OSError, ValueError, AttributeError, subprocess.TimeoutExpired):
            continue
        break
    folders = [f for f in (os.environ.get("CONDA_ENVS_PATH") or os.environ.get("CONDA_ENVS_DIRS")
                           or "").split(os.pathsep) if f]  # fmt: skip
    folders += [os.path.expanduser("~/%s/envs" % base) for base in
                (".conda", "miniforge3", "mambaforge", "miniconda3", "anaconda3")]  # fmt: skip
    candidates = [e for e in listed if isinstance(e, str) and os.path.basename(e) == name]
    candidates += [os.path.join(os.path.expanduser(f), name) for f in folders]
    for candidate in candidates:
        if os.path.isdir(os.path.join(candidate, "bin")):
            return candidate
    raise HelperError(
        "[remote] env conda:%s: no conda environment of that name was found" % name,
        "`conda env list` there lists them; or give its path: env = \"/path/to/env\"",
    )


def index_reachable(timeout=4.0):
    """Whether the package index answers from here (any HTTP answer counts), found within
    `timeout` whatever hangs (a name lookup with no DNS server, a dropped packet)."""
    import threading
    import urllib.error
    import urllib.request

    base = os.environ.get("UV_INDEX_URL") or os.environ.get("PIP_INDEX_URL")
    url = (base or "https://pypi.org/simple").rstrip("/") + "/pip/"
    answered = []

    def ask():
        try:
            urllib.request.urlopen(url, timeout=timeout).close()
            answered.append(True)
        except urllib.error.HTTPError:
            answered.append(True)
        except Exception:
            answered.append(False)

    asking = threading.Thread(target=ask, daemon=True)
    asking.start()
    asking.join(timeout)
    return bool(answered and answered[0])


def platform_record():
    """What wheels fit here: Python, machine, C library."""
    import platform

    libc, version = platform.libc_ver()
    return {"python": "%d.%d.%d" % sys.version_info[:3], "implementation": sys.implementation.name,
            "system": sys.platform, "machine": platform.machine(), "libc": libc,
            "libc_version": version}  # fmt: skip


def wheel_store():
    """The wheelhouse: every wheel sent here, by its SHA-256 (shared by the user's projects)."""
    return private(os.path.join(data_home(), "rjn", "wheels"))


def stored_wheels():
    return sorted(n[:-4] for n in os.listdir(wheel_store()) if n.endswith(".whl") and len(n) == 68)


def take_wheels(project, wheels, staged):
    """The wheels sent (in a staging folder) into the store, each checked against its hash;
    then this install's wheelhouse: a folder of links, named as the installers need, to the
    stored wheels of `wheels` ([name, sha256]), sent into the staging folder `staged`."""
    import re

    from ..shared.tree import file_hash, staging_path

    store = wheel_store()
    staged = staging_path(project, staged) if staged else None
    house = os.path.join(rjn_dir(project), "wheelhouse")
    shutil.rmtree(house, ignore_errors=True)
    os.mkdir(house, 0o700)
    try:
        for name, digest in wheels:
            plain = re.match(r"^[A-Za-z0-9_.+!-]+\.whl$", name)
            if not plain or not re.match(r"^[0-9a-f]{64}$", digest):
                raise HelperError("not a wheel: %r" % (name[:200],))
            stored = os.path.join(store, digest + ".whl")
            sent = os.path.join(staged, name) if staged else None
            arrived = not os.path.exists(stored) and sent and os.path.exists(sent)
            if arrived and file_hash(sent) == digest:
                # (the store may be on another disk: moved beside it first, then renamed in,
                # so it never holds half a wheel)
                beside = "%s.%d" % (stored, os.getpid())
                shutil.move(sent, beside)
                os.replace(beside, stored)
            if not os.path.exists(stored):
                raise HelperError("the wheel %s did not arrive whole" % name, "run it again")
            os.symlink(stored, os.path.join(house, name))
    finally:
        if staged:
            shutil.rmtree(staged, ignore_errors=True)
    return house
