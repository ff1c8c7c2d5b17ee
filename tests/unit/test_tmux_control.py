"""The tmux control-mode client, fed bytes through a fake channel, and tmux quoting."""

from __future__ import annotations

import asyncio

import pytest

from devbox_service import errors
from devbox_service.tmux.control import (
    ChannelClosed,
    CommandRefused,
    CommandTimeout,
    ControlClient,
    Reply,
    TargetNotFound,
    quote,
)


class FakeChannel:
    """Both ends of a control client's channel: what tmux prints, and what it was sent."""

    def __init__(self) -> None:
        self.lines: asyncio.Queue[bytes] = asyncio.Queue()
        self.written: list[bytes] = []
        self.broken = False

    async def readline(self) -> bytes:
        return await self.lines.get()

    def write(self, data: bytes) -> None:
        if self.broken:
            raise BrokenPipeError("channel closed")
        self.written.append(data)

    def tmux_says(self, *lines: str) -> None:
        for line in lines:
            self.lines.put_nowait(line.encode() + b"\n")

    def eof(self) -> None:
        self.lines.put_nowait(b"")


def answer(number: int, *output: str, error: bool = False) -> list[str]:
    """A block answering one of our commands (flags 1)."""
    end = "%error" if error else "%end"
    return [f"%begin 1700000000 {number} 1", *output, f"{end} 1700000000 {number} 1"]


async def ask(
    client: ControlClient, channel: FakeChannel, commands: list[str], *tmux_lines: str
) -> list[Reply]:
    """Run `commands`, and once they are written (tmux answers only then) feed the lines."""
    before = len(channel.written)
    pending = asyncio.ensure_future(client.run(commands, timeout=1))
    while len(channel.written) == before:
        await asyncio.sleep(0)
    channel.tmux_says(*tmux_lines)
    return await pending


@pytest.fixture
def channel() -> FakeChannel:
    return FakeChannel()


async def test_commands_go_in_one_write_and_replies_match_in_order(channel: FakeChannel) -> None:
    client = ControlClient(channel, channel)
    pending = asyncio.ensure_future(client.run(["list-sessions", "display-message -p hi"]))
    await asyncio.sleep(0)
    assert channel.written == [b"list-sessions\ndisplay-message -p hi\n"]
    channel.tmux_says(*answer(10, "a: 1 windows", "b: 2 windows"), *answer(11, "hi"))
    first, second = await asyncio.wait_for(pending, 1)
    assert (first.ok, first.lines) == (True, ["a: 1 windows", "b: 2 windows"])
    assert (second.ok, second.lines) == (True, ["hi"])
    await client.aclose()


async def test_error_block_is_a_failed_reply_and_the_others_still_answer(
    channel: FakeChannel,
) -> None:
    client = ControlClient(channel, channel)
    refused, fine = await ask(
        client,
        channel,
        ["display-message -t %9 x", "display -p ok"],
        *answer(1, "can't find pane: %9", error=True),
        *answer(2, "ok"),
    )
    assert (refused.ok, refused.lines) == (False, ["can't find pane: %9"])
    assert (fine.ok, fine.lines) == (True, ["ok"])
    await client.aclose()


async def test_outputs_raise_the_first_refusal_in_the_domain_tree(channel: FakeChannel) -> None:
    client = ControlClient(channel, channel)
    # tmux answers only what it was sent: these lines wait in the channel until the client
    # reads them, which it does after `outputs` wrote its commands
    channel.tmux_says(
        *answer(1, "fine"),
        *answer(2, "can't find session: ghost", error=True),
        *answer(3, "unknown command: bogus", error=True),
    )
    with pytest.raises(TargetNotFound) as missing:
        await client.outputs(["list-sessions", "has-session -t ghost", "bogus"], 1)
    assert isinstance(missing.value, errors.NotFound)
    assert missing.value.command == "has-session -t ghost"
    assert str(missing.value) == "tmux has-session: can't find session: ghost"

    channel.tmux_says(*answer(4, "unknown command: bogus", error=True))
    with pytest.raises(CommandRefused) as refused:
        await client.outputs(["bogus"], 1)
    assert isinstance(refused.value, errors.InvalidInput)
    assert refused.value.reason == "unknown command: bogus"

    channel.tmux_says(*answer(5, "one"), *answer(6))
    assert await client.outputs(["a", "b"], 1) == [["one"], []]
    await client.aclose()


