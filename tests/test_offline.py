"""A remote with no way out to the package index: the laptop fetches the wheels for the
remote's platform and sends them over the connection, into a wheelhouse later installs reuse.

The suite's separate host reaches the index only through a proxy; these projects point every
proxy variable at a closed port there (in [remote] setup, so for every command rjn runs),
which closes its only route out.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import api, opened, run_rjn

CLOSED = "http://127.0.0.1:9"
PROXIES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
CUT = " ".join(f"{name}={CLOSED}" for name in PROXIES)
NO_WAY_OUT = f'setup = ["export {CUT} NO_PROXY= no_proxy=", "unset UV_INDEX_URL PIP_INDEX_URL"]\n'


@pytest.fixture
def project(make_project: Callable[..., Path]) -> Callable[..., Path]:
    """A fresh project whose code imports a package never installed there (tabulate)."""

    def make(name: str, **tables: str) -> Path:
        root = make_project(name, remote_extra=NO_WAY_OUT, **tables)
        (root / "report.py").write_text("import tabulate\n")
        return root

    return make


def test_a_remote_with_no_way_out_gets_its_wheels_over_the_connection(project) -> None:
    root = project("offline")
    try:
        result = run_rjn("open", "--no-browser", "--no-watch", cwd=root)
        port, token = opened(result)
        assert "cannot reach the package index: its " in result.stderr, result.stderr
        assert " sent, " in result.stderr and " MB)" in result.stderr
        assert api(port, "/api/status", token)[0] == 200
        ran = run_rjn("run", "--", "python", "-c", "import tabulate; print('tabulated')",
                      cwd=root)  # fmt: skip
        assert ran.returncode == 0 and "tabulated" in ran.stdout, ran.stderr
    finally:
        run_rjn("close", "--server", cwd=root)

    # Another fresh project with the same needs: nothing travels again.
    again = project("offline-again")
    try:
        result = run_rjn("open", "--no-browser", "--no-watch", cwd=again)
        opened(result)
        assert "wheels came from here (its wheelhouse had them all)" in result.stderr
    finally:
        run_rjn("close", "--server", cwd=again)


def test_a_package_with_no_wheel_for_the_remote_is_named(project) -> None:
    root = project("nowheel", requirements='extra = ["rjn-test-no-such-package==1.0"]')
    result = run_rjn("open", "--no-browser", "--no-watch", cwd=root)
    assert result.returncode != 0
    assert "rjn-test-no-such-package==1.0 has no wheel for it" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
