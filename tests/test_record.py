"""A record behaves as the frozen dataclass it stands for (rjn/shared/record.py)."""

import dataclasses

import pytest

from rjn.shared.record import record


def twins(**options: bool) -> tuple[type, type]:
    """The same class as a record and as a frozen dataclass."""

    def body() -> dict:
        return {
            "__annotations__": {"name": str, "size": int, "note": str, "tags": tuple},
            "size": 0,
            "note": dataclasses.field(default="", **options),
            "tags": (),
        }

    made = record(type("Made", (), body()))
    generated = dataclasses.dataclass(frozen=True)(type("Made", (), body()))
    return made, generated


OPTIONS = [{}, {"repr": False}, {"compare": False}, {"hash": False},
           {"compare": False, "hash": True}]  # fmt: skip


@pytest.mark.parametrize("options", OPTIONS)
def test_a_record_shows_compares_and_hashes_as_a_frozen_dataclass(options: dict) -> None:
    made, generated = twins(**options)
    pairs = [(("a", 1, "x", ("t",)), ("a", 1, "x", ("t",))), (("a", 1, "x"), ("a", 1, "y")),
             (("a", 1), ("a", 2)), (("a",), ("b",))]  # fmt: skip
    for left, right in pairs:
        assert repr(made(*left)) == repr(generated(*left))
        assert (made(*left) == made(*right)) == (generated(*left) == generated(*right))
        assert (made(*left) != made(*right)) == (generated(*left) != generated(*right))
        hashed_alike = hash(made(*left)) == hash(made(*right))
        assert hashed_alike == (hash(generated(*left)) == hash(generated(*right)))
    assert made("a") != generated("a")  # another class: not equal, as dataclasses say
    assert made("a") != ("a", 0, "", ())


def test_a_record_is_frozen_and_still_a_dataclass() -> None:
    made, _ = twins()
    one = made("a", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        one.size = 2  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del one.name  # type: ignore[attr-defined]
    assert dataclasses.replace(one, size=3) == made("a", 3)
    assert dataclasses.asdict(one) == {"name": "a", "size": 1, "note": "", "tags": ()}
    assert {one, made("a", 1), made("b")} == {one, made("b")}
    assert made.__match_args__ == ("name", "size", "note", "tags")


def test_a_record_of_one_field_or_none() -> None:
    one = record(type("One", (), {"__annotations__": {"x": int}}))
    none = record(type("Empty", (), {}))
    assert one(1) == one(1) and one(1) != one(2) and hash(one(1)) == hash(one(1))
    assert repr(one(1)) == "One(x=1)"
    assert none() == none() and repr(none()) == "Empty()" and hash(none()) == hash(none())


def test_a_record_is_made_as_a_frozen_dataclass_is() -> None:
    made, generated = twins()
    given = [(("a",), {}), (("a", 2), {"tags": ("t",)}), ((), {"name": "b", "note": "n"})]
    for args, kwargs in given:
        made_one, generated_one = made(*args, **kwargs), generated(*args, **kwargs)
        assert dataclasses.astuple(made_one) == dataclasses.astuple(generated_one)
    for args, kwargs in [((), {}), (("a", 1, "", (), "extra"), {}), (("a",), {"name": "b"}),
                         (("a",), {"colour": "red"})]:  # fmt: skip
        with pytest.raises(TypeError):
            generated(*args, **kwargs)
        with pytest.raises(TypeError):
            made(*args, **kwargs)


def test_each_record_gets_its_own_default_from_a_factory() -> None:
    body = {"__annotations__": {"seen": dict}, "seen": dataclasses.field(default_factory=dict)}
    made = record(type("Made", (), body))
    one, two = made(), made()
    one.seen["x"] = 1
    assert two.seen == {} and made({"y": 2}).seen == {"y": 2}