async def test_blocks_without_flag_bit_one_are_skipped(channel: FakeChannel) -> None:
    """The start-up command's answer (flags 0) must not be taken for ours."""
    client = ControlClient(channel, channel)
    (reply,) = await ask(
        client,
        channel,
        ["display -p mine"],
        "%begin 1700000000 0 0",
        "startup output",
        "%end 1700000000 0 0",
        "%begin 1700000000 1 2",  # flags without bit 1: not ours either
        "%end 1700000000 1 2",
        *answer(2, "mine"),
    )
    assert reply.lines == ["mine"]
    await client.aclose()


async def test_a_line_like_an_end_with_another_id_is_output(channel: FakeChannel) -> None:
    client = ControlClient(channel, channel)
    (reply,) = await ask(
        client,
        channel,
        ["capture-pane -p"],
        "%begin 1700000000 7 1",
        "%end 1700000000 8 1",
        "%error",
        "text",
        "%end 1700000000 7 1",
    )
    assert (reply.ok, reply.lines) == (True, ["%end 1700000000 8 1", "%error", "text"])
    await client.aclose()


async def test_notifications_outside_blocks_go_to_the_callback(channel: FakeChannel) -> None:
    seen: list[str] = []
    client = ControlClient(channel, channel, on_notification=seen.append)
    (reply,) = await ask(
        client,
        channel,
        ["capture-pane -p"],
        "%session-changed $1 main",
        "%output %3 hello\\015\\012",
        *answer(1, "%output %3 inside a block is output"),
        "%layout-change @1 abcd,80x24,0,0,3",
    )
    await asyncio.sleep(0.01)
    assert reply.lines == ["%output %3 inside a block is output"]
    assert seen == [
        "%session-changed $1 main",
        "%output %3 hello\\015\\012",
        "%layout-change @1 abcd,80x24,0,0,3",
    ]
    await client.aclose()


@pytest.mark.parametrize("ending", ["eof", "exit"])
async def test_channel_end_fails_waiting_commands_and_later_ones(
    channel: FakeChannel, ending: str
) -> None:
    closed: list[bool] = []
    client = ControlClient(channel, channel, on_close=lambda: closed.append(True))
    pending = asyncio.ensure_future(client.run(["list-sessions"]))
    await asyncio.sleep(0)
    if ending == "eof":
        channel.eof()
    else:
        channel.tmux_says("%exit")
    with pytest.raises(ChannelClosed) as ended:
        await asyncio.wait_for(pending, 1)
    assert isinstance(ended.value, errors.Unreachable)
    await asyncio.wait_for(client.wait_closed(), 1)
    assert client.closed and closed == [True]
    with pytest.raises(ChannelClosed):
        await client.run(["list-sessions"])
    await client.aclose()
    assert closed == [True]  # the close callback runs once


async def test_no_answer_in_time_is_a_timeout_and_closes_the_client(
    channel: FakeChannel,
) -> None:
    client = ControlClient(channel, channel)
    with pytest.raises(CommandTimeout) as late:
        await client.run(["list-sessions"], timeout=0.05)
    assert isinstance(late.value, errors.Unreachable)
    # replies match commands by position: after a lost one the channel cannot be trusted
    assert client.closed
    with pytest.raises(ChannelClosed):
        await client.run(["list-sessions"])


async def test_a_failed_write_closes_the_client(channel: FakeChannel) -> None:
    client = ControlClient(channel, channel)
    channel.broken = True
    with pytest.raises(ChannelClosed, match="cannot write"):
        await client.run(["list-sessions"])
    assert client.closed


@pytest.mark.parametrize(
    ("argument", "token"),
    [
        ("", '""'),
        ("plain words", '"plain words"'),
        ('say "hi"', '"say \\"hi\\""'),
        ("it's", '"it\'s"'),
        ("a; b ;", '"a; b ;"'),
        ("back\\slash", '"back\\\\slash"'),
        ("\\n", '"\\\\n"'),
        ("$HOME and ${X}", '"\\$HOME and \\${X}"'),
        ("~/bin", '"\\~/bin"'),
        ("a~b", '"a\\~b"'),
        ("line\nnext", '"line\\012next"'),
        ("\r\t\x1b\x7f", '"\\015\\011\\033\\177"'),
        ("#{pane_id} %1 {x}", '"#{pane_id} %1 {x}"'),
        ("é ✓ 日本", '"é ✓ 日本"'),
    ],
)
def test_quote(argument: str, token: str) -> None:
    assert quote(argument) == token


def test_quoted_tokens_stay_on_one_line() -> None:
    every_control_character = "".join(chr(n) for n in range(32)) + "\x7f"
    assert "\n" not in quote(every_control_character)
    assert "\r" not in quote(every_control_character)
