"""encode_json writes what the standard library's compact encoder writes, for every value."""

from __future__ import annotations

import enum
import math
from typing import Any

import pytest

from handlers.json_api import JSON, encode_json


class Level(enum.IntEnum):
    HIGH = 3


VALUES: list[Any] = [
    {"status": "ok"},
    {"balance": 53762},
    {"user": {"email": "max@gmail.com", "name": "Max Miller"}},
    {"errorMessage": 'quote " backslash \\ slash / newline \n tab \t'},
    "".join(chr(i) for i in range(128)),  # every ASCII character, DEL and controls included
    {"name": "Zoë", "city": "東京"},  # non-ASCII: escaped as \\uXXXX
    {"emoji": "\U0001f600"},
    [1, -1, 0, 2**63 - 1, -(2**63), 2**64, -(2**70)],  # orjson stops at 64 bits
    {"f": 1.5, "g": 1e16, "h": 1e-7, "i": -0.0},  # float spellings differ between encoders
    {"n": None, "t": True, "f": False},
    (1, "two", [3]),
    {"level": Level.HIGH},  # an int subclass
    {"nested": [[[[{"deep": [1]}]]]]},
    [],
    {},
]


@pytest.mark.parametrize("value", VALUES)
def test_encode_json_matches_the_standard_encoder(value: Any):
    assert encode_json(value) == JSON.encode(value).encode("utf-8")


@pytest.mark.parametrize("value", [{"nan": math.nan}, {"inf": math.inf}, [math.nan]])
def test_non_finite_floats_as_the_standard_encoder_writes_them(value: Any):
    assert encode_json(value) == JSON.encode(value).encode("utf-8")


@pytest.mark.parametrize(
    "value",
    [{1: "int key"}, {"set": {1}}, {"bytes": b"x"}, {(1, 2): "tuple key"}, {"object": object()}],
)
def test_what_the_standard_encoder_refuses_or_converts_is_unchanged(value: Any):
    try:
        expected: bytes | type[Exception] = JSON.encode(value).encode("utf-8")
    except (TypeError, ValueError) as e:
        expected = type(e)
    if isinstance(expected, bytes):
        assert encode_json(value) == expected
    else:
        with pytest.raises(expected):
            encode_json(value)


def test_circular_and_deep_values_fail_as_before():
    circular: list[Any] = []
    circular.append(circular)
    with pytest.raises(ValueError, match="Circular reference"):
        encode_json(circular)
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(RecursionError):
        encode_json(deep)
