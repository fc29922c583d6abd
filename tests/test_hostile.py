"""A hostile remote: links, names and streams meant to make a pull write outside the project.
Nothing outside the destination may change (a sentinel tree is compared before and after), and
the output names what was refused."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import Watcher, master, opened, run_rjn, run_rjn_measured, wait_for


@pytest.fixture(scope="module")
def project(opened_project: Callable[..., Path]) -> Path:
    return opened_project("evil", sync="max_file_size = 1000000")


@pytest.fixture(scope="module")
def remote(project: Path, short_tmp: Path) -> Path:
    results = short_tmp / "remote" / "evil" / "results"
    results.mkdir(parents=True, exist_ok=True)
    return results


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[Path]:
    """A tree outside the project that nothing may touch."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "keep.txt").write_text("keep")
    (outside / "sub" / "authorized_keys").write_text("ssh-ed25519 AAAA mine\n")
    before = snapshot(outside)
    yield outside
    assert snapshot(outside) == before, "something was written outside the project"


def snapshot(root: Path) -> dict[str, object]:
    found: dict[str, object] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            content = os.readlink(path) if path.is_symlink() else (
                path.read_bytes() if path.is_file() else None)  # fmt: skip
            found[str(path.relative_to(root))] = (info.st_mode, info.st_mtime_ns, content)
    return found


def test_links_that_leave_the_folder_never_become_local_links(project, remote, sentinel):
    (remote / "real.png").write_bytes(b"real")
    (remote / "alias.png").symlink_to("real.png")  # stays inside: comes as a link
    (remote / "esc").symlink_to(sentinel)  # a folder outside
    (remote / "evil.png").symlink_to("/etc/passwd")
    (remote / "up.png").symlink_to("../../outside.png")  # relative, but leaves the folder
    (remote / "dangling.png").symlink_to("nowhere.png")
    result = run_rjn("sync", cwd=project)
    assert result.returncode == 0, result.stderr
    local = project / "results"
    assert (local / "real.png").read_bytes() == b"real"
    assert os.readlink(local / "alias.png") == "real.png"
    for name in ("esc", "evil.png", "up.png"):
        assert not os.path.lexists(local / name)
        assert f"results/{name} not pulled: a link to" in result.stderr
    assert "Traceback" not in result.stderr and "refused" in result.stderr


def test_a_local_link_is_never_written_through(project, remote, sentinel):
    # The swap: a link here (planted, or left by an older tool) where the remote has a folder.
    (project / "results").mkdir(exist_ok=True)
    (project / "results" / "swap").symlink_to(sentinel / "sub")
    (remote / "swap").mkdir()
    (remote / "swap" / "authorized_keys").write_text("ssh-ed25519 AAAA attacker\n")
    (remote / "swap" / "written-through.png").write_bytes(b"x")
    result = run_rjn("sync", cwd=project)
    assert result.returncode == 0, result.stderr
    assert "results/swap is a link or a file here: nothing is written through it" in result.stderr
    assert os.readlink(project / "results" / "swap") == str(sentinel / "sub")  # left as it was


def test_a_file_over_the_size_cap_is_named_and_not_pulled(project, remote):
    with open(remote / "huge.bin", "wb") as handle:
        handle.truncate(1024**3)  # 1 GB, sparse
    try:
        result = run_rjn("sync", cwd=project)
        assert result.returncode == 0, result.stderr
        assert "results/huge.bin not pulled: larger than [sync] max_file_size" in result.stderr
        assert not (project / "results" / "huge.bin").exists()
    finally:
        (remote / "huge.bin").unlink()


HOSTILE_STREAMS = {
    "dot-dot name": ({"file": "results/../../outside/keep.txt", "blob": 1, "mtime_ns": 1},
                     "leaves its folder"),
    "absolute name": ({"file": "/tmp/rjn-evil.png", "blob": 1, "mtime_ns": 1},
                      "an absolute path"),
    "control character": ({"file": "results/a\x1b[2J.png"}, "control character"),
    "outside results": ({"file": "helpers.py", "blob": 1, "mtime_ns": 1},
                        "outside the results folders"),
    "wrong types": ({"file": "results/t.png", "blob": 5, "mtime_ns": "now"}, "malformed event"),
    "a blob named in JSON": ({"file": "results/t.png", "blob": "eA==", "mtime_ns": 1},
                             "a blob of eA=="),
    "an oversized blob": ({"file": "results/t.png", "blob": 1 << 40, "mtime_ns": 1},
                          "a blob of 1099511627776 bytes"),
    "no blob with its time": ({"file": "results/t.png", "mtime_ns": 1}, "unknown fields"),
    "unknown field": ({"file": "results/u.png", "exec": "rm -rf ~"}, "unknown fields"),
    "not an object": (["results/v.png"], "list instead of an object"),
    "malformed error": ({"error": "boom"}, "malformed error"),
    "malformed change": ({"changed": 7}, "not one"),
}  # fmt: skip


