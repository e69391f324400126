"""The chat's terminal: keystrokes in, lines out, and the line being typed left intact.

On a terminal, ``open_terminal`` switches it to cbreak mode (no echo, no line buffering;
Ctrl-C still sends SIGINT) and keeps the input line itself, so an incoming message is
drawn *above* it: clear the line, write the message, redraw the status line (sync
progress), the prompt and what was typed. Elsewhere (a pipe) lines are read and written
as they come. Either way all I/O goes through trio streams, so a slow terminal never
blocks the run loop, and the terminal's modes are restored however the chat ends.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import termios
from collections.abc import AsyncIterator
from typing import Any

import trio

CLEAR_LINE = "\r\x1b[K"
UP = "\x1b[1A"
_END = "\x04"  # Ctrl-D: in cbreak mode the terminal passes it on instead of ending input
_ERASE = ("\x7f", "\b")
_KILL_LINE = "\x15"  # Ctrl-U
_KILL_WORD = "\x17"  # Ctrl-W
_ESCAPE = "\x1b"


class LineEditor:
    """The line being typed, edited by raw keystrokes (pure: bytes in, lines out)."""

    def __init__(self) -> None:
        self.text = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._escape = ""  # an escape sequence (arrow keys...) being skipped
        self._after_cr = False

    def feed(self, data: bytes | bytearray) -> tuple[list[str], bool]:
        """Apply keystrokes: the lines completed, and whether the user ended input (Ctrl-D on an empty line)."""
        lines: list[str] = []
        for char in self._decoder.decode(data):
            if self._skip_escape(char):
                continue
            if char in "\r\n":
                if not (char == "\n" and self._after_cr):  # "\r\n" is one Enter
                    lines.append(self.text)
                    self.text = ""
                self._after_cr = char == "\r"
                continue
            self._after_cr = False
            if char == _END and not self.text:
                return lines, True
            self._edit(char)
        return lines, False

    def _edit(self, char: str) -> None:
        if char in _ERASE:
            self.text = self.text[:-1]
        elif char == _KILL_LINE:
            self.text = ""
        elif char == _KILL_WORD:
            kept = self.text.rstrip()
            self.text = kept[: kept.rfind(" ") + 1]
        elif char == _ESCAPE:
            self._escape = char
        elif char.isprintable():
            self.text += char

    def _skip_escape(self, char: str) -> bool:
        """Swallow ``ESC x``, ``ESC O x`` and ``ESC [ ... final`` sequences whole."""
        if not self._escape:
            return False
        if self._escape == _ESCAPE:
            self._escape = _ESCAPE + char if char in "[O" else ""
        elif self._escape == _ESCAPE + "O" or "@" <= char <= "~":
            self._escape = ""
        return True


class Terminal:
    """Reads typed lines and shows output without disturbing them. Get one from ``open_terminal``."""

    def __init__(self, source: trio.abc.ReceiveStream, sink: trio.abc.SendStream, *, interactive: bool) -> None:
        self.interactive = interactive
        self._source = source
        self._sink = sink
        self._editor = LineEditor()
        self._lock = trio.StrictFIFOLock()  # the chat's tasks write concurrently
        self._prompt = ""
        self._status = ""
        self._status_shown = False
        self._ended = False

    @property
    def typing(self) -> bool:
        """Whether something is typed but not yet sent."""
        return bool(self._editor.text)

    async def read(self) -> list[str] | None:
        """The next lines typed (maybe none yet), or ``None`` once input has ended."""
        if self._ended:
            return None
        data = await self._source.receive_some()
        if data:
            lines, self._ended = self._editor.feed(data)
        else:  # end of a pipe: a last line without a newline still counts
            lines, self._ended = [self._editor.text] if self._editor.text else [], True
        if self.interactive:
            await self._write("")
        return lines

    async def show(self, text: str) -> None:
        """Write ``text`` (one or more lines) above the line being typed."""
        await self._write(text + "\n")

    async def set_prompt(self, prompt: str) -> None:
        """Change the prompt in front of the input line."""
        self._prompt = prompt
        if self.interactive:
            await self._write("")

    async def set_status(self, status: str) -> None:
        """Show ``status`` (e.g. a progress bar) on its own line above the prompt; ``""`` removes it."""
        if status == self._status:
            return
        self._status = status
        if self.interactive:
            await self._write("")
        elif status:
            await self._write(status + "\n")

    async def clear(self) -> None:
        """Remove the status and prompt lines (on the way out)."""
        self._prompt = self._status = ""
        self._editor.text = ""
        if self.interactive:
            await self._write("")

    async def _write(self, above: str) -> None:
        if self.interactive:
            # Wipe the prompt line (and the status line above it), write, then draw them again.
            wipe = CLEAR_LINE + (UP + CLEAR_LINE if self._status_shown else "")
            status = self._status + "\n" if self._status else ""
            self._status_shown = bool(self._status)
            above = wipe + above + status + self._prompt + self._editor.text
        async with self._lock:
            await self._sink.send_all(above.encode())


@contextlib.asynccontextmanager
async def open_terminal() -> AsyncIterator[Terminal]:
    """The process's stdin and stdout as a ``Terminal``, restored to how they were on exit."""
    interactive = os.isatty(0) and os.isatty(1)
    modes = termios.tcgetattr(0) if interactive else None
    blocking = os.get_blocking(0), os.get_blocking(1)
    try:
        if modes is not None:
            _cbreak(modes)
        # FdStream makes the descriptions non-blocking: stdin and stdout may share one (a tty),
        # which is why both are restored below rather than by FdStream itself, in whatever order.
        async with trio.lowlevel.FdStream(os.dup(0)) as source, trio.lowlevel.FdStream(os.dup(1)) as sink:
            terminal = Terminal(source, sink, interactive=interactive)
            try:
                yield terminal
            finally:
                with trio.CancelScope(shield=True), contextlib.suppress(trio.BrokenResourceError):
                    await terminal.clear()
    finally:
        os.set_blocking(0, blocking[0])
        os.set_blocking(1, blocking[1])
        if modes is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, modes)


def _cbreak(modes: list[Any]) -> None:
    """Keystrokes one by one and unechoed; signals (Ctrl-C) and output processing unchanged."""
    lflag, cc = modes[3], list(modes[6])
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    termios.tcsetattr(0, termios.TCSADRAIN, [*modes[:3], lflag & ~(termios.ECHO | termios.ICANON), *modes[4:6], cc])
