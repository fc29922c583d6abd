"""A frozen record type (faster to define than a frozen dataclass), for rjn and its helper.

A dataclass makes its methods by compiling source for each class, six of them for a frozen
one, and that is most of what defining it costs: rjn defines some forty records as each
command starts, once the better part of its own start-up (the bench measures it). A record
is compiled once, its `__init__` (the one method whose code depends on the fields); its
repr, ==, hash and the refusal to change a field are shared functions, doing what
dataclasses would generate: the fields' values in order, those marked repr=False or
compare=False left out. It is still a dataclass (`fields`, `asdict`, `replace` work), and
type checkers read it as a frozen one.
Runs on the remote too (Python 3.8+).
"""

from __future__ import annotations

import dataclasses
import operator
import sys
from collections.abc import Callable
from typing import Any, TypeVar

if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # the remote's older Python: only a type checker reads it

    def dataclass_transform(**_: Any) -> Callable[[Any], Any]:
        return lambda decorated: decorated


T = TypeVar("T", bound=type)


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def record(cls: T) -> T:
    """`cls` as a frozen dataclass, its methods shared but `__init__`."""
    dataclasses.dataclass(init=False, repr=False, eq=False)(cls)  # in place (no slots)
    fields = dataclasses.fields(cls)
    shown = tuple(spec.name for spec in fields if spec.repr)
    compared = [spec.name for spec in fields if spec.compare]
    hashed = [spec.name for spec in fields if (spec.compare if spec.hash is None else spec.hash)]
    cls.__init__ = _init(cls, fields)  # type: ignore[misc]
    cls._record_shown = shown  # type: ignore[attr-defined]
    cls._record_key = staticmethod(_key(compared))  # type: ignore[attr-defined]
    cls._record_hashed = staticmethod(_key(hashed))  # type: ignore[attr-defined]
    cls.__repr__ = _repr  # type: ignore[assignment]
    cls.__eq__ = _eq  # type: ignore[assignment]
    cls.__hash__ = _hash  # type: ignore[assignment]
    cls.__setattr__ = _refuse_set  # type: ignore[assignment]
    cls.__delattr__ = _refuse_delete  # type: ignore[assignment]
    return cls


def _init(cls: type, fields: tuple[dataclasses.Field[Any], ...]) -> Callable[..., None]:
    """The `__init__` dataclasses would make for a frozen class: each field set past the
    refusal, a default_factory called for each instance that was given no value."""
    names: dict[str, Any] = {"_set": object.__setattr__, "_MISSING": dataclasses.MISSING}
    params, body = [], []
    for spec in fields:
        if not spec.init:
            raise TypeError(f"{cls.__name__}.{spec.name}: a record's fields are all given")
        if spec.default is not dataclasses.MISSING:
            names[f"_default_{spec.name}"] = spec.default
            params.append(f"{spec.name}=_default_{spec.name}")
        elif spec.default_factory is not dataclasses.MISSING:
            names[f"_factory_{spec.name}"] = spec.default_factory
            params.append(f"{spec.name}=_MISSING")
            body.append(f"    if {spec.name} is _MISSING: {spec.name} = _factory_{spec.name}()")
        else:
            params.append(spec.name)
        body.append(f"    _set(self, {spec.name!r}, {spec.name})")
    lines = ["def __init__(self, {}):".format(", ".join(params))] + (body or ["    pass"])
    exec("\n".join(lines), names)
    init = names["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


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


def _refuse_set(self: Any, name: str, value: Any) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _refuse_delete(self: Any, name: str) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
