"""What `send-keys` types, as tmux commands: key names, text, and the request read as a plan.

Pure functions: no I/O, so the rules are tested without a guest (`tests/unit/test_tmux_keys.py`).
"""

from __future__ import annotations

import json
import re
from typing import Literal, NamedTuple

from devbox_service.errors import PayloadTooLarge
from devbox_service.tmux.control import quote
from devbox_service.tmux.models import MAX_KEYS_BYTES, TmuxSendKeysRequest, TmuxTarget

TEXT_CHUNK = 2000
"""Characters of literal text per `send-keys -l` command."""

KEY_NAMES = {
    name.lower(): name
    for name in (
        "Enter Escape Tab BTab BSpace Space Up Down Left Right Home End IC DC NPage PPage "
        "PageUp PageDown PgUp PgDn Insert Delete KPEnter " + " ".join(f"F{n}" for n in range(1, 13))
    ).split()
}
KEY_NAMES["esc"] = "Escape"
KEY_NAMES["return"] = "Enter"
ENTER_KEYS = frozenset({"Enter", "KPEnter", "C-m"})
MODIFIED_KEY = re.compile(r"^(?:[CMS]-)+(\S|[A-Za-z][A-Za-z0-9]*)$")


def key_name(item: str) -> str | None:
    """The tmux key an item of `sequence` names (`ENTER`, `C-c`, `Up`...), or None for text."""
    named = KEY_NAMES.get(item.lower())
    if named is not None:
        return named
    match = MODIFIED_KEY.match(item)
    if match and (len(match.group(1)) == 1 or match.group(1).lower() in KEY_NAMES):
        return item
    return None


class Item(NamedTuple):
    kind: Literal["text", "key"]
    value: str


class KeysPlan(NamedTuple):
    items: list[Item]
    literal: bool
    """Text goes as `send-keys -l` (never read as key names)."""

    def describe(self) -> str:
        """What was sent, for the response: text as JSON strings, keys by name."""
        return " ".join(
            json.dumps(value, ensure_ascii=False) if kind == "text" else value
            for kind, value in self.items
        )


def plan(request: TmuxSendKeysRequest) -> KeysPlan:
    """The request as items to send in order: `keys` is one text (then Enter when `enter`);
    each `sequence` item is a key when it names one, text otherwise. Over `MAX_KEYS_BYTES`
    of input is PayloadTooLarge."""
    if request.keys is not None:
        size = len(request.keys.encode())
        items = [Item("text", request.keys)] if request.keys else []
        if request.enter:
            items.append(Item("key", "Enter"))
    else:
        sequence = request.sequence or []
        size = sum(len(item.encode()) for item in sequence)
        items = []
        for item in sequence:
            key = key_name(item)
            items.append(Item("key", key) if key else Item("text", item))
    if size > MAX_KEYS_BYTES:
        raise PayloadTooLarge(f"keys are {size} bytes; the limit is {MAX_KEYS_BYTES}")
    return KeysPlan(items, literal=bool(request.literal) or request.sequence is not None)


def target_name(target: TmuxTarget) -> str:
    """`session[:window[.pane]]` as tmux reads a target (`session:.2` for a pane alone)."""
    name = target.session or ""
    if target.window is not None or target.pane is not None:
        name += ":" + (target.window or "")
    if target.pane is not None:
        name += "." + target.pane
    return name


def text_commands(pane: str, text: str, *, literal: bool) -> list[str]:
    """Commands typing `text` into `pane`: literal text in chunks; otherwise one argument,
    which tmux sends as a key when it names one (a key name must stay whole)."""
    if not literal:
        return [f"send-keys -t {pane} -- {quote(text)}"]
    chunks = [text[i : i + TEXT_CHUNK] for i in range(0, len(text), TEXT_CHUNK)]
    return [f"send-keys -l -t {pane} -- {quote(chunk)}" for chunk in chunks]


def key_command(pane: str, key: str) -> str:
    return f"send-keys -t {pane} {quote(key)}"
