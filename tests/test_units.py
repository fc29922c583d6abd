"""Pure logic: config checking, argv building, requirement mapping, error wording."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import pytest

from rjn import config as cfg
from rjn import requirements, transfer, tunnel
from rjn.connection import RIDE_MASTER, Connection, explain
from rjn.errors import ConfigError
from rjn.transfer import placing, rsync

TOML = '[remote]\nhost = "gpu-box"\n'


def load(tmp_path: Path, text: str) -> cfg.Config:
    path = tmp_path / "remote.toml"
    path.write_text(text)
    return cfg.load(path)


# -- config ---------------------------------------------------------------------------


def test_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, TOML)
    assert config.remote.host == "gpu-box"
    assert config.remote_dir == f"~/rjn/{tmp_path.name}"
    assert config.jupyter.app == "lab" and config.jupyter.local_port == "auto"
    assert config.sync.results == ("results", "figures")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[remote]\nuser = 'me'\n", "[remote] host is required"),
        (TOML + "[jupyter]\napp = 'classic'\n", "[jupyter] app: expected one of 'lab', 'notebook'"),
        (
            TOML + "[jupyter]\nlocal_port = 'any'\n",
            "[jupyter] local_port: expected an integer or 'auto'",
        ),
        (TOML + "[jupyter]\nlocal_port = 80\n", "local_port: 80 must be 1024-65535"),
        (TOML + "[sync]\nexclude = 'x'\n", "[sync] exclude: expected a list of strings"),
        (TOML + "[sync]\nresults = ['../outside']\n", "must be a folder inside the project"),
        (
            TOML + "[requirements]\ngenerate = 1\n",
            "[requirements] generate: expected true or false",
        ),
        (
            TOML + "[requirements]\nmap = { cv2 = 3 }\n",
            "[requirements] map: expected a table of strings",
        ),
        (TOML + "[slurmm]\n", "unknown table [slurmm]"),
        ("[remote]\nhost = '-oProxyCommand=evil'\n", "is not a host name or ssh alias"),
        (TOML + "port = true\n", "[remote] port: expected an integer, got True"),
        (TOML + "ssh_options = ['-v']\n", "is not an ssh option"),
        ("[remote\nhost=", "not valid TOML"),
        (TOML + "dir = '~/a%hb'\n", "dir: '~/a%hb' contains '%'"),
        (TOML + "dir = '/x:y'\n", "dir: '/x:y' contains ':'"),
        (TOML + 'dir = "a\\nb"\n', "contains '\\n'"),
        (TOML + "[slurm]\nconnect = 'ssh'\n", "[slurm] connect: expected one of 'tcp', 'jump'"),
    ],
)
def test_bad_config_names_file_table_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert message in caught.value.message
    assert str(tmp_path / "remote.toml") in caught.value.message


def test_a_toml_syntax_error_says_what_to_try(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, "[remote]\nhost = gpu-box\n")
    assert "not valid TOML" in caught.value.message and "quotes" in (caught.value.hint or "")


def test_overrides_are_checked_too(tmp_path: Path) -> None:
    (tmp_path / "remote.toml").write_text(TOML)
    config = cfg.load(tmp_path / "remote.toml", {"remote": {"host": "other", "port": None}})
    assert config.remote.host == "other" and config.remote.port is None
    with pytest.raises(ConfigError, match="port: expected an integer"):
        cfg.load(tmp_path / "remote.toml", {"remote": {"port": "x"}})


def test_find_walks_up(tmp_path: Path) -> None:
    (tmp_path / "remote.toml").write_text(TOML)
    (tmp_path / "a" / "b").mkdir(parents=True)
    assert cfg.find(tmp_path / "a" / "b") == tmp_path / "remote.toml"


# -- argv building ------------------------------------------------------------------------


def make_remote(tmp_path: Path, **remote: Any) -> Connection:
    config = cfg.RemoteConfig(host="gpu-box", **remote)
    return Connection(config, control_dir=tmp_path / "run dir", log_dir=tmp_path)


def test_ssh_argv_quotes_the_remote_command_once(tmp_path: Path) -> None:
    remote = make_remote(tmp_path, user="me", port=2222, proxy_jump="bastion", identity="~/.ssh/k")
    argv = remote.ssh_argv("-T", command=["ls", "a b", "$(rm -rf ~)", "x;y"])
    assert argv[0] == "ssh"
    assert argv[argv.index("-l") + 1] == "me" and argv[argv.index("-p") + 1] == "2222"
    assert argv[argv.index("-J") + 1] == "bastion"
    assert argv[argv.index("-i") + 1] == str(Path.home() / ".ssh" / "k")
    # The host comes after "--", the command is a single argument that splits back exactly.
    assert argv[-3:-1] == ["--", "gpu-box"]
    assert shlex.split(argv[-1]) == ["ls", "a b", "$(rm -rf ~)", "x;y"]
    # A control path with spaces is quoted for ssh's own option parser.
    assert f'ControlPath="{tmp_path / "run dir"}/%C"' in argv


def test_rsync_shell_splits_back_into_the_ssh_argv(tmp_path: Path) -> None:
    remote = make_remote(tmp_path, ssh_config="/etc/my ssh/config")
    assert shlex.split(remote.rsync_shell()) == ["ssh", *remote.options(), *RIDE_MASTER]


def test_what_travels_both_ways_leaves_out_results_and_caches(tmp_path: Path) -> None:
    from rjn.shared.tree import travels
    from rjn.twoway import filters

    config = load(tmp_path, TOML + "[sync]\ninclude = ['keep.ckpt']\nexclude = ['*.ckpt']\n")
    exclude, include = filters(config)
    assert not travels("results", True, exclude, include)  # results only come home
    assert not travels("figures", True, exclude, include)
    for folder in (".git", ".rjn", ".ipynb_checkpoints", "__pycache__", ".venv"):
        assert not travels(folder, True, exclude, include), folder
    assert not travels("model.ckpt", False, exclude, include)
    assert travels("keep.ckpt", False, exclude, include) and travels("data", True, exclude)


def test_stable_port_is_stable_and_in_range(tmp_path: Path) -> None:
    port = tunnel.stable_port(tmp_path)
    assert port == tunnel.stable_port(tmp_path)
    assert tunnel.PORT_BASE <= port < tunnel.PORT_BASE + tunnel.PORT_SPAN
    assert port != tunnel.stable_port(tmp_path / "other")


@pytest.mark.parametrize(
    ("stderr", "cause"),
    [
        ("ssh: Could not resolve hostname nope: Name or service not known", "does not resolve"),
        ("ssh: connect to host 1.2.3.4 port 22: Connection refused", "was refused"),
        ("ssh: connect to host 1.2.3.4 port 22: Connection timed out", "timed out"),
        ("me@box: Permission denied (publickey).", "authentication failed"),
        (
            "@@@\n@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @\n"
            "Host key verification failed.",
            "host key changed",
        ),
        (
            "No ED25519 host key is known for box and you have requested strict checking.\n"
            "Host key verification failed.",
            "host key is not known",
        ),
    ],
)
def test_ssh_failures_are_explained(stderr: str, cause: str) -> None:
    error = explain("box", stderr)
    assert error.message.startswith("cannot connect to box: ") and cause in error.message
    assert error.hint


# -- requirements -----------------------------------------------------------------------------


def notebook(*cells: str) -> str:
    return json.dumps({"cells": [{"cell_type": "code", "source": c} for c in cells]})


def test_notebook_code_drops_magics_and_shell_lines() -> None:
    code = requirements.notebook_code(
        notebook(
            "%matplotlib inline\nimport numpy",
            "%%bash\nimport nope",
            "!pip install x\nimport pandas as pd",
        )
    )
    assert requirements.imports_of(code) == {"numpy", "pandas", "matplotlib"}


def test_scan_maps_imports_and_skips_stdlib_local_and_broken(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "utils.py").write_text("import os, json\n")
    (tmp_path / "main.py").write_text(
        "import sklearn.linear_model\nimport cv2\nfrom skimage import io\nfrom PIL import Image\n"
        "import yaml\nimport utils, pkg\nfrom . import sibling\nimport torch\nimport mylab\n"
    )
    (tmp_path / "broken.py").write_text("def (:\n")
    (tmp_path / "nb.ipynb").write_text(notebook("import seaborn as sns"))
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "junk.py").write_text("import should_not_appear\n")
    config = cfg.RequirementsConfig(map={"mylab": "mylab-tools"}, ignore=("torch",))
    packages, skipped = requirements.scan(tmp_path, config)
    assert packages == [
        "mylab-tools",
        "opencv-python",
        "pillow",
        "pyyaml",
        "scikit-image",
        "scikit-learn",
        "seaborn",
    ]
    assert skipped == ["broken.py"]


def test_the_noxfile_is_no_source_of_requirements(tmp_path: Path) -> None:
    (tmp_path / "noxfile.py").write_text("import nox\n")
    (tmp_path / "train.py").write_text("import yaml\n")
    config = load(tmp_path, TOML)
    assert requirements.scan(tmp_path, config.requirements)[0] == ["pyyaml"]


def test_write_keeps_a_user_file_and_merges_extras(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("import numpy\nimport requests\n")
    config = load(tmp_path, TOML + "[requirements]\nextra = ['numpy<2', 'rich']\n")
    written = requirements.write(config)
    assert written.generated and written.lines == ("requests", "numpy<2", "rich")
    own = "numpy==1.26.4\n"
    (tmp_path / "requirements.txt").write_text(own)
    kept = requirements.write(config)
    assert not kept.generated and (tmp_path / "requirements.txt").read_text() == own


# -- link health while watching -----------------------------------------------------------------


class Link:
    """A stand-in for the connection (not the thing under test: the sleep detection is)."""

    host = "box"

    def __init__(self, alive: bool = True, answers: bool = True) -> None:
        self.alive, self.answers, self.dropped = alive, answers, False

    def master_alive(self) -> bool:
        return self.alive

    def responsive(self, timeout: float) -> bool:
        return self.answers

    def disconnect(self) -> None:
        self.dropped = True


def test_link_check_notices_a_dead_master() -> None:
    from rjn.errors import ConnectionFailed
    from rjn.watch import link_check

    with pytest.raises(ConnectionFailed, match="connection to box was lost"):
        link_check(Link(alive=False))()


def test_link_check_tests_the_link_after_the_clock_jumps(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from rjn import watch
    from rjn.errors import ConnectionFailed

    now = time.time()
    monkeypatch.setattr(watch.time, "time", lambda: now)
    quiet, asleep = Link(answers=False), Link(answers=False)
    check_quiet, check_asleep = watch.link_check(quiet), watch.link_check(asleep)
    check_quiet()  # no jump: no round trip, even though the remote would not answer
    assert not quiet.dropped
    now += 3600  # the wall clock ran an hour ahead of the monotonic one: the laptop slept
    with pytest.raises(ConnectionFailed, match="did not survive the sleep"):
        check_asleep()
    assert asleep.dropped
    awake = Link(answers=True)
    check_awake = watch.link_check(awake)
    now += 3600
    check_awake()
    assert not awake.dropped


def test_init_writes_a_config_that_loads_and_never_overwrites(tmp_path: Path) -> None:
    from rjn.commands import init as app

    path = app.init(tmp_path, "gpu-box")
    config = cfg.load(path)
    assert config.remote.host == "gpu-box" and config.slurm is None
    assert config.remote_dir == f"~/rjn/{tmp_path.name}"
    # What it writes is what the defaults are (the server never stops by itself), and it
    # points to nothing a pip-installed user does not have.
    assert config.jupyter.idle_timeout == 0 and "README" not in path.read_text()
    with pytest.raises(ConfigError, match="exists already") as exists:
        app.init(tmp_path, "other")
    assert exists.value.exit_code == 2
    with pytest.raises(ConfigError, match="not a host name"):
        app.init(tmp_path / "new", "-oProxyCommand=x")


def test_init_writes_the_ssh_config_and_folder_it_is_given(tmp_path: Path) -> None:
    from rjn.commands.init import init

    odd = '/scratch/me/"x" y'
    config = cfg.load(init(tmp_path, "gpu-box", ssh_config="~/lab ssh", remote_dir=odd))
    assert (config.remote.ssh_config, config.remote_dir) == ("~/lab ssh", odd)
    init(tmp_path, "cloud-vm", "cloud", remote_dir="/d")
    assert cfg.load(tmp_path / "remote.toml", remote="cloud").remote_dir == "/d"


def test_inline_files_land_in_a_project_never_synced_before(tmp_path: Path) -> None:
    """The pulled-files index goes beside the project's state, whose folder may not exist yet."""
    (tmp_path / "fresh").mkdir()
    config = load(tmp_path / "fresh", TOML)
    [pulled] = transfer.receive(config, {"results/a.png": (b"png", 1_700_000_000_000_000_000)})
    assert pulled.path == "results/a.png"
    assert (tmp_path / "fresh" / "results" / "a.png").read_bytes() == b"png"
    with pytest.raises(transfer.Refused, match="leaves its folder"):
        transfer.receive(config, {"results/../../escape.png": (b"x", 1)})


