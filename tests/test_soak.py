"""The sync engine under random edits on both sides, remote saves during syncs, SIGKILLs and a
running watch (harness.py): a bounded run here; `nox -s soak` runs a long one
(RJN_SOAK_ROUNDS, RJN_SOAK_SEED)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Harness
from helpers import opened, run_rjn

ROUNDS = int(os.environ.get("RJN_SOAK_ROUNDS", "10"))
SEEDS = [int(os.environ["RJN_SOAK_SEED"])] if "RJN_SOAK_SEED" in os.environ else [7, 20261130]


@pytest.mark.parametrize("seed", SEEDS)
def test_random_edits_on_both_sides_lose_nothing_and_converge(
    seed: int, make_project: Callable[..., Path], short_tmp: Path
) -> None:
    root = make_project(f"soak{seed}")
    opened(run_rjn("open", "--no-browser", "--no-watch", cwd=root))
    try:
        harness = Harness(root, short_tmp / "remote" / f"soak{seed}", seed)
        harness.rounds(ROUNDS)
        harness.converge()
    finally:
        run_rjn("close", "--server", cwd=root)
