"""A project the size of a data set of small images: 100,000 files, names up to 150 bytes. It
opens, a sync with nothing to do moves nothing, and one edit on each side travels."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from helpers import opened, run_rjn

FILES = 100_000


def test_a_project_of_100000_files_syncs(make_project: Callable[..., Path], short_tmp: Path):
    root = make_project("scale")
    for folder in range(FILES // 1000):
        where = root / "images" / f"class-{folder:03}"
        where.mkdir(parents=True)
        for n in range(1000):
            # 150 bytes with its folders: as long as the names of real data sets get.
            (where / f"{n:05}-{'s' * 119}.png").write_bytes(b"%d-%d" % (folder, n))
    opened(run_rjn("open", "--no-browser", "--no-watch", cwd=root, timeout=1200))
    try:
        there = short_tmp / "remote" / "scale"
        assert len(list((there / "images").glob("*/*.png"))) == FILES
        idle = run_rjn("sync", "--json", cwd=root)
        assert idle.returncode == 0, idle.stderr
        tree = json.loads(idle.stdout)["tree"]
        assert tree["pushed"] == [] and tree["pulled"] == []
        here_file = next((root / "images" / "class-007").iterdir())
        there_file = there / "images" / "class-042" / f"00001-{'s' * 119}.png"
        here_file.write_bytes(b"edited here")
        there_file.write_bytes(b"edited there")
        both = run_rjn("sync", "--json", cwd=root)
        assert both.returncode == 0, both.stderr
        tree = json.loads(both.stdout)["tree"]
        assert len(tree["pushed"]) == 1 and len(tree["pulled"]) == 1
        assert (there / here_file.relative_to(root)).read_bytes() == b"edited here"
        assert (root / there_file.relative_to(there)).read_bytes() == b"edited there"
    finally:
        run_rjn("close", "--server", cwd=root)
        os.system(f"rm -rf {root} {short_tmp / 'remote' / 'scale'}")
