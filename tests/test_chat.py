"""``gigi-crdt chat``: its command parser, line editor and formatting, and real chat processes
driven through pseudo-terminals (loopback TCP, static peers, mDNS off)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
import trio
import trio.testing

from gigi_crdt import Message, Text
from gigi_crdt.cli import chat_commands as cmd
from gigi_crdt.cli.chat_view import Numbering, bytes_bar, message_line, progress_bar, receipt_mark
from gigi_crdt.cli.terminal import CLEAR_LINE, UP, LineEditor, Terminal

# -- the command parser (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("", None),
        ("   ", None),
        ("hello there", cmd.Say("hello there")),
        ("//not a command", cmd.Say("/not a command")),
        ("/dm bob", cmd.Direct("bob")),
        ("/DM  bob ", cmd.Direct("bob")),
        ('/group "hiking trip" bob carol bob', cmd.Group("hiking trip", ("bob", "carol"))),
        ("/invite carol", cmd.Invite("carol")),
        ("/leave", cmd.Leave()),
        ("/who", cmd.Who()),
        ("/history", cmd.History(cmd.DEFAULT_HISTORY)),
        ("/history 5", cmd.History(5)),
        ("/read", cmd.Read()),
        ("/edit 3 better words", cmd.Edit(3, "better words")),
        ("/edit #3 better", cmd.Edit(3, "better")),
        ("/delete 2", cmd.Delete(2)),
        ("/react 1 👍", cmd.React(1, "👍")),
        ("/search north gate", cmd.Search("north gate")),
        ("/list", cmd.ListConversations()),
        ("/open 2", cmd.Open(2)),
        ("/help", cmd.Help()),
        ("/quit", cmd.Quit()),
    ],
)
def test_lines_parse(line: str, command: cmd.Command | None) -> None:
    assert cmd.parse_line(line) == command


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/frobnicate", "unknown command /frobnicate; /help lists the commands"),
        ("/dm", "usage: /dm <nick or peer id>"),
        ("/dm bob carol", "usage: /dm <nick or peer id>"),
        ("/group hiking", "usage: /group <title> <nick>..."),
        ('/group "hiking bob', "usage: /group <title> <nick>... (No closing quotation)"),
        ("/history lots", "'lots' is not a number from 1 to 500; usage: /history [n]"),
        ("/history 0", "'0' is not a number from 1 to 500"),
        ("/history 501", "'501' is not a number from 1 to 500"),
        ("/edit 3", "usage: /edit <#> <text>"),
        ("/edit x text", "'x' is not a number (1 or more); usage: /edit <#> <text>"),
        ("/delete 1 2", "usage: /delete <#>"),
        ("/delete ²", "'²' is not a number"),
        ("/react 1", "usage: /react <#> <emoji>"),
        ("/search", "usage: /search <text>"),
        ("/quit now", "/quit takes no arguments"),
        ("/open", "usage: /open <n>"),
    ],
)
def test_bad_lines_say_what_is_wrong(line: str, message: str) -> None:
    with pytest.raises(cmd.CommandError) as raised:
        cmd.parse_line(line)
    assert str(raised.value).startswith(message)


# -- the line editor (pure) ------------------------------------------------------------------


def test_line_editor_keeps_the_line_and_completes_it() -> None:
    editor = LineEditor()
    assert editor.feed(b"hel") == ([], False)
    assert editor.text == "hel"
    assert editor.feed(b"lo\x7fo there\x17world\r") == (["hello world"], False)
    assert editor.text == ""
    assert editor.feed(b"one\r\ntwo\nthr") == (["one", "two"], False)
    assert editor.feed(b"\x15") == ([], False)
    assert editor.text == ""


def test_line_editor_skips_escape_sequences_and_joins_split_characters() -> None:
    editor = LineEditor()
    editor.feed(b"a\x1b[A\x1b[1;5Cb\x1bOPc\x1bxd\t")
    assert editor.text == "abcd"
    editor.feed("é👍".encode()[:3])
    editor.feed("é👍".encode()[3:])
    assert editor.text == "abcdé👍"


def test_ctrl_d_ends_input_only_on_an_empty_line() -> None:
    editor = LineEditor()
    assert editor.feed(b"draft\x04") == ([], False)
    assert editor.feed(b"\r\x04ignored") == (["draft"], True)


async def test_incoming_lines_are_drawn_above_the_line_being_typed() -> None:
    keys_in, keys = trio.testing.memory_stream_one_way_pair()
    screen, screen_out = trio.testing.memory_stream_one_way_pair()
    terminal = Terminal(keys, screen, interactive=True)

    async def drawn() -> str:
        await trio.testing.wait_all_tasks_blocked()
        return (await screen_out.receive_some()).decode()

    await terminal.set_prompt("bob> ")
    assert await drawn() == CLEAR_LINE + "bob> "
    await keys_in.send_all(b"half a sen")
    assert await terminal.read() == []
    assert await drawn() == CLEAR_LINE + "bob> half a sen"
    await terminal.show("alice: hi")
    assert await drawn() == CLEAR_LINE + "alice: hi\n" + "bob> half a sen"
    await terminal.set_status("syncing [##..] 1/2")
    assert await drawn() == CLEAR_LINE + "syncing [##..] 1/2\n" + "bob> half a sen"
    await terminal.show("alice: more")  # the status line above the prompt is wiped and redrawn too
    assert await drawn() == CLEAR_LINE + UP + CLEAR_LINE + "alice: more\nsyncing [##..] 1/2\nbob> half a sen"
    await keys_in.send_all(b"tence\r")
    assert await terminal.read() == ["half a sentence"]
    await keys_in.send_all(b"\x04")
    assert await terminal.read() == []
    assert await terminal.read() is None


# -- what the chat shows (pure) --------------------------------------------------------------


def test_receipt_marks() -> None:
    assert receipt_mark(0, 0, 1) == "·"
    assert receipt_mark(1, 0, 1) == "✓"
    assert receipt_mark(1, 1, 1) == "✓✓"
    assert receipt_mark(1, 0, 3) == "✓ 1/3"
    assert receipt_mark(0, 0, 0) == "·"


def test_progress_bar() -> None:
    assert progress_bar(0, 4, width=8) == "[........] 0/4"
    assert progress_bar(3, 4, width=8) == "[######..] 3/4"
    assert progress_bar(4, 4, width=8) == "[########] 4/4"
    assert bytes_bar(4_200_000, 16_800_000, width=8) == "[##......] 4.2/16.8 MB"


def test_message_lines_and_numbers() -> None:
    numbers = Numbering()
    assert [numbers.number("c", "m1"), numbers.number("c", "m2"), numbers.number("c", "m1")] == [1, 2, 1]
    assert numbers.number("other", "m9") == 1
    assert numbers.message_id("c", 2) == "m2"
    assert numbers.message_id("c", 3) is None
    message = Message("m1", "peer", "bob", 1_700_000_000_000_000, 0, Text("hi"), reactions={"👍": frozenset("ab")})
    line = message_line(4, message, label="#hiking", mark="✓", missed=True)
    assert line.startswith("[#hiking] #4 ")
    assert line.endswith("bob: hi 👍2 ✓ (missed while offline)")
    deleted = Message("m2", "peer", "bob", 1_700_000_000_000_000, 1, None, deleted_at=1)
    assert message_line(5, deleted).endswith("bob: (deleted)")


# -- real chat processes on pseudo-terminals -------------------------------------------------

TIMEOUT = 15


class Chats:
    """Starts ``gigi-crdt chat`` processes for one test and makes sure none outlives it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.children: list[pexpect.spawn] = []
        self.env = {k: v for k, v in os.environ.items() if k != "GIGI_CRDT_INTERFACE"}
        self.env["XDG_DATA_HOME"] = str(tmp_path / "xdg")  # never the user's real data

    def command(self, nick: str, *extra: str) -> list[str]:
        data = str(self.tmp_path / nick)
        args = ["-m", "gigi_crdt", "chat", "--nick", nick, "--data-dir", data, "--host", "127.0.0.1", "--no-mdns"]
        return [sys.executable, *args, *extra]

    def start(self, nick: str, *extra: str, shell_after: str = "") -> pexpect.spawn:
        argv = self.command(nick, *extra)
        if shell_after:  # run the chat from a shell that reports on the terminal after it exits
            # "trap : INT": Ctrl-C reaches the whole foreground group; the shell must outlive it.
            argv = ["sh", "-c", 'trap : INT; "$@"; echo "exit=$?"; ' + shell_after, "sh", *argv]
        child = pexpect.spawn(argv[0], argv[1:], encoding="utf-8", timeout=TIMEOUT, env=self.env)
        self.children.append(child)
        child.expect(r"listening on 127\.0\.0\.1:(\d+)")
        return child

    def close(self) -> None:
        for child in self.children:
            child.close(force=True)


