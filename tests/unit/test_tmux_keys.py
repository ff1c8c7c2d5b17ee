"""send-keys as pure rules: which items are keys, the plan of a request, the tmux commands."""

from __future__ import annotations

import functools

import pytest

from devbox_service.errors import PayloadTooLarge
from devbox_service.tmux.keys import (
    TEXT_CHUNK,
    Item,
    key_command,
    key_name,
    plan,
    target_name,
    text_commands,
)
from devbox_service.tmux.models import MAX_KEYS_BYTES, TmuxSendKeysRequest, TmuxTarget


@pytest.mark.parametrize(
    ("item", "key"),
    [
        ("ENTER", "Enter"),
        ("enter", "Enter"),
        ("Return", "Enter"),
        ("esc", "Escape"),
        ("Escape", "Escape"),
        ("tab", "Tab"),
        ("BSpace", "BSpace"),
        ("up", "Up"),
        ("PageDown", "PageDown"),
        ("f12", "F12"),
        ("C-c", "C-c"),
        ("C-m", "C-m"),
        ("M-x", "M-x"),
        ("S-Tab", "S-Tab"),
        ("C-M-Left", "C-M-Left"),
        ("C-M-%", "C-M-%"),
    ],
)
def test_key_names(item: str, key: str) -> None:
    assert key_name(item) == key


@pytest.mark.parametrize(
    "item",
    ["echo hi", "ls", "", " ", "Enter ", "F13", "C-", "C-cc", "C-Nope", "X-c", "c-c", "enterprise"],
)
def test_other_items_are_text(item: str) -> None:
    assert key_name(item) is None


request = functools.partial(TmuxSendKeysRequest, pane_id="%1")


def test_keys_are_one_text_then_enter_when_asked() -> None:
    keys = plan(request(keys="echo $HOME", enter=True))
    assert keys.items == [Item("text", "echo $HOME"), Item("key", "Enter")]
    assert keys.literal is False
    assert keys.describe() == '"echo $HOME" Enter'
    assert plan(request(keys="ENTER")).items == [Item("text", "ENTER")]  # never a key name
    assert plan(request(keys="", enter=True)).items == [Item("key", "Enter")]
    assert plan(request(keys="")).items == []
    assert plan(request(keys="x", literal=True)).literal is True


def test_a_sequence_mixes_keys_and_text_and_is_literal() -> None:
    keys = plan(request(sequence=["sleep 600", "ENTER", "C-c", 'echo ✓ "q"', "return", "Up"]))
    assert keys.items == [
        Item("text", "sleep 600"),
        Item("key", "Enter"),
        Item("key", "C-c"),
        Item("text", 'echo ✓ "q"'),
        Item("key", "Enter"),
        Item("key", "Up"),
    ]
    assert keys.literal is True
    assert keys.describe() == '"sleep 600" Enter C-c "echo ✓ \\"q\\"" Enter Up'


def test_the_size_limit_counts_utf8_bytes() -> None:
    at_limit = "x" * (MAX_KEYS_BYTES - 3) + "✓"  # ✓ is three bytes
    assert plan(request(keys=at_limit)).items == [Item("text", at_limit)]
    with pytest.raises(PayloadTooLarge, match=f"{MAX_KEYS_BYTES + 2} bytes"):
        plan(request(keys=at_limit + "é"))
    with pytest.raises(PayloadTooLarge):
        plan(request(sequence=["x" * (MAX_KEYS_BYTES // 2), "ENTER", "y" * (MAX_KEYS_BYTES // 2)]))


@pytest.mark.parametrize(
    ("target", "name"),
    [
        (TmuxTarget(session="main"), "main"),
        (TmuxTarget(session="main", window="2"), "main:2"),
        (TmuxTarget(session="main", window="2", pane="1"), "main:2.1"),
        (TmuxTarget(session="main", pane="1"), "main:.1"),
        (TmuxTarget(session="$3", window="editor"), "$3:editor"),
    ],
)
def test_target_names(target: TmuxTarget, name: str) -> None:
    assert target_name(target) == name


def test_text_commands_quote_and_chunk_literal_text() -> None:
    assert text_commands("%4", 'echo "$X"; ~', literal=True) == [
        'send-keys -l -t %4 -- "echo \\"\\$X\\"; \\~"'
    ]
    text = "a" * TEXT_CHUNK + "b" * 5
    assert text_commands("%4", text, literal=True) == [
        f'send-keys -l -t %4 -- "{"a" * TEXT_CHUNK}"',
        'send-keys -l -t %4 -- "bbbbb"',
    ]
    assert text_commands("%4", "", literal=True) == []


def test_non_literal_text_is_one_argument_tmux_may_read_as_a_key() -> None:
    text = "x" * (TEXT_CHUNK + 1)
    assert text_commands("%4", text, literal=False) == [f'send-keys -t %4 -- "{text}"']
    assert text_commands("%4", "C-c", literal=False) == ['send-keys -t %4 -- "C-c"']


def test_key_command() -> None:
    assert key_command("%4", "Enter") == 'send-keys -t %4 "Enter"'
    assert key_command("%12", "C-M-%") == 'send-keys -t %12 "C-M-%"'
