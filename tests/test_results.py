"""Results come home: the live watcher and `rjn sync`, on the real sshd."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import Watcher, execute, opened, run_rjn, wait_for


@pytest.fixture(scope="module")
def project(opened_project: Callable[..., Path]) -> Path:
    def plots(root: Path) -> None:
        (root / "plots.py").write_text("import matplotlib\n")

    return opened_project("gamma", plots, sync="patterns = ['*.png', '*.svg', '*.dat']")


@pytest.fixture(scope="module")
def remote(project: Path, short_tmp: Path) -> Path:
    return short_tmp / "remote" / "gamma"


@pytest.fixture
def watcher(project: Path) -> Iterator[Watcher]:
    # One per test: a project folder has one watch at a time (a newer one takes over).
    running = Watcher(project)
    yield running
    assert running.stop() == 0
    assert any("stopped watching" in ln for ln in running.lines)


def test_watcher_uses_file_events(watcher: Watcher) -> None:
    assert any("watching results by file events" in ln for ln in watcher.lines)


def test_a_plain_write_comes_home(watcher: Watcher, project: Path, remote: Path) -> None:
    (remote / "results" / "sub").mkdir(parents=True, exist_ok=True)
    (remote / "results" / "sub" / "plain.png").write_bytes(b"\x89PNG plain")
    local = project / "results" / "sub" / "plain.png"
    wait_for(local.exists, what="plain.png locally")
    assert local.read_bytes() == b"\x89PNG plain"
    wait_for(lambda: any("results/sub/plain.png" in ln for ln in watcher.lines), what="a line")


def test_a_figure_saved_by_matplotlib_in_a_kernel_comes_home(watcher, project, first_url) -> None:
    port, token = first_url
    code = (
        "import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots(); ax.plot([1, 2, 3], [2, 1, 3])\n"
        "fig.savefig('results/kernel.png'); fig.savefig('figures/kernel.svg'); print('saved')\n"
    )
    assert execute(port, token, code).strip() == "saved"
    for name in ("results/kernel.png", "figures/kernel.svg"):
        wait_for((project / name).exists, what=name)
    assert (project / "results" / "kernel.png").read_bytes()[:4] == b"\x89PNG"
    assert b"<svg" in (project / "figures" / "kernel.svg").read_bytes()


def test_a_half_written_file_is_never_pulled_half(watcher, project: Path, remote: Path) -> None:
    local = project / "results" / "slow.dat"
    with open(remote / "results" / "slow.dat", "wb") as handle:
        handle.write(b"first half;")
        handle.flush()
        os.fsync(handle.fileno())
        # A file finished after the write: once it is home, the watcher has seen that write.
        (remote / "results" / "after-slow.dat").write_bytes(b"done")
        wait_for((project / "results" / "after-slow.dat").exists, what="the later file")
        assert not local.exists(), "pulled before it was closed"
        handle.write(b"second half")
    wait_for(local.exists, what="slow.dat after close")
    assert local.read_bytes() == b"first half;second half"


def test_a_large_file_comes_home_by_rsync(watcher, project: Path, remote: Path) -> None:
    """Small files travel inside their event; one over the inline limit is pulled by rsync."""
    from rjn.watch import INLINE_MAX

    big = os.urandom(INLINE_MAX + 1024)
    (remote / "results" / "big.png").write_bytes(big)
    local = project / "results" / "big.png"
    wait_for(local.exists, what="big.png")
    assert local.read_bytes() == big


def test_a_file_renamed_into_place_comes_home(watcher, project: Path, remote: Path) -> None:
    tmp = remote / "results" / ".tmp-atomic"
    tmp.write_bytes(b"atomic")
    os.replace(tmp, remote / "results" / "atomic.png")
    wait_for((project / "results" / "atomic.png").exists, what="atomic.png")
    assert (project / "results" / "atomic.png").read_bytes() == b"atomic"


def test_a_local_edit_survives(watcher, project: Path, remote: Path) -> None:
    (remote / "results" / "edit.png").write_bytes(b"v1")
    local = project / "results" / "edit.png"
    wait_for(local.exists, what="edit.png")
    local.write_bytes(b"my local edit")
    (remote / "results" / "edit.png").write_bytes(b"v2 from the remote")
    wait_for(lambda: list(local.parent.glob("edit.remote-*.png")), what="the kept remote copy")
    assert local.read_bytes() == b"my local edit"
    [kept] = local.parent.glob("edit.remote-*.png")
    assert kept.read_bytes() == b"v2 from the remote"
    wait_for(lambda: any("kept yours" in ln for ln in watcher.lines), what="a conflict line")


def test_sync_pulls_everything_then_nothing(project: Path, remote: Path) -> None:
    (remote / "results").mkdir(exist_ok=True)
    (remote / "results" / "table.csv").write_text("a,b\n1,2\n")  # not a figure: sync takes it too
    result = run_rjn("sync", cwd=project)
    assert result.returncode == 0, result.stderr
    assert (project / "results" / "table.csv").read_text() == "a,b\n1,2\n"
    again = run_rjn("sync", "--json", cwd=project)
    assert again.returncode == 0, again.stderr
    assert '"files": []' in again.stdout
    # A local edit survives a sync too: the remote version is kept beside it.
    (project / "results" / "table.csv").write_text("my edit\n")
    (remote / "results" / "table.csv").write_text("a,b\n3,4\n")
    result = run_rjn("sync", cwd=project)
    assert result.returncode == 0 and "kept yours" in result.stderr
    assert (project / "results" / "table.csv").read_text() == "my edit\n"
    [kept] = (project / "results").glob("table.remote-*.csv")
    assert kept.read_text() == "a,b\n3,4\n"


def test_sync_push_sends_the_project_as_open_does(project: Path, remote: Path) -> None:
    (project / "helpers.py").write_text("def twice(x):\n    return x + x\n")
    (project / "results").mkdir(exist_ok=True)
    (project / "results" / "local-only.png").write_bytes(b"stays home")
    result = run_rjn("sync", "--push", cwd=project)
    assert result.returncode == 0, result.stderr
    assert (remote / "helpers.py").read_text() == "def twice(x):\n    return x + x\n"
    assert not (remote / "results" / "local-only.png").exists()  # results never travel out


def test_polling_mode_for_filesystems_without_events(project: Path, remote: Path) -> None:
    toml = project / "remote.toml"
    original = toml.read_text()
    toml.write_text(original.replace("[sync]\n", '[sync]\nwatch = "poll"\n'))
    try:
        running = Watcher(project)
        assert any("by polling" in ln for ln in running.lines)
        (remote / "results" / "polled.png").write_bytes(b"polled")
        wait_for((project / "results" / "polled.png").exists, what="polled.png")
        assert running.stop() == 0
        # Ctrl-C stopped the watching only: the server and the tunnel are still up.
        status = json.loads(run_rjn("status", "--json", cwd=project).stdout)
        assert status["server"] is True and status["tunnel"] is True
    finally:
        toml.write_text(original)


@pytest.fixture(scope="module")
def first_url(project: Path) -> tuple[int, str]:
    return opened(run_rjn("open", "--no-browser", "--no-watch", cwd=project))


def test_a_second_watch_of_the_folder_takes_over_and_the_first_says_so(
    project: Path, remote: Path
) -> None:
    """One watch per project folder on the remote: the newer one ends the older (a watcher
    whose link stalled and was given up here would otherwise watch on there until its sshd
    noticed), and a watch that was taken over says so instead of reconnecting."""
    first = Watcher(project)
    try:
        second = Watcher(project)
        try:
            wait_for(lambda: first.proc.poll() is not None, what="the first watch to stop")
            assert first.proc.returncode != 0
            assert any("took over" in line for line in first.lines), first.lines
            assert len(watchers_there(remote)) == 1, watchers_there(remote)
            (remote / "results" / "after-takeover.png").write_bytes(b"png")
            wait_for((project / "results" / "after-takeover.png").exists,
                     what="the second watch to bring a figure home")  # fmt: skip
        finally:
            assert second.stop() == 0
    finally:
        if first.proc.poll() is None:
            first.stop()


def watchers_there(remote: Path) -> list[str]:
    """The remote's watch helpers of this project (on loopback the local ssh client's argv
    names the helper too: those are left out)."""
    import subprocess

    ps = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    return [ln for ln in ps.splitlines() if "rjn.helper.main" in ln and " watch " in ln
            and str(remote) in ln and "ssh" not in ln.split()[0]]  # fmt: skip
