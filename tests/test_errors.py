"""Bad input and failures: a clear error, the right exit code, no traceback, nothing lost."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import run_rjn
from hosts.loopback import TestHost


def failed(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr
    return result.stderr


def write_project(root: Path, toml: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "remote.toml").write_text(toml)
    return root


def test_no_remote_toml(tmp_path: Path) -> None:
    err = failed(run_rjn("open", "--no-browser", "--no-watch", cwd=tmp_path), 2)
    assert "no remote.toml" in err and "hint:" in err


def test_unknown_key_names_file_table_and_key(tmp_path: Path) -> None:
    write_project(tmp_path, '[remote]\nhost = "x"\nhots = "y"\n')
    err = failed(run_rjn("status", cwd=tmp_path), 2)
    assert str(tmp_path / "remote.toml") in err
    assert "[remote] unknown key 'hots'" in err and "did you mean 'host'" in err


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    write_project(tmp_path, '[remote]\nhost = "x"\nport = "22"\n')
    err = failed(run_rjn("status", cwd=tmp_path), 2)
    assert "[remote] port: expected an integer" in err


def test_refused_connection_says_host_cause_and_hint(host: TestHost, tmp_path: Path) -> None:
    write_project(tmp_path / "p", host.remote_toml(tmp_path / "remote", "port = 1\n"))
    err = failed(run_rjn("open", "--no-browser", "--no-watch", cwd=tmp_path / "p"), 3)
    assert "cannot connect to rjn-test: the connection was refused" in err
    assert "sshd runs on the host" in err


# Every command that needs the remote, as a user would type it.
# `run`, `shell` and `logs` exit with the remote command's code: rjn's own failures are 255.
PASSES_CODE = {"run", "shell", "logs"}
CONNECTING = [
    ["open", "--no-browser", "--no-watch"],
    ["sync"],
    ["sync", "--push"],
    ["run", "--", "true"],
    ["shell", "--", "true"],
    ["logs"],
    ["close", "--server"],
]


@pytest.mark.parametrize("argv", CONNECTING, ids=lambda argv: " ".join(argv[:2]))
def test_each_command_exits_3_when_the_host_cannot_be_reached(
    argv: list[str], host: TestHost, tmp_path: Path
) -> None:
    write_project(tmp_path / "p", host.remote_toml(tmp_path / "remote", "port = 1\n"))
    err = failed(run_rjn(*argv, cwd=tmp_path / "p"), 255 if argv[0] in PASSES_CODE else 3)
    assert "cannot connect to rjn-test: the connection was refused" in err


@pytest.mark.parametrize("argv", [*CONNECTING, ["status"], ["watch"], ["close"], ["ls"]],
                         ids=lambda argv: " ".join(argv[:2]))  # fmt: skip
def test_each_command_exits_2_on_a_bad_remote_toml(argv: list[str], tmp_path: Path) -> None:
    write_project(tmp_path, '[remote]\nhost = "x"\nprot = 22\n')
    if argv == ["ls"]:  # reads no remote.toml: every open project's own
        assert run_rjn(*argv, cwd=tmp_path).returncode == 0
        return
    err = failed(run_rjn(*argv, cwd=tmp_path), 255 if argv[0] in PASSES_CODE else 2)
    assert "remote.toml" in err and "prot" in err


@pytest.mark.parametrize("argv", [["status"], ["sync"], ["open", "--no-browser"]],
                         ids=lambda argv: argv[0])  # fmt: skip
def test_with_json_a_failure_is_json_too(argv: list[str], tmp_path: Path) -> None:
    write_project(tmp_path, '[remote]\nhost = "x"\nprot = 22\n')
    result = run_rjn(*argv, "--json", cwd=tmp_path)
    assert result.returncode == 2
    error = json.loads(result.stdout)["error"]
    assert error["code"] == 2 and "prot" in error["message"] and error["hint"]


def test_unresolvable_host(tmp_path: Path) -> None:
    write_project(tmp_path, '[remote]\nhost = "no-such-host.invalid"\nconnect_timeout = 5\n')
    err = failed(run_rjn("open", "--no-browser", "--no-watch", cwd=tmp_path), 3)
    assert "no-such-host.invalid" in err and "does not resolve" in err


@pytest.fixture
def own_master(short_tmp: Path, request: pytest.FixtureRequest, monkeypatch) -> None:
    """rjn's runtime folder of the test's own: a master an earlier test left to the same host
    would be reused, and skip the handshake these tests are about."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(short_tmp / f"run-{request.node.name[5:25]}"))