# -- what a remote may send ------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["results/../x.png", "/etc/passwd", "results//x.png", "results/./x.png", "results/a\nb.png",
     "results/\x00.png", "helpers.py", "resultsx/a.png", "", 5, None, "results/" + "a" * 5000],
)  # fmt: skip
def test_names_from_the_remote_that_are_refused(name: object) -> None:
    with pytest.raises(transfer.Refused):
        transfer.checked_name(name, ("results", "figures"))


def test_plain_names_in_results_are_accepted() -> None:
    name = "figures/a b/ü.png"
    assert transfer.checked_name(name, ("results", "figures/")) == name


@pytest.mark.parametrize(
    ("rel", "text", "inside"),
    [("results/a.png", "b.png", True), ("results/sub/a.png", "../b.png", True),
     ("results/a.png", "../helpers.py", False), ("results/a.png", "/etc/passwd", False),
     ("results/a", "..", False), ("results/sub/a", "../../results/b", True),
     ("results/a.png", "", False), ("data/a.png", "b.png", False)],
)  # fmt: skip
def test_links_are_judged_by_where_they_point(rel: str, text: str, inside: bool) -> None:
    assert placing._link_stays_inside(rel, text, ("results",)) is inside


def test_helper_lines_are_untrusted() -> None:
    from rjn.helper_client import answers

    seen: list[dict] = []
    parse = answers.messages(seen.append)
    parse('{"log": "hi"}')
    parse("Welcome to the cluster!")  # a chatty login script
    parse('["not", "an", "object"]')
    parse("x" * (answers.MESSAGE_MAX + 1))
    assert seen[0] == {"log": "hi"} and seen[1] == {"log": "Welcome to the cluster!"}
    assert "list instead of an object" in seen[2]["error"]["message"]
    assert "a line of" in seen[3]["error"]["message"]


