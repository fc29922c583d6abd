"""rjn's own route, where this machine's rsync cannot serve (macOS's rsync 2.6.9 or its
openrsync, or none at all): the helper reads and writes (helper/files.py), the bytes stream over
the connection every command already uses, compressed, each file checked by its SHA-256."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rjn import portable
from rjn.config import Config
from rjn.errors import RemoteError, RjnError
from rjn.helper_client import HelperClient
from rjn.shared import protocol
from rjn.transfer.placing import Refused, checked_name
from rjn.transfer.route import Progress

CHUNK = 1 << 20


def _results_here(config: Config) -> dict[str, list[int]]:
    """The results' files here, [mtime_ns, size] each: the same there is not sent again."""
    found: dict[str, list[int]] = {}
    for folder in config.sync.results:
        base = config.root / folder.strip("/")
        for where, _, names in os.walk(base):
            for name in names:
                path = Path(where) / name
                with contextlib.suppress(OSError):
                    info = path.lstat()
                    if stat.S_ISREG(info.st_mode):
                        rel = path.relative_to(config.root).as_posix()
                        found[rel] = [info.st_mtime_ns, info.st_size]
    return found


def _fetch(
    helper: HelperClient,
    config: Config,
    remote_dir: str,
    staging: Path,
    *,
    names: list[str] | None,
    skip: dict[str, list[int]],
    within: Sequence[str] | None,
    max_bytes: int,
) -> list[str]:
    """Files from the remote into `staging` (named ones, or the results folders whole) by rjn's
    own transfer; the names of those over [sync] max_file_size."""
    request = protocol.SendRequest(
        dir=remote_dir, names=names, skip=skip, max_bytes=max_bytes,
        folders=None if names is not None else list(config.sync.results),
        max_size=config.sync.max_file_size, follow_links=config.sync.follow_symlinks,
    )  # fmt: skip
    arrivals = _Arrivals(staging, within, config.sync.max_file_size, max_bytes)
    try:
        answer = helper.send_files(request, arrivals.take)
    finally:
        arrivals.close()
    if arrivals.failed:
        raise arrivals.failed
    # Said by the helper before it sends, or seen here (a remote that does not keep to it).
    over = arrivals.over_budget or answer.get("over_budget")
    if over:
        raise RemoteError(
            f"{helper.host}: the pull would bring {over:,} bytes, over [sync] "
            f"max_pull_size ({max_bytes:,}); nothing was placed",
            hint="raise [sync] max_pull_size in remote.toml if that much is expected, or "
            "remove what should not come home from the results folders",
        )
    return arrivals.over


