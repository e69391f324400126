"""One ``gigi-crdt chat`` session: typed commands in, node events out, both on one terminal."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import GigiError
from ..model import Message, Receipt, ReceiptKind, Text
from ..node import ContactKeyChanged, Node, NodeEvent
from ..sync import (
    EventsDropped,
    MessageDeleted,
    MessageEdited,
    MessageReceived,
    OfflineMessagesReceived,
    PeerOffline,
    PeerOnline,
    ReactionChanged,
    ReceiptUpdated,
    SyncProgress,
    TransferProgress,
)
from . import chat_commands as cmd
from .chat_view import (
    DELIVERED,
    READ,
    Numbering,
    bytes_bar,
    content_text,
    conversation_label,
    megabytes,
    message_line,
    progress_bar,
    receipt_mark,
)
from .terminal import Terminal

STARTUP_HISTORY = 10
SHOWN_AT_ONCE = 20  # of a catch-up; the rest is a /history away


class ChatSession:
    """The chat's state: the current conversation, message numbers, what was shown."""

    def __init__(self, node: Node, terminal: Terminal, started: int) -> None:
        self.node = node
        self.term = terminal
        self.current: str | None = None
        self._started = started  # hybrid timestamp of this session's start
        self._labels: dict[str, str] = {}
        self._numbers = Numbering()
        self._own: dict[str, dict[int, int]] = {}  # conversation -> seq of our message -> its number
        self._acked: dict[tuple[str, str, ReceiptKind], int] = {}  # highest receipt shown
        self._known: set[str] = set()  # conversations this session has seen
        self._listed: list[str] = []
        self._nicknames: dict[str, str] = {}
        self._syncing: dict[str, tuple[int, int]] = {}  # peer -> conversations caught up, of
        self._receiving: dict[str, tuple[int, int]] = {}  # peer -> bytes of a large frame in, of
        self._typing = False

    # -- start -------------------------------------------------------------------------

    async def start(self) -> None:
        """Greet, then open the most recent conversation."""
        node = self.node
        host, port = node.address
        await self.term.show(f"gigi-crdt chat: you are {node.nickname} ({node.peer_id})")
        await self.term.show(f"fingerprint {node.fingerprint}; listening on {host}:{port}; /help for commands")
        summaries = await node.conversations()
        self._known.update(s.metadata.id for s in summaries)
        if summaries:
            await self._switch(summaries[0].metadata.id, STARTUP_HISTORY)
        else:
            await self.term.show("no conversations yet: /dm <nick> when someone is online (/who)")
            await self.term.set_prompt("> ")

    # -- typed lines -------------------------------------------------------------------

    async def typed(self, lines: Sequence[str]) -> bool:
        """Handle typed lines; ``False`` once the user asked to quit."""
        for line in lines:
            try:
                command = cmd.parse_line(line)
                if isinstance(command, cmd.Quit):
                    return False
                if command is not None:
                    await self._run(command)
            except (cmd.CommandError, GigiError) as exc:
                await self.term.show(f"! {exc}")
        self._tell_typing()
        return True

    def _tell_typing(self) -> None:
        typing = self.term.typing and self.current is not None
        if typing != self._typing and self.current is not None:
            self.node.set_typing(self.current, typing)
        self._typing = typing

    async def _run(self, command: cmd.Command) -> None:
        match command:
            case cmd.Say(text):
                await self._say(text)
            case cmd.Direct(peer):
                await self._direct(peer)
            case cmd.Group(title, members):
                peers = dict([await self._find_peer(member) for member in members])
                await self._switch(await self.node.create_group(title, peers), 0)
            case cmd.Invite(peer):
                peer_id, nickname = await self._find_peer(peer)
                await self.node.invite(self._here(), peer_id, nickname)
                await self._show_latest(self._here())
            case cmd.Leave():
                await self.node.leave(self._here())
                await self.term.show(f"* you left {await self._label(self._here())}")
                self.current = None
                await self.term.set_prompt("> ")
            case cmd.ListConversations():
                await self._list()
            case cmd.Open(number):
                if not 1 <= number <= len(self._listed):
                    raise cmd.CommandError(f"no conversation {number}; /list shows them")
                await self._switch(self._listed[number - 1], STARTUP_HISTORY)
            case cmd.Who():
                await self._who()
            case cmd.History(count):
                await self._history(self._here(), count)
            case cmd.Read():
                await self.node.mark_read(self._here())
                await self.term.show("* marked read")
            case cmd.Edit(number, text):
                await self.node.edit(self._here(), self._own_message(number), Text(text))
                await self.term.show(f"* #{number} edited: {text}")
            case cmd.Delete(number):
                await self.node.delete(self._here(), self._own_message(number))
                await self.term.show(f"* #{number} deleted")
            case cmd.React(number, emoji):
                await self.node.react(self._here(), self._message(number), emoji)
                await self.term.show(f"* you reacted {emoji} on #{number}")
            case cmd.Search(text):
                await self._search(text)
            case cmd.Help():
                await self.term.show(cmd.HELP)

    def _here(self) -> str:
        if self.current is None:
            raise cmd.CommandError("no conversation open: /dm <nick>, /group or /open first")
        return self.current

    def _message(self, number: int) -> str:
        message_id = self._numbers.message_id(self._here(), number)
        if message_id is None:
            raise cmd.CommandError(f"no message #{number} here")
        return message_id

    def _own_message(self, number: int) -> str:
        message_id = self._message(number)
        if number not in self._own.get(self._here(), {}).values():
            raise cmd.CommandError(f"#{number} is not one of your messages")
        return message_id

    async def _say(self, text: str) -> None:
        conversation = self._here()
        message_id = await self.node.send(conversation, Text(text))
        for message in await self.node.history(conversation, limit=STARTUP_HISTORY):
            if message.id == message_id:
                await self._show_message(conversation, message)

    async def _direct(self, who: str) -> None:
        peer_id, nickname = await self._find_peer(who)
        conversation = await self.node.direct_with(peer_id)
        if conversation is None:
            conversation = await self.node.create_direct(peer_id, nickname)
        await self._switch(conversation, STARTUP_HISTORY)

    async def _find_peer(self, who: str) -> tuple[str, str]:
        """A peer named by nickname or peer id, among linked peers, contacts and members."""
        known = {contact.peer_id: contact.nickname for contact in self.node.contacts()}
        for summary in await self.node.conversations():
            for member in (await self.node.members(summary.metadata.id)).values():
                known.setdefault(member.peer_id, member.nickname)
        known.update(self.node.online_peers())
        known.pop(self.node.peer_id, None)
        if who in known:
            return who, known[who]
        matches = sorted(peer for peer, nickname in known.items() if nickname == who)
        if len(matches) == 1:
            return matches[0], who
        if matches:
            raise cmd.CommandError(f"several peers are called {who}: use a peer id ({', '.join(matches)})")
        raise cmd.CommandError(f"nobody called {who!r} is known yet: /who shows who is online")

    async def _switch(self, conversation: str, history: int) -> None:
        self.current = conversation
        self._known.add(conversation)
        label = await self._label(conversation)
        await self.term.show(f"-- {label} --")
        if history:
            await self._history(conversation, history)
        await self.term.set_prompt(f"{label}> ")
        await self.node.mark_read(conversation)

    async def _list(self) -> None:
        summaries = await self.node.conversations()
        self._listed = [s.metadata.id for s in summaries]
        if not summaries:
            await self.term.show("no conversations yet")
        for number, summary in enumerate(summaries, 1):
            label = await self._label(summary.metadata.id)
            last = summary.last_message
            tail = f": {last.nickname}: {content_text(last.content)}" if last else ""
            here = " (here)" if summary.metadata.id == self.current else ""
            await self.term.show(f"{number}. {label}{here}, {summary.unread} unread{tail}")

    async def _who(self) -> None:
        online = sorted(self.node.online_peers().values())
        await self.term.show(f"online: {', '.join(online) if online else 'nobody'}")
        if self.current is not None:
            present = [p.nickname + (" (typing)" if p.typing else "") for p in self.node.presence(self.current)]
            await self.term.show(f"here: {', '.join(sorted(present)) if present else 'nobody else'}")

    async def _history(self, conversation: str, count: int) -> None:
        messages = await self.node.history(conversation, limit=count)
        if not messages:
            await self.term.show("(no messages yet)")
        for message in messages:
            await self._show_message(conversation, message)

    async def _show_latest(self, conversation: str) -> None:
        for message in await self.node.history(conversation, limit=1):
            await self._show_message(conversation, message)

    async def _search(self, text: str) -> None:
        found = await self.node.search(text)
        if not found:
            await self.term.show(f"nothing matches {text!r}")
        for conversation, message in reversed(found):
            await self._show_message(conversation, message, labelled=True)

    # -- showing messages --------------------------------------------------------------

    async def _show_message(
        self, conversation: str, message: Message, *, missed: bool = False, labelled: bool = False
    ) -> None:
        number = self._numbers.number(conversation, message.id)
        mark = ""
        if message.author == self.node.peer_id:
            self._own.setdefault(conversation, {})[message.seq] = number
            mark = await self._receipt_mark(conversation, message)
        label = await self._label(conversation) if labelled or conversation != self.current else ""
        await self.term.show(message_line(number, message, label=label, mark=mark, missed=missed))

    async def _receipt_mark(self, conversation: str, message: Message) -> str:
        state = await self.node.receipts(conversation, message)
        for kind, peers in state.items():
            for peer in peers:  # so that later receipts only report what is new
                key = (conversation, peer, kind)
                self._acked[key] = max(self._acked.get(key, -1), message.seq)
        members = await self.node.members(conversation)
        others = sum(1 for peer, member in members.items() if member.active and peer != self.node.peer_id)
        return receipt_mark(len(state[ReceiptKind.DELIVERED]), len(state[ReceiptKind.READ]), others)

    async def _label(self, conversation: str) -> str:
        if conversation not in self._labels:
            meta = await self.node.metadata(conversation)
            members = await self.node.members(conversation)
            self._labels[conversation] = conversation_label(meta, members, self.node.peer_id)
        return self._labels[conversation]

    # -- node events -------------------------------------------------------------------

    async def happened(self, event: NodeEvent) -> None:
        """Show what a node event means to the user."""
        match event:
            case MessageReceived(conversation, message):
                await self._arrived(conversation, [message], catch_up=False)
            case OfflineMessagesReceived(conversation, messages):
                await self._arrived(conversation, list(messages), catch_up=True)
            case MessageEdited(conversation, message_id, content):
                await self._note(
                    conversation, f"#{self._numbers.number(conversation, message_id)} edited: {content_text(content)}"
                )
            case MessageDeleted(conversation, message_id):
                await self._note(conversation, f"#{self._numbers.number(conversation, message_id)} was deleted")
            case ReactionChanged(conversation, message_id, reactor, emoji, on):
                number = self._numbers.number(conversation, message_id)
                did = "reacted" if on else "withdrew"
                await self._note(
                    conversation, f"{await self._member_name(conversation, reactor)} {did} {emoji} on #{number}"
                )
            case ReceiptUpdated(conversation, receipt):
                await self._receipt(conversation, receipt)
            case PeerOnline(peer_id, nickname):
                self._nicknames[peer_id] = nickname
                await self.term.show(f"* {nickname} is online")
            case PeerOffline(peer_id, _):
                if peer_id in self._nicknames:
                    await self.term.show(f"* {self._nicknames[peer_id]} went offline")
                stopped = [self._syncing.pop(peer_id, None), self._receiving.pop(peer_id, None)]
                if any(stopped):
                    await self._show_status()  # what it was sending stopped with it
            case SyncProgress(peer_id, done, total):
                await self._progress(peer_id, done, total)
            case TransferProgress(peer_id, received, total):
                await self._transfer(peer_id, received, total)
            case EventsDropped(count):
                await self.term.show(f"! {count} updates were not shown (too many at once); /history re-reads")
            case ContactKeyChanged(nickname, known_peer_id, peer_id):
                await self.term.show(
                    f"! refused a peer calling itself {nickname}: its key ({peer_id}) is not the one "
                    f"you know for {nickname} ({known_peer_id})"
                )

    async def _arrived(self, conversation: str, messages: list[Message], *, catch_up: bool) -> None:
        known = conversation in self._known
        if self.current is None:
            await self._switch(conversation, 0)
        self._known.add(conversation)
        label = await self._label(conversation)
        # A catch-up also brings a conversation someone just started with us: only what was
        # written before we came online, or while a known conversation was out of reach, is "missed".
        missed = {m.id for m in messages if catch_up and (known or m.timestamp < self._started)}
        if conversation != self.current and len(messages) > SHOWN_AT_ONCE:
            while_offline = f", {len(missed)} written while you were offline" if missed else ""
            await self.term.show(f"[{label}] {len(messages)} new messages{while_offline}: /list, then /open to read")
            return
        if missed:
            await self.term.show(f"-- {len(missed)} message(s) in {label} written while you were offline --")
        shown = messages[-SHOWN_AT_ONCE:]
        if len(shown) < len(messages):
            await self.term.show(f"({len(messages) - len(shown)} earlier ones: /history {len(messages)})")
        for message in shown:
            await self._show_message(conversation, message, missed=message.id in missed)
        if conversation == self.current:
            await self.node.mark_read(conversation)  # it is on screen

    async def _note(self, conversation: str, text: str) -> None:
        label = "" if conversation == self.current else f"[{await self._label(conversation)}] "
        await self.term.show(f"{label}* {text}")

    async def _receipt(self, conversation: str, receipt: Receipt) -> None:
        if receipt.author != self.node.peer_id or receipt.member == self.node.peer_id:
            return  # only receipts for our own messages, from others, are news
        key = (conversation, receipt.member, receipt.kind)
        before = self._acked.get(key, -1)
        self._acked[key] = max(before, receipt.seq)
        read = self._acked.get((conversation, receipt.member, ReceiptKind.READ), -1)
        numbers = sorted(
            number
            for seq, number in self._own.get(conversation, {}).items()
            if before < seq <= receipt.seq and (receipt.kind is ReceiptKind.READ or seq > read)
        )
        if numbers:
            what = f"{READ} read by" if receipt.kind is ReceiptKind.READ else f"{DELIVERED} delivered to"
            listed = " ".join(f"#{n}" for n in numbers)
            await self._note(conversation, f"{what} {await self._member_name(conversation, receipt.member)}: {listed}")

    async def _progress(self, peer_id: str, done: int, total: int) -> None:
        if total == 0:
            return
        self._syncing[peer_id] = (done, total)
        if done == total:
            del self._syncing[peer_id]
            await self.term.show(f"* in sync with {self._nickname(peer_id)} ({total} conversation(s))")
        await self._show_status()

    async def _transfer(self, peer_id: str, received: int, total: int) -> None:
        self._receiving[peer_id] = (received, total)
        if received == total:
            del self._receiving[peer_id]
            await self.term.show(f"* received {megabytes(total)} from {self._nickname(peer_id)}; merging it")
        await self._show_status()

    async def _show_status(self) -> None:
        bars = [f"syncing with {self._nickname(p)} {progress_bar(d, t)}" for p, (d, t) in self._syncing.items()]
        bars += [f"receiving from {self._nickname(p)} {bytes_bar(r, t)}" for p, (r, t) in self._receiving.items()]
        await self.term.set_status("; ".join(bars))

    async def _member_name(self, conversation: str, peer_id: str) -> str:
        """A member's nickname, also when we are not linked to it (its updates came through others)."""
        member = (await self.node.members(conversation)).get(peer_id)
        return member.nickname if member is not None else self._nickname(peer_id)

    def _nickname(self, peer_id: str) -> str:
        return self._nicknames.get(peer_id) or self.node.online_peers().get(peer_id) or peer_id[:8]
