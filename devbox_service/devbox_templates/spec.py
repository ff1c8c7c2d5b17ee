"""Template specs: YAML in, msgspec Structs out, with errors that name the step and field.

A spec is a mapping with `name`, `description` and a non-empty `steps` list; each step is one
of four types, a tagged union on `type` (default `command`), so the rules are declared on the
Structs rather than written by hand. YAML anchors and aliases are refused outright: they are
how a small document expands into a huge one ("billion laughs"), and templates do not need them.
Nesting is bounded too (`MAX_DEPTH`): composing is recursive, so a deeply nested document is
refused as the composer reaches the limit, before any deeper work.

A spec is parsed once, when it is written; the parsed Structs are stored beside the YAML as
msgspec JSON (`encode_spec`) and read back with `decode_spec` (no YAML parsing on reads).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Annotated, Any, Literal

import msgspec
import yaml
from msgspec import Meta

from devbox_service.errors import InvalidSpec, PayloadTooLarge

MAX_SPEC_BYTES = 256 * 1024
YAML_LOC: list[str | int] = ["body", "yaml"]
MAX_STEPS = 200
MAX_DEPTH = 32  # nested collections; a spec needs 4 (template > steps > step > value)

EnvName = Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
ServiceName = Annotated[str, Meta(pattern=r"^[a-z0-9]([a-z0-9-_]*[a-z0-9])?$", max_length=40)]
SessionName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
Command = Annotated[str, Meta(min_length=1, max_length=65536)]
Title = Annotated[str, Meta(max_length=200)]


class _Step(
    msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type"
):
    title: Title | None = None


class CommandStep(_Step, frozen=True, kw_only=True, tag="command"):
    """A shell command run as root in the build devbox."""

    run: Command


class ExportSecretStep(_Step, frozen=True, kw_only=True, tag="exportSecret"):
    """A secret made available to later steps (and the devboxes) as an environment variable;
    `run`, if given, runs with it set."""

    name: EnvName
    run: Command | None = None
    optional: bool = False
    redact: bool = True


class ExposeHttpServiceStep(_Step, frozen=True, kw_only=True, tag="exposeHttpService"):
    name: ServiceName
    port: Annotated[int, Meta(ge=1, le=65535)]
    auth_mode: Literal["none", "api_key"] | None = None


class TmuxSessionStep(_Step, frozen=True, kw_only=True, tag="tmuxSession"):
    """A long-lived tmux session; it keeps running in every devbox started from the template."""

    name: SessionName
    run: Command


Step = CommandStep | ExportSecretStep | ExposeHttpServiceStep | TmuxSessionStep
STEP_TYPES = ("command", "exportSecret", "exposeHttpService", "tmuxSession")


class TemplateSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    description: Annotated[str, Meta(max_length=10000)] = ""
    steps: Annotated[list[Step], Meta(min_length=1, max_length=MAX_STEPS)]


def step_title(step: Step) -> str:
    if step.title:
        return step.title
    if isinstance(step, CommandStep | TmuxSessionStep):
        first = step.run.strip().splitlines()[0] if step.run.strip() else ""
        return first[:80]
    return f"{type(step).__struct_config__.tag} {step.name}"


def step_type(step: Step) -> str:
    return str(type(step).__struct_config__.tag)


def step_definition(step: Step) -> bytes:
    """A canonical encoding of one step, the input of its fingerprint."""
    return msgspec.json.encode(msgspec.to_builtins(step), order="sorted")


def content_hash(spec: TemplateSpec) -> str:
    """Identifies identical templates (what they build, not their name)."""
    digest = hashlib.sha256()
    for step in spec.steps:
        digest.update(step_definition(step) + b"\n")
    return digest.hexdigest()


def fingerprint(previous: str, step: Step) -> str:
    """A step's cache key: the chain of everything before it, and its own definition."""
    return hashlib.sha256(previous.encode() + b"\0" + step_definition(step)).hexdigest()


def base_fingerprint(base_snapshot_id: str) -> str:
    return hashlib.sha256(b"base\0" + base_snapshot_id.encode()).hexdigest()


