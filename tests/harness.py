"""A seeded, randomized two-sided harness for the sync engine, with an oracle.

Each round edits both sides at random (new files, edits, deletions, renames, a file that becomes
a folder and back), then syncs: sometimes with a remote writer saving during the sync, sometimes
killed with SIGKILL part way, sometimes with `rjn watch` running beside it. The oracle, checked
after every sync:
- every edit survives: each content a side held just before the sync (bar the agreed version
  an edit replaced) still exists somewhere: in the project, a conflict copy or a trash, on
  either side; so does each save the remote writer made during the sync;
- nothing reported sent that did not arrive;
and at the end, after syncs with no edits, both sides hold the same tree (bar what the last
sync reported as a clash, and the conflict copies, which stay home).

Used by test_soak.py: a bounded run in the default suite, a long one by `nox -s soak`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from helpers import Watcher

from rjn.archive import load_archive

NAMES = ["a", "b", "c", "d", "notes.txt", "nb.ipynb"]
INNER = ["x", "y", "z.txt"]
SKIP = {".rjn", ".git", "results", "figures", "__pycache__"}


def files_of(root: Path, *, trash: bool = False) -> dict[str, bytes]:
    """Every regular file under `root` that two-way sync sees (with `trash`, .rjn/trash too)."""
    found: dict[str, bytes] = {}
    for folder, dirs, names in os.walk(root):
        rel_folder = Path(folder).relative_to(root)
        dirs[:] = [d for d in dirs if d not in SKIP and not d.startswith(".rjn-incoming-")]
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                found[str(rel_folder / name).removeprefix("./")] = path.read_bytes()
    if trash:
        for path in (root / ".rjn" / "trash").rglob("*"):
            if path.is_file():
                found[f"trash:{path.relative_to(root)}"] = path.read_bytes()
    return found


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Harness:
    """Two sides of one project (`local`, `remote`: folders this machine can write) and rjn."""

    local: Path
    remote: Path
    seed: int
    rng: random.Random = field(init=False)
    counter: int = 0
    log: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    # -- edits -------------------------------------------------------------------------------

    def content(self, side: str) -> bytes:
        self.counter += 1
        return f"{side} edit {self.counter} of seed {self.seed}\n".encode()

    def edit(self, side: str) -> None:
        root = self.local if side == "here" else self.remote
        name = self.rng.choice(NAMES)
        path = root / name
        kind = self.rng.choice(["write", "write", "write", "delete", "nest", "unnest", "rename"])
        self.log.append(f"{side} {kind} {name}")
        if kind == "write":
            if path.is_dir():
                path = path / self.rng.choice(INNER)
            path.write_bytes(self.content(side))
        elif kind == "delete":
            if path.is_file():
                path.unlink()
            elif path.is_dir():
                for inner in path.iterdir():
                    if inner.is_file():
                        inner.unlink()
        elif kind == "nest":  # a file becomes a folder
            if path.is_file():
                path.unlink()
            path.mkdir(exist_ok=True)
            (path / self.rng.choice(INNER)).write_bytes(self.content(side))
        elif kind == "unnest":  # a folder becomes a file
            if path.is_dir():
                for inner in path.iterdir():
                    if inner.is_file():
                        inner.unlink()
                if not any(path.iterdir()):
                    path.rmdir()
                    path.write_bytes(self.content(side))
        elif kind == "rename" and path.is_file():
            target = root / self.rng.choice(NAMES)
            if not target.exists():
                path.rename(target)

    # -- one sync, watched by the oracle -----------------------------------------------------

    def agreed(self) -> dict[str, str]:
        files = load_archive(self.local, None).files  # rjn's agreed versions
        return {rel: agreed.hash for rel, agreed in files.items()}

    def sync(self, *, writer: bool, kill: bool, timeout: float = 300) -> str:
        """One `rjn sync`, checked. Returns its stderr."""
        before = {("here", k): v for k, v in files_of(self.local).items()}
        before |= {("there", k): v for k, v in files_of(self.remote).items()}
        base = self.agreed()
        written: list[bytes] = []
        replaced: set[bytes] = set()  # what the writer itself saved over: its user's choice
        stop = threading.Event()

        def remote_writer() -> None:  # a remote save (an autosave) during the sync
            while not stop.is_set():
                time.sleep(self.rng.uniform(0.05, 0.3))
                name = self.rng.choice(NAMES)
                path = self.remote / name
                if path.is_file():
                    data = self.content("writer")
                    replaced.add(path.read_bytes())
                    path.write_bytes(data)
                    written.append(data)

        worker = threading.Thread(target=remote_writer) if writer else None
        if worker:
            worker.start()
        proc = subprocess.Popen([sys.executable, "-m", "rjn", "sync", "--json"], cwd=self.local,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        if kill:
            try:
                proc.wait(timeout=self.rng.uniform(0.1, 1.5))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                self.log.append("killed")
        out, err = proc.communicate(timeout=timeout)
        stop.set()
        if worker:
            worker.join()
        if proc.returncode != -signal.SIGKILL:
            assert proc.returncode == 0, (self.seed, self.log[-12:], err)
            assert "Traceback" not in err, err
            self.check_sent(json.loads(out), written)
        self.check_survived(before, base, written, replaced)
        return err

    def check_survived(
        self, before: dict, base: dict[str, str], written: list[bytes], replaced: set[bytes]
    ) -> None:
        now = set(files_of(self.local, trash=True).values())
        now |= set(files_of(self.remote, trash=True).values())
        for (side, rel), data in before.items():
            if digest(data) == base.get(rel) or (side == "there" and data in replaced):
                continue  # the agreed version (an edit may replace it), or saved over there
            assert data in now, (self.seed, side, rel, data, self.log[-12:])
        for data in written:
            if data not in replaced:  # the writer's own later save replaced it
                assert data in now, (self.seed, "writer", data, self.log[-12:])

    def check_sent(self, result: dict, written: list[bytes]) -> None:
        touched = set(written)
        for rel in result["tree"]["pushed"]:
            here = (self.local / rel).read_bytes()
            there = (self.remote / rel).read_bytes() if (self.remote / rel).is_file() else None
            assert there == here or there in touched, (self.seed, rel, self.log[-12:])

    # -- rounds --------------------------------------------------------------------------------

    def rounds(self, count: int, watch_every: int = 5) -> None:
        for n in range(count):
            watcher = Watcher(self.local) if watch_every and n % watch_every == 1 else None
            try:
                for _ in range(self.rng.randint(1, 4)):
                    self.edit(self.rng.choice(["here", "there"]))
                self.sync(writer=self.rng.random() < 0.3, kill=self.rng.random() < 0.2)
            finally:
                if watcher:
                    watcher.stop()

    def converge(self) -> None:
        """Syncs with no edits until nothing moves; then both sides hold the same tree."""
        for _ in range(4):
            result = subprocess.run([sys.executable, "-m", "rjn", "sync", "--json",
                                     "--allow-deletions"], cwd=self.local, capture_output=True,
                                    text=True, stdin=subprocess.DEVNULL)  # fmt: skip
            assert result.returncode == 0, (self.seed, result.stderr)
            tree = json.loads(result.stdout)["tree"]
            if not (tree["pushed"] or tree["pulled"] or tree["trashed_here"]
                    or tree["trashed_there"] or tree["raced"]):  # fmt: skip
                break
        copies = set(tree["conflicts"].values())
        clashes = tree["clashes"]

        def kept(rel: str) -> bool:
            return rel not in copies and not any(
                rel == c or rel.startswith(c + "/") for c in clashes
            )

        here = {k: v for k, v in files_of(self.local).items() if kept(k)}
        there = {k: v for k, v in files_of(self.remote).items() if kept(k)}
        conflicted = set(tree["conflicts"])
        mine = {k: v for k, v in here.items() if k not in conflicted}
        theirs = {k: v for k, v in there.items() if k not in conflicted}
        differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        assert mine == theirs, (self.seed, differ, {k: (mine.get(k), theirs.get(k))
                                                    for k in differ[:5]}, tree,
                                self.log[-20:])  # fmt: skip
