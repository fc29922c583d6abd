"""requirements.txt from the project's imports, notebooks included, with no network look-ups.

pipreqs supplies the standard-library list and the import -> package mapping; the scan
is our own because pipreqs' scanner stops at the first file that does not parse and
needs nbconvert for notebooks.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from rjn.config import DEFAULT_EXCLUDES, Config, RequirementsConfig
from rjn.errors import ConfigError
from rjn.places import write_atomic
from rjn.shared.record import record
from rjn.shared.tree import is_environment

HEADER = (
    "# Written by rjn from the project's imports; edit remote.toml [requirements], not this file."
)

# Where pipreqs' mapping is wrong or silent (it maps sklearn to scikit_learn, has no cv2).
CORRECTIONS = {
    "sklearn": "scikit-learn",
    "cv2": "opencv-python",
    "skimage": "scikit-image",
    "PIL": "pillow",
    "yaml": "pyyaml",
    "bs4": "beautifulsoup4",
    "dateutil": "python-dateutil",
    "dotenv": "python-dotenv",
    "attr": "attrs",
    "Crypto": "pycryptodome",
    "jwt": "pyjwt",
    "serial": "pyserial",
    "tensorflow_datasets": "tensorflow-datasets",
    "IPython": "ipython",
}

# Present in every rjn environment already, or part of Jupyter itself.
ALWAYS_THERE = {"ipykernel", "IPython", "jupyter"}

# Folders never scanned: what never travels (config's one list), and build outputs.
SKIP_DIRS = {
    pattern.rstrip("/")
    for pattern in DEFAULT_EXCLUDES
    if pattern.endswith("/") and "*" not in pattern
} | {"build", "dist"}


@record
class Requirements:
    """The outcome: the file, its lines, and whether rjn wrote it."""

    path: Path
    lines: tuple[str, ...]
    generated: bool
    skipped_files: tuple[str, ...] = ()

    def digest(self) -> str:
        """A hash of what gets installed (the file's content as the remote will see it)."""
        content = self.path.read_bytes() if self.path.exists() else b""
        return hashlib.sha256(content).hexdigest()


def source_files(root: Path) -> Iterator[Path]:
    """The .py and .ipynb files of a project, skipping environments and caches."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(
            d
            for d in dirs
            if d not in SKIP_DIRS
            and not d.endswith(".egg-info")
            and not is_environment(os.path.join(folder, d))
        )
        for name in sorted(files):
            # A noxfile runs here, under nox (which installs what its sessions need): what it
            # imports is no requirement of the remote environment.
            if name.endswith((".py", ".ipynb")) and name != "noxfile.py":
                yield Path(folder, name)


def sources_fingerprint(root: Path) -> str:
    """Changes when a source file is added, removed or modified: skip the scan otherwise."""
    digest = hashlib.sha256()
    for path in source_files(root):
        info = path.stat()
        digest.update(f"{path}\0{info.st_mtime_ns}\0{info.st_size}\n".encode())
    return digest.hexdigest()


def notebook_code(text: str) -> str:
    """The Python in a notebook's code cells, with IPython magics and shell lines removed."""
    cells = json.loads(text).get("cells", [])
    kept: list[str] = []
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        lines = source.splitlines() if isinstance(source, str) else "".join(source).splitlines()
        if lines and lines[0].lstrip().startswith("%%"):
            continue  # a cell magic: the body is not Python (or not ours to read)
        for line in lines:
            stripped = line.lstrip()
            if stripped.startswith("%matplotlib"):
                kept.append("import matplotlib")  # the magic needs matplotlib installed
            elif not stripped.startswith(("%", "!", "?")):
                kept.append(line)
        kept.append("")
    return "\n".join(kept)


def imports_of(source: str) -> set[str]:
    """Top-level names of absolute imports in Python source."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
    return found


def local_modules(root: Path, files: list[Path]) -> set[str]:
    """Names the project itself provides: its modules and packages."""
    names = {p.stem for p in files if p.suffix == ".py"}
    names.update(p.parent.name for p in files if p.name == "__init__.py")
    for layout in (root, root / "src"):
        if layout.is_dir():
            names.update(
                d.name for d in layout.iterdir() if d.is_dir() and (d / "__init__.py").exists()
            )
    return names


def _pipreqs_data(name: str) -> Path:
    """A data file of pipreqs' (its lists of stdlib and module -> package names), found
    without importing pipreqs' module (which pulls in requests and more)."""
    from importlib import resources  # only where requirements are written

    return Path(str(resources.files("pipreqs") / name))


def _stdlib() -> set[str]:
    with open(_pipreqs_data("stdlib")) as handle:
        listed = {line.strip() for line in handle if line.strip()}
    return listed | set(sys.stdlib_module_names)


def _pipreqs_mapping() -> dict[str, str]:
    with open(_pipreqs_data("mapping")) as handle:
        pairs = (line.strip().split(":", 1) for line in handle if ":" in line)
        # Package names are case-insensitive; pipreqs spells some oddly (Requests, PyYAML).
        return {module: package.lower() for module, package in pairs}


def scan(root: Path, config: RequirementsConfig) -> tuple[list[str], list[str]]:
    """Package names the project imports, and the files that could not be read."""
    files = list(source_files(root))
    imported: set[str] = set()
    skipped: list[str] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
            imported |= imports_of(notebook_code(text) if path.suffix == ".ipynb" else text)
        except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
            skipped.append(str(path.relative_to(root)))
    imported -= _stdlib() | local_modules(root, files) | ALWAYS_THERE | set(config.ignore)
    imported.discard("__future__")
    mapping = {**_pipreqs_mapping(), **CORRECTIONS, **config.map}
    packages = {mapping.get(name, name) for name in imported}
    return sorted(packages, key=str.lower), skipped


def _merge(packages: list[str], extra: tuple[str, ...]) -> list[str]:
    """Extras are added, and replace a scanned package of the same name (a pin wins)."""

    def name(spec: str) -> str:
        for stop in "<>=!~[;@ ":
            spec = spec.split(stop, 1)[0]
        return spec.strip().lower().replace("_", "-")

    pinned = {name(e) for e in extra}
    return [p for p in packages if name(p) not in pinned] + list(extra)


def write(config: Config) -> Requirements:
    """Write requirements.txt, unless the user keeps their own (generate = false, or no header)."""
    cfg = config.requirements
    path = config.root / cfg.file
    if not path.resolve().is_relative_to(config.root):
        raise ConfigError(f"{config.path}: [requirements] file must be inside the project")
    existing = path.read_text(encoding="utf-8") if path.exists() else None
    user_written = existing is not None and not existing.startswith(HEADER)
    if not cfg.generate or user_written:
        lines = tuple(ln for ln in (existing or "").splitlines() if ln.strip())
        return Requirements(path, lines, generated=False)
    packages, skipped = scan(config.root, cfg)
    lines = tuple(_merge(packages, cfg.extra))
    text = "\n".join((HEADER, *lines)) + "\n"
    if text != existing:
        # A project file like any other: its folder and an existing file's mode stay as they are.
        write_atomic(path, text, new_mode=0o644)
    return Requirements(path, lines, generated=True, skipped_files=tuple(skipped))


def current(config: Config, known: str | None) -> tuple[Requirements, str]:
    """requirements.txt, rescanned only when a source file changed since the fingerprint
    `known` (the last open's); with the fingerprint now, for the next open to compare."""
    fingerprint = sources_fingerprint(config.root)
    path = config.root / config.requirements.file
    if known == fingerprint and path.exists():
        text = path.read_text(encoding="utf-8")
        lines = tuple(ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#"))
        return Requirements(path, lines, text.startswith(HEADER)), fingerprint
    return write(config), fingerprint