def test_a_blob_after_its_line_comes_raw_whatever_bytes_it_holds() -> None:
    from rjn import proc
    from rjn.helper_client import answers

    seen: list[dict] = []
    split = proc._splitter(answers.messages(seen.append), None)
    raw = b"\n\r\x00\xff{}" * 3  # line ends and invalid UTF-8 inside: not lines
    stream = b'{"file": "a", "blob": 18}\n' + raw + b'{"log": "after"}\n{"file": "b", "blob": 0}\n'
    for n in range(len(stream)):  # one byte at a time: split anywhere
        split(stream[n : n + 1])
    split.flush()
    assert seen == [{"file": "a", "blob": raw}, {"log": "after"}, {"file": "b", "blob": b""}]
    seen.clear()
    split(b'{"file": "c", "blob": 5}\nab')  # the stream ends inside the blob: dropped
    split.flush()
    split(b'{"blob": -1}\n')
    assert len(seen) == 1 and "a blob of -1" in seen[0]["error"]["message"]


# -- two-way sync (the decision table: test_decisions.py) ------------------------------------


def test_what_travels_both_ways() -> None:
    from rjn.shared.tree import travels

    exclude = [".git/", "*.ckpt", "/results/", ".rjn/", "__pycache__/"]
    assert travels("analysis.ipynb", False, exclude)
    assert not travels(".git", True, exclude) and travels(".git", False, exclude)
    assert not travels("model.ckpt", False, exclude) and not travels("a/b.ckpt", False, exclude)
    assert not travels("results", True, exclude) and travels("sub/results", True, exclude)
    assert travels("keep.ckpt", False, exclude, include=["keep.ckpt"])


def test_a_dns_failure_points_to_the_ssh_config_the_user_named(tmp_path: Path) -> None:
    remote = make_remote(tmp_path, ssh_config=str(tmp_path / "lab_ssh_config"))
    failed = remote.explain("ssh: Could not resolve hostname gpu-box: Name or service not known")
    assert "does not resolve" in failed.message
    assert failed.hint and str(tmp_path / "lab_ssh_config") in failed.hint
    assert "~/.ssh/config" not in failed.hint


def test_the_ssh_configs_connect_timeout_is_honoured(tmp_path: Path) -> None:
    (tmp_path / "ssh_config").write_text("Host gpu-box\n    ConnectTimeout 7\n")
    mine = make_remote(tmp_path, ssh_config=str(tmp_path / "ssh_config"))
    assert mine.connect_timeout == 7
    (tmp_path / "empty_config").write_text("")
    assert make_remote(tmp_path, ssh_config=str(tmp_path / "empty_config")).connect_timeout == 20
    toml = make_remote(tmp_path, ssh_config=str(tmp_path / "ssh_config"), connect_timeout=3)
    assert toml.connect_timeout == 3


def test_the_remote_helper_is_python_3_8_syntax() -> None:
    """It runs on the remote's Python, which may be as old as 3.8 (run there too, below, where
    this machine has a 3.8): every module, the scripts it starts, and the boot."""
    import ast
    from importlib import resources

    from rjn.helper import runs, slurm
    from rjn.helper_client import boot

    modules = resources.files("rjn.helper")
    for module in modules.iterdir():
        if module.name.endswith(".py"):
            ast.parse(module.read_text(), feature_version=(3, 8))
    for script in (slurm.LAUNCHER, runs.SUPERVISOR, boot._BOOT):
        ast.parse(script, feature_version=(3, 8))


def _oldest_python() -> str | None:
    """A Python 3.8, the oldest the helper promises: one pyenv keeps, or on PATH (a pyenv shim
    there may not run, so each is tried)."""
    import glob
    import shutil
    import subprocess

    pyenv = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = [*sorted(glob.glob(f"{pyenv}/versions/3.8*/bin/python3.8")), shutil.which("python3.8")]
    for python in filter(None, found):
        check = [python, "-c", "import sys; sys.exit(sys.version_info[:2] != (3, 8))"]
        if subprocess.run(check, capture_output=True).returncode == 0:
            return python
    return None


