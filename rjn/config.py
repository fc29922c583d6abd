"""remote.toml -> frozen dataclasses; every key checked, every error names file, table and key."""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

from rjn.errors import ConfigError
from rjn.shared.record import record

CONFIG_NAME = "remote.toml"

# Directories never pushed: version control, environments, caches and rjn's own remote state.
# (Any folder holding a pyvenv.cfg is an environment too, whatever its name: shared/tree.py.)
DEFAULT_EXCLUDES = (
    ".git/",
    ".hg/",
    ".svn/",
    ".venv/",
    ".nox/",
    ".tox/",
    "__pycache__/",
    "*.pyc",
    ".ipynb_checkpoints/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    "node_modules/",
    ".rjn/",
    ".rjn-incoming-*/",
    ".DS_Store",
)


# Files that make this machine run something without the user opening them: rjn reads
# remote.toml (ssh options, a ProxyCommand), nox imports noxfile.py to list its sessions, direnv
# and dotenv load .envrc and .env on entering the folder, mise runs its hooks there, pre-commit
# runs its hooks on commit, editors run .vscode/ tasks and .idea/ settings on opening it. git
# runs what a repository's config says (core.fsmonitor, hooks) wherever it finds one, and a
# folder is one to git once it holds a HEAD (its config beside it), or is named by a `.git`
# file: so neither HEAD nor a `.git` file ever comes home, whatever folder it is in. They go
# out, but a remote change to one never comes home (two-way sync keeps it there, a pull refuses
# it). (.git/ never travels.) Names are compared ignoring case: on a Mac's or Windows' disk
# `NOXFILE.py` is noxfile.py, and elsewhere keeping such a name there loses nothing.
GUARDED_NAMES = frozenset({"remote.toml", "noxfile.py", ".envrc", ".env", "mise.toml",
                           ".mise.toml", "mise.local.toml", ".mise.local.toml",
                           ".pre-commit-config.yaml", "head", ".git"})  # fmt: skip
GUARDED_FOLDERS = frozenset({".vscode", ".idea", ".mise"})


def guarded(rel: str) -> bool:
    """Whether a project path is one whose remote changes never come home (at any depth: a
    tool run in a subfolder reads that folder's), its name compared ignoring case."""
    parts = rel.casefold().split("/")
    return parts[-1] in GUARDED_NAMES or not GUARDED_FOLDERS.isdisjoint(parts[:-1])


@record
class RemoteConfig:
    """Where the remote is and how to reach it."""

    host: str
    user: str | None = None
    port: int | None = None
    identity: str | None = None
    proxy_jump: str | None = None
    ssh_config: str | None = None
    ssh_options: tuple[str, ...] = ()
    dir: str | None = None
    # The interpreter rjn's helper and the environment come from; None: python3, or the newest
    # python3.X on the remote's PATH where python3 is older than 3.8.
    python: str | None = None
    installer: Literal["uv", "pip"] = "uv"
    # Shell lines run before every remote command of rjn's (the helper, the installs, Jupyter,
    # `rjn run`, `rjn shell`), with the module system set up: `module load python/3.12`.
    setup: tuple[str, ...] = ()
    # An environment of the user's to run Jupyter in, as it is (rjn installs nothing into
    # it): a venv or conda prefix ("~/envs/lab"), or "conda:NAME". None: rjn's own venv.
    env: str | None = None
    # The remote cannot reach the package index: wheels are fetched here and sent (rjn finds
    # this out by itself; true skips the look).
    offline: bool = False
    # Seconds; unset, ssh's own setting applies (your ~/.ssh/config's ConnectTimeout), else 20.
    connect_timeout: int | None = None
    # How files travel: rsync (3.1 or newer here), rjn's own transfer over the connection, or
    # "auto": rsync where this machine's can serve, else rjn's own.
    transfer: Literal["auto", "rsync", "rjn"] = "auto"
    # One connection per host: an OpenSSH ControlMaster, or ("single") one ssh session held
    # by an rjn process, for clients that cannot multiplex; "auto": single on Windows.
    multiplex: Literal["auto", "controlmaster", "single"] = "auto"


