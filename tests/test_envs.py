"""Environments where clusters keep them: `module load` ([remote] setup) and the user's own
environment ([remote] env: a venv, a conda prefix), on the suite's separate host.

The module is real Lmod (Debian's lmod) with a modulefile that puts a Python on PATH whose
shared library is found only through LD_LIBRARY_PATH (its run path removed), as on clusters
that build Python as a module: without the module loaded, nothing built on it starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import api, execute, opened, run_rjn
from hosts.loopback import ALIAS, TestHost

LMOD = Path("/etc/profile.d/lmod.sh")
VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"
MODULE = f"testpy/{VERSION}"

pytestmark = pytest.mark.skipif(
    not LMOD.exists() or not shutil.which("patchelf") or sys.base_prefix == "/usr",
    reason="needs Lmod (Debian's lmod), patchelf (.ci/install installs both) and a Python "
    "installed in a prefix of its own (not /usr) to copy as a module",
)


class Modules:
    """A module system with one Python: its prefix, a conda-style environment itself (with
    jupyterlab), and a venv built on it (with jupyterlab), the user's own."""

    def __init__(self, base: Path) -> None:
        self.envs = base / "conda-envs"  # conda's envs folder (CONDA_ENVS_PATH)
        self.prefix = self.envs / "labenv"
        self.files = base / "modulefiles"
        self.venv = base / "envs" / "lab"
        self.bare = base / "envs" / "bare"

    def build(self) -> Modules:
        self.envs.mkdir(parents=True)
        # The test's own Python, copied (hard links: no space taken), its interpreter a real
        # copy whose run path is removed: it finds libpython only on LD_LIBRARY_PATH.
        subprocess.run(["cp", "-al", sys.base_prefix, str(self.prefix)], check=True)
        (self.prefix / "conda-meta").mkdir(exist_ok=True)
        exe = self.prefix / "bin" / f"python{VERSION}"
        exe.unlink()
        shutil.copy2(os.path.realpath(Path(sys.base_prefix) / "bin" / f"python{VERSION}"), exe)
        subprocess.run(["patchelf", "--remove-rpath", str(exe)], check=True)
        # Its library under a name of the module's own (this machine may have a libpython of
        # the same version where the loader looks by default).
        needed = subprocess.run(["patchelf", "--print-needed", str(exe)], capture_output=True,
                                text=True, check=True).stdout.split()  # fmt: skip
        for library in (n for n in needed if n.startswith("libpython")):
            os.link(self.prefix / "lib" / library, self.prefix / "lib" / f"rjntest-{library}")
            subprocess.run(["patchelf", "--replace-needed", library, f"rjntest-{library}",
                            str(exe)], check=True)  # fmt: skip
        (self.files / "testpy").mkdir(parents=True)
        (self.files / "testpy" / f"{VERSION}.lua").write_text(
            f'prepend_path("PATH", "{self.prefix}/bin")\n'
            f'prepend_path("LD_LIBRARY_PATH", "{self.prefix}/lib")\n'
            f'setenv("RJN_TEST_MODULE", "{MODULE}")\n'
        )
        loaded = {**os.environ, "LD_LIBRARY_PATH": str(self.prefix / "lib")}
        uv = shutil.which("uv", path=str(Path(sys.prefix) / "bin")) or "uv"
        for folder in (self.venv, self.bare):
            subprocess.run([str(exe), "-m", "venv", "--without-pip", str(folder)], env=loaded,
                           check=True)  # fmt: skip
        for python in (self.venv / "bin" / "python", exe):
            subprocess.run([uv, "pip", "install", "-q", "--python", str(python), "jupyterlab",
                            "ipykernel"], env=loaded, check=True)  # fmt: skip
        return self

    @property
    def setup(self) -> str:
        return f'setup = ["module use {self.files}", "module load {MODULE}"]\n'

    def packages(self, prefix: Path) -> set[str]:
        """What an environment has installed (its distributions' metadata folders)."""
        site = sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)})
        return {p.name for p in Path(site).glob("*.dist-info")}


@pytest.fixture(scope="module")
def modules(short_tmp: Path) -> Modules:
    return Modules(short_tmp / "modules").build()


@pytest.fixture
def project(make_project: Callable[..., Path]) -> Callable[[str, str], Path]:
    """A project that also imports a package no environment here has (tabulate)."""

    def make(name: str, remote: str) -> Path:
        root = make_project(name, remote_extra=remote)
        (root / "report.py").write_text("import tabulate\n")
        return root

    return make


