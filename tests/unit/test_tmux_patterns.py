"""A caller's wait pattern runs with a time bound, off the event loop."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from devbox_service.errors import InvalidSpec
from devbox_service.tmux.models import TmuxWaitRequest
from devbox_service.tmux.pane import compile_pattern, search


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
            await search(compile_pattern(r"(a|aa)+$"), "a" * 5000 + "b")
    finally:
        beat.cancel()
    assert refused.value.loc == ["body", "pattern"] and "ms" in refused.value.message
    assert ticks >= 3, "the event loop kept running while the pattern was matched"


async def test_ordinary_patterns_match_across_lines() -> None:
    found = await search(compile_pattern(r"^\$ done (\d+)$"), "build\n$ done 42\n")
    assert found is not None and found.group(1) == "42"
    assert await search(compile_pattern("nothing"), "screen") is None


def test_an_invalid_pattern_is_a_validation_error() -> None:
    with pytest.raises(msgspec.ValidationError, match="not a valid regular expression"):
        msgspec.convert({"pattern": "(unclosed", "timeout_ms": 10}, TmuxWaitRequest)
    accepted = msgspec.convert({"pattern": "(a|aa)+$", "timeout_ms": 10}, TmuxWaitRequest)
    assert accepted.pattern == "(a|aa)+$", "compiling is cheap; matching is what is bounded"
