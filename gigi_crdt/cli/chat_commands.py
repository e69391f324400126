"""What a line typed into ``gigi-crdt chat`` means: pure parsing, no I/O.

``parse_line`` turns a line into one command value or raises ``CommandError`` with a
one-line message for the user. Message numbers (``/edit 3 ...``) are the ``#n`` the chat
shows next to each message.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import TypeAlias

DEFAULT_HISTORY = 20
MAX_HISTORY = 500


class CommandError(ValueError):
    """A line that is not a valid command; the message says what is wrong, in one line."""


@dataclass(frozen=True, slots=True)
class Say:
    """Send text to the current conversation."""

    text: str


@dataclass(frozen=True, slots=True)
class Direct:
    """Open (or start) the direct conversation with a peer, by nickname or peer id."""

    peer: str


@dataclass(frozen=True, slots=True)
class Group:
    """Start a group with a title and members."""

    title: str
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Invite:
    """Add a peer to the current group."""

    peer: str


@dataclass(frozen=True, slots=True)
class Leave:
    """Leave the current conversation."""


@dataclass(frozen=True, slots=True)
class Who:
    """Who is online, and who is here."""


@dataclass(frozen=True, slots=True)
class History:
    """Show the last ``count`` messages of the current conversation."""

    count: int = DEFAULT_HISTORY


@dataclass(frozen=True, slots=True)
class Read:
    """Mark the current conversation read."""


@dataclass(frozen=True, slots=True)
class Edit:
    """Replace the text of one of our messages."""

    number: int
    text: str


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete one of our messages."""

    number: int


@dataclass(frozen=True, slots=True)
class React:
    """React to a message with an emoji."""

    number: int
    emoji: str


@dataclass(frozen=True, slots=True)
class Search:
    """Full-text search over every conversation."""

    text: str


@dataclass(frozen=True, slots=True)
class ListConversations:
    """List conversations with unread counts."""


@dataclass(frozen=True, slots=True)
class Open:
    """Switch to the ``number``-th conversation of ``/list``."""

    number: int


@dataclass(frozen=True, slots=True)
class Help:
    """Show the commands."""


@dataclass(frozen=True, slots=True)
class Quit:
    """Leave the chat."""


Command: TypeAlias = (
    Say
    | Direct
    | Group
    | Invite
    | Leave
    | Who
    | History
    | Read
    | Edit
    | Delete
    | React
    | Search
    | ListConversations
    | Open
    | Help
    | Quit
)

HELP = """\
commands:
  <text>                     send to the current conversation
  /dm <nick or peer id>      talk to one peer
  /group <title> <nick>...   start a group (quote a title with spaces)
  /invite <nick>             add someone to the current group
  /leave                     leave the current conversation
  /list                      conversations with unread counts
  /open <n>                  switch to conversation n of /list
  /who                       who is online, and who is here
  /history [n]               the last n messages (default 20)
  /read                      mark the current conversation read
  /edit <#> <text>           change one of your messages
  /delete <#>                delete one of your messages
  /react <#> <emoji>         react to a message
  /search <text>             search every conversation
  /help                      this list
  /quit                      leave (Ctrl-C and Ctrl-D too)"""

_USAGE = {
    "dm": "/dm <nick or peer id>",
    "group": "/group <title> <nick>...",
    "invite": "/invite <nick>",
    "history": "/history [n]",
    "edit": "/edit <#> <text>",
    "delete": "/delete <#>",
    "react": "/react <#> <emoji>",
    "search": "/search <text>",
    "open": "/open <n>",
}
_BARE: dict[str, Command] = {
    "leave": Leave(),
    "who": Who(),
    "read": Read(),
    "list": ListConversations(),
    "help": Help(),
    "quit": Quit(),
}


def parse_line(line: str) -> Command | None:
    """The command a typed line stands for; ``None`` for a blank line.

    Raises:
        CommandError: an unknown command or bad arguments, with a message for the user.
    """
    text = line.strip()
    if not text:
        return None
    if not text.startswith("/") or text.startswith("//"):
        return Say(text[1:] if text.startswith("//") else text)  # "//" sends a line starting with "/"
    name, _, rest = text[1:].partition(" ")
    name, rest = name.lower(), rest.strip()
    if name in _BARE:
        if rest:
            raise CommandError(f"/{name} takes no arguments")
        return _BARE[name]
    if name not in _USAGE:
        raise CommandError(f"unknown command /{name}; /help lists the commands")
    return _parse_arguments(name, rest)


def _parse_arguments(name: str, rest: str) -> Command:
    words = rest.split(maxsplit=1)
    usage = f"usage: {_USAGE[name]}"
    if name == "history":
        return History(_number(words[0], usage, MAX_HISTORY) if words else DEFAULT_HISTORY)
    if not words:
        raise CommandError(usage)
    if name == "group":
        return _group(rest, usage)
    if name == "search":
        return Search(rest)
    if name in ("dm", "invite"):
        if len(words) > 1:
            raise CommandError(usage)
        return Direct(rest) if name == "dm" else Invite(rest)
    number = _number(words[0], usage)
    if name in ("open", "delete"):
        if len(words) > 1:
            raise CommandError(usage)
        return Open(number) if name == "open" else Delete(number)
    if len(words) < 2:
        raise CommandError(usage)
    return Edit(number, words[1]) if name == "edit" else React(number, words[1])


def _group(rest: str, usage: str) -> Group:
    try:
        words = shlex.split(rest)
    except ValueError as exc:  # an unclosed quote
        raise CommandError(f"{usage} ({exc})") from None
    if len(words) < 2:
        raise CommandError(usage)
    return Group(words[0], tuple(dict.fromkeys(words[1:])))


def _number(word: str, usage: str, limit: int | None = None) -> int:
    text = word.removeprefix("#")
    if not (text.isascii() and text.isdigit()) or int(text) < 1 or (limit is not None and int(text) > limit):
        bound = f" from 1 to {limit}" if limit is not None else " (1 or more)"
        raise CommandError(f"{word!r} is not a number{bound}; {usage}")
    return int(text)
