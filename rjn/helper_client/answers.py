"""The helper's messages, read as the untrusted input they are: JSON lines (a blob's raw
bytes after its line), logs and data handed on, long answers' parts joined, errors raised."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from rjn import proc
from rjn.errors import RemoteError
from rjn.shared import protocol

R = TypeVar("R", bound=protocol.Record)

# The largest message the helper sends, and the largest blob after one (a result file inline,
# watch.INLINE_MAX); below proc.MAX_LINE.
MESSAGE_MAX = 12 * 1024 * 1024
# The most a served answer may hold in all (a listing in many messages), and the most files a
# listing may name: what a project of a million files needs, and a bound on memory.
ANSWER_MAX = 1024**3
LISTED_MAX = 2_000_000


class Answer:
    """One call's messages, taken line by line as the untrusted input they are: logs and data
    handed on as they come, parts gathered, and the answer: its ok, or its error raised."""

    KINDS = ("ok", "error", "need", "old_python")

    def __init__(
        self,
        host: str,
        on_log: Callable[[str], Any] | None = None,
        on_data: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        self.host, self.on_log, self.on_data = host, on_log, on_data
        self.fields: dict[str, Any] = {}
        self.parts = Parts(host)
        self.line = messages(self._take)

    def _take(self, message: dict[str, Any]) -> None:
        if "log" in message and self.on_log:
            self.on_log(str(message["log"]))
        if "part" in message:
            self.parts.add(message)
        self.fields.update({k: v for k, v in message.items() if k in self.KINDS})
        if self.on_data and not message.keys() & {*self.KINDS, "log", "part"}:
            self.on_data(message)

    def failed(self) -> bool:
        """Whether an error came (the helper's, or a malformed line): nothing more is needed."""
        return "error" in self.fields

    def settled(self) -> dict[str, Any] | None:
        """The helper's answer, once it came: its ok, or its error raised."""
        if "error" in self.fields:
            raise helper_error(self.host, self.fields["error"])
        ok: dict[str, Any] | None = self.fields.get("ok")
        return self.parts.joined(ok) if ok is not None else None


class Parts:
    """A long answer's mappings, sent ahead in `part` messages ({"part": {...}, "of": where in
    the answer, as "tree.files"}; helper/say.in_parts): gathered as they come, checked as
    untrusted input, and joined into the answer where `of` says."""

    PLACES = ("tree.files", "placed", "kept", "moved")

    def __init__(self, host: str) -> None:
        self.host = host
        self.found: dict[str, dict[str, Any]] = {}
        self.count = 0

    def add(self, message: dict[str, Any]) -> None:
        part, where = message.get("part"), message.get("of")
        if not isinstance(part, dict) or where not in self.PLACES:
            raise RemoteError(f"{self.host}: rjn's remote helper sent a malformed part")
        self.found.setdefault(where, {}).update(part)
        self.count += len(part)
        if self.count > LISTED_MAX:
            raise RemoteError(
                f"{self.host}: the remote project lists more than {LISTED_MAX:,} files",
                hint="exclude what need not travel with [sync] exclude in remote.toml",
            )

    def joined(self, ok: Any) -> Any:
        """The answer with the parts in it (an answer without parts as it is)."""
        if not isinstance(ok, dict):
            return ok
        ok = dict(ok)
        for where, found in self.found.items():
            *path, key = where.split(".")
            holder = ok
            for step in path:
                holder[step] = dict(holder.get(step) or {})
                holder = holder[step]
            if not isinstance(holder.get(key, {}), dict):
                raise RemoteError(f"{self.host}: rjn's remote helper sent parts of nothing")
            holder[key] = {**found, **holder.get(key, {})}
        return ok


def messages(handler: Callable[[dict[str, Any]], Any]) -> Callable[[str], proc.Blob | None]:
    """Parse the helper's JSON lines as untrusted input. A line that is not JSON (a chatty login
    script) becomes a log; an oversized one, or JSON that is not an object, becomes an error.
    A message with "blob": N is followed by N raw bytes (a file's content), handed on with it
    as its "blob" (bytes, which no JSON line can forge)."""

    def line(text: str) -> proc.Blob | None:
        if len(text) > MESSAGE_MAX:
            handler(_bad(f"a line of {len(text)} bytes (more than {MESSAGE_MAX})"))
            return None
        try:
            message = json.loads(text)
        except ValueError:
            message = {"log": text}
        if not isinstance(message, dict):
            handler(_bad(f"{type(message).__name__} instead of an object"))
        elif "blob" not in message:
            handler(message)
        elif type(size := message["blob"]) is int and 0 <= size <= MESSAGE_MAX:
            return proc.Blob(size, lambda data: handler({**message, "blob": data}))
        else:
            handler(_bad(f"a blob of {str(size)[:20]} bytes (at most {MESSAGE_MAX})"))
        return None

    return line


def read(host: str, record: type[R], what: str, answer: object) -> R:
    """An answer of the helper as its record; a malformed one is a RemoteError naming the
    field (what a remote sends is untrusted)."""
    try:
        return record.parse(answer)
    except protocol.Malformed as bad:
        raise RemoteError(
            f"{host}: rjn's remote helper sent a malformed {what} ({bad.field})"
        ) from None


def helper_error(host: str, error: object) -> RemoteError:
    """The helper's {"error": {"message", "hint"}} as an error for the user, checked as the
    untrusted input it is."""
    try:
        failure = protocol.Failure.parse(error)
    except protocol.Malformed:
        return RemoteError(f"{host}: rjn's remote helper sent a malformed error: {error!r:.200}")
    return RemoteError(f"{host}: {failure.message}", hint=failure.hint)


def _bad(what: str) -> dict[str, Any]:
    return {"error": {"message": f"rjn's remote helper sent {what}", "hint": None}}