class _NoAliasLoader(yaml.SafeLoader):
    """A safe loader that refuses anchors and aliases (bounded expansion by construction) and
    nesting deeper than `MAX_DEPTH` (bounded recursion: the composer recurses per level, and
    Python's own limit would end it as a 500)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        mark = event.start_mark
        line = f" (line {mark.line + 1})" if mark is not None else ""
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise InvalidSpec(
                f"YAML anchors and aliases are not supported{line}: write the value out",
                loc=YAML_LOC,
            )
        if self._depth >= MAX_DEPTH:
            raise InvalidSpec(
                f"the YAML nests deeper than the limit of {MAX_DEPTH} levels (nesting depth)"
                f"{line}: a template needs 4",
                loc=YAML_LOC,
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_PATH_INDEX = re.compile(r"^\$\.steps\[(\d+)\](?:\.(\w+))?")
_NAMED_FIELD = re.compile(r"field `(\w+)`")


def parse(text: str) -> TemplateSpec:
    """Parse and validate a template's YAML. Raises PayloadTooLarge (over 256 KiB) and
    InvalidSpec (422) naming the step index, the field and, where known, the line."""
    if len(text.encode()) > MAX_SPEC_BYTES:
        raise PayloadTooLarge(f"the template is over {MAX_SPEC_BYTES // 1024} KiB")
    loader: _NoAliasLoader | None = None
    try:
        loader = _NoAliasLoader(text)  # the reader refuses control characters at once
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise InvalidSpec(f"the YAML does not parse{where}: {exc.problem}", loc=YAML_LOC) from exc
    except yaml.YAMLError as exc:
        raise InvalidSpec(f"the YAML does not parse: {exc}", loc=YAML_LOC) from exc
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(data, dict):
        raise InvalidSpec("the template must be a YAML mapping with name and steps", loc=YAML_LOC)
    lines = _step_lines(node)
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise InvalidSpec("the template needs a non-empty 'steps' list", loc=[*YAML_LOC, "steps"])
    data = {**data, "steps": [_normalise(i, s, lines) for i, s in enumerate(steps)]}
    try:
        return msgspec.convert(data, TemplateSpec)
    except msgspec.ValidationError as exc:
        raise _located(str(exc), lines) from exc


_SPEC_DECODER = msgspec.json.Decoder(TemplateSpec)


def encode_spec(spec: TemplateSpec) -> str:
    """The parsed spec as stored beside its YAML (msgspec JSON of the Structs)."""
    return msgspec.json.encode(spec).decode()


def decode_spec(stored: str) -> TemplateSpec:
    """A stored spec back as Structs: JSON decoding, no YAML parsing (milliseconds for the
    largest spec, where parsing its YAML takes seconds of CPU)."""
    return _SPEC_DECODER.decode(stored)


async def parse_off_loop(text: str) -> TemplateSpec:
    """`parse` on a worker thread: YAML parsing is CPU work, and one large spec would stall
    the other requests."""
    return await asyncio.to_thread(parse, text)


def _normalise(index: int, step: object, lines: dict[int, int]) -> dict[str, Any]:
    """The spec's conveniences: `type` defaults to `command`, `command:` means `run:`."""
    if not isinstance(step, dict):
        raise InvalidSpec(
            f"step {index}{_line(index, lines)} must be a mapping", loc=[*YAML_LOC, "steps", index]
        )
    step = dict(step)
    step.setdefault("type", "command")
    if step["type"] not in STEP_TYPES:
        raise InvalidSpec(
            f"step {index}{_line(index, lines)}: unknown type {step['type']!r}; "
            f"use one of {', '.join(STEP_TYPES)}",
            loc=[*YAML_LOC, "steps", index, "type"],
        )
    if step["type"] == "command" and "command" in step and "run" not in step:
        step["run"] = step.pop("command")
    return step


def _located(message: str, lines: dict[int, int]) -> InvalidSpec:
    path = message.rsplit(" - at `", 1)
    detail = path[0]
    where = path[1].rstrip("`") if len(path) == 2 else "$"
    match = _PATH_INDEX.match(where)
    if match is None:
        field = where.removeprefix("$.") or "template"
        return InvalidSpec(f"{field}: {detail}", loc=[*YAML_LOC, *field.split(".")])
    index = int(match.group(1))
    named = _NAMED_FIELD.search(detail)
    field = match.group(2) or (named.group(1) if named else "step")
    return InvalidSpec(
        f"step {index}{_line(index, lines)}, field {field!r}: {detail}",
        loc=[*YAML_LOC, "steps", index, field],
    )


def _line(index: int, lines: dict[int, int]) -> str:
    return f" (line {lines[index]})" if index in lines else ""


def _step_lines(node: yaml.Node | None) -> dict[int, int]:
    """The line each step starts on, from the composed YAML (1-based)."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    for key, value in node.value:
        if getattr(key, "value", None) == "steps" and isinstance(value, yaml.SequenceNode):
            return {i: item.start_mark.line + 1 for i, item in enumerate(value.value)}
    return {}
