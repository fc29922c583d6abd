"""The project both ways: notebooks saved in the remote Jupyter come home, edits on both sides
are both kept (merged cell-wise for notebooks), deletions travel only onto unchanged files and
into a trash folder."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import NOTEBOOK
from helpers import DIRECT, Watcher, api, opened, run_rjn, status, wait_for


@pytest.fixture(scope="module")
def project(opened_project: Callable[..., Path]) -> Path:
    return opened_project("both")


@pytest.fixture(scope="module")
def remote(project: Path, short_tmp: Path) -> Path:
    return short_tmp / "remote" / "both"


def synced(project: Path) -> str:
    result = run_rjn("sync", cwd=project)
    assert result.returncode == 0, result.stderr
    return result.stderr


def notebook(*sources: str) -> dict:
    cells = [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
              "source": src, "id": f"cell{n}"} for n, src in enumerate(sources)]  # fmt: skip
    return {**NOTEBOOK, "cells": cells}


def test_a_notebook_saved_in_the_remote_jupyter_comes_home_while_watching(project, remote):
    port, token = opened(run_rjn("open", "--no-browser", "--no-watch", cwd=project))
    watcher = Watcher(project)
    try:
        saved = notebook("print('saved in the browser')")
        body = json.dumps({"type": "notebook", "content": saved}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/contents/analysis.ipynb", data=body, method="PUT",
            headers={"Authorization": f"token {token}", "Content-Type": "application/json"},
        )  # fmt: skip
        with DIRECT.open(request, timeout=30) as response:
            assert response.status == 200
        home = project / "analysis.ipynb"
        wait_for(lambda: "saved in the browser" in home.read_text(), timeout=30,
                 what="the saved notebook home")  # fmt: skip
        assert api(port, "/api/status", token)[0] == 200
    finally:
        assert watcher.stop() == 0
    assert any("analysis.ipynb" in line for line in watcher.lines)


def test_a_local_edit_with_an_older_time_still_goes_out(project, remote) -> None:
    synced(project)
    (project / "helpers.py").write_text("def twice(x):\n    return x + x\n")
    past = time.time() - 3600  # older than the remote copy: rsync --update would skip it
    os.utime(project / "helpers.py", (past, past))
    assert "helpers.py" in synced(project)
    assert "x + x" in (remote / "helpers.py").read_text()


def test_a_file_made_remotely_comes_home_with_sync(project, remote) -> None:
    (remote / "notes.md").write_text("written on the remote\n")
    synced(project)
    assert (project / "notes.md").read_text() == "written on the remote\n"


def test_both_sides_edit_one_notebook_and_both_edits_are_kept(project, remote) -> None:
    (project / "nb.ipynb").write_text(json.dumps(notebook("a = 1", "b = 2")))
    synced(project)
    assert json.loads((remote / "nb.ipynb").read_text())["cells"][1]["source"] == "b = 2"
    (project / "nb.ipynb").write_text(json.dumps(notebook("a = 'here'", "b = 2")))
    (remote / "nb.ipynb").write_text(json.dumps(notebook("a = 1", "b = 'there'")))
    said = synced(project)
    assert "merged cell by cell" in said
    for side in (project, remote):
        cells = json.loads((side / "nb.ipynb").read_text())["cells"]
        assert ["".join(c["source"]) for c in cells] == ["a = 'here'", "b = 'there'"], side
    assert not list(project.glob("nb.remote-*.ipynb"))


def test_a_clash_keeps_both_versions_until_the_user_picks(project, remote) -> None:
    (project / "config.yaml").write_text("lr: 0.1\n")
    synced(project)
    (project / "config.yaml").write_text("lr: 0.2  # here\n")
    (remote / "config.yaml").write_text("lr: 0.3  # there\n")
    said = synced(project)
    assert "config.yaml changed on both sides" in said
    [copy] = project.glob("config.remote-*.yaml")
    assert copy.read_text() == "lr: 0.3  # there\n"
    assert (project / "config.yaml").read_text() == "lr: 0.2  # here\n"
    assert (remote / "config.yaml").read_text() == "lr: 0.3  # there\n"  # nothing overwritten
    assert any("config.yaml changed on both sides" in p for p in status(project)["problems"])
    synced(project)  # still unresolved: nothing moves, nothing is lost
    assert copy.exists() and (remote / "config.yaml").read_text() == "lr: 0.3  # there\n"
    copy.unlink()  # the user keeps theirs
    synced(project)
    assert (remote / "config.yaml").read_text() == "lr: 0.2  # here\n"
    assert status(project)["conflicts"] == {}


def test_deletions_travel_onto_unchanged_files_only_and_into_the_trash(project, remote):
    for name in ("gone-here.txt", "gone-there.txt", "edited-there.txt"):
        (project / name).write_text(name)
    synced(project)
    (project / "gone-here.txt").unlink()
    (remote / "gone-there.txt").unlink()
    (project / "edited-there.txt").unlink()
    (remote / "edited-there.txt").write_text("edited on the remote")
    said = synced(project)
    assert not (remote / "gone-here.txt").exists()
    assert list((remote / ".rjn" / "trash").glob("*/gone-here.txt"))
    assert not (project / "gone-there.txt").exists()
    assert list((project / ".rjn" / "trash").glob("*/gone-there.txt"))
    # Deleted here but changed there: the change wins, and comes back.
    assert (project / "edited-there.txt").read_text() == "edited on the remote"
    assert "deleted" in said
    assert (project / ".rjn" / ".gitignore").read_text() == "*\n"


def test_remote_saves_come_home_live_while_results_stream(project, remote) -> None:
    (remote / "results").mkdir(exist_ok=True)
    watcher = Watcher(project)
    streaming = threading.Event()
    streaming.set()

    def stream() -> None:  # a training run saving figures in bursts, many a second
        n = 0
        while streaming.is_set():
            for _ in range(5):
                (remote / "results" / f"t-{n:04}.png").write_bytes(os.urandom(20_000))
                n += 1
            time.sleep(0.1)

    writer = threading.Thread(target=stream)
    writer.start()
    try:
        time.sleep(2)
        home = project / "edit.py"
        for n in range(6):
            (remote / "edit.py").write_text(f"saved {n}\n")
            wait_for(lambda n=n: home.exists() and home.read_text() == f"saved {n}\n",
                     timeout=10, what=f"save {n} home while results stream")  # fmt: skip
            time.sleep(0.7)
        assert len(list((project / "results").glob("t-*.png"))) > 50  # the stream came too
    finally:
        streaming.clear()
        writer.join()
        assert watcher.stop() == 0


def test_the_watch_merges_a_notebook_edited_on_both_sides_as_sync_does(project, remote) -> None:
    (project / "both.ipynb").write_text(json.dumps(notebook("a = 1", "b = 2")))
    synced(project)
    (project / "both.ipynb").write_text(json.dumps(notebook("a = 'here'", "b = 2")))
    watcher = Watcher(project)
    try:
        # Saved in the remote Jupyter while the local edit is not sent yet: a live conflict.
        (remote / "both.ipynb").write_text(json.dumps(notebook("a = 1", "b = 'there'")))
        for side in (project, remote):  # merged here, then sent back over the version seen
            wait_for(lambda side=side: "a = 'here'" in (side / "both.ipynb").read_text()
                     and "b = 'there'" in (side / "both.ipynb").read_text(), timeout=30,
                     what=f"the merge in {side}")  # fmt: skip
    finally:
        assert watcher.stop() == 0
    for side in (project, remote):
        cells = json.loads((side / "both.ipynb").read_text())["cells"]
        assert ["".join(c["source"]) for c in cells] == ["a = 'here'", "b = 'there'"], side
    assert not list(project.glob("both.remote-*.ipynb"))


def _save(path: Path, data: bytes, by_rename: bool) -> None:
    """Save as editors do: a temporary file renamed over (Jupyter, most editors), or in place."""
    if by_rename:
        temporary = path.with_name(f".~{path.name}")
        temporary.write_bytes(data)
        os.replace(temporary, path)
    else:
        with open(path, "r+b") as handle:
            handle.truncate(0)
            handle.write(data)


def _edit_cell(path: Path, index: int, source: str, by_rename: bool) -> None:
    """Read the notebook as it is now, change one cell, save it (an editor's read-modify-write)."""
    nb = json.loads(path.read_bytes())
    nb["cells"][index]["source"] = source
    _save(path, json.dumps(nb, indent=1).encode(), by_rename)


@pytest.mark.parametrize("seed", [1, 2])
def test_the_live_watch_keeps_every_save_of_both_sides(project, remote, seed: int) -> None:
    """Both sides save the same notebook (different cells) and the same text file, by rename and
    in place, while the watch runs: every notebook save survives, merged into one notebook that
    both sides hold; every text save survives somewhere (the file or a conflict copy)."""
    import random

    rng = random.Random(seed)
    name = f"live{seed}.ipynb"
    (project / name).write_text(json.dumps(notebook(*(f"cell {n}" for n in range(6)))))
    (project / f"notes{seed}.txt").write_text("agreed\n")
    synced(project)
    last = {n: f"cell {n}" for n in range(6)}
    texts: dict[str, bytes] = {}  # each side's last save of the text file
    def saves(side: str, root: Path, cells: tuple[int, ...], round_: int) -> None:
        """One side saves its cell of this round, and now and then the text file."""
        cell = cells[round_ % 3]
        last[cell] = f"{side}, round {round_}"
        _edit_cell(root / name, cell, last[cell], by_rename=rng.random() < 0.5)
        if rng.random() < 0.5:
            texts[side] = f"{side} {round_}\n".encode()
            _save(root / f"notes{seed}.txt", texts[side], by_rename=rng.random() < 0.5)

    watcher = Watcher(project)
    try:
        for round_ in range(8):
            saves("there", remote, (0, 2, 4), round_)
            time.sleep(rng.uniform(0, 1.2))
            saves("here", project, (1, 3, 5), round_)
            time.sleep(rng.uniform(0, 0.6))
        time.sleep(3)  # the last remote save comes home
    finally:
        assert watcher.stop() == 0
    merges = [line for line in watcher.lines if "merged cell by cell" in line]
    synced(project)
    synced(project)
    for side in (project, remote):
        cells = json.loads((side / name).read_bytes())["cells"]
        assert ["".join(c["source"]) for c in cells] == [last[n] for n in range(6)], (
            side, watcher.lines[-30:])  # fmt: skip
    assert not list(project.glob(f"live{seed}.*-*.ipynb"))  # merged, never a conflict copy
    assert merges, watcher.lines  # the watch said what it merged
    # Every text save is somewhere: in the file on either side or in a conflict copy here.
    kept = {p.read_bytes() for p in project.glob(f"notes{seed}*.txt")}
    kept |= {p.read_bytes() for p in remote.glob(f"notes{seed}*.txt")}
    for data in texts.values():  # a side's earlier saves are its own to save over
        assert data in kept, (data, kept)