@pytest.fixture
def fake_watcher(short_tmp: Path) -> Iterator[Callable[[str], None]]:
    """Make the remote's environment python (the remote controls it) print a given stream."""
    python = short_tmp / "remote" / "evil" / ".rjn" / "venv" / "bin" / "python"
    real = os.readlink(python)
    stream = python.with_name("hostile-stream")

    def install(text: str) -> None:
        stream.write_text(text)
        python.unlink()
        python.write_text(f"#!/bin/sh\ncat {stream}\nexec sleep 60\n")
        python.chmod(0o755)

    yield install
    python.unlink()
    python.symlink_to(real)


@pytest.mark.parametrize("case", sorted(HOSTILE_STREAMS))
def test_the_watch_stream_is_untrusted_input(case, project, fake_watcher, sentinel):
    event, said = HOSTILE_STREAMS[case]
    ready = {"ready": {"mode": "events", "fs": "ext4", "reason": ""}}
    blob = event.get("blob") if isinstance(event, dict) else None
    raw = "x" * blob if type(blob) is int and blob < 100 else ""  # the bytes after the line
    fake_watcher(json.dumps(ready) + "\n" + json.dumps(event) + "\n" + raw)
    watched = run_rjn("watch", cwd=project, timeout=60)
    assert watched.returncode == 4, watched.stderr
    assert said in watched.stderr and "Traceback" not in watched.stderr
    assert not Path("/tmp/rjn-evil.png").exists()


def test_an_endless_line_ends_the_stream_with_a_clear_error(project, fake_watcher) -> None:
    ready = {"ready": {"mode": "events", "fs": "ext4", "reason": ""}}
    # More than the line limit, with no line end: the stream is cut off, not buffered forever.
    fake_watcher(json.dumps(ready) + "\n" + '{"file": "results/x.png", "data": "'
                 + base64.b64encode(os.urandom(13 * 1024 * 1024)).decode())  # fmt: skip
    watched = run_rjn("watch", cwd=project, timeout=120)
    assert watched.returncode == 4, watched.stderr
    assert "rjn's remote helper sent a line of" in watched.stderr


def test_a_pull_over_the_total_cap_is_stopped_with_nothing_placed(make_project, short_tmp):
    project = make_project("capped", sync="max_pull_size = 200000")
    results = short_tmp / "remote" / "capped" / "results"
    results.mkdir(parents=True)
    for n in range(6):
        (results / f"part{n}.bin").write_bytes(os.urandom(100_000))
    result = run_rjn("sync", cwd=project)
    assert result.returncode == 4, result.stderr
    assert "over [sync] max_pull_size (200,000); nothing was placed" in result.stderr
    assert not (project / "results").exists() or not any((project / "results").iterdir())
    assert not list(project.glob(".rjn-incoming-*"))


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI has it)")
def test_a_full_local_disk_stops_the_pull_with_nothing_half_written(make_project, short_tmp):
    project = make_project("smalldisk")
    results = short_tmp / "remote" / "smalldisk" / "results"
    results.mkdir(parents=True)
    (results / "small.png").write_bytes(b"small")
    (results / "big.png").write_bytes(os.urandom(3 * 1024 * 1024))
    toml = (project / "remote.toml").read_text()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(project)], check=True)
    try:
        (project / "remote.toml").write_text(toml)  # the tmpfs hides the project's own files
        result = run_rjn("sync", cwd=project)
        assert result.returncode == 4, result.stderr
        assert "the local disk is full" in result.stderr and "Traceback" not in result.stderr
        assert not (project / "results").exists()  # not even the small one: all or nothing
        assert not list(project.glob(".rjn-incoming-*"))
    finally:
        subprocess.run(["umount", "-l", str(project)], check=False)


def test_a_flood_of_tiny_files_comes_home_by_one_rsync(project, remote, sentinel) -> None:
    watcher = Watcher(project)
    try:
        flood = remote / "flood"
        flood.mkdir()
        for n in range(10_000):
            (flood / f"f{n:05}.png").write_bytes(b"%d" % n)
        local = project / "results" / "flood"
        wait_for(lambda: local.is_dir() and len(os.listdir(local)) == 10_000, timeout=300,
                 what="10,000 files home")  # fmt: skip
        assert (local / "f09999.png").read_bytes() == b"9999"
    finally:
        assert watcher.stop() == 0


