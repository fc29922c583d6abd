"""`rjn init` and `rjn requirements`: the project's own files."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from rjn import config as config_module
from rjn import requirements
from rjn.config import Config
from rjn.errors import RjnError
from rjn.requirements import Requirements


def init(
    folder: Path,
    host: str,
    remote_name: str | None = None,
    ssh_config: str | None = None,
    remote_dir: str | None = None,
) -> Path:
    """Write a commented remote.toml for `host` (never over an existing one); with
    `remote_name`, add [remotes.NAME] for `host` to the existing file, its comments kept."""
    path = folder / config_module.CONFIG_NAME
    if remote_name:
        return _add_remote(path, host, remote_name, ssh_config, remote_dir)
    if path.exists():
        raise config_module.ConfigError(
            f"{path} exists already",
            hint="edit it, or add another machine with `rjn init HOST --remote NAME`",
        )
    text = config_module.template(host, folder.name, ssh_config, remote_dir)
    config_module.parse(tomllib.loads(text), path)  # what init writes must load
    path.write_text(text)
    return path


def _add_remote(
    path: Path, host: str, name: str, ssh_config: str | None, remote_dir: str | None
) -> Path:
    import tomlkit

    if not path.exists():
        raise RjnError(f"{path} does not exist", hint=f"run `rjn init {host}` first")
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    remotes = document.setdefault("remotes", tomlkit.table(is_super_table=True))
    if name in remotes:
        raise RjnError(f"{path}: [remotes.{name}] exists already", hint="edit it there")
    table = tomlkit.table()
    table.add(tomlkit.comment(f"`rjn open {name}`; what is not set here comes from [remote]"))
    table["host"] = host
    if ssh_config:
        table["ssh_config"] = ssh_config
    if remote_dir:
        table["dir"] = remote_dir
    remotes[name] = table
    text = tomlkit.dumps(document)
    staged = path.with_name(f".{path.name}.rjn-new")
    staged.write_text(text, encoding="utf-8")
    try:
        config_module.load(staged, remote=name)  # what init writes must load
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    return path


def requirements_only(config: Config) -> Requirements:
    """Write requirements.txt and return it (`rjn requirements`)."""
    return requirements.write(config)
