"""Sessions: `nox -s demo` (the whole flow on a throwaway sshd), `tests`, `lint`."""

from __future__ import annotations

import os
import shutil
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