@pytest.mark.skipif(_oldest_python() is None, reason="no Python 3.8 here (PATH or pyenv)")
def test_the_remote_helper_runs_under_python_3_8(tmp_path: Path) -> None:
    """Started as the remote starts it (its source over stdin), under the oldest Python it
    promises: the probe, a listing of the tree, and the clear error for a bad request."""
    import subprocess

    from rjn.helper_client.boot import boot_command, helper_zipapp

    (tmp_path / "p" / "data").mkdir(parents=True)
    (tmp_path / "p" / "data" / "a.csv").write_text("x\n")
    python = _oldest_python()
    assert python

    def helper(action: str, args: dict) -> dict:
        zipapp = helper_zipapp()[0]
        argv, rest = boot_command(python, action, args, len(zipapp))
        cache = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
        done = subprocess.run(argv, input=zipapp + rest, capture_output=True, timeout=60,
                              cwd=tmp_path, env=cache)  # fmt: skip
        assert b"Traceback" not in done.stderr and done.stdout, (done.returncode, done.stderr)
        answer: dict = json.loads(done.stdout.decode().splitlines()[-1])
        return answer

    # Patterns enough to pass Linux's 128 KiB limit on one argument: they go on stdin.
    many = [".rjn/", *(f"never-{n:05}-*.tmp" for n in range(8000))]
    tree = {"exclude": many, "include": []}
    probe = helper("probe", {"dir": str(tmp_path / "p"), "machine": True, "tree": tree})
    ok = probe["ok"]
    assert ok["python"].startswith("3.8.") and ok["dir"] == str(tmp_path / "p")
    assert ok["tree"]["files"]["data/a.csv"][0] == 2 and ok["server"] == {"alive": False}
    assert ok["tree"]["replica"] and ok["tree"]["others"] == {} and ok["tree"]["skipped"] == []
    assert ok["machine"]["disk_total"] > 0
    refused = helper("probe", {"dir": str(tmp_path / "p" / "data" / "a.csv" / "x")})
    assert refused["error"]["message"].startswith("cannot create the project directory")
    # A request is read as its record: a field of the wrong kind is named, nothing runs.
    malformed = helper("probe", {"dir": str(tmp_path / "p"), "tree": {"exclude": "x"}})
    assert malformed["error"]["message"] == "probe: the request's tree.exclude is malformed"


def test_a_missing_results_folder_is_no_failure_but_anything_else_is() -> None:
    missing = (
        'rsync: [sender] link_stat "/r/./figures/" failed: No such file or directory (2)\n'
        "rsync error: some files/attrs were not transferred (see previous errors) (code 23)\n"
        "rsync: [Receiver] write error: Broken pipe (32)\n"
    )
    assert rsync._only_missing(missing)
    denied = 'rsync: [sender] opendir "/r/./results/x" failed: Permission denied (13)\n' + missing
    assert not rsync._only_missing(denied)
    assert not rsync._only_missing("")


