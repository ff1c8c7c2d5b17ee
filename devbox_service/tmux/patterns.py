"""A caller's tmux wait pattern: bounded before any work, compiled and matched off the loop.

The `regex` module spells counted repeats out when it compiles (`(?:a{1000}){1000}` becomes a
million-character literal: 280 MB and a third of a second of CPU), so a short pattern can cost
the service gigabytes. `check_bounds` refuses such patterns from their text alone, in one pass
over at most `MAX_CHARS` characters: a count above `MAX_REPEAT`, groups nested deeper than
`MAX_NESTING`, or a pattern whose repeats spelled out would be over `MAX_EXPANSION` atoms.
Under these bounds a compile measured at most a few MB and milliseconds; it still runs in a
worker thread under `COMPILE_TIMEOUT`, and matching under `MATCH_TIMEOUT`.
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict

import regex

from devbox_service.errors import InvalidSpec

MAX_CHARS = 1000
MAX_REPEAT = 1000
MAX_NESTING = 20
MAX_EXPANSION = 10_000
"""Atoms (a character, a class, an escape) in the pattern with every repeat spelled out."""
COMPILE_TIMEOUT = 1.0
MATCH_TIMEOUT = 0.05
"""Seconds of CPU one match of a caller's pattern against a screen may take."""
CACHE_SIZE = 128
LOC: list[str | int] = ["body", "pattern"]

_QUANTIFIER = re.compile(r"\{\s*(\d*)\s*(?:(,)\s*(\d*)\s*)?\}")
_BRACED_ESCAPES = frozenset(f"{letter}{{" for letter in "pPNxuU")  # \p{L}, \N{BULLET}
_INLINE_FLAGS = re.compile(r"\(\?[a-zA-Z-]*[:)]")
_POSIX_CLASS = re.compile(r"\[:\^?[A-Za-z_]+:\]")


class PatternTooCostly(ValueError):
    """A wait pattern over one of the bounds; the message names the bound and how to fix."""


def _class_end(text: str, start: int) -> int:
    """The index after the `]` closing the class opened at `start`; refuses a bare `[`
    inside (nested sets read differently in the module's two versions)."""
    i = start + 1
    if i < len(text) and text[i] == "^":
        i += 1
    if i < len(text) and text[i] == "]":
        i += 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
        elif char == "]":
            return i + 1
        elif char == "[":
            posix = _POSIX_CLASS.match(text, i)
            if posix is None:
                raise PatternTooCostly(
                    "`pattern`: write a literal [ inside a character class as \\["
                )
            i = posix.end()
        else:
            i += 1
    return i  # unclosed: compiling reports it


def _check_counts(braces: str) -> None:
    """Every number in braces after an atom (a repeat, a fuzzy constraint) is bounded."""
    for number in re.findall(r"\d+", braces):
        if int(number) > MAX_REPEAT:
            raise PatternTooCostly(
                f"`pattern` repeats {number} times; the limit is {MAX_REPEAT} "
                "(use + or * for long runs)"
            )


def check_bounds(text: str) -> None:
    """Raise PatternTooCostly when compiling `text` could cost more than the bounds allow."""
    if len(text) > MAX_CHARS:
        raise PatternTooCostly(f"`pattern` is over {MAX_CHARS} characters (the limit)")
    for flags in _INLINE_FLAGS.finditer(text):
        if "x" in flags.group(0)[2:]:
            raise PatternTooCostly("`pattern` may not use verbose mode (?x)")
    if "(?#" in text:
        raise PatternTooCostly("`pattern` may not contain comments (?#...)")
    # Each frame: [size of its finished items, size of the last item (what a quantifier
    # repeats)]. Alternatives add up, which over-counts: the bound is safe, not exact.
    frames: list[list[int]] = [[0, 0]]
    i = 0
    while i < len(text):
        char = text[i]
        if char == "(":
            frames.append([0, 0])
            if len(frames) - 1 > MAX_NESTING:
                raise PatternTooCostly(
                    f"`pattern` nests groups over {MAX_NESTING} deep (the limit)"
                )
            i += 1
            continue
        if char == ")" and len(frames) > 1:
            done, last = frames.pop()
            frames[-1][0] += frames[-1][1]
            frames[-1][1] = done + last
            i += 1
            continue
        if char == "{":
            _check_counts(text[i : text.find("}", i) + 1 or len(text)])
        quantifier = _QUANTIFIER.match(text, i) if char == "{" else None
        if quantifier is not None and (quantifier.group(1) or quantifier.group(3)):
            low, high = quantifier.group(1), quantifier.group(3)
            count = max(int(low or 0), int(high or 0), 1)
            frames[-1][1] *= count
            i = quantifier.end()
        elif char in "*+?":
            i += 1
        else:
            frames[-1][0] += frames[-1][1]
            frames[-1][1] = 1
            if char == "[":
                i = _class_end(text, i)
            elif char == "\\" and text[i + 1 : i + 3] in _BRACED_ESCAPES:
                i = text.find("}", i) + 1 or len(text)
            else:
                i += 2 if char == "\\" else 1
        if sum(done + last for done, last in frames) > MAX_EXPANSION:
            raise PatternTooCostly(
                f"`pattern` spelled out is over {MAX_EXPANSION} characters (the limit): "
                "nest fewer counted repeats (x{n} inside (...){m})"
            )


_compiled: OrderedDict[str, regex.Pattern[str]] = OrderedDict()


def _compile(text: str) -> regex.Pattern[str]:
    return regex.compile(text, regex.MULTILINE)


async def compile_pattern(text: str) -> regex.Pattern[str]:
    """The compiled pattern (recently used ones are kept); compiled in a worker thread, so
    the event loop keeps serving others. InvalidSpec (422) when it is not a valid or cheap
    pattern."""
    if (known := _compiled.get(text)) is not None:
        _compiled.move_to_end(text)
        return known
    try:
        check_bounds(text)
        async with asyncio.timeout(COMPILE_TIMEOUT):
            pattern = await asyncio.to_thread(_compile, text)
    except PatternTooCostly as exc:
        raise InvalidSpec(str(exc), loc=LOC) from None
    except regex.error as exc:
        raise InvalidSpec(f"`pattern` is not a valid regular expression: {exc}", loc=LOC) from None
    except TimeoutError:
        raise InvalidSpec(
            f"`pattern` took over {COMPILE_TIMEOUT:.0f} s to compile: simplify it", loc=LOC
        ) from None
    _compiled[text] = pattern
    if len(_compiled) > CACHE_SIZE:
        _compiled.popitem(last=False)
    return pattern


async def search(pattern: regex.Pattern[str], content: str) -> regex.Match[str] | None:
    """A caller's pattern runs in a worker thread with a time bound, so a pattern that
    backtracks without end (`(a|aa)+$`) stalls no one; it is refused with 422."""
    try:
        return await asyncio.to_thread(
            pattern.search, content, timeout=MATCH_TIMEOUT, concurrent=True
        )
    except TimeoutError:
        raise InvalidSpec(
            f"`pattern` took over {MATCH_TIMEOUT * 1000:.0f} ms to match the screen: simplify "
            "it (nested repetition such as (a|aa)+ is the usual cause)",
            loc=LOC,
        ) from None