@pytest.fixture
def chats(tmp_path: Path) -> Iterator[Chats]:
    chats = Chats(tmp_path)
    try:
        yield chats
    finally:
        chats.close()


def port_of(child: pexpect.spawn) -> str:
    return str(child.match.group(1))


def quit_cleanly(child: pexpect.spawn, how: str = "/quit") -> None:
    if how == "ctrl-d":
        child.sendeof()
    else:
        child.sendline(how)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before


def test_two_chats_talk_and_a_restarted_one_sees_what_it_missed(chats: Chats) -> None:
    alice = chats.start("alice")
    peer = f"127.0.0.1:{port_of(alice)}"
    bob = chats.start("bob", "--peer", peer)
    alice.expect("bob is online")
    alice.sendline("/dm bob")
    alice.expect("-- bob --")
    alice.sendline("hello bob")
    bob.expect(r"#1 \d\d:\d\d alice: hello bob\r")  # a new conversation: nothing "missed"
    alice.expect("✓✓ read by bob: #1")  # bob's chat shows the message, so it is read
    bob.sendline("hi alice")
    alice.expect("bob: hi alice")

    quit_cleanly(bob)
    alice.expect("bob went offline")
    alice.sendline("are you there?")
    alice.expect(r"alice: are you there\? ·")  # sent, not delivered
    alice.sendline("see you at nine")

    bob = chats.start("bob", "--peer", peer)
    bob.expect("2 message\\(s\\) in alice written while you were offline")
    bob.expect(r"alice: are you there\? \(missed while offline\)")
    bob.expect(r"alice: see you at nine \(missed while offline\)")
    alice.expect("✓✓ read by bob: #3 #4")
    bob.sendline("/history 2")
    bob.expect("alice: see you at nine\r")
    quit_cleanly(bob, "ctrl-d")
    quit_cleanly(alice)