class _Arrivals:
    """The files of rjn's own transfer, written into a staging folder as their messages come:
    every name and message checked as the untrusted input it is, nothing written through a
    link, each file checked against its hash (one that does not match is not kept). Called
    from the transfer's reader: it never raises there (`failed` says what went wrong)."""

    def __init__(
        self, staging: Path, within: Sequence[str] | None, max_size: int, max_total: int
    ) -> None:
        self.staging, self.within, self.max_size = staging, within, max_size
        self.max_total, self.total, self.over_budget = max_total, 0, 0
        self.over: list[str] = []
        self.failed: RjnError | None = None
        self._rel: str | None = None
        self._handle: Any = None
        self._digest: Any = None
        self._size = 0

    def take(self, message: dict[str, Any]) -> None:
        if self.failed or self.over_budget:
            return  # what still comes is read and dropped
        try:
            self._take(message)
        except RjnError as error:
            self.failed = error
        except (OSError, ValueError, TypeError, zlib.error) as error:
            self.failed = Refused(f"the remote sent a file rjn cannot write ({error})")

    def _take(self, message: dict[str, Any]) -> None:
        if "data" in message:
            rel = checked_name(message["data"], self.within)
            if rel != self._rel:
                self._open(rel)
            inflate = zlib.decompressobj()
            if not isinstance(message.get("blob"), bytes):
                raise Refused(f"{rel}: the remote sent a chunk without its bytes")
            block = inflate.decompress(message["blob"], CHUNK)
            if inflate.unconsumed_tail or not inflate.eof:
                raise Refused(f"{rel}: the remote sent a malformed chunk")
            self._size += len(block)
            self.total += len(block)
            if self._size > self.max_size:
                raise Refused(f"{rel}: the remote sent more than [sync] max_file_size")
            if self.total > self.max_total:
                self.over_budget = self.total
                return
            self._digest.update(block)
            self._handle.write(block)
        elif "file" in message:
            rel = checked_name(message["file"], self.within)
            if rel != self._rel:
                self._open(rel)  # an empty file: no data came
            mtime, digest = message.get("mtime_ns"), message.get("sha256")
            self._handle.close()
            path = self.staging / rel
            if type(mtime) is not int or digest != self._digest.hexdigest():
                path.unlink()  # damaged on the way: it does not arrive
            else:
                os.utime(path, ns=(mtime, mtime))
            self._rel = self._handle = None
        elif "link" in message:
            rel = checked_name(message["link"], self.within)
            target = message.get("target")
            if not isinstance(target, str) or "\0" in target:
                raise Refused(f"{rel}: the remote sent a malformed link")
            os.symlink(target, self._place_for(rel))  # placing judges where it points
        elif "over" in message:
            self.over.append(checked_name(message["over"], self.within))

    def _place_for(self, rel: str) -> Path:
        """Where `rel` goes in staging: its folders made there, none of them a link."""
        folder = self.staging
        for part in rel.split("/")[:-1]:
            folder = folder / part
            try:
                info = folder.lstat()
            except FileNotFoundError:
                folder.mkdir(mode=0o700)
                continue
            if not stat.S_ISDIR(info.st_mode):
                raise Refused(f"{rel}: the remote sent it beneath a link or a file")
        return folder / rel.rpartition("/")[2]

    def _open(self, rel: str) -> None:
        if self._handle is not None:
            raise Refused(f"{self._rel}: the remote did not finish it")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | portable.NOFOLLOW
        self._handle = os.fdopen(os.open(self._place_for(rel), flags, 0o600), "wb")
        self._rel, self._digest, self._size = rel, hashlib.sha256(), 0

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            (self.staging / (self._rel or "")).unlink(missing_ok=True)  # cut short: not kept
            self._handle = self._rel = None


def _send(
    helper: HelperClient,
    source: Path,
    remote_dir: str,
    staging: str,
    names: list[str],
    progress: Progress | None,
) -> None:
    """Project files into the remote's staging folder by rjn's own transfer: each as frames
    of compressed bytes, then its hash; one that vanished or could not be read gets a hash
    nothing matches, so it does not arrive (placing says so)."""
    entries = []
    for name in names:
        with contextlib.suppress(OSError):
            info = (source / name).lstat()
            if stat.S_ISREG(info.st_mode):
                entries.append((name, info))
    total = sum(info.st_size for _, info in entries) or 1

    def frames() -> Iterator[bytes]:
        done = 0
        for name, _ in entries:
            digest = hashlib.sha256()
            try:
                fd = os.open(source / name, os.O_RDONLY | portable.NOFOLLOW)
                with os.fdopen(fd, "rb") as handle:
                    while block := handle.read(CHUNK):
                        digest.update(block)
                        packed = zlib.compress(block, 1)
                        yield struct.pack(">I", len(packed)) + packed
                        done += len(block)
                        if progress:
                            progress(min(99, done * 100 // total))
                sealed = digest.digest()
            except OSError:
                sealed = bytes(32)
            yield struct.pack(">I", 0) + sealed

    files = [[name, info.st_mode, info.st_mtime_ns] for name, info in entries]
    helper.receive_files(protocol.ReceiveRequest(dir=remote_dir, staging=staging, files=files),
                         frames())  # fmt: skip


class OwnRoute:
    """Files over rjn's own transfer: the helper reads and writes, the bytes travel with its
    messages."""

    def __init__(self, helper: HelperClient, config: Config) -> None:
        self.helper, self.config = helper, config

    def fetch(
        self,
        remote_dir: str,
        staging: Path,
        names: list[str] | None,
        *,
        results: bool,
        max_bytes: int,
        progress: Progress | None,
    ) -> list[str]:
        """See route.Route.fetch."""
        here = _results_here(self.config) if results and names is None else {}
        within = self.config.sync.results if results else None
        return _fetch(self.helper, self.config, remote_dir, staging, names=names, skip=here,
                      within=within, max_bytes=max_bytes)  # fmt: skip

    def send(
        self,
        source: Path,
        remote_dir: str,
        names: list[str],
        progress: Progress | None,
        fresh: Callable[[], str],
    ) -> str:
        """See route.Route.send."""
        staging = fresh()
        _send(self.helper, source, remote_dir, staging, names, progress)
        return staging
