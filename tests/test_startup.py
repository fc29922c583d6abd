"""What every command loads before it does anything: a list kept here, so that start-up (the
part of each command that is pure cost) cannot grow by accident. `nox -s bench` shows the time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# Packages the start-up of any command may load: the CLI (typer, click and theirs) and rjn.
ALLOWED = {"rjn", "typer", "click", "shellingham", "annotated_doc", "typing_extensions"}
# Modules that cost a command's start-up more than they give it, each loaded only where used:
# pydantic (typer 0.26+), sh's asyncio, urllib's ssl/email/http, the zipapp's zipfile, rich
# (a step's live display loads it; lines are printed without it), the stdlib's html (the
# browser's redirect page), and the libraries of one command each.
HEAVY = ["pydantic", "sh", "asyncio", "ssl", "email", "http", "urllib.request", "zipfile",
         "rich", "html", "webbrowser", "nbdime", "watchdog", "pipreqs", "tomlkit"]  # fmt: skip
COMMANDS = ["open", "status", "sync", "watch", "close", "ls", "run", "shell", "logs", "init",
            "requirements", "--help"]  # fmt: skip

PROBE = """
import json, runpy, sys
sys.argv = ["rjn", *sys.argv[1:]]
try:
    runpy.run_module("rjn", run_name="__main__")
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("command", COMMANDS)
def test_start_up_loads_only_what_is_on_the_list(command: str, tmp_path: Path) -> None:
    # No remote.toml here: each command stops at reading it, after its start-up.
    args = [command, "gpu-box"] if command == "init" else [command]
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    packages = {name.split(".")[0] for name in loaded} - set(sys.stdlib_module_names)
    # Site hooks (an editable install's finder, setuptools' distutils shim, a distribution's
    # sitecustomize) are not what a command loads.
    hooks = {"sitecustomize", "usercustomize"}
    packages = {name for name in packages if not name.startswith("_") and name not in hooks}
    assert packages <= ALLOWED, sorted(packages - ALLOWED)
    heavy = [name for name in HEAVY if name in loaded]
    if command == "requirements":  # what that command is for
        heavy = [name for name in heavy if name != "pipreqs"]
    assert not heavy, heavy


def test_frozen_records_are_made_the_cheap_way() -> None:
    # A frozen dataclass compiles six methods as it is defined; `record` compiles one. Every
    # command defines some forty of them before it starts: one of each kind is a cost.
    import importlib
    import pkgutil

    import rjn

    frozen = []
    for module in pkgutil.walk_packages(rjn.__path__, "rjn."):
        if module.name in ("rjn.helper.away", "rjn.helper.__main__"):  # jupyter_server's
            continue
        for value in vars(importlib.import_module(module.name)).values():
            params = getattr(value, "__dataclass_params__", None)
            frozen_dataclass = params is not None and params.frozen
            if isinstance(value, type) and value.__module__ == module.name and frozen_dataclass:
                frozen.append(f"{module.name}.{value.__qualname__}")
    assert not frozen, f"use rjn.shared.record.record for {frozen}"