# -- attacks from this machine: another local user, a reused pid ------------------------------


class Squatter:
    """Another local user's listener on a port our tunnel used to hold: it records what it
    is sent."""

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self.received = b""
        self.server = socket.create_server(("127.0.0.1", port))
        self.server.settimeout(0.2)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    self.received += conn.recv(65536)
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
                except OSError:
                    pass

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=5)
        self.server.close()


def test_the_token_goes_only_to_our_own_tunnel(make_project, host, rjn_env) -> None:
    project = make_project("squat")
    port, token = opened(run_rjn("open", "--no-browser", "--no-watch", cwd=project))
    master(host, rjn_env, "exit")  # the master (and its tunnel) gone: the port is free
    squatter = Squatter(port)
    try:
        seen = run_rjn("status", "--json", cwd=project)
        assert seen.returncode == 0, seen.stderr
        answer = json.loads(seen.stdout)
        assert answer["tunnel"] is False and answer["tokened_url"] is None
        reopened = run_rjn("open", "--no-browser", "--no-watch", cwd=project)
        new_port, new_token = opened(reopened)
        assert new_port != port and new_token == token
        answer = json.loads(run_rjn("status", "--json", cwd=project).stdout)
        assert answer["tunnel"] is True
    finally:
        squatter.close()
    assert token.encode() not in squatter.received
    run_rjn("close", "--server", cwd=project)


def test_a_reused_pid_is_never_signalled(make_project, short_tmp) -> None:
    import signal
    import subprocess
    import sys

    project = make_project("reuse")
    opened(run_rjn("open", "--no-browser", "--no-watch", cwd=project))
    record_path = short_tmp / "remote" / "reuse" / ".rjn" / "server.json"
    record = json.loads(record_path.read_text())
    # Another program now has the recorded pid's place: even one named like a server.
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "jupyter",
                              str(short_tmp / "remote" / "reuse")])  # fmt: skip
    try:
        record_path.write_text(json.dumps({**record, "pid": decoy.pid}))
        closed = run_rjn("close", "--server", cwd=project)
        assert closed.returncode == 0, closed.stderr
        assert decoy.poll() is None, "rjn signalled a process it did not start"
    finally:
        decoy.kill()
        os.killpg(record["pid"], signal.SIGTERM)


def test_a_percent_in_the_remote_dir_is_refused_before_anything_runs(make_project) -> None:
    project = make_project("percent", remote_name="a%hb")
    result = run_rjn("open", "--no-browser", "--no-watch", cwd=project)
    assert result.returncode == 2, result.stderr
    assert "contains '%'" in result.stderr and "Traceback" not in result.stderr


def test_a_results_folder_that_is_a_link_on_the_remote_is_followed(make_project, short_tmp):
    """On clusters results often live on scratch space, linked into the project."""
    project = make_project("scratchy")
    scratch = short_tmp / "scratch"
    (scratch / "run1").mkdir(parents=True)
    (scratch / "run1" / "loss.png").write_bytes(b"loss")
    remote = short_tmp / "remote" / "scratchy"
    remote.mkdir(parents=True)
    (remote / "results").symlink_to(scratch)
    result = run_rjn("sync", cwd=project)
    assert result.returncode == 0, result.stderr
    assert (project / "results" / "run1" / "loss.png").read_bytes() == b"loss"
    assert not (project / "results").is_symlink()


def test_a_link_of_the_project_that_leaves_it_is_never_sent(project, short_tmp) -> None:
    """No upload of ~/.aws through a link in the project."""
    secrets = short_tmp / "aws"
    secrets.mkdir(exist_ok=True)
    (secrets / "credentials").write_text("[default]\nsecret = s3cr3t\n")
    (project / "aws").symlink_to(secrets)
    (project / "key.txt").symlink_to(secrets / "credentials")
    (project / "notes.txt").write_text("sent")
    result = run_rjn("sync", cwd=project)
    assert result.returncode == 0, result.stderr
    remote = short_tmp / "remote" / "evil"
    assert (remote / "notes.txt").read_text() == "sent"
    assert not os.path.lexists(remote / "aws") and not os.path.lexists(remote / "key.txt")
    assert not any("s3cr3t" in p.read_text(errors="replace")
                   for p in remote.rglob("*") if p.is_file() and ".rjn" not in p.parts)  # fmt: skip


