"""rjn's folders, as both sides spell them (this runs here and on the remote): the project's
`.rjn/`, the environment's paths in it, and private folders that are never a link."""

import contextlib
import os

from .protocol import HelperError

RJN_DIR = ".rjn"


def private(path):
    """`path` as a folder of this user's alone: made if missing, never through a link. One that
    exists must be a real folder of ours (checked on a descriptor opened without following
    links), so nothing planted in a shared place (/tmp) is followed, chmodded or used."""
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, mode=0o700, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        raise HelperError(
            "%s is not a folder of yours (%s): rjn does not use it" % (path, exc.strerror),
            "look at it (ls -la %s) and remove it if it should not be there" % path,
        )
    try:
        info = os.fstat(fd)
        if info.st_uid != os.getuid():
            raise HelperError(
                "%s belongs to another user (uid %d): rjn does not use it" % (path, info.st_uid),
                "ask its owner or the admins to remove it",
            )
        if info.st_mode & 0o077:
            os.fchmod(fd, 0o700)  # ours: closing it changes nobody else's folder
    finally:
        os.close(fd)
    return path


def rjn_dir(project):
    return private(os.path.join(project, RJN_DIR))


def venv_dir(project):
    """The project's environment: the one place the remote layout spells it."""
    return os.path.join(project, RJN_DIR, "venv")


def venv_bin(project, name):
    return os.path.join(venv_dir(project), "bin", name)


def venv_python(project):
    return venv_bin(project, "python")
