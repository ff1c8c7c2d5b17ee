"""A caller's wait pattern is bounded before any work, and compiled and matched off the loop."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from devbox_service.errors import InvalidSpec
from devbox_service.tmux.models import TmuxWaitRequest
from devbox_service.tmux.patterns import compile_pattern, search


async def test_a_pattern_that_backtracks_forever_is_refused_and_stalls_nobody() -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    beat = asyncio.create_task(ticker())
    try:
        with pytest.raises(InvalidSpec) as refused:
            await search(await compile_pattern(r"(a|aa)+$"), "a" * 5000 + "b")
    finally:
        beat.cancel()
    assert refused.value.loc == ["body", "pattern"] and "ms" in refused.value.message
    assert ticks >= 3, "the event loop kept running while the pattern was matched"


async def test_ordinary_patterns_match_across_lines() -> None:
    found = await search(await compile_pattern(r"^\$ done (\d+)$"), "build\n$ done 42\n")
    assert found is not None and found.group(1) == "42"
    assert await search(await compile_pattern("nothing"), "screen") is None
    assert await compile_pattern("nothing") is await compile_pattern("nothing"), "kept"


async def test_an_invalid_pattern_is_refused_with_422_where_it_is() -> None:
    with pytest.raises(InvalidSpec, match="not a valid regular expression") as refused:
        await compile_pattern("(unclosed")
    assert refused.value.loc == ["body", "pattern"]
    accepted = msgspec.convert({"pattern": "(a|aa)+$", "timeout_ms": 10}, TmuxWaitRequest)
    assert accepted.pattern == "(a|aa)+$", "compiling is cheap; matching is what is bounded"


@pytest.mark.parametrize(
    ("pattern", "limit"),
    [
        ("(?:a{3000000})", "the limit is 1000"),  # one huge count
        ("(?:a{1000}){300}", "spelled out is over 10000"),  # small counts, nested
        ("(?:(?:a{99}){99}){99}", "spelled out is over 10000"),  # 22 bytes, ~1 GB before
        ("[[a](?:a{1000}){300}]", r"literal \["),  # a class read two ways
        ("(?x)(?:a{1000}#)\n){300}", "verbose mode"),  # comments hide parentheses
        ("(" * 21 + "a" + ")" * 21, "nests groups over 20"),
        ("a" * 1001, "length <= 1000"),
    ],
)
def test_a_costly_pattern_is_refused_from_its_text_naming_the_limit(
    pattern: str, limit: str
) -> None:
    """The attacker's patterns: each is refused before anything compiles it (the old check
    compiled them on the event loop, up to a gigabyte and seconds for a 22-byte pattern)."""
    with pytest.raises(msgspec.ValidationError, match=limit):
        msgspec.convert({"pattern": pattern}, TmuxWaitRequest)


@pytest.mark.parametrize(
    "pattern",
    [
        r"^\$ $",
        r"(?i)error|failed",
        r"\p{L}{3}\N{BULLET}",
        r"[[:alpha:]]+",
        r".{0,1000}",
        r"(\d{3}-){2}\d{4}",
    ],
)
def test_ordinary_patterns_are_within_the_bounds(pattern: str) -> None:
    assert msgspec.convert({"pattern": pattern}, TmuxWaitRequest).pattern == pattern
