"""Sessions: `nox -s demo` (the whole flow on a throwaway sshd), `tests`, `lint`, `install`
(rjn as users install it, on every Python the machine has), `bench`, `soak`, `remote`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import nox

ROOT = Path(__file__).parent
nox.options.sessions = ["tests", "lint"]
nox.options.default_venv_backend = "uv|virtualenv"


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite: unit tests and end-to-end tests on a real sshd, rsync and JupyterLab."""
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session
def soak(session: nox.Session) -> None:
    """The sync engine under random two-sided edits, remote saves, SIGKILLs and a running watch,
    for long (`RJN_SOAK_ROUNDS`, default 200; `RJN_SOAK_SEED` to replay one seed)."""
    session.install("-e", ".[test]")
    rounds = os.environ.get("RJN_SOAK_ROUNDS", "200")
    session.run("pytest", "-q", "--timeout=0", "tests/test_soak.py", *session.posargs,
                env={"RJN_SOAK_ROUNDS": rounds})  # fmt: skip


@nox.session(python=False)
def remote(session: nox.Session) -> None:
    """Run a command on the remote, in the project's synced environment.

    `nox -s remote -- pytest -q` runs the tests there (the default); any command works. Results
    the command writes come home. Uses remote.toml, like every rjn command.
    """
    session.run("rjn", "run", "--", *(session.posargs or ["pytest", "-q"]), external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """What users wait for, against the separate test host (50 ms away): open, status, sync,
    run, figure and notebook latency, stall recovery; each as seconds and as x bare ssh."""
    # As pip and pipx leave an install: compiled once, not at every command (uv does not
    # compile unless asked, and PYTHONDONTWRITEBYTECODE would keep it from ever happening).
    # Not editable: an editable install's import finder costs every command 15 ms here.
    session.install(".", "websocket-client", env={"UV_COMPILE_BYTECODE": "1"})
    session.run("python", "tests/bench.py", env={"PYTHONDONTWRITEBYTECODE": ""})


# What `pip install rjn` may weigh in a fresh venv (the venv's own pip and setuptools aside).
MAX_PACKAGES, MAX_MB = 40, 40


def _pythons() -> list[str]:
    """Every CPython 3.11 or newer this machine has: pyenv's, the system's, uv's."""
    found: dict[str, str] = {}
    candidates = sorted(Path.home().glob(".pyenv/versions/3.*/bin/python3"))
    candidates += [Path(p) for p in ("/usr/bin/python3", "/usr/local/bin/python3")]
    for python in candidates:
        if not python.exists():
            continue
        said = subprocess.run([str(python), "-c", "import sys; print(*sys.version_info[:2])"],
                              capture_output=True, text=True)  # fmt: skip
        major, minor = map(int, said.stdout.split() or ["0", "0"])
        if (major, minor) >= (3, 11):
            found.setdefault(f"{major}.{minor}", str(python))
    return [found[v] for v in sorted(found, key=lambda v: tuple(map(int, v.split("."))))]


@nox.session(python=False)
def install(session: nox.Session) -> None:
    """rjn as users install it, on every Python 3.11+ this machine has: the built wheel and
    sdist checked (twine), then with pip (its weight counted, `rjn --help` and the unit tests
    run against it), pipx and uv tool."""
    work = Path(tempfile.mkdtemp(prefix="rjn-install-"))
    tools = work / "tools"
    session.run("uv", "venv", "-q", "-p", sys.executable, str(tools))
    session.run("uv", "pip", "install", "-q", "-p", str(tools), "build", "twine", "pipx")
    dist = work / "dist"
    session.run(str(tools / "bin" / "python"), "-m", "build", "-q", "--outdir", str(dist),
                str(ROOT))  # fmt: skip
    session.run(str(tools / "bin" / "twine"), "check", "--strict", *map(str, dist.iterdir()))
    [wheel] = dist.glob("*.whl")
    pythons = _pythons()
    session.log(f"Pythons: {', '.join(pythons)}")
    if len(pythons) < 2:
        session.error("fewer than two Pythons 3.11+ found: nothing proves the spread")
    for python in pythons:
        venv = work / f"pip-{Path(python).resolve().name}"
        session.run(python, "-m", "venv", str(venv))
        before = _site_packages(venv)
        session.run(str(venv / "bin" / "pip"), "install", "-q", str(wheel))
        added = _site_packages(venv) - before
        packages = {p.name.split("-")[0] for p in added if p.name.endswith(".dist-info")}
        size = sum(f.stat().st_size for p in added for f in ([p] if p.is_file() else
                   p.rglob("*")) if f.is_file()) / 1e6  # fmt: skip
        session.log(f"{python}: pip install rjn adds {len(packages)} packages, {size:.0f} MB")
        if len(packages) > MAX_PACKAGES or size > MAX_MB:
            session.error(f"the install is over {MAX_PACKAGES} packages or {MAX_MB} MB")
        session.run(str(venv / "bin" / "rjn"), "--version")
        session.run(str(venv / "bin" / "rjn"), "--help", silent=True)
        session.run(str(venv / "bin" / "pip"), "install", "-q", "pytest", "pytest-timeout",
                    "websocket-client", "nox", "uv")  # fmt: skip
        # From outside the source tree, so that the tests import the installed rjn.
        session.chdir(work)
        session.run(str(venv / "bin" / "pytest"), "-q", "-p", "no:cacheprovider", "-m",
                    "not e2e", str(ROOT / "tests"))  # fmt: skip
        session.chdir(ROOT)
        # pipx and uv tool, each from the wheel and from the source tree, into homes of their own.
        for n, source in enumerate((str(wheel), str(ROOT))):
            home = venv.with_name(f"{venv.name}-tools-{n}")
            env = {"PIPX_HOME": str(home / "pipx"), "PIPX_BIN_DIR": str(home / "bin"),
                   "UV_TOOL_DIR": str(home / "uv"), "UV_TOOL_BIN_DIR": str(home / "uv-bin")}
            session.run(str(tools / "bin" / "pipx"), "install", "--python", python, source,
                        env=env)  # fmt: skip
            session.run(str(home / "bin" / "rjn"), "--version", env=env)
            session.run("uv", "tool", "install", "-q", "--python", python, source, env=env)
            session.run(str(home / "uv-bin" / "rjn"), "--version", env=env)
    shutil.rmtree(work, ignore_errors=True)


def _site_packages(venv: Path) -> set[Path]:
    [site] = venv.glob("lib/python3.*/site-packages")
    return set(site.iterdir())


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and mypy."""
    session.install("-e", ".[dev]")
    session.run("ruff", "check", "rjn", "tests", "noxfile.py")
    session.run("mypy")


@nox.session
def demo(session: nox.Session) -> None:
    """Open this repo on a throwaway sshd on loopback, check the URL answers, then clean up.

    `nox -s demo -- --keep` leaves it running until Ctrl-C, to try it in a browser.
    """
    session.install("-e", ".")
    sys.path.insert(0, str(ROOT / "tests"))
    from hosts.loopback import ALIAS, TestHost

    base = Path(tempfile.mkdtemp(prefix="rjn-demo"))
    env = {"XDG_STATE_HOME": str(base / "state"), "XDG_RUNTIME_DIR": str(base / "run")}
    remote_env = {"XDG_DATA_HOME": str(base / "rdata"), "XDG_CACHE_HOME": str(base / "rcache")}
    host = TestHost(base / "host", remote_env=remote_env).start()
    session.log(
        f"throwaway sshd on 127.0.0.1:{host.port} (alias {ALIAS}); remote dir {base}/remote"
    )
    rjn = [
        "rjn",
        "--host",
        ALIAS,
        "--ssh-config",
        str(host.ssh_config),
        "--remote-dir",
        str(base / "remote"),
    ]
    try:
        session.run(*rjn, "open", "--no-browser", "--no-watch", env=env)
        session.run(
            *rjn, "open", "--no-browser", "--no-watch", env=env
        )  # the second open reuses everything
        session.run(*rjn, "status", env=env)
        _check_answers(session, env, rjn)
        # The example notebook runs remotely; its figure comes home. A previous demo's copies
        # go first: this throwaway remote never agreed on them, and would keep both.
        figure = ROOT / "results" / "temperature.png"
        figure.unlink(missing_ok=True)
        (ROOT / "results" / "explore.executed.ipynb").unlink(missing_ok=True)
        session.run(*rjn, "run", "--notebook", "notebooks/explore.ipynb", env=env)
        if not figure.is_file() or figure.read_bytes()[:4] != b"\x89PNG":
            session.error(f"{figure} did not come home")
        session.log(f"OK: the notebook ran remotely and {figure.relative_to(ROOT)} came home")
        if "--keep" in session.posargs:
            exports = " ".join(f"{k}={v}" for k, v in env.items())
            session.log(f"running; in another terminal: export {exports}; {' '.join(rjn)} status")
            session.log("press Ctrl-C to stop")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        session.run(*rjn, "close", "--server", env=env, success_codes=[0, 1, 2, 3, 4, 5])
        host.stop()
        shutil.rmtree(base, ignore_errors=True)


def _check_answers(session: nox.Session, env: dict[str, str], rjn: list[str]) -> None:
    import json

    status = json.loads(session.run(*rjn, "status", "--json", env=env, silent=True) or "{}")
    url = status["tokened_url"]
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with direct.open(url, timeout=30) as response:
        if response.status != 200 or b"JupyterLab" not in response.read():
            session.error(f"{status['url']} did not serve JupyterLab")
    session.log(f"OK: {status['url']} serves JupyterLab through the tunnel")
    if not os.environ.get("CI"):
        session.log(f"open it: {url}")