def test_group_edit_react_delete_search(chats: Chats) -> None:
    alice = chats.start("alice")
    bob = chats.start("bob", "--peer", f"127.0.0.1:{port_of(alice)}")
    alice.expect("bob is online")
    alice.sendline('/group "hike club" bob')
    alice.expect("-- #hike club --")
    alice.sendline("first post")
    bob.expect("alice: first post")
    alice.sendline("/edit 1 first post, edited")
    bob.expect("#1 edited: first post, edited")
    bob.sendline("/react 1 👍")
    alice.expect("bob reacted 👍 on #1")
    bob.sendline("/edit 1 not mine")
    bob.expect("! #1 is not one of your messages")
    bob.sendline("/search edited")
    bob.expect(r"\[#hike club\] #1 \d\d:\d\d alice: first post, edited \(edited\) 👍1")
    alice.sendline("/delete 1")
    bob.expect("#1 was deleted")
    bob.sendline("/list")
    bob.expect(r"1\. #hike club \(here\), 0 unread")
    quit_cleanly(bob)
    quit_cleanly(alice)


def test_unknown_commands_and_bad_arguments_get_one_line(chats: Chats) -> None:
    alice = chats.start("alice")
    alice.sendline("/frobnicate")
    alice.expect("! unknown command /frobnicate; /help lists the commands")
    alice.sendline("no conversation yet")
    alice.expect("! no conversation open: /dm <nick>, /group or /open first")
    alice.sendline("/dm nobody")
    alice.expect("! nobody called 'nobody' is known yet")
    alice.sendline("/history many")
    alice.expect("! 'many' is not a number")
    quit_cleanly(alice)
    assert "Traceback" not in (alice.before or "")


def test_ctrl_c_exits_0_and_restores_the_terminal(chats: Chats) -> None:
    alice = chats.start("alice", shell_after="stty -a")
    alice.sendline("/help")
    alice.expect("/quit +leave")
    alice.sendintr()
    alice.expect("exit=0")
    alice.expect(pexpect.EOF)
    modes = alice.before.split()
    assert "icanon" in modes  # cbreak mode is gone
    assert "echo" in modes


def test_bad_command_lines_give_usage_not_a_traceback(tmp_path: Path) -> None:
    for extra, error in (
        (["--port", "99999"], "is not a port number"),
        (["--peer", "nowhere"], "invalid peer address 'nowhere'"),
        (["--nick", " "], "a nickname is 1 to 64 characters"),
    ):
        argv = [sys.executable, "-m", "gigi_crdt", "chat", "--nick", "alice", "--data-dir", str(tmp_path), *extra]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode == 2
        assert error in result.stderr
        assert "Traceback" not in result.stderr


def test_a_data_dir_in_use_is_one_line(chats: Chats) -> None:
    chats.start("alice")
    result = subprocess.run(
        chats.command("alice"), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=chats.env
    )
    assert result.returncode == 1
    assert result.stderr.startswith("gigi-crdt: ")
    assert "already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_piped_input_works_line_by_line(tmp_path: Path) -> None:
    argv = [*Chats(tmp_path).command("alice")]
    result = subprocess.run(argv, input="/who\n/list", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "online: nobody" in result.stdout
    assert "no conversations yet" in result.stdout
    assert "\x1b" not in result.stdout  # no terminal control sequences into a pipe
