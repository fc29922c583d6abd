"""Fixtures: a real sshd (on a separate host behind a link with latency where root allows, else
on loopback), isolated rjn state, and projects to open."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from hosts import netns
from hosts.loopback import TestHost

# RJN_TEST_HOST=loopback runs the suite against an sshd on 127.0.0.1 even where a separate host
# could be built (quicker, but it hides what latency does).
WANTED_HOST = os.environ.get("RJN_TEST_HOST", "separate")


def _host_kind() -> str:
    if WANTED_HOST == "loopback":
        return "loopback (RJN_TEST_HOST=loopback)"
    why = netns.available()
    return "separate host" if why is None else f"loopback ({why})"


def pytest_report_header() -> str:
    return f"rjn test remote: {_host_kind()}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark what talks to a real host `e2e` (`pytest -m "not e2e"` runs the unit tests alone)."""
    for item in items:
        # (`project` is always a project on a test host: test_old_python.py makes its own.)
        if {"host", "make_project", "project"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


NOTEBOOK = {
    "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": ["# Analysis\n", "import fake_md\n"]},
        {
            "cell_type": "code",
            "metadata": {},
            "execution_count": None,
            "outputs": [],
            "source": [
                "%time x = 1\n",
                "!echo shell\n",
                "import yaml\n",
                "from helpers import twice\n",
            ],
        },
    ],
    "metadata": {},
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.fixture(scope="session")
def short_tmp() -> Iterator[Path]:
    """A short base path: unix socket paths must stay under ~100 bytes."""
    path = Path(tempfile.mkdtemp(prefix="rjn-t"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def host(short_tmp: Path) -> Iterator[TestHost]:
    """A throwaway OpenSSH server that trusts one key: on a host of its own, 25 ms away, where
    the test run may build one; on 127.0.0.1 otherwise."""
    remote_env = {
        "XDG_DATA_HOME": str(short_tmp / "rdata"),
        # Where the remote keeps rjn's helper (by its hash): this session's own.
        "XDG_CACHE_HOME": str(short_tmp / "rcache"),
        # Where the test cluster's clients find it, when a test starts one (test_slurm.py).
        "SLURM_CONF": str(short_tmp / "slurm" / "slurm.conf"),
    }
    if _host_kind() == "separate host":
        test_host: TestHost = netns.NetnsHost(short_tmp / "host", remote_env=remote_env)
    else:
        test_host = TestHost(short_tmp / "host", remote_env=remote_env)
    test_host.start()
    yield test_host
    test_host.teardown()


@pytest.fixture(scope="session", autouse=True)
def rjn_env(short_tmp: Path) -> Iterator[dict[str, str]]:
    """rjn's state and runtime dirs, private to the test session."""
    env = {"XDG_STATE_HOME": str(short_tmp / "state"), "XDG_RUNTIME_DIR": str(short_tmp / "run")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    # Leave nothing running: stop every master the session started (their tunnels go with them).
    for sock in (short_tmp / "run" / "rjn").glob("*"):
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"], capture_output=True)
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def make_project(host: TestHost, short_tmp: Path) -> Callable[..., Path]:
    """Make a small project (code, a notebook, data) whose remote.toml points at the test host."""
    made: list[Path] = []

    def make(
        name: str, remote_name: str | None = None, remote_extra: str = "", **tables: str
    ) -> Path:
        root = short_tmp / "local" / name
        root.mkdir(parents=True)
        remote_dir = short_tmp / "remote" / (remote_name or name)
        (root / "remote.toml").write_text(host.remote_toml(remote_dir, remote_extra, **tables))
        (root / "helpers.py").write_text("def twice(x):\n    return 2 * x\n")
        (root / "analysis.ipynb").write_text(json.dumps(NOTEBOOK))
        (root / "data").mkdir()
        (root / "data" / "points.csv").write_text("x,y\n1,2\n3,4\n")
        (root / ".git").mkdir()
        (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
        made.append(root)
        return root

    return make


@pytest.fixture(scope="module")
def opened_project(make_project: Callable[..., Path]) -> Iterator[Callable[..., Path]]:
    """make_project, then `rjn open` it (no browser, no watch); each is closed, server and all,
    when the module's tests are done. `before(root)` runs between the two."""
    from helpers import opened, run_rjn

    made: list[Path] = []

    def make(name: str, before: Callable[[Path], object] = lambda root: None, **tables: str):
        root = make_project(name, **tables)
        before(root)
        made.append(root)
        opened(run_rjn("open", "--no-browser", "--no-watch", cwd=root))
        return root

    yield make
    for root in made:
        run_rjn("close", "--server", cwd=root)
