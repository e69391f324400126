"""What must hold once the network has healed, and the ledger that records what must survive.

After the heal, for every conversation, the *expected holders* are the nodes that are up
and an active member in the view of a holder that is itself an active member in its own
view. (A member that left, or was removed, is rightly sent nothing more: its own stale view
of who else is in the group does not count.) Then:

- every expected holder holds it and all their state vectors are equal;
- their transcripts are identical: the index (``Replica.history``, whole) and the
  document (``Replica.export``) each give the same ordered list of messages on every one;
- every acknowledged message (a ``send`` that returned) is present on all of them, unless
  its author lost its store before the message reached any other node that was up (a
  message reaches a node once every earlier write of its Yjs client has: see
  ``model.gaps``), or before its deletion did;
- no node that was never a member holds it;
- receipt counters, sampled during the run on every node, never went down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import UnknownConversation
from ..model import Message
from ..protocol.yproto import decode_state_vector
from ._appview import HISTORY_LIMIT
from ._network import Network, SimNode
from ._probe import receipts


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant: ``kind`` is a short fixed name, ``detail`` says where."""

    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass(slots=True)
class Ledger:
    """What the run promised: acknowledged messages, and receipt counters seen so far."""

    acked: dict[str, str] = field(default_factory=dict)  # message id -> conversation id
    orphaned: set[str] = field(default_factory=set)  # acked, then lost with their only store
    deleted: set[str] = field(default_factory=set)  # acked, then deleted by their author
    authored: dict[str, list[str]] = field(default_factory=dict)  # peer id -> its acked ids
    receipt_seqs: dict[tuple[str, ...], int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)

    def acknowledge(self, conversation: str, message_id: str, author: str) -> None:
        """``send`` returned ``message_id``: from now on it must never be lost."""
        self.acked[message_id] = conversation
        self.authored.setdefault(author, []).append(message_id)

    async def sample_receipts(self, nodes: Sequence[SimNode]) -> None:
        """Read every receipt counter on every up node; record any that went down."""
        for node in nodes:
            if node.replica is None:
                continue
            for summary in await node.replica.conversations():
                conversation = summary.metadata.id
                for receipt in await receipts(node.replica, conversation):
                    key = (node.peer_id, conversation, receipt.member, receipt.kind.value, receipt.author)
                    before = self.receipt_seqs.get(key, -1)
                    if receipt.seq < before:
                        self.violations.append(
                            Violation(
                                "receipt went back",
                                f"{node.name} sees {receipt.member} {receipt.kind.value} of {receipt.author} "
                                f"in {conversation} at {receipt.seq}, after {before}",
                            )
                        )
                    self.receipt_seqs[key] = max(before, receipt.seq)

    async def forget_store(self, peer_id: str, others: Sequence[SimNode]) -> None:
        """``peer_id`` lost its store: its messages that no other up node has are gone, and
        so are those it deleted that no other up node shows deleted: the deletion's delete
        may have gone out while its redaction did not (see ``Changes.vanished``)."""
        mine = set(self.authored.get(peer_id, []))
        elsewhere: set[str] = set()
        shown_deleted: set[str] = set()
        for conversation in {self.acked[m] for m in mine}:
            for other in others:
                for message in await _history(other, conversation):
                    elsewhere.add(message.id)
                    if message.deleted_at is not None:
                        shown_deleted.add(message.id)
        self.orphaned.update(mine - elsewhere, (mine & self.deleted) - shown_deleted)


async def _history(node: SimNode, conversation: str) -> list[Message]:
    if node.replica is None:
        return []
    try:
        return await node.replica.history(conversation, limit=HISTORY_LIMIT)
    except UnknownConversation:
        return []


async def state_of(node: SimNode, conversation: str) -> frozenset[tuple[int, int]]:
    """The node's state vector as (client, clock) pairs: their encoded order is arbitrary."""
    assert node.replica is not None
    return frozenset(decode_state_vector(await node.replica.state_vector(conversation)).items())


async def holds(node: SimNode, conversation: str) -> bool:
    """True if ``node`` is up and has ``conversation``."""
    if node.replica is None:
        return False
    try:
        await node.replica.metadata(conversation)
    except UnknownConversation:
        return False
    return True


async def expected_holders(network: Network, conversation: str) -> tuple[list[SimNode], set[str]]:
    """Up nodes that are active members in an active member's view, and every peer id ever listed."""
    active: set[str] = set()
    listed: set[str] = set()
    for node in network.nodes:
        if await holds(node, conversation):
            assert node.replica is not None
            members = await node.replica.members(conversation)
            listed.update(members)
            own = members.get(node.peer_id)
            if own is not None and own.active:
                active.update(peer for peer, member in members.items() if member.active)
    return [node for node in network.nodes if node.up and node.peer_id in active], listed