def test_what_the_remote_says_reaches_the_terminal_as_text(project, fake_watcher) -> None:
    # A clipboard write (OSC 52), a window title, a screen wipe and a C1 CSI: shown, not obeyed.
    ready = {"ready": {"mode": "events", "fs": "ext4", "reason": ""}}
    said = {"message": "boom \x1b]52;c;cHduZWQ=\x07 \x1b]0;owned\x07", "hint": "\x1b[2J\x9b31m"}
    fake_watcher(json.dumps(ready) + "\n" + json.dumps({"error": said}) + "\n")
    watched = run_rjn("watch", cwd=project, timeout=60)
    assert watched.returncode == 4, watched.stderr
    assert "\x1b" not in watched.stderr and "\x9b" not in watched.stderr
    assert "boom \\x1b]52;c;cHduZWQ=\\x07" in watched.stderr
    assert "hint: \\x1b[2J\\x9b31m" in watched.stderr


def test_the_watch_keeps_to_the_total_cap_over_time(make_project, short_tmp) -> None:
    # Each file alone is small, each batch under the cap: the sum over a minute is what counts.
    project = make_project("watchcap", sync="max_pull_size = 300000")
    opened(run_rjn("open", "--no-browser", "--no-watch", cwd=project))
    try:
        results = short_tmp / "remote" / "watchcap" / "results"
        results.mkdir(parents=True, exist_ok=True)
        watcher = Watcher(project)
        for n in range(10):
            (results / f"f{n}.png").write_bytes(os.urandom(100_000))
            time.sleep(0.3)
        wait_for(lambda: watcher.proc.poll() is not None, timeout=60, what="the watch to stop")
        assert watcher.proc.returncode == 4, watcher.lines
        assert any("more than [sync] max_pull_size" in line for line in watcher.lines)
        home = sum(p.stat().st_size for p in (project / "results").glob("*.png"))
        assert 0 < home <= 300_000
    finally:
        run_rjn("close", "--server", cwd=project)


@pytest.mark.parametrize("multiplex", ["controlmaster", "single"])
def test_a_remote_that_floods_its_output_is_cut_off_with_memory_flat(
    make_project, short_tmp, multiplex: str
) -> None:
    """A remote "python" that prints without end, and no line break: rjn stops it within
    seconds with a clear error, and its memory stays flat (it grew to ~1 GB before)."""
    flood = short_tmp / f"flood-{multiplex}"
    flood.write_text("#!/bin/sh\nexec tr '\\0' x < /dev/zero\n")
    flood.chmod(0o755)
    extra = f'python = "{flood}"\nmultiplex = "{multiplex}"\n'
    root = make_project(f"flood-{multiplex}", remote_extra=extra)
    began = time.monotonic()
    result, grown = run_rjn_measured("sync", cwd=root)
    took = time.monotonic() - began
    # (single mode: the flood answers in place of the session's multiplexer: no connection)
    assert result.returncode == (4 if multiplex == "controlmaster" else 3), result.stderr
    assert "Traceback" not in result.stderr and "rjn-test" in result.stderr, result.stderr
    assert took < 45, took
    assert grown < 300, f"{grown} MiB"


def test_a_frame_longer_than_any_peer_sends_is_not_read() -> None:
    """Single mode's frames: a header that claims gigabytes ends the stream, nothing read."""
    import io

    from rjn.shared import frames

    claims = frames.HEAD.pack(1, frames.OUT, 0x78787878) + b"x" * 100
    assert frames.read_frame(io.BytesIO(claims)) is None
    fine = frames.frame(1, frames.OUT, b"y" * frames.CHUNK)
    assert frames.read_frame(io.BytesIO(fine)) == (1, frames.OUT, b"y" * frames.CHUNK)


@pytest.mark.parametrize("transfer", ["rjn", "rsync"])
def test_a_large_pull_keeps_memory_flat_whatever_the_transfer(
    make_project, short_tmp, transfer: str
) -> None:
    """A 150 MB file comes home with rjn's memory flat (rjn's own transfer held the whole
    file several times over: 518-581 MB for 200 MB)."""
    root = make_project(f"big-{transfer}", remote_extra=f'transfer = "{transfer}"\n')
    results = short_tmp / "remote" / f"big-{transfer}" / "results"
    results.mkdir(parents=True)
    with open(results / "big.bin", "wb") as handle:
        for _ in range(150):
            handle.write(os.urandom(1 << 20))
    result, peak = run_rjn_measured("sync", cwd=root)
    assert result.returncode == 0, result.stderr
    assert (root / "results" / "big.bin").stat().st_size == 150 << 20
    assert peak < 120, f"{peak} MiB"
