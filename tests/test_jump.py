"""ProxyJump end to end: the remote sits behind a bastion host, as the user's ssh config says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import api, execute, opened, run_rjn, status
from hosts.loopback import ALIAS, TestHost


@pytest.fixture(scope="module")
def bastion(short_tmp: Path) -> Iterator[TestHost]:
    jump = TestHost(short_tmp / "bastion").start()
    yield jump
    jump.teardown()


def test_open_through_a_bastion_from_the_ssh_config(
    host: TestHost, bastion: TestHost, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Control sockets of their own: ssh names a master by host, port and user, not by route,
    # so the suite's direct master to the same host would otherwise carry this project too.
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_tmp / "run-jump"))
    # The user's ssh config: the remote's alias jumps through the bastion's alias.
    config = short_tmp / "jump_config"
    config.write_text(
        bastion.ssh_config.read_text().replace(f"Host {ALIAS}", "Host bastion")
        + host.ssh_config.read_text().replace(f"Host {ALIAS}", "Host behind")
        + "    ProxyJump bastion\n"
    )
    project = short_tmp / "local" / "behind"
    project.mkdir(parents=True)
    (project / "analysis.py").write_text("import yaml\n")
    (project / "remote.toml").write_text(
        host.remote_toml(short_tmp / "remote" / "behind")
        .replace(f'host = "{ALIAS}"', 'host = "behind"')
        .replace(str(host.ssh_config), str(config))
    )
    before = bastion.log.read_text().count("Accepted publickey")
    try:
        port, token = opened(run_rjn("open", "--no-browser", "--no-watch", cwd=project))
        assert api(port, "/api/status", token)[0] == 200
        assert execute(port, token, "import yaml; print('behind')").strip() == "behind"
        # One login through the bastion carries everything: open, status, a second open.
        assert status(project)["tunnel"] is True
        opened(run_rjn("open", "--no-browser", "--no-watch", cwd=project))
        assert bastion.log.read_text().count("Accepted publickey") == before + 1
    finally:
        run_rjn("close", "--server", cwd=project)
