"""Several remotes for one project: each with its own server, port, state and results; every
open project at a glance (`rjn ls`); closing one leaves the other."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import api, opened, run_rjn
from hosts.loopback import ALIAS, TestHost


@pytest.fixture(scope="module")
def lab(short_tmp: Path) -> Iterator[TestHost]:
    """A second machine: an sshd on loopback (the first remote is the suite's test host)."""
    remote_env = {
        "XDG_DATA_HOME": str(short_tmp / "rdata"),
        "XDG_CACHE_HOME": str(short_tmp / "rc"),
    }
    second = TestHost(short_tmp / "lab", remote_env=remote_env)
    second.start()
    yield second
    second.teardown()


def test_two_remotes_of_one_project_open_at_once(
    make_project, lab: TestHost, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # State of its own: `rjn ls` and `close --all` see this test's projects only.
    monkeypatch.setenv("XDG_STATE_HOME", str(short_tmp / "state-twin"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_tmp / "run-twin"))
    project = make_project("twin")
    config = short_tmp / "twin_ssh_config"
    config.write_text(lab.ssh_config.read_text().replace(f"Host {ALIAS}", "Host lab"))
    with (project / "remote.toml").open("a") as toml:
        toml.write(f'\n[remotes.lab]\nhost = "lab"\nssh_config = "{config}"\n'
                   f'dir = "{short_tmp / "remote" / "twin-lab"}"\n')  # fmt: skip
    first = opened(run_rjn("open", "--no-browser", "--no-watch", cwd=project))
    second = opened(run_rjn("open", "lab", "--no-browser", "--no-watch", cwd=project))
    assert first[0] != second[0] and first[1] != second[1]  # own port, own server
    assert api(first[0], "/api/status", first[1])[0] == 200
    assert api(second[0], "/api/status", second[1])[0] == 200
    assert (short_tmp / "remote" / "twin-lab" / "helpers.py").exists()

    # The same result name from both: the second is told apart by its remote's name.
    for remote in ("twin", "twin-lab"):
        (short_tmp / "remote" / remote / "results").mkdir(exist_ok=True)
        (short_tmp / "remote" / remote / "results" / "loss.png").write_text(remote)
    assert run_rjn("sync", cwd=project).returncode == 0
    assert run_rjn("--remote", "lab", "sync", cwd=project).returncode == 0
    assert (project / "results" / "loss.png").read_text() == "twin"
    [copy] = (project / "results").glob("loss.lab-*.png")
    assert copy.read_text() == "twin-lab"

    listed = run_rjn("ls", "--json", cwd=project)
    assert listed.returncode == 0, listed.stderr
    mine = {p["remote"]: p for p in json.loads(listed.stdout) if p["project"] == "twin"}
    assert set(mine) == {"remote", "lab"}
    assert mine["lab"]["port"] == second[0] and mine["lab"]["tunnel"] is True
    assert mine["remote"]["tokened_url"] is None  # the token only when asked
    assert "token=" in run_rjn("ls", "--show-token", cwd=project).stdout

    status = json.loads(run_rjn("-r", "lab", "status", "--json", cwd=project).stdout)
    assert status["remote_name"] == "lab" and status["machine"]["disk_free"] > 0
    assert status["machine"]["mem_total"] > 0 and len(status["machine"]["load"]) == 3

    closed = run_rjn("--remote", "lab", "close", "--server", cwd=project)
    assert closed.returncode == 0, closed.stderr
    assert api(second[0], "/api/status", second[1])[0] != 200
    assert api(first[0], "/api/status", first[1])[0] == 200  # the other one is untouched

    unknown = run_rjn("--remote", "labb", "status", cwd=project)
    assert unknown.returncode == 2 and "did you mean 'lab'" in unknown.stderr
    assert "known remotes: lab" in unknown.stderr

    everything = run_rjn("close", "--all", "--server", cwd=project)
    assert everything.returncode == 0, everything.stderr
    assert api(first[0], "/api/status", first[1])[0] != 200