def test_lines_are_split_in_linear_time_and_an_endless_one_is_cut() -> None:
    from rjn import proc

    lines: list[str] = []
    split = proc._splitter(lines.append, None)
    for piece in (b'{"a":', b" 1}\n{", b'"b": 2}\r\n', b"tail"):
        split(piece)
    split.flush()
    assert lines == ['{"a": 1}', '{"b": 2}', "tail"]
    lines.clear()
    for _ in range(proc.MAX_LINE // 65536 + 2):
        split(b"x" * 65536)  # byte by byte would be the same, only slower
    assert len(lines) == 1 and len(lines[0]) > proc.MAX_LINE


def test_errors_from_the_helper_are_checked_too() -> None:
    from rjn.helper_client.answers import helper_error

    assert helper_error("h", {"message": "m", "hint": "t"}).hint == "t"
    assert "malformed error" in helper_error("h", "boom").message
    assert "malformed error" in helper_error("h", {"message": 5}).message
    assert helper_error("h", {"message": "m", "hint": ["x"]}).hint is None


# -- named remotes ------------------------------------------------------------------------------

NAMED = """# my project
[remote]
host = "gpu-box"
dir = "~/p"

[jupyter]
idle_timeout = 30

[remotes.cluster]   # the cluster
host = "login"
[remotes.cluster.slurm]
partition = "gpu"
[remotes.cluster.jupyter]
app = "notebook"
"""


def test_a_named_remote_inherits_what_it_does_not_set(tmp_path: Path) -> None:
    (tmp_path / "remote.toml").write_text(NAMED)
    base = cfg.load(tmp_path / "remote.toml")
    assert base.remote_name is None and base.slurm is None and base.remote.host == "gpu-box"
    named = cfg.load(tmp_path / "remote.toml", remote="cluster")
    assert named.remote_name == "cluster" and named.remote_names == ("cluster",)
    assert named.remote.host == "login" and named.remote.dir == "~/p"
    assert named.slurm and named.slurm.partition == "gpu"
    assert named.jupyter.app == "notebook" and named.jupyter.idle_timeout == 30
    (tmp_path / "remote.toml").write_text('default = "cluster"\n' + NAMED)
    assert cfg.load(tmp_path / "remote.toml").remote_name == "cluster"
    assert cfg.load(tmp_path / "remote.toml", remote="remote").remote_name is None


@pytest.mark.parametrize(
    ("text", "name", "message"),
    [
        (NAMED, "clustr", "no remote named 'clustr' (did you mean 'cluster'?)"),
        (NAMED + "[remotes.lab]\nhots = 'x'\n", "lab", "[remotes.lab] unknown key 'hots'"),
        (NAMED + "[remotes.lab.jupyter]\napp = 'x'\n", "lab", "[remotes.lab.jupyter] app"),
        (NAMED + "[remotes.lab.sink]\n", "lab", "unknown table [remotes.lab.sink]"),
        ('default = "nope"\n' + NAMED, None, "default: 'nope' names no remote"),
        (NAMED + "[remotes.'a b']\nhost = 'x'\n", None, "a remote's name is letters"),
    ],
)
def test_named_remote_errors_name_file_table_and_key(tmp_path, text, name, message) -> None:
    (tmp_path / "remote.toml").write_text(text)
    with pytest.raises(ConfigError) as caught:
        cfg.load(tmp_path / "remote.toml", remote=name)
    assert message in caught.value.message and str(tmp_path) in caught.value.message


def test_init_adds_a_named_remote_and_keeps_the_comments(tmp_path: Path) -> None:
    from rjn.commands import init as app

    (tmp_path / "remote.toml").write_text(NAMED)
    app.init(tmp_path, "cloud-vm", "cloud")
    text = (tmp_path / "remote.toml").read_text()
    assert text.startswith(NAMED) and "# the cluster" in text
    assert cfg.load(tmp_path / "remote.toml", remote="cloud").remote.host == "cloud-vm"
    with pytest.raises(Exception, match="exists already"):
        app.init(tmp_path, "x", "cloud")


# -- the probe's answer, as untrusted input -------------------------------------------------------


def test_a_probe_answer_becomes_a_typed_record() -> None:
    from rjn import probe

    answer = {
        "dir": "/home/u/p", "env_current": True, "tree": {}, "machine": None,
        "python": "3.8.18", "disk_free": 10, "has_rsync": True,
        "server": {"alive": True, "pid": 12, "token": "t", "app": "lab", "sock": "/s",
                   "job": "7", "job_state": "RUNNING", "node": "n1", "time_left": "1:00"},
    }  # fmt: skip
    from rjn.shared.protocol import ProbeAnswer

    seen = probe.parse("box", ProbeAnswer.parse(answer))
    assert seen.server is not None and (seen.server.pid, seen.server.target) == (12, "/s")
    assert seen.job == probe.Job("7", "RUNNING", "n1", "1:00")
    assert (seen.dir, seen.env_current, seen.tree) == ("/home/u/p", True, {})
    gone = probe.parse("box", ProbeAnswer.parse({**answer, "server": {"alive": False, "job": "7"}}))
    assert gone.server is None and gone.job.id == "7"


MALFORMED_PROBES = [
    ("dir", {"dir": 3}),
    ("env_current", {"env_current": "yes"}),
    ("env_current", {"env_current": 1}),
    ("disk_free", {"disk_free": True}),  # a bool is no number here
    ("server", {"server": []}),
    ("tree", {"tree": [1]}),
    ("token", {"server": {"alive": True, "token": 5}}),
    ("token", {"server": {"alive": True}}),  # alive, but no token
    ("pid", {"server": {"alive": True, "pid": "1", "token": ""}}),
    ("job", {"server": {"alive": False, "job": 7}}),
    ("ProbeAnswer", None),
]


@pytest.mark.parametrize(("field", "change"), MALFORMED_PROBES)
def test_a_malformed_probe_answer_names_its_field(field: str, change: dict | None) -> None:
    from rjn import probe
    from rjn.errors import RemoteError
    from rjn.helper_client.answers import read
    from rjn.shared.protocol import ProbeAnswer

    def seen(answer: object) -> probe.Probe:  # as the helper client reads it
        return probe.parse("box", read("box", ProbeAnswer, "probe", answer))

    good = {"dir": "/p", "python": "3.8.1", "env_current": False, "server": {"alive": False},
            "disk_free": 1, "has_rsync": True}  # fmt: skip
    assert seen(good).server is None
    answer = {**good, **change} if change is not None else "not an object"
    with pytest.raises(RemoteError, match=rf"box: .* sent a malformed probe \({field}\)"):
        seen(answer)


def test_each_record_of_the_protocol_reads_back_what_it_writes() -> None:
    from rjn.shared import protocol

    records = [
        protocol.ServerState(alive=True, pid=3, token="t", sock="/s", job="1", started=True),
        protocol.ProbeAnswer(dir="/p", python="3.8.1", env_current=True, server={"alive": False},
                             disk_free=5, has_rsync=False, results={"results/a": [1, 2]}),
        protocol.RunEnd(exit=7, tree={}),
        protocol.RunEnd(exit=None),
        protocol.TreeListing(files={"a": [1, 2, "h"]}, others={"l": "link"}, skipped=[],
                             replica="r", gen=3),
        protocol.Placed(placed={"a": [1, 2]}, kept={"b": "changed"}),
        protocol.Ready(mode="poll", fs="nfs", reason="network filesystem", interval=0.5),
        protocol.Failure(message="no", hint=None),
    ]  # fmt: skip
    for record in records:
        sent = json.loads(json.dumps(record.to_json()))  # as it crosses the wire
        assert type(record).parse(sent) == record
        assert None not in sent.values()  # what is not there is left out


# -- local state ----------------------------------------------------------------------------------


def test_records_are_found_by_name_and_paths_make_no_folders(tmp_path, monkeypatch) -> None:
    from rjn import places, state

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "st"))
    root = tmp_path / "my.project"  # a dot in the folder's name
    path = state.project_file(root, "lab", ".agreed")
    assert not path.parent.exists()  # only a path: nothing is made for it
    for remote in (None, "lab"):
        state.save(state.ProjectState(root=str(root), host="h", control_path="c",
                                      remote_name=remote))  # fmt: skip
    places.write_private(path, "{}")  # a project's other file is not a record
    found = sorted((s.root, s.remote_name or "") for s in state.all_projects())
    assert found == [(str(root), ""), (str(root), "lab")]
    assert (path.parent.stat().st_mode & 0o777) == 0o700


def test_a_connection_lost_under_a_command_says_so(tmp_path: Path) -> None:
    remote = make_remote(tmp_path)
    remote.log_path.write_text("Timeout, server gpu-box not responding.\n")
    lost = remote.lost("")  # what the command's own ssh said: nothing
    assert (lost.message, lost.exit_code) == (
        "the connection to gpu-box was lost: the link stalled: the server stopped answering",
        3,
    )
    assert "reconnects once it answers" in (lost.hint or "")
    remote.log_path.write_text("")
    assert remote.lost("").message == "the connection to gpu-box was lost"
    # ssh had to connect by itself (no master) and could not: that is said as such.
    refused = remote.lost("ssh: connect to host gpu-box port 22: Connection refused")
    assert refused.message.startswith("cannot connect to gpu-box: the connection was refused")


def test_the_helper_exits_cleanly_while_its_stdin_is_still_open(tmp_path: Path) -> None:
    """After answering, the helper ends by itself though the local side has not closed its
    stdin yet; a thread left reading stdin used to make the interpreter abort on the way out."""
    import subprocess
    import sys

    from rjn.helper_client.boot import boot_command, helper_zipapp

    zipapp = helper_zipapp()[0]
    run = {"dir": str(tmp_path), "argv": ["true"]}
    argv, _ = boot_command(sys.executable, "run", run, len(zipapp))
    cache = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "c")}
    helper = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, cwd=tmp_path, env=cache)  # fmt: skip
    assert helper.stdin and helper.stdout and helper.stderr
    helper.stdin.write(zipapp)
    helper.stdin.flush()  # and left open
    try:
        assert json.loads(helper.stdout.readline())["ok"]["exit"] == 0
        assert helper.wait(timeout=30) == 0, helper.stderr.read()
    finally:
        helper.kill()
        helper.stdin.close()


# -- whether a pull would bring anything ----------------------------------------------------------