def test_a_module_python_is_not_there_for_plain_ssh(modules: Modules, host: TestHost) -> None:
    """The issue's starting point: a command over ssh runs no login scripts, so `module` and
    everything built on the module's Python are missing."""
    said = subprocess.run(["ssh", "-F", str(host.ssh_config), ALIAS, "module", "--version"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert said.returncode == 127, said
    lone = subprocess.run([str(modules.venv / "bin" / "python"), "-c", "pass"],
                          capture_output=True, text=True)  # fmt: skip
    assert lone.returncode != 0 and "libpython" in lone.stderr


def test_setup_and_env_run_jupyter_from_the_users_environment(
    modules: Modules, project: Callable[[str, str], Path]
) -> None:
    """`module load` before everything, and the user's venv built on the module's Python:
    JupyterLab serves from that venv with the module loaded, `rjn run` sees the module, the
    venv is left exactly as it was, and what the project needs that it lacks is named."""
    before = modules.packages(modules.venv)
    root = project("modenv", modules.setup + f'env = "{modules.venv}"\n')
    try:
        result = run_rjn("open", "--no-browser", "--no-watch", cwd=root)
        port, token = opened(result)
        assert f"[remote] env {modules.venv} lacks tabulate" in result.stderr, result.stderr
        assert f"{modules.venv}/bin/python -m pip install tabulate" in result.stderr
        assert api(port, "/api/status", token)[0] == 200
        code = ("import os, sys; print(os.path.realpath(sys.prefix), "
                "os.environ.get('RJN_TEST_MODULE'), os.environ['LD_LIBRARY_PATH'])")  # fmt: skip
        prefix, module, libraries = execute(port, token, code).split()
        assert prefix == os.path.realpath(modules.venv) and module == MODULE
        assert str(modules.prefix / "lib") in libraries.split(":")
        ran = run_rjn("run", "--", "python", "-c", code, cwd=root)
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.split()[:2] == [os.path.realpath(modules.venv), MODULE]
        # Nothing was installed into the user's environment, and rjn made none of its own.
        assert modules.packages(modules.venv) == before
        own = Path(status_dir(root)) / ".rjn" / "venv"
        assert own.is_symlink() and os.path.realpath(own) == os.path.realpath(modules.venv)
    finally:
        run_rjn("close", "--server", cwd=root)


def status_dir(root: Path) -> str:
    import json

    return json.loads(run_rjn("status", "--json", cwd=root).stdout)["remote_dir"]


def test_a_conda_environment_by_name(modules: Modules, project: Callable[[str, str], Path]) -> None:
    """env = "conda:NAME", found where conda keeps environments (CONDA_ENVS_PATH), a prefix
    with a Python of its own (not a venv)."""
    before = modules.packages(modules.prefix)
    setup = modules.setup.replace("]\n", f', "export CONDA_ENVS_PATH={modules.envs}"]\n')
    root = project("condaenv", setup + 'env = "conda:labenv"\n')
    try:
        port, token = opened(run_rjn("open", "--no-browser", "--no-watch", cwd=root))
        said = execute(port, token, "import os, sys; print(os.path.realpath(sys.prefix))")
        assert said.strip() == os.path.realpath(modules.prefix)
        assert modules.packages(modules.prefix) == before
    finally:
        run_rjn("close", "--server", cwd=root)


def test_an_environment_without_jupyter_is_named_and_left_alone(
    modules: Modules, project: Callable[[str, str], Path]
) -> None:
    root = project("bareenv", modules.setup + f'env = "{modules.bare}"\n')
    result = run_rjn("open", "--no-browser", "--no-watch", cwd=root)
    assert result.returncode != 0
    assert f"[remote] env {modules.bare} has no jupyterlab or ipykernel" in result.stderr
    assert "rjn never installs into an environment it did not create" in result.stderr
    assert "Traceback" not in result.stderr
    assert modules.packages(modules.bare) == set()


def test_a_failing_setup_line_is_named(make_project: Callable[..., Path]) -> None:
    root = make_project("badsetup", remote_extra='setup = ["module load nosuch/9.9"]\n')
    result = run_rjn("sync", cwd=root)
    assert result.returncode != 0
    assert "[remote] setup line 1 failed: module load nosuch/9.9" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