async def converged(network: Network, conversations: Sequence[str]) -> bool:
    """True once every conversation's expected holders hold it with equal state vectors and
    equal transcripts, and each holder's index has caught up with its document (received
    updates are merged into the document first and committed with their index rows a
    moment later); and no node had anything under way, before the checks or after them
    (a receipt written meanwhile would change a state vector already compared)."""
    if not _settled(network):
        return False
    for conversation in conversations:
        expected, _ = await expected_holders(network, conversation)
        vectors = set()
        transcripts = []
        for node in expected:
            if not await holds(node, conversation):
                return False
            assert node.replica is not None
            vectors.add(await state_of(node, conversation))
            history = await node.replica.history(conversation, limit=HISTORY_LIMIT)
            if history != await node.replica.export(conversation):
                return False
            transcripts.append(history)
        if len(vectors) > 1 or any(transcript != transcripts[0] for transcript in transcripts):
            return False
    return _settled(network)


def _settled(network: Network) -> bool:
    return all(node.replica is None or node.replica.settled for node in network.nodes)


async def check_all(network: Network, conversations: Sequence[str], ledger: Ledger) -> list[Violation]:
    """Every invariant, on the healed network."""
    for node in network.nodes:
        if node.view is not None:
            await node.view.drained()
    found = list(ledger.violations)
    for conversation in conversations:
        found.extend(await _check_conversation(network, conversation, ledger))
    return found


async def _check_conversation(network: Network, conversation: str, ledger: Ledger) -> list[Violation]:
    found: list[Violation] = []
    expected, listed = await expected_holders(network, conversation)
    for node in network.nodes:
        if node.peer_id not in listed and await holds(node, conversation):
            found.append(Violation("non-member holds conversation", f"{node.name} holds {conversation}"))
    present = [node for node in expected if await holds(node, conversation)]
    for node in expected:
        if node not in present:
            found.append(Violation("conversation missing", f"member {node.name} lacks {conversation}"))
    if not present:
        return found
    vectors: dict[frozenset[tuple[int, int]], list[str]] = {}
    histories: dict[str, list[Message]] = {}
    exports: dict[str, list[Message]] = {}
    for node in present:
        assert node.replica is not None
        vectors.setdefault(await state_of(node, conversation), []).append(node.name)
        histories[node.name] = await node.replica.history(conversation, limit=HISTORY_LIMIT)
        exports[node.name] = await node.replica.export(conversation)
    if len(vectors) > 1:
        groups = " | ".join(",".join(names) for names in vectors.values())
        found.append(Violation("state vectors differ", f"{conversation}: {groups}"))
    for node in present:
        found.extend(_check_view(node, conversation, histories[node.name]))
    found.extend(_compare("index transcripts differ", conversation, histories))
    found.extend(_compare("document transcripts differ", conversation, exports))
    must_have = {m for m, conv in ledger.acked.items() if conv == conversation and m not in ledger.orphaned}
    for name, messages in exports.items():
        missing = must_have - {m.id for m in messages}
        if missing:
            found.append(
                Violation(
                    "acknowledged message lost", f"{name} lacks {len(missing)} of {conversation}: {sorted(missing)[:3]}"
                )
            )
    return found


def _check_view(node: SimNode, conversation: str, history: list[Message]) -> list[Violation]:
    """The node's application, following its events, shows what its index does."""
    assert node.view is not None
    indexed = {m.id for m in history if m.deleted_at is None}
    shown = node.view.live.get(conversation, set())
    if shown == indexed:
        return []
    extra, lacking = sorted(shown - indexed), sorted(indexed - shown)
    return [
        Violation(
            "application view differs",
            f"{node.name} in {conversation} shows {len(extra)} the index does not {extra[:3]}, "
            f"and not {len(lacking)} it does {lacking[:3]}",
        )
    ]


def _compare(kind: str, conversation: str, views: dict[str, list[Message]]) -> list[Violation]:
    names = list(views)
    reference = views[names[0]]
    found = []
    for name in names[1:]:
        other = views[name]
        if other != reference:
            at = next((i for i, (a, b) in enumerate(zip(reference, other, strict=False)) if a != b), None)
            if at is None:
                where = f"lengths {len(reference)} vs {len(other)}"
            else:
                where = f"first difference at {at}: {reference[at]} vs {other[at]}"
            found.append(Violation(kind, f"{conversation}: {names[0]} vs {name}, {where}"))
    return found