def test_a_pull_is_skipped_only_when_it_would_bring_nothing(tmp_path: Path, monkeypatch) -> None:
    from rjn import places, state

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "st"))
    config = load(tmp_path, '[remote]\nhost = "h"\n[sync]\nresults = ["results"]\n')
    (tmp_path / "results").mkdir()
    fig = tmp_path / "results" / "fig.png"
    fig.write_bytes(b"png")
    here = [fig.stat().st_mtime_ns, 3]
    would = lambda listing: placing.would_bring(config, listing)  # noqa: E731
    assert not would({"results/fig.png": here})  # all here as there: no rsync at all
    assert not would({})
    assert would({"results/new.png": here})  # a new file
    assert would({"results/fig.png": [here[0] + 1, 3]})  # changed there
    for hostile in ({"../x": here}, {"results/fig.png": ["1", 3]}, ["results/fig.png"], None):
        assert would(hostile)  # anything odd: rsync and placing decide, as always
    # A remote version already kept beside a local edit is not fetched again.
    kept = [here[0] + 5, 9]
    index = {"results/fig.png": {"local": [1, 1], "remote": kept}}
    places.write_private(state.project_file(config.root, None, ".pulled"), json.dumps(index))
    assert not would({"results/fig.png": kept})
    fig.unlink()  # deleted here since: a pull brings it back, so it must run
    assert would({"results/fig.png": kept})
    # A results folder that is a link here: placing refuses it, so the pull must run to say so.
    (tmp_path / "results").rmdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "fig.png").write_bytes(b"png")
    (tmp_path / "results").symlink_to(tmp_path / "elsewhere")
    stamp = [(tmp_path / "elsewhere" / "fig.png").stat().st_mtime_ns, 3]
    assert would({"results/fig.png": stamp})


def test_the_helper_lists_results_or_leaves_it_to_rsync(tmp_path: Path) -> None:
    from rjn.helper import tree

    (tmp_path / "scratch" / "sub").mkdir(parents=True)
    (tmp_path / "scratch" / "sub" / "a.png").write_bytes(b"ab")
    (tmp_path / "results").symlink_to(tmp_path / "scratch")  # a results folder on scratch
    info = (tmp_path / "scratch" / "sub" / "a.png").stat()
    listed = tree.results_listing(str(tmp_path), ["results/", "figures"])
    assert listed == {"results/sub/a.png": [info.st_mtime_ns, 2]}
    (tmp_path / "scratch" / "link.png").symlink_to("sub/a.png")
    assert tree.results_listing(str(tmp_path), ["results"]) is None  # links: rsync judges


def test_the_helper_is_kept_by_its_hash_and_a_changed_copy_is_never_run(tmp_path: Path) -> None:
    import subprocess
    import sys

    from rjn.helper_client.boot import NEED_HELPER, boot_command, helper_zipapp

    zipapp, digest = helper_zipapp()
    assert helper_zipapp()[0] == zipapp  # built the same way every time
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    kept = tmp_path / "cache" / "rjn" / f"helper-{digest}.pyz"

    def call(stdin: bytes) -> subprocess.CompletedProcess[bytes]:
        argv, _ = boot_command(sys.executable, "probe", {"dir": str(tmp_path / "p")},
                                 len(stdin))  # fmt: skip
        return subprocess.run(argv, input=stdin, capture_output=True, env=env, timeout=60)

    first = call(zipapp)  # sent along: kept, and run
    assert first.returncode == 0 and b'"ok"' in first.stdout, first.stderr
    assert kept.read_bytes() == zipapp and (kept.parent.stat().st_mode & 0o777) == 0o700
    assert call(b"").returncode == 0  # then run from the cache, nothing sent
    # Someone changed the kept copy: it is not run; rjn is asked for the real one.
    kept.write_bytes(zipapp + b"changed")
    asked = call(b"")
    assert asked.returncode == NEED_HELPER and json.loads(asked.stdout) == {"need": "helper"}
    kept.unlink()
    assert call(b"").returncode == NEED_HELPER
    # A damaged transfer is refused, not kept.
    damaged = call(zipapp[:-1] + b"x")
    assert damaged.returncode != 0 and not kept.exists()


def test_uv_comes_straight_from_its_wheel_on_the_package_index(tmp_path: Path) -> None:
    """What a fresh remote without uv does first (no venv, no pip): the real index, the real
    wheel, its digest checked, and the binary it holds runs."""
    import platform
    import subprocess

    from rjn.helper import env

    if platform.machine() not in ("x86_64", "aarch64") or platform.libc_ver()[0] != "glibc":
        pytest.skip("uv's wheel is fetched on Linux with glibc, x86_64 or aarch64, only")
    assert env.download_uv(str(tmp_path / "uv"))
    uv = tmp_path / "uv" / "bin" / "uv"
    assert subprocess.run([uv, "--version"], capture_output=True, text=True).stdout.startswith(
        "uv "
    )
    assert sorted(p.name for p in (tmp_path / "uv").rglob("*")) == ["bin", "uv"]  # nothing else


