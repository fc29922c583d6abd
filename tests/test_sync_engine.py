"""The ways two-way sync used to lose work, each a named regression test against the real host:
a remote save during a push, file <-> folder changes, a purged or different remote folder,
odd names, two engines at once, leftovers, caps. Every edit must still exist somewhere
(project, conflict copy or trash), on the side that made it or both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import run_rjn, wait_for

from rjn import transfer


# Each case with both transfers: rsync, and rjn's own (where this machine's rsync cannot serve).
@pytest.fixture(scope="module", params=["rsync", "rjn"])
def project(opened_project: Callable[..., Path], request: pytest.FixtureRequest) -> Path:
    name = "engine" if request.param == "rsync" else "engine-own"
    return opened_project(name, remote_extra=f'transfer = "{request.param}"\n')


@pytest.fixture(scope="module")
def remote(project: Path, short_tmp: Path) -> Path:
    return short_tmp / "remote" / project.name


def synced(project: Path, *args: str) -> str:
    result = run_rjn("sync", *args, cwd=project)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def trashed(side: Path, rel: str) -> list[Path]:
    return list((side / ".rjn" / "trash").glob(f"*/{rel}"))


# -- 1. a remote save during a push ---------------------------------------------------------


def test_a_remote_save_during_a_push_is_never_overwritten(project: Path, remote: Path) -> None:
    (project / "notes.txt").write_text("v1\n")
    synced(project)
    # A large push (data) and a small edit; while the data is on its way, the remote saves.
    (project / "data" / "big.bin").write_bytes(os.urandom(48 * 1024 * 1024))
    (project / "notes.txt").write_text("v2 from here\n")
    saved = threading.Event()
    staged: list[str] = []

    def autosave() -> None:
        def staging_under_way() -> bool:
            staged.extend(p.name for p in (remote / ".rjn").iterdir()
                          if p.name.startswith("incoming-"))  # fmt: skip
            return bool(staged)

        wait_for(staging_under_way, timeout=120, what="the push under way")
        (remote / "notes.txt").write_text("v2 autosaved there\n")
        saved.set()

    saver = threading.Thread(target=autosave)
    saver.start()
    said = synced(project)
    saver.join()
    assert saved.is_set()
    # Named by this machine's and this folder's id: its next pass cleans up after one cut short.
    machine = (Path(os.environ["XDG_STATE_HOME"]) / "rjn" / "machine-id").read_text().strip()
    assert all(name.startswith(f"incoming-{machine}") for name in staged), staged
    assert all(name.startswith(transfer.staging_prefix(project)) for name in staged), staged
    assert (remote / "notes.txt").read_text() == "v2 autosaved there\n"  # never overwritten
    assert (project / "notes.txt").read_text() == "v2 from here\n"
    assert "notes.txt changed on the remote while ours was on its way" in said
    assert (remote / "data" / "big.bin").stat().st_size == 48 * 1024 * 1024
    synced(project)  # the next pass keeps both
    [copy] = project.glob("notes.remote-*.txt")
    assert copy.read_text() == "v2 autosaved there\n"
    assert (project / "notes.txt").read_text() == "v2 from here\n"
    copy.unlink()
    (project / "data" / "big.bin").unlink()
    synced(project)


# -- 2. file <-> folder ------------------------------------------------------------------------


def test_a_local_edit_inside_a_folder_the_remote_made_a_file_is_kept(project, remote) -> None:
    (project / "a").mkdir()
    (project / "a" / "x.txt").write_text("x1")
    synced(project)
    (project / "a" / "x.txt").write_text("x2 edited here")
    (remote / "a" / "x.txt").unlink()
    (remote / "a").rmdir()
    (remote / "a").write_text("a is a file there")
    said = synced(project)
    assert "a is a file on one side and a folder or a link on the other" in said
    assert (project / "a" / "x.txt").read_text() == "x2 edited here"
    assert (remote / "a").read_text() == "a is a file there"
    # The user settles it by renaming their folder: both then travel.
    (project / "a").rename(project / "a-dir")
    synced(project)
    assert (project / "a").read_text() == "a is a file there"
    assert (remote / "a-dir" / "x.txt").read_text() == "x2 edited here"


def test_a_remote_edit_of_a_file_made_a_folder_here_is_kept(project, remote) -> None:
    (project / "b").write_text("b1")
    synced(project)
    (remote / "b").write_text("b2 edited there")
    (project / "b").unlink()
    (project / "b").mkdir()
    (project / "b" / "y.txt").write_text("y")
    said = synced(project)
    assert "b is a file on one side and a folder or a link on the other" in said
    assert (remote / "b").read_text() == "b2 edited there"
    assert (project / "b" / "y.txt").read_text() == "y"


def test_a_one_sided_folder_to_file_change_converges_both_ways(project, remote) -> None:
    for name in ("c", "d"):
        (project / name).mkdir()
        (project / name / "old.txt").write_text("old")
    synced(project)
    (project / "c" / "old.txt").unlink()
    (project / "c").rmdir()
    (project / "c").write_text("c is a file now")
    (remote / "d" / "old.txt").unlink()
    (remote / "d").rmdir()
    (remote / "d").write_text("d is a file now")
    synced(project)
    assert (remote / "c").read_text() == "c is a file now" and trashed(remote, "c/old.txt")
    assert (project / "d").read_text() == "d is a file now" and trashed(project, "d/old.txt")
    said = synced(project)
    assert "folder of that name" not in said and "↑" not in said  # converged


# -- 3. a different, new or purged remote folder ---------------------------------------------


def test_a_purged_remote_folder_deletes_nothing_here(opened_project, short_tmp: Path) -> None:
    root = opened_project("purged")
    for n in range(30):
        (root / "data" / f"part{n}.csv").write_text(f"{n}\n")
    synced(root)
    before = sorted(p.relative_to(root) for p in root.rglob("*") if ".rjn" not in p.parts)
    there = short_tmp / "remote" / "purged"
    subprocess.run(["rm", "-rf", str(there)], check=True)  # a scratch purge
    said = synced(root)
    after = sorted(p.relative_to(root) for p in root.rglob("*") if ".rjn" not in p.parts)
    assert after == before and not (root / ".rjn" / "trash").exists()
    assert "nothing was deleted on either side" in said
    assert (there / "remote.toml").exists() and (there / "data" / "part29.csv").exists()
    assert "nothing was deleted" not in synced(root)  # said once


def test_another_remote_dir_is_a_new_pair(opened_project, short_tmp: Path) -> None:
    root = opened_project("moved")
    (root / "keep.txt").write_text("keep")
    synced(root)
    run_rjn("close", "--server", cwd=root)
    text = (root / "remote.toml").read_text()
    old = str(short_tmp / "remote" / "moved")
    (root / "remote.toml").write_text(text.replace(old, old + "-elsewhere"))
    said = synced(root)
    assert "is not the copy last synced with" in said
    assert (root / "keep.txt").read_text() == "keep" and (root / "remote.toml").exists()
    assert (Path(old + "-elsewhere") / "keep.txt").read_text() == "keep"


def test_many_deletions_wait_for_the_users_word(project: Path, remote: Path) -> None:
    (project / "many").mkdir()
    for n in range(25):
        (project / "many" / f"{n}.txt").write_text(str(n))
    synced(project)
    for n in range(25):
        (remote / "many" / f"{n}.txt").unlink()
    said = synced(project)
    assert "25 files deleted on the remote are still here" in said
    assert len(list((project / "many").iterdir())) == 25
    said = synced(project, "--allow-deletions")
    assert not list((project / "many").iterdir()) and len(trashed(project, "many/*.txt")) == 25


# -- 4. names ------------------------------------------------------------------------------------


def test_every_name_travels_or_is_named(project: Path, remote: Path) -> None:
    names = ["#hash.txt", ";semi.txt", " lead space.txt", "-dash.txt", "ünï cødé.txt",
             "[brackets].txt", "quote's \"both\".txt", "back\\slash.txt"]  # fmt: skip
    for name in names:
        (project / name).write_text(name)
    (project / "new\nline.txt").write_text("a line break in its name")
    (remote / "tab\tthere.txt").write_text("tab")
    (remote / "from-there.txt").write_text("there")
    odd = os.path.join(os.fsencode(project), b"latin\xe9.txt")
    with open(odd, "wb") as handle:
        handle.write(b"latin")
    result = run_rjn("sync", cwd=project, timeout=120)  # no hang
    assert result.returncode == 0, result.stderr
    for name in names:
        assert (remote / name).read_text() == name, name
    assert (project / "from-there.txt").read_text() == "there"
    assert "tab\\x09there.txt on the remote does not travel" in result.stderr
    said = "new\\x0aline.txt here does not travel: its name has a control character"
    assert said in result.stderr
    assert not (remote / "new\nline.txt").exists() and (project / "new\nline.txt").exists()
    assert "latin\\xe9.txt here does not travel: its name is not UTF-8" in result.stderr
    assert (remote / "tab\tthere.txt").exists() and os.path.exists(odd)  # skipped, not lost
    os.unlink(odd)
    (remote / "tab\tthere.txt").unlink()


# -- 5. one engine at a time, leftovers, caps, env/ ----------------------------------------------


def test_conflict_copies_stay_home(project: Path, remote: Path) -> None:
    (project / "c.txt").write_text("base")
    synced(project)
    (project / "c.txt").write_text("here")
    (remote / "c.txt").write_text("there")
    synced(project)
    synced(project)
    assert list(project.glob("c.remote-*.txt")) and not list(remote.glob("c.remote-*.txt"))
    for copy in project.glob("c.remote-*.txt"):
        copy.unlink()
    synced(project)


def test_staging_left_by_a_killed_rjn_is_cleaned(project: Path, remote: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    local_left = project / f".rjn-incoming-{dead}-abc"
    (local_left / "x").mkdir(parents=True)
    remote_left = remote / ".rjn" / f"{transfer.staging_prefix(project)}dead"
    (remote_left / "data").mkdir(parents=True)
    synced(project)
    assert not local_left.exists() and not remote_left.exists()


def test_two_syncs_at_once_take_turns_and_see_no_false_conflict(project, remote) -> None:
    for n in range(5):
        (project / f"t{n}.txt").write_text(f"v{n}")
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [threading.Thread(target=lambda: results.append(run_rjn("sync", cwd=project)))
               for _ in range(2)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert not any("changed on both sides" in r.stderr for r in results)
    assert not list(project.glob("t*.remote-*.txt"))
    assert all((remote / f"t{n}.txt").read_text() == f"v{n}" for n in range(5))


def test_two_way_pulls_keep_to_the_total_cap(opened_project, short_tmp: Path) -> None:
    root = opened_project("twowaycap", sync="max_pull_size = 200000")
    there = short_tmp / "remote" / "twowaycap"
    for n in range(4):
        (there / f"blob{n}.bin").write_bytes(os.urandom(100_000))
    result = run_rjn("sync", cwd=root)
    assert result.returncode != 0 and "max_pull_size" in result.stderr
    assert not list(root.glob("blob*.bin"))


def test_a_folder_named_env_travels_but_an_environment_does_not(project, remote) -> None:
    (project / "env").mkdir()
    (project / "env" / "settings.json").write_text(json.dumps({"lr": 0.1}))
    (project / "myenv" / "lib").mkdir(parents=True)
    (project / "myenv" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (project / "myenv" / "lib" / "site.py").write_text("")
    synced(project)
    assert (remote / "env" / "settings.json").exists()
    assert not (remote / "myenv").exists()
