"""A stock Mac's rsync: openrsync (macOS 15.4 on), built from the snapshot the testbed keeps, first
on PATH. rjn sees it cannot serve and moves files through its own transfer over the connection:
open, edits both ways, a conflict, results home."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import opened, run_rjn


def _openrsync_source() -> Path | None:
    """The testbed's openrsync snapshot: beside this repo (../shared), or where
    RJN_OPENRSYNC names it."""
    here = Path(__file__).resolve().parents[1]
    for candidate in (os.environ.get("RJN_OPENRSYNC"), here.parent / "shared/testbed/openrsync",
                      Path("/work/shared/testbed/openrsync")):  # fmt: skip
        if candidate and (Path(candidate) / "build.sh").is_file():
            return Path(candidate)
    return None


pytestmark = pytest.mark.skipif(
    _openrsync_source() is None, reason="no openrsync snapshot (../shared/testbed/openrsync)"
)


@pytest.fixture(scope="module")
def mac_path(short_tmp: Path) -> str:
    """A PATH whose rsync is openrsync."""
    source = _openrsync_source()
    assert source
    built = short_tmp / "openrsync"
    subprocess.run(["bash", str(source / "build.sh"), str(built)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    said = subprocess.run([built / "rsync", "--version"], capture_output=True, text=True)
    assert "openrsync" in said.stdout + said.stderr
    return f"{built}{os.pathsep}{os.environ['PATH']}"


def test_a_stock_macs_rsync_opens_and_syncs_through_rjns_own_transfer(
    make_project: Callable[..., Path], short_tmp: Path, mac_path: str
) -> None:
    mac = {"PATH": mac_path}
    project = make_project("macbook")
    there = short_tmp / "remote" / "macbook"
    result = run_rjn("open", "--no-browser", "--no-watch", cwd=project, env=mac)
    opened(result)
    assert "lacks what rjn needs: files travel through rjn's own transfer" in result.stderr
    assert (there / "helpers.py").read_text() == (project / "helpers.py").read_text()
    assert (there / "data" / "points.csv").exists() and not (there / ".git").exists()

    # Edits both ways, one on both sides, and a result.
    (there / "helpers.py").write_text("def twice(x):\n    return x + x\n")
    (project / "data" / "points.csv").write_text("x,y\n5,6\n")
    (there / "analysis.ipynb").write_text(json.dumps({**json.loads(
        (project / "analysis.ipynb").read_text()), "metadata": {"there": True}}))  # fmt: skip
    (project / "analysis.ipynb").write_text("{}")  # not a notebook any more: kept both
    (there / "results").mkdir(exist_ok=True)  # (open makes it)
    (there / "results" / "fig.png").write_bytes(b"\x89PNG" + os.urandom(3000))
    synced = run_rjn("sync", cwd=project, env=mac)
    assert synced.returncode == 0, synced.stderr
    assert (project / "helpers.py").read_text() == "def twice(x):\n    return x + x\n"
    assert (there / "data" / "points.csv").read_text() == "x,y\n5,6\n"
    assert (project / "results" / "fig.png").read_bytes() == (
        there / "results" / "fig.png"
    ).read_bytes()
    kept = [p.name for p in project.iterdir() if p.name.startswith("analysis.remote-")]
    assert len(kept) == 1 and (project / "analysis.ipynb").read_text() == "{}"
    again = run_rjn("sync", cwd=project, env=mac)
    assert again.returncode == 0 and "0 sent, 0 file(s) pulled" in again.stderr, again.stderr
    assert "own transfer" not in again.stderr  # said once
    run_rjn("close", "--server", cwd=project, env=mac)


def test_rsync_asked_for_where_it_cannot_serve_is_a_clear_error(
    make_project: Callable[..., Path], mac_path: str
) -> None:
    project = make_project("macforced", remote_extra='transfer = "rsync"\n')
    result = run_rjn("sync", cwd=project, env={"PATH": mac_path})
    assert result.returncode == 2, result.stderr
    assert '[remote] transfer = "rsync", but this machine\'s rsync' in result.stderr
    assert "brew install rsync" in result.stderr and "Traceback" not in result.stderr