def _with_known_hosts(host: TestHost, tmp_path: Path, known: str) -> Path:
    """A project whose ssh config trusts `known` instead of the test host's real key."""
    config = tmp_path / "ssh_config"
    config.write_text(
        host.ssh_config.read_text().replace(str(host.known_hosts), str(tmp_path / "kh"))
    )
    (tmp_path / "kh").write_text(known)
    toml = host.remote_toml(tmp_path / "remote").replace(str(host.ssh_config), str(config))
    return write_project(tmp_path / "p", toml)


@pytest.mark.usefixtures("own_master")
def test_unknown_host_key_is_not_trusted(host: TestHost, tmp_path: Path) -> None:
    project = _with_known_hosts(host, tmp_path, "")
    err = failed(run_rjn("open", "--no-browser", "--no-watch", cwd=project), 3)
    assert "the host key is not known" in err
    # The hint's command reaches the host as rjn does: the same ssh config file.
    assert f"`ssh -F {tmp_path / 'ssh_config'} -- rjn-test`" in err


@pytest.mark.usefixtures("own_master")
def test_changed_host_key_is_refused(host: TestHost, tmp_path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True
    )
    kind, key = (tmp_path / "other.pub").read_text().split()[:2]
    project = _with_known_hosts(host, tmp_path, f"{host.known_name} {kind} {key}\n")
    err = failed(run_rjn("open", "--no-browser", "--no-watch", cwd=project), 3)
    assert "the host key changed" in err and "do not connect" in err
    # The exact command: the host as known_hosts names it (HostName, port), and that file.
    assert "ssh-keygen -R" in err and host.known_name in err and str(tmp_path / "kh") in err


@pytest.mark.usefixtures("own_master")
def test_wrong_key_is_an_auth_failure(host: TestHost, tmp_path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")],
        check=True,
    )
    toml = host.remote_toml(tmp_path / "remote", f'identity = "{tmp_path / "stranger"}"\n')
    # The alias' own IdentityFile is still offered by ssh; point the alias at the stranger only.
    config = tmp_path / "ssh_config"
    config.write_text(
        host.ssh_config.read_text().replace(str(host.client_key), str(tmp_path / "stranger"))
    )
    write_project(tmp_path / "p", toml.replace(str(host.ssh_config), str(config)))
    err = failed(run_rjn("open", "--no-browser", "--no-watch", cwd=tmp_path / "p"), 3)
    assert "authentication failed" in err


def test_missing_remote_python(make_project: Callable[..., Path]) -> None:
    project = make_project("nopython", remote_extra='python = "/nonexistent/python3"\n')
    err = failed(run_rjn("open", "--no-browser", "--no-watch", cwd=project), 4)
    assert "the remote python '/nonexistent/python3' was not found" in err


def test_install_failure_names_the_package(make_project: Callable[..., Path]) -> None:
    project = make_project("badpkg")
    (project / "train.py").write_text("import rjn_no_such_package_xyz\n")
    err = failed(run_rjn("open", "--no-browser", "--no-watch", cwd=project), 4)
    assert "installing the requirements failed" in err
    assert "rjn_no_such_package_xyz" in err or "rjn-no-such-package-xyz" in err


def test_port_in_use(make_project: Callable[..., Path]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        project = make_project("busy", jupyter=f"local_port = {port}")
        err = failed(run_rjn("open", "--no-browser", "--no-watch", cwd=project), 1)
    assert f"local port {port} is in use" in err
    run_rjn("close", "--server", cwd=project)


@pytest.mark.parametrize("weird", ['sp ace\'s $(touch PWNED); `touch PWNED2` "q"'])
def test_hostile_values_reach_the_remote_as_data(make_project, short_tmp: Path, weird: str) -> None:
    """Spaces, quotes, $() and ; in the remote dir: created literally, never run as shell."""
    project = make_project("hostile", remote_name=f"h {weird}")
    remote_dir = short_tmp / "remote" / f"h {weird}"
    result = run_rjn("open", "--no-browser", "--no-watch", cwd=project)
    assert result.returncode == 0, result.stderr
    assert (remote_dir / "helpers.py").exists()
    assert not list(Path("/").glob("PWNED*")) and not list(Path.home().glob("PWNED*"))
    assert not list(remote_dir.parent.glob("PWNED*")) and not list(project.glob("PWNED*"))
    closed = run_rjn("close", "--server", cwd=project)
    assert closed.returncode == 0, closed.stderr
