"""The house's record: a frozen dataclass, for rjn and its helper alike.

A dataclass makes its methods by compiling source for each class, six of them for a frozen
one, and that is most of what defining it costs (0.2-0.8 ms): rjn defines some forty records
as each command starts, the better part of its own start-up. A record's repr, == and hash are
instead the three functions below, shared by every record (what they do is what dataclasses
would generate: the fields' values, in order, those marked repr=False or compare=False left
out), so a record is made with half the compiling. Runs on the remote too (Python 3.8+).
"""

from __future__ import annotations

import dataclasses
import operator
import sys
from typing import Any, Callable, TypeVar

if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # the remote's older Python: only a type checker reads it

    def dataclass_transform(**_: Any) -> Callable[[Any], Any]:
        return lambda decorated: decorated


T = TypeVar("T", bound=type)


@dataclass_transform(frozen_default=True)
def record(cls: T) -> T:
    """`cls` as a frozen dataclass with the shared repr, == and hash."""
    dataclasses.dataclass(frozen=True, repr=False, eq=False)(cls)  # in place (no slots)
    fields = dataclasses.fields(cls)
    shown = tuple(spec.name for spec in fields if spec.repr)
    compared = [spec.name for spec in fields if spec.compare]
    hashed = [spec.name for spec in fields if (spec.compare if spec.hash is None else spec.hash)]
    cls._record_shown = shown  # type: ignore[attr-defined]
    cls._record_key = staticmethod(_key(compared))  # type: ignore[attr-defined]
    cls._record_hashed = staticmethod(_key(hashed))  # type: ignore[attr-defined]
    cls.__repr__ = _repr  # type: ignore[assignment]
    cls.__eq__ = _eq  # type: ignore[assignment]
    cls.__hash__ = _hash  # type: ignore[assignment]
    return cls


def _key(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """The named fields' values as a tuple (attrgetter gives a bare value for one name)."""
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return lambda instance: (one(instance),)
    return operator.attrgetter(*names) if names else lambda instance: ()


def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._record_shown)
    return f"{type(self).__qualname__}({shown})"


def _eq(self: Any, other: Any) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented
    key = self._record_key
    return bool(key(self) == key(other))


def _hash(self: Any) -> int:
    return hash(self._record_hashed(self))
