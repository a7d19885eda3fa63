"""cachewire.common.wirejson: orjson's speed where its answers equal the standard library's."""

from __future__ import annotations

import asyncio
import json

import pytest

from cachewire.common import loop, wirejson


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,"b":[true,null,"é"],"c":{"d":-0.5}}',
        '{"big":123456789012345678901234567890,"s":"ts=1733312345123456789"}',
        "[-9223372036854775809, 18446744073709551616, 1e308]",
        '"\\ud800"',
    ],
)
def test_loads_answers_what_the_standard_library_answers(text: str) -> None:
    assert wirejson.loads(text.encode()) == json.loads(text)
    assert wirejson.loads(text) == json.loads(text)


def test_numbers_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="the number 1e400 is out of range"):
        wirejson.loads('{"data": 1e400}')


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", "{", "", "[1,]"])
def test_loads_refuses_what_the_hub_refuses_with_the_same_error(text: str) -> None:
    with pytest.raises(ValueError) as fast:
        wirejson.loads(text)
    with pytest.raises(ValueError) as std:
        wirejson._std_loads(text)
    assert str(fast.value) == str(std.value)


def test_dumps_is_compact_and_keeps_big_integers_and_non_ascii() -> None:
    value = {"n": 2**70, "s": "é\u2028", "l": [1, 2]}
    assert wirejson.dumps(value) == '{"n":1180591620717411303424,"s":"é\u2028","l":[1,2]}'
    assert wirejson.dumpb(value) == wirejson.dumps(value).encode()
    assert wirejson.dumps("\ud800") == '"\ud800"'  # a lone surrogate: validation names it


def test_the_event_loop_is_uvloop_by_default_and_asyncio_on_request() -> None:
    async def kind() -> str:
        return loop.running_kind()

    assert loop.run(kind()) == "uvloop"
    assert loop.run(kind(), "asyncio") == "asyncio"
    assert loop.loop_factory("asyncio") is None
    asyncio.set_event_loop(None)