def test_each_remote_python_has_its_own_serving_helper(tmp_path: Path, monkeypatch) -> None:
    """Its answers (whether the environment is current above all) are its interpreter's."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    from rjn.helper_client import HelperClient

    plain = HelperClient(make_remote(tmp_path))
    other = HelperClient(make_remote(tmp_path, python="/opt/py/bin/python3"))
    assert plain.connection.control_path == other.connection.control_path  # one connection
    assert plain._serving_socket() != other._serving_socket()  # two helpers


def test_the_server_is_given_the_away_extension_beside_its_records(tmp_path: Path) -> None:
    import ast

    from rjn.helper import server

    env = {"JUPYTER_CONFIG_PATH": "/theirs"}
    server.keep_away_outputs(str(tmp_path), env)
    folder = tmp_path / "jupyter-config"
    assert env["JUPYTER_CONFIG_PATH"] == f"{folder}{os.pathsep}/theirs"  # theirs still read
    assert (folder / "rjn_away.py").read_text() == (
        Path(server.__file__).with_name("away.py").read_text()
    )
    config = (folder / "jupyter_server_config.py").read_text()
    ast.parse(config)
    assert f"sys.path.insert(0, {json.dumps(str(folder))})" in config
    assert '"rjn_away.KeepingConnection"' in config
    assert (folder.stat().st_mode & 0o777) == 0o700  # a Python file the server runs: ours alone
    assert not cfg.parse({"remote": {"host": "h"}, "jupyter": {"away_outputs": False}},
                         tmp_path / "remote.toml").jupyter.away_outputs  # fmt: skip


# -- the portable routes (rjn/portable.py), run here where they can be ---------------------------


@pytest.mark.parametrize("route", ["proc", "lsof"])
def test_whose_listener_a_port_is_each_route_tells(route: str) -> None:
    import socket

    from rjn import portable, proc

    def lsof(port: int, pid: int) -> bool | None:
        return portable._from_lsof(port, pid, lambda argv: proc.run(argv, timeout=10))

    ask = {"proc": portable._from_proc, "lsof": lsof}[route]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert ask(port, os.getpid()) is True
        assert ask(port, os.getppid()) is False  # another process: not ours
    assert ask(port, os.getpid()) is False  # closed: nobody


def test_windows_netstat_names_the_listening_process() -> None:
    from rjn.portable import listening_pid

    said = (
        "\r\nActive Connections\r\n\r\n  Proto  Local Address          Foreign Address        "
        "State           PID\r\n  TCP    0.0.0.0:135            0.0.0.0:0              "
        "LISTENING       948\r\n  TCP    127.0.0.1:20443        0.0.0.0:0              "
        "LISTENING       5120\r\n  TCP    127.0.0.1:20444        127.0.0.1:50000        "
        "ESTABLISHED     77\r\n"
    )
    assert listening_pid(said, 20443) == 5120
    assert listening_pid(said, 20444) is None and listening_pid(said, 135) is None


def test_the_forced_routes_are_taken(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "from rjn import portable, tunnel; import os, socket; s = socket.socket(); "
        "s.bind(('127.0.0.1', 0)); s.listen(); port = s.getsockname()[1]; "
        "print(portable.UNIX_SOCKETS, tunnel.held(port, os.getpid()))"
    )
    forced = {**os.environ, "RJN_ROUTES": "lsof,no-unix-sockets"}
    said = subprocess.run([sys.executable, "-c", code], env=forced, capture_output=True,
                          text=True, check=True)  # fmt: skip
    assert said.stdout.split() == ["False", "True"]


# -- a cluster job's time (rjn/walltime.py) ------------------------------------------------------


@pytest.mark.parametrize(("said", "count"), [
    ("5", 300), ("04:05", 245), ("03:04:05", 11045), ("2-03:04:05", 183845),
    ("1-02", 93600), ("1-02:03", 93780), ("UNLIMITED", None), ("NOT_SET", None), ("", None),
])  # fmt: skip
def test_slurm_times_read_as_seconds(said: str, count: int | None) -> None:
    from rjn import walltime

    assert walltime.seconds(said) == count


def test_warnings_fit_the_job() -> None:
    from rjn import walltime

    assert walltime.thresholds((10, 2), 3600) == [600, 120]
    assert walltime.thresholds((10, 2), 600) == [120]  # 10 minutes of a 10-minute job: no
    assert walltime.thresholds((10, 2), 120) == [30, 12]  # too short for any: a fraction
    assert walltime.thresholds((10, 2), None) == [600, 120]


def test_warn_minutes_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "remote.toml"
    path.write_text('[remote]\nhost = "h"\n[slurm]\nwarn = [5, 1]\n')
    assert cfg.load(path).slurm.warn == (5, 1)
    for bad in ('["5"]', "[0]", "[true]"):
        path.write_text(f'[remote]\nhost = "h"\n[slurm]\nwarn = {bad}\n')
        with pytest.raises(ConfigError, match="warn"):
            cfg.load(path)


def test_renew_is_one_of_three_words(tmp_path: Path) -> None:
    path = tmp_path / "remote.toml"
    path.write_text('[remote]\nhost = "h"\n[slurm]\n')
    assert cfg.load(path).slurm.renew == "ask"
    path.write_text('[remote]\nhost = "h"\n[slurm]\nrenew = "always"\n')
    assert cfg.load(path).slurm.renew == "always"
    path.write_text('[remote]\nhost = "h"\n[slurm]\nrenew = "sometimes"\n')
    with pytest.raises(ConfigError, match=r"\[slurm\] renew"):
        cfg.load(path)


def test_a_follow_on_job_waits_for_the_one_it_follows_and_every_job_takes_usr1() -> None:
    from rjn.helper.slurm import slurm_script
    from rjn.shared.protocol import StartRequest

    slurm = {"partition": "gpu", "time": "01:00:00", "setup": ["module load cuda"]}
    args = StartRequest(dir="/p/demo", slurm=slurm)
    first = slurm_script("/p/demo", args, ["/p/demo/.rjn/venv/bin/jupyter", "lab"])
    follow_on = slurm_script("/p/demo", args, ["/p/demo/.rjn/venv/bin/jupyter", "lab"], "41")
    assert "#SBATCH --signal=B:USR1@60" in first and "--dependency" not in first
    assert "#SBATCH --dependency=afterany:41\n" in follow_on
    assert follow_on.replace("#SBATCH --dependency=afterany:41\n", "") == first
    with pytest.raises(ValueError):  # a job id is a number: nothing else reaches the script
        slurm_script("/p/demo", args, ["jupyter"], "41\n#SBATCH --uid=0")


# -- wheels for a remote with no way out (rjn/wheels.py) -----------------------------------------

LINUX = {"python": "3.11.7", "machine": "x86_64", "libc": "glibc", "libc_version": "2.28",
         "system": "linux", "implementation": "cpython"}  # fmt: skip


def test_wheels_asked_for_fit_the_remotes_glibc_python_and_machine() -> None:
    from rjn import wheels

    tags = wheels.Target.parse("h", LINUX).tags
    platforms = [tags[i + 1] for i, option in enumerate(tags) if option == "--platform"]
    assert platforms[0] == "manylinux_2_28_x86_64" and "manylinux_2_5_x86_64" in platforms
    assert {"manylinux2014_x86_64", "manylinux1_x86_64"} <= set(platforms)
    assert "manylinux_2_29_x86_64" not in platforms
    assert tags[-6:] == ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]


@pytest.mark.parametrize("change", [
    {"python": "3.11; rm -rf ~"}, {"machine": "x86 64"}, {"libc_version": "2.x"},
    {"system": "darwin"}, {"libc": "musl"}, {"implementation": "pypy"}, {"python": 311},
])  # fmt: skip
def test_a_remote_platform_that_is_not_one_rjn_can_fetch_for_is_refused(change: dict) -> None:
    from rjn import wheels
    from rjn.errors import RemoteError

    with pytest.raises(RemoteError):
        wheels.Target.parse("h", {**LINUX, **change})


# -- [remote] setup (helper_client/boot.with_setup), run by a real bash ----------------------------


def test_setup_lines_run_in_the_shell_that_runs_the_command() -> None:
    import subprocess

    from rjn.helper_client.boot import SETUP_FAILED, with_setup

    assert with_setup((), ["python3", "-c", "pass"]) == ["python3", "-c", "pass"]
    argv = with_setup(("export RJN_A='it works'", "echo noise"), ["sh", "-c", 'echo "$RJN_A"'])
    done = subprocess.run(argv, capture_output=True, text=True)
    # The command sees what the lines set; their output goes to stderr (stdout is the answer).
    assert (done.returncode, done.stdout, done.stderr) == (0, "it works\n", "noise\n")
    argv = with_setup(("true", "exit 3", "touch /nonexistent/never"), ["echo", "never run"])
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == SETUP_FAILED and done.stdout == ""
    assert "rjn: [remote] setup line 2 failed: exit 3" in done.stderr
    done = subprocess.run(with_setup(("true", "false"), ["true"]), capture_output=True, text=True)
    assert done.returncode == SETUP_FAILED
    assert done.stderr == "rjn: [remote] setup line 2 failed: false\n"


# -- the sync archive -----------------------------------------------------------------------------


def test_the_archive_round_trips_and_its_head_is_read_alone(tmp_path, monkeypatch) -> None:
    from rjn import archive as kept

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "st"))
    root = tmp_path / "p"
    whole = kept.Archive(
        gen=3, listing="L", clean=kept.Clean("h", "L", "t"), pair=kept.Pair("box", "~/p", "r"),
        conflicts={"a.ipynb": kept.Conflict("a.box.ipynb", "x")}, kept_there={"remote.toml": "y"},
        files={"a.py": kept.Agreed((1, 2), (1, 5), "z")},
    )  # fmt: skip
    kept.save_archive(root, "lab", whole)
    assert kept.load_archive(root, "lab") == whole
    path = kept.path(root, "lab")
    head, files = path.read_text().splitlines()
    assert json.loads(head)["version"] == kept.VERSION and "a.py" in files and "a.py" not in head
    path.write_text(head + "\n" + "not JSON: the head never reads this line\n")
    assert kept.load_head(root, "lab") == kept.Head(3, "L", whole.clean, whole.pair,
                                                    whole.conflicts, whole.kept_there)  # fmt: skip
    assert kept.load_archive(root, "lab") == kept.Archive()  # unreadable: a new pair, no loss
    path.write_text(json.dumps({"version": kept.VERSION + 1}) + "\n{}\n")  # a newer rjn's
    assert kept.load_head(root, "lab") == kept.Head()


def test_the_archive_takes_over_the_files_older_rjn_kept(tmp_path, monkeypatch) -> None:
    from rjn import archive as kept
    from rjn import places, state

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "st"))
    root = tmp_path / "p"
    agreed = {"files": {"a.py": {"local": [1, 2], "remote": [1, 5], "hash": "z"},
                        "bad": {"local": [1]}},  # a damaged entry: dropped, as never agreed
              "conflicts": {"n.ipynb": {"copy": "n.box.ipynb", "remote": "x"}},
              "pair": {"host": "box", "dir": "~/p", "replica": "r"}, "gen": 4}  # fmt: skip
    places.write_private(state.project_file(root, None, ".agreed"), json.dumps(agreed))
    marks = {"gen": 5, "listing": "L", "clean": {"here": "h"}}
    places.write_private(state.project_file(root, None, ".marks"), json.dumps(marks))
    assert kept.load_head(root, None).gen == 5  # the head alone migrates too
    found = kept.load_archive(root, None)
    assert (found.gen, found.listing, found.clean) == (5, "L", None)
    assert found.files == {"a.py": kept.Agreed((1, 2), (1, 5), "z")}
    assert found.conflicts == {"n.ipynb": kept.Conflict("n.box.ipynb", "x")}
    assert found.pair == kept.Pair("box", "~/p", "r")
    assert not state.project_file(root, None, ".agreed").exists()
    assert not state.project_file(root, None, ".marks").exists()
    assert kept.load_archive(root, None) == found  # from the archive now


def test_every_import_inside_the_helper_resolves_even_those_made_late() -> None:
    # The helper imports some names inside functions (what only one action needs): a name moved
    # elsewhere fails there on the remote, in that action alone, unless caught here.
    import ast
    import importlib
    from importlib import resources

    missing = []
    for package in ("helper", "shared"):
        for path in resources.files(f"rjn.{package}").iterdir():
            if not path.name.endswith(".py"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level:
                    base = f"rjn.{package}" if node.level == 1 else "rjn"
                    name = f"{base}.{node.module}" if node.module else base
                    module = importlib.import_module(name)
                    missing += [f"{path.name}: {alias.name}" for alias in node.names
                                if not hasattr(module, alias.name)]  # fmt: skip
    assert missing == []


def test_single_modes_far_end_runs_alone_with_the_frames_in_place_of_its_import() -> None:
    """helper/mux.py is sent as `python3 -c` text, without the package: the program built
    for it holds the frames' definitions and runs a command over them."""
    import subprocess
    import sys

    from rjn.connection.single import mux_program
    from rjn.shared import frames

    program = mux_program()
    assert "shared.frames import" not in program
    far = subprocess.Popen([_oldest_python() or sys.executable, "-c", program],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    assert far.stdin and far.stdout
    try:
        assert frames.read_frame(far.stdout) == (0, frames.READY, b"")
        far.stdin.write(frames.frame(1, frames.EXEC, b"echo framed"))
        far.stdin.flush()
        seen = [frames.read_frame(far.stdout) for _ in range(2)]
        assert seen == [(1, frames.OUT, b"framed\n"), (1, frames.EXIT, b"0")]
    finally:
        far.stdin.close()
        assert far.wait(timeout=30) == 0


@pytest.mark.parametrize(
    ("text", "alone"),
    [
        ("# Written by rjn\npyyaml\nnumpy==1.26 # pinned\n", True),
        ("pandas>=2,<3\ntorch[cuda] ~= 2.1\npyyaml ; python_version > '3.8'\n", True),
        ("", True),
        ("-e .\n", False),
        ("pyyaml\n./wheels/tiny-0.1-py3-none-any.whl\n", False),
        ("tiny-0.1-py3-none-any.whl\n", False),
        ("pkg @ file:///home/me/pkg\n", False),
        ("-r other.txt\n", False),
        ("git+https://example.org/pkg\n", False),
    ],
)
def test_only_requirements_that_name_index_packages_install_before_the_sync(
    tmp_path: Path, text: str, alone: bool
) -> None:
    from rjn import env

    config = load(tmp_path, '[remote]\nhost = "h"\n')
    (tmp_path / "requirements.txt").write_text(text)
    sent = env.requirements_to_send(config)
    assert (sent == text) if alone else sent is None
