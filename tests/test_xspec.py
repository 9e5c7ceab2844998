"""XSpec parsing."""

from __future__ import annotations

import pytest

from execpool import XSpec


def test_keys_values_and_flags() -> None:
    spec = XSpec("popen//python=python3.9//chdir=work dir//nice=5//id=w1//dont_write_bytecode")
    assert spec.popen is True
    assert spec.python == "python3.9"
    assert spec.chdir == "work dir"
    assert spec.nice == "5"
    assert spec.id == "w1"
    assert spec.dont_write_bytecode is True
    assert spec.ssh is None and spec.via is None
    assert spec.transport == "popen"
    assert spec.keys() == ["popen", "python", "chdir", "nice", "id", "dont_write_bytecode"]


def test_env_entries() -> None:
    spec = XSpec("popen//env:A=1//env:B=x=y//env:EMPTY=")
    assert spec.env == {"A": "1", "B": "x=y", "EMPTY": ""}


def test_unknown_keys_are_kept_and_reported() -> None:
    spec = XSpec("popen//mykey=abc//flag")
    assert spec.mykey == "abc"
    assert spec.flag is True
    assert spec.unknown_keys() == ["mykey", "flag"]
    assert spec.notgiven is None


def test_values_keep_everything_after_the_first_equals_sign() -> None:
    assert XSpec("popen//python=env A=1 python3").python == "env A=1 python3"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty xspec"),
        ("popen//python=a//python=b", "twice"),
        ("popen//", "empty part"),
        ("popen////id=x", "empty part"),
        ("popen//env:=1", "env:NAME=value"),
        ("popen//env:A", "env:NAME=value"),
        ("popen//env:A=1//env:A=2", "env:A twice"),
        ("popen//nice=high", "integer"),
        ("popen//bad key=1", "not a valid key"),
        ("popen//env=1", "reserved"),
    ],
)
def test_malformed_specs_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        XSpec(text)


def test_non_string_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="string"):
        XSpec(42)  # type: ignore[arg-type]


def test_equality_and_hash_follow_the_string() -> None:
    a, b = XSpec("popen//id=1"), XSpec("popen//id=1")
    assert a == b and hash(a) == hash(b)
    assert a == "popen//id=1"
    assert a != XSpec("popen//id=2")
    assert {a: 1}[b] == 1
    assert str(a) == "popen//id=1"
    assert repr(a) == "<XSpec 'popen//id=1'>"


def test_private_attributes_are_not_invented() -> None:
    with pytest.raises(AttributeError):
        XSpec("popen")._private  # noqa: B018