@record
class SyncConfig:
    """What goes to the remote and what comes back."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    results: tuple[str, ...] = ("results", "figures")
    patterns: tuple[str, ...] = ("*.png", "*.pdf", "*.svg", "*.jpg", "*.jpeg")
    watch: Literal["auto", "events", "poll"] = "auto"
    # A remote link that points outside its folder comes as a copy of what it points at
    # (true), or not at all (false); never as a local link.
    follow_symlinks: bool = False
    # Bytes: a larger result file is not pulled, and said so; a pull that would bring more
    # than max_pull_size in all is stopped with nothing placed.
    max_file_size: int = 4 * 1024**3
    max_pull_size: int = 20 * 1024**3
    # Files the watcher may report at once before they are pulled by one rsync instead.
    max_burst: int = 1000


@record
class JupyterConfig:
    """How the remote Jupyter server runs."""

    app: Literal["lab", "notebook"] = "lab"
    listen: Literal["socket", "port"] = "socket"
    local_port: int | Literal["auto"] = "auto"
    idle_timeout: float = 0
    packages: tuple[str, ...] = ()
    ready_timeout: int = 120
    # Keep what cells output while no browser is attached, and write it into the notebook.
    away_outputs: bool = True


@record
class RequirementsConfig:
    """How requirements.txt is made."""

    generate: bool = True
    file: str = "requirements.txt"
    extra: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    map: Mapping[str, str] = field(default_factory=dict)


@record
class SlurmConfig:
    """Run Jupyter on a compute node as a SLURM batch job (the table's presence turns it on)."""

    partition: str | None = None
    account: str | None = None
    time: str | None = None
    mem: str | None = None
    cpus: int | None = None
    gpus: int | str | None = None
    extra: tuple[str, ...] = ()
    setup: tuple[str, ...] = ()
    queue_timeout: int = 600
    # How the tunnel reaches Jupyter on the node: "tcp", the node's address through the login
    # node (works everywhere); "jump", a private unix socket on the node, through an ssh hop
    # to the node (safer, where the cluster lets users ssh to nodes running their jobs).
    connect: Literal["tcp", "jump"] = "tcp"
    # The compute nodes' interface whose address Jupyter listens on (connect = "tcp");
    # default: the one the node routes through toward the login node.
    interface: str | None = None
    # Minutes before the job's time limit at which the watch warns (and brings everything
    # home at the last one); a job too short for them is warned at a fraction of its time.
    warn: tuple[int, ...] = (10, 2)
    # A follow-on job that takes over at the time limit, on the same URL: "ask" (the warning
    # says `rjn renew`), "always" (queued at the first warning), "never".
    renew: Literal["never", "ask", "always"] = "ask"


@record
class Config:
    """A project's whole configuration."""

    path: Path
    remote: RemoteConfig
    sync: SyncConfig = SyncConfig()
    jupyter: JupyterConfig = JupyterConfig()
    requirements: RequirementsConfig = RequirementsConfig()
    slurm: SlurmConfig | None = None
    # A named remote ([remotes.NAME], chosen with --remote or `default`); None: [remote].
    remote_name: str | None = None
    remote_names: tuple[str, ...] = ()

    @property
    def root(self) -> Path:
        """The project folder: where remote.toml lives."""
        return self.path.parent

    @property
    def name(self) -> str:
        """The project's name, from its folder."""
        return self.root.name

    @property
    def remote_dir(self) -> str:
        """The remote project directory, as the remote should expand it."""
        return self.remote.dir or f"~/rjn/{self.name}"


TABLES: dict[str, type] = {
    "remote": RemoteConfig,
    "sync": SyncConfig,
    "jupyter": JupyterConfig,
    "requirements": RequirementsConfig,
    "slurm": SlurmConfig,
}
# Tables whose presence turns a feature on; the others always apply, with defaults.
OPTIONAL_TABLES = {"slurm"}

# An ssh destination or jump host never starts with '-': that would be read as an option.
_HOSTLIKE = re.compile(r"^[A-Za-z0-9_.@:\[\]%+,-]+$")


def template(
    host: str, name: str, ssh_config: str | None = None, remote_dir: str | None = None
) -> str:
    """A starting remote.toml: the host (and the ssh config file and remote folder, if given),
    and the common keys commented out."""
    if not _HOSTLIKE.match(host) or host.startswith("-"):
        raise ConfigError(f"{host!r} is not a host name or ssh alias")
    # A TOML basic string is a JSON string (as ASCII: nothing to misread in either).
    folder = json.dumps(remote_dir or f"~/rjn/{name}")
    config_line = f"ssh_config = {json.dumps(ssh_config)}" if ssh_config else (
        '# ssh_config = "~/.ssh/config"')  # fmt: skip
    return f"""# rjn's configuration for this project. Every key is checked: a misspelt one is
# named, with the keys that exist.

[remote]
host = "{host}"
# user = "me"
# identity = "~/.ssh/id_ed25519"
# proxy_jump = "bastion"
{config_line}
dir = {folder}
# python = "python3.11"   # default: python3, or the newest python3.X where python3 is too old
# setup = ["module load python/3.12"]   # before every remote command (modules set up)
# env = "~/envs/lab"       # your own venv or conda prefix ("conda:NAME"): rjn installs nothing

[sync]
results = ["results", "figures"]   # come home; never pushed
# exclude = ["*.ckpt"]

[jupyter]
app = "lab"
# idle_timeout = 240               # minutes without activity before the server stops (0: never)

# [slurm]                          # run Jupyter on a compute node instead
# partition = "gpu"
# gpus = 1
# time = "04:00:00"
# renew = "ask"                    # at the time limit: "ask" (`rjn renew`), "always", "never"
"""


def find(start: Path) -> Path:
    """Find remote.toml in `start` or the nearest parent folder."""
    start = start.resolve()
    for folder in (start, *start.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no {CONFIG_NAME} in {start} or any parent folder",
        hint="create one with `rjn init HOST` (HOST: your ssh host or alias), or pass "
        "--config PATH",
    )


def load(
    path: Path,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    remote: str | None = None,
) -> Config:
    """Read and check a remote.toml, pick the named `remote` (else the file's default), then
    apply overrides given as {table: {key: value}}."""
    path = path.resolve()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file", hint="create it, or pass --config PATH"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid TOML: {exc}",
            hint='fix the line it names: text in quotes (host = "gpu-box"), lists in brackets',
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    raw, name, names = _choose_remote(raw, path, remote)
    for table, values in (overrides or {}).items():
        raw.setdefault(table, {}).update({k: v for k, v in values.items() if v is not None})
    return dataclasses.replace(parse(raw, path), remote_name=name, remote_names=names)


_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _choose_remote(
    raw: dict[str, Any], path: Path, wanted: str | None
) -> tuple[dict[str, Any], str | None, tuple[str, ...]]:
    """The document with the chosen named remote merged over [remote] and the other tables
    (what it does not set, it inherits), its name, and every name known."""
    raw = dict(raw)
    remotes = raw.pop("remotes", {})
    default = raw.pop("default", None)
    if not isinstance(remotes, dict) or not all(isinstance(v, dict) for v in remotes.values()):
        raise ConfigError(f"{path}: [remotes] must hold tables, written [remotes.NAME]")
    names = tuple(remotes)
    for name in names:
        if not _NAME.match(name) or name == "remote":
            raise ConfigError(
                f"{path}: [remotes.{name}]: a remote's name is letters, digits, - and _ "
                '(and not "remote", which names [remote])'
            )
    if default is not None and (not isinstance(default, str) or default not in (*names, "remote")):
        raise ConfigError(
            f"{path}: default: {default!r} names no remote",
            hint=f'known remotes: {", ".join(names) or "none"} (or "remote" for [remote])',
        )
    chosen = wanted or default
    if chosen in (None, "remote"):
        return raw, None, names
    if chosen not in remotes:
        raise ConfigError(
            f"{path}: no remote named {chosen!r}{_did_you_mean(chosen, names)}",
            hint=f"known remotes: {', '.join(names) or 'none, add [remotes.NAME]'}",
        )
    where = f"remotes.{chosen}"
    merged = {table: dict(values) for table, values in raw.items() if isinstance(values, dict)}
    for key, value in remotes[chosen].items():
        if isinstance(value, dict):
            if key not in TABLES or key == "remote":
                known = ", ".join(f"[{where}.{t}]" for t in TABLES if t != "remote")
                raise ConfigError(f"{path}: unknown table [{where}.{key}]", hint=f"known: {known}")
            _check_keys(TABLES[key], value, path, f"{where}.{key}")
            merged[key] = {**merged.get(key, {}), **value}
        else:
            _check_keys(RemoteConfig, {key: value}, path, where)
            merged.setdefault("remote", {})[key] = value
    return {**raw, **merged}, chosen, names


def parse(raw: Mapping[str, Any], path: Path) -> Config:
    """Turn a parsed TOML document into a Config, naming file, table and key in every error."""
    for table in raw:
        if table not in TABLES:
            raise ConfigError(
                f"{path}: unknown table [{table}]{_did_you_mean(table, TABLES)}",
                hint=f"known tables: {', '.join(f'[{t}]' for t in TABLES)}",
            )
        if not isinstance(raw[table], dict):
            raise ConfigError(f"{path}: '{table}' must be a table, written [{table}]")
    if "remote" not in raw or "host" not in raw["remote"]:
        raise ConfigError(
            f"{path}: [remote] host is required",
            hint='add  [remote]\\nhost = "my-server"  (an ssh host or an alias from ~/.ssh/config)',
        )
    sections = {
        name: _build(cls, raw.get(name, {}), path, name)
        for name, cls in TABLES.items()
        if name in raw or name not in OPTIONAL_TABLES
    }
    config = Config(path=path, **sections)
    _check(config)
    return config


def _build(cls: type, values: Mapping[str, Any], path: Path, table: str) -> Any:
    return cls(**_check_keys(cls, values, path, table))


def _check_keys(cls: type, values: Mapping[str, Any], path: Path, table: str) -> dict[str, Any]:
    """Each key known to `cls` and of its type; the values in the dataclass's form."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise ConfigError(
                f"{path}: [{table}] unknown key '{key}'{_did_you_mean(key, names)}",
                hint=f"keys of [{table}]: {', '.join(sorted(names))}",
            )
        kwargs[key] = _convert(value, hints[key], f"{path}: [{table}] {key}")
    return kwargs


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against the type `hint`; return it in the dataclass's form."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        for option in options:
            try:
                return _convert(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_describe(hint)}, got {value!r}")
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: expected one of {', '.join(map(repr, args))}, got {value!r}")
    if origin is tuple:
        kind = args[0]
        if not isinstance(value, list) or not all(
            isinstance(v, kind) and not isinstance(v, bool) for v in value
        ):
            plural = {str: "strings", int: "integers"}.get(kind, str(kind))
            raise ConfigError(f"{where}: expected a list of {plural}, got {value!r}")
        return tuple(value)
    if origin is Mapping:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{where}: expected a table of strings, got {value!r}")
        return dict(value)
    # bool is an int in Python; TOML keeps them apart and so do we.
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (str, bool) and type(value) is hint:
        return value
    raise ConfigError(f"{where}: expected {_describe(hint)}, got {value!r}")


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint) if a is not type(None))
    if origin is Literal:
        return " or ".join(map(repr, typing.get_args(hint)))
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    return names.get(hint, str(hint))


def _check(config: Config) -> None:
    """Checks that span keys, or that types alone cannot express."""
    where = f"{config.path}: [remote]"
    remote = config.remote
    for key in ("host", "proxy_jump"):
        value = getattr(remote, key)
        if value is not None and (not value or value.startswith("-") or not _HOSTLIKE.match(value)):
            raise ConfigError(f"{where} {key}: {value!r} is not a host name or ssh alias")
    if remote.user is not None and (not remote.user or remote.user.startswith("-")):
        raise ConfigError(f"{where} user: {remote.user!r} is not a user name")
    if remote.port is not None and not 0 < remote.port < 65536:
        raise ConfigError(f"{where} port: {remote.port} is not a TCP port")
    for option in remote.ssh_options:
        if "=" not in option or option.startswith("-"):
            raise ConfigError(
                f"{where} ssh_options: {option!r} is not an ssh option",
                hint='write options as "Name=value", e.g. "ServerAliveInterval=30"',
            )
    if remote.dir is not None and not remote.dir.strip():
        raise ConfigError(f"{where} dir: must not be empty")
    # OpenSSH expands % in the socket path of a forward; ':' would split PATH for the
    # remote environment; a line break or NUL breaks every shell line that names the folder.
    bad = sorted({c for c in remote.dir or "" if c in "%:\n\r\0"})
    if bad:
        raise ConfigError(
            f"{where} dir: {remote.dir!r} contains {', '.join(map(repr, bad))}, which rjn cannot "
            "pass safely to ssh and the remote shell",
            hint="choose a folder name without %, : or line breaks",
        )
    if remote.connect_timeout is not None and remote.connect_timeout <= 0:
        raise ConfigError(f"{where} connect_timeout: must be a positive number of seconds")
    if remote.env is not None and remote.env.removeprefix("conda:").strip() == "":
        raise ConfigError(f"{where} env: must name an environment (a path, or conda:NAME)")
    for line in remote.setup:
        if "\0" in line or not line.strip():
            raise ConfigError(f"{where} setup: {line!r} must be a shell line")
    if remote.python is not None and remote.python.removeprefix("uv:") == "":
        raise ConfigError(
            f"{where} python: must not be empty",
            hint='an interpreter there (python3.11, or its path), or "uv:3.12" for uv\'s own',
        )
    jupyter = config.jupyter
    if jupyter.local_port != "auto" and not 1024 <= jupyter.local_port < 65536:
        raise ConfigError(
            f"{config.path}: [jupyter] local_port: {jupyter.local_port} "
            'must be 1024-65535 or "auto"'
        )
    if jupyter.idle_timeout < 0:
        raise ConfigError(
            f"{config.path}: [jupyter] idle_timeout: minutes must be 0 (never) or more"
        )
    if config.slurm is not None:
        _check_slurm(config.slurm, f"{config.path}: [slurm]")
    for folder in config.sync.results:
        if not folder or folder.startswith(("/", "..")) or ".." in Path(folder).parts:
            raise ConfigError(
                f"{config.path}: [sync] results: {folder!r} must be a folder inside the project"
            )


def _check_slurm(slurm: SlurmConfig, where: str) -> None:
    """Values end up on #SBATCH lines: a line break would smuggle in a line of its own."""
    for key in ("partition", "account", "time", "mem", "gpus", "extra", "interface"):
        value = getattr(slurm, key)
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, str) and any(c in item for c in "\r\n\0"):
                raise ConfigError(f"{where} {key}: {item!r} must be a single line")
    for line in slurm.extra:
        if not line.startswith("-"):
            raise ConfigError(
                f"{where} extra: {line!r} is not an sbatch option",
                hint='write sbatch options as they follow "#SBATCH", e.g. "--qos=debug"',
            )
    if slurm.queue_timeout <= 0:
        raise ConfigError(f"{where} queue_timeout: must be a positive number of seconds")
    if any(minutes <= 0 for minutes in slurm.warn):
        raise ConfigError(f"{where} warn: minutes before the time limit must be positive")


def _did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    import difflib  # only for a word that is wrong

    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
