"""Run a scenario against a simulated network, heal it, and judge the result."""

from __future__ import annotations

import contextlib
import random
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from ..errors import NotAllowed, UnknownConversation, UnknownMessage
from ..model import ConversationKind, Text
from ..sync import LinkSettings
from ._appview import AppView
from ._faults import FaultSource, RandomFaults, WireStats
from ._invariants import Ledger, Violation, check_all, converged
from ._network import FaultFactory, Network, SimNode, Transport, open_network
from ._scenario import NETWORK_OPS, Op, ScenarioConfig, Step, plan_scenario

EMOJI = ("👍", "❤️", "😂", "🎉")
SKIPPED = (NotAllowed, UnknownConversation, UnknownMessage)  # the op made no sense on that node then
RECHECK_SECONDS = 0.05  # batch convergence checks: at most one per this long
IDLE_RECHECK_SECONDS = 0.5  # and at least one per this long: a node can settle without storing anything


@dataclass(slots=True)
class ScenarioResult:
    """What a run did and whether every invariant held.

    Attributes:
        config: the configuration run.
        steps: how many steps ran (creations included).
        done: operations that took effect, by kind.
        skipped: operations that made no sense when their turn came (e.g. a non-member sending).
        messages: acknowledged sends.
        wire: frames and bytes the engines sent (before faults), with faults counted.
        run_seconds: time from the first step to the heal.
        converge_seconds: time from the heal to convergence (``None``: it never came).
        violations: every broken invariant; empty means the run passed.
    """

    config: ScenarioConfig
    steps: int = 0
    done: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    messages: int = 0
    wire: WireStats = field(default_factory=WireStats)
    run_seconds: float = 0.0
    converge_seconds: float | None = None
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if every invariant held."""
        return not self.violations

    @property
    def verdict(self) -> str:
        """``PASS`` or ``FAIL (n violations)``."""
        return "PASS" if self.ok else f"FAIL ({len(self.violations)} violations)"

    @property
    def bytes_per_message(self) -> float:
        """Bytes the engines sent per acknowledged message (all traffic, receipts included)."""
        return self.wire.bytes / self.messages if self.messages else 0.0

    def replay_command(self) -> str:
        """The command line that runs this scenario again."""
        c, r = self.config, self.config.rates
        args = (
            f"--nodes {c.nodes} --ops {c.ops} --seed {c.seed} --groups {c.groups} --directs {c.directs} "
            f"--loss {r.loss:g} --dup {r.dup:g} --reorder {r.reorder:g} --latency {r.latency * 1000:g} "
            f"--partitions {c.partitions} --crashes {c.crashes} --lose-store {c.lose_store:g} "
            f"--anti-entropy {c.anti_entropy:g} --rest-after {c.rest_after:g} --timeout {c.converge_timeout:g}"
        )
        flags = ("" if c.membership else " --no-membership") + (" --tcp" if c.tcp else "")
        return f"gigi-crdt harness {args}{flags}"

    def summary(self) -> str:
        """A human-readable report, one fact per line."""
        c, w = self.config, self.wire
        converge = "never" if self.converge_seconds is None else f"{self.converge_seconds:.2f} s"
        lines = [
            f"harness: {c.nodes} nodes, seed {c.seed}, {'tcp' if c.tcp else 'memory'} links, "
            f"loss {c.rates.loss:g} dup {c.rates.dup:g} reorder {c.rates.reorder:g}, "
            f"{c.partitions} partitions, {c.crashes} crashes",
            f"ops:        {sum(self.done.values())} done, {sum(self.skipped.values())} skipped ({_counts(self.done)})",
            f"messages:   {self.messages} acknowledged",
            f"wire:       {w.frames} frames, {w.bytes} bytes, {self.bytes_per_message:.0f} bytes/message; "
            f"dropped {w.dropped}, duplicated {w.duplicated}, delayed {w.delayed}",
            f"run:        {self.run_seconds:.2f} s; converged after heal: {converge}",
            f"verdict:    {self.verdict}",
        ]
        lines += [f"  - {v}" for v in self.violations[:20]]
        if len(self.violations) > 20:
            lines.append(f"  ... and {len(self.violations) - 20} more")
        if not self.ok:
            lines.append(f"replay:     {self.replay_command()}")
        return "\n".join(lines)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in counter.most_common())


def seeded_faults(config: ScenarioConfig) -> FaultFactory:
    """One ``random.Random`` per link direction and session, derived from the seed alone.

    Each direction's decisions do not depend on how the others' frames interleave, so a
    replay makes the same decisions wherever the engines send the same frames.
    """

    def make(a: int, b: int, session: int) -> FaultSource:
        return RandomFaults(config.rates, random.Random(f"gigi-harness/faults/{config.seed}/{a}->{b}/{session}"))

    return make


def harness_settings(config: ScenarioConfig) -> LinkSettings:
    """Link settings for simulations: fast anti-entropy, timeouts short enough to matter."""
    return LinkSettings(
        handshake_timeout=5.0, ping_interval=1.0, idle_timeout=10.0, anti_entropy_interval=config.anti_entropy
    )


@contextlib.contextmanager
def _scratch_dir(root: Path | None) -> Iterator[Path]:
    if root is not None:
        yield root
        return
    # tmpfs when there is one: every commit fsyncs (synchronous=FULL), which a disk makes slow.
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="gigi-harness-", dir=base) as path:
        yield Path(path)


async def run_scenario(
    config: ScenarioConfig,
    steps: Sequence[Step] | None = None,
    *,
    faults: FaultFactory | None = None,
    settings: LinkSettings | None = None,
    root: Path | None = None,
) -> ScenarioResult:
    """Run ``steps`` (default: ``plan_scenario(config)``), heal, wait for convergence, check.

    ``faults`` decides each frame's fate (default: ``seeded_faults(config)``); ``settings``
    replaces the engines' link settings (e.g. to disable anti-entropy); ``root`` keeps
    the node stores there instead of in a temporary directory.
    """
    plan = plan_scenario(config) if steps is None else list(steps)
    result = ScenarioResult(config)
    with _scratch_dir(root) as where:
        async with open_network(
            where,
            config.nodes,
            settings=settings or harness_settings(config),
            rates=config.rates,
            faults=faults or seeded_faults(config),
            transport=Transport.TCP if config.tcp else Transport.MEMORY,
            rest_after=config.rest_after,
        ) as network:
            runner = _Runner(network, config, result)
            started = time.perf_counter()
            for number, step in enumerate(plan):
                await runner.run(number, step)
                if number % config.receipt_sample_every == 0:
                    await runner.ledger.sample_receipts(network.nodes)
            result.steps = len(plan)
            await runner.heal()
            result.run_seconds = time.perf_counter() - started
            healed = time.perf_counter()
            with trio.move_on_after(config.converge_timeout):
                await _until_converged(network, runner.conversations)
                result.converge_seconds = time.perf_counter() - healed
            await runner.ledger.sample_receipts(network.nodes)
            result.violations = await check_all(network, runner.conversations, runner.ledger)
            if result.converge_seconds is None:
                result.violations.insert(
                    0, Violation("no convergence", f"not converged {config.converge_timeout:g} s after the heal")
                )
            result.wire = network.stats
    return result


async def _until_converged(network: Network, conversations: Sequence[str]) -> None:
    while True:
        stored = network.watch.arm()  # armed before checking, so no update slips by
        if await converged(network, conversations) and not stored.is_set():
            return
        # Mostly a stored update moves things on; but a queued receipt can turn out to
        # change nothing, and then nothing is stored when its node settles.
        with trio.move_on_after(IDLE_RECHECK_SECONDS):
            await stored.wait()
        await trio.sleep(RECHECK_SECONDS)  # let a burst of updates land before re-checking


class _Runner:
    """Executes steps; remembers conversation ids and every node's own live messages."""

    def __init__(self, network: Network, config: ScenarioConfig, result: ScenarioResult) -> None:
        self.network = network
        self.config = config
        self.result = result
        self.ledger = Ledger()
        self.conversations: list[str] = []
        self.creators: dict[str, str] = {}  # conversation -> creator's peer id
        self.own: dict[tuple[str, str], list[str]] = {}  # (peer id, conversation) -> live message ids

    async def run(self, number: int, step: Step) -> None:
        node = self.network.nodes[step.node % len(self.network.nodes)]
        if step.op in NETWORK_OPS:
            took = await self._network_step(node, step)
        elif node.replica is None or (step.op is not Op.CREATE and not self.conversations):
            took = False
        else:
            try:
                took = await self._user_step(number, node, step)
            except SKIPPED:
                took = False
        (self.result.done if took else self.result.skipped)[step.op.value] += 1

    async def _user_step(self, number: int, node: SimNode, step: Step) -> bool:
        replica = node.replica
        assert replica is not None
        if step.op is Op.CREATE:
            return await self._create(node, step)
        conversation = self.conversations[step.conv % len(self.conversations)]
        own = self.own.setdefault((node.peer_id, conversation), [])
        if step.op is Op.SEND:
            message = await replica.send(conversation, Text(f"{node.name} says #{number}"))
            self._view(node).wrote(conversation, message)
            self.ledger.acknowledge(conversation, message, node.peer_id)
            self.result.messages += 1
            own.append(message)
        elif step.op is Op.EDIT and own:
            await replica.edit(conversation, own[step.pick % len(own)], Text(f"{node.name} edits #{number}"))
        elif step.op is Op.DELETE and own:
            message = own.pop(step.pick % len(own))
            await replica.delete(conversation, message)
            self._view(node).deleted(conversation, message)
            self.ledger.deleted.add(message)
        elif step.op is Op.REACT:
            recent = await replica.history(conversation, limit=16)
            if not recent:
                return False
            target = recent[step.pick % len(recent)].id
            await replica.react(conversation, target, EMOJI[step.pick % len(EMOJI)], on=step.pick % 5 != 0)
        elif step.op is Op.READ:
            await replica.mark_read(conversation)
        elif step.op is Op.JOIN:
            return await self._join(node, conversation)
        elif step.op is Op.LEAVE:
            if self.creators[conversation] == node.peer_id or not await replica.is_member(conversation, node.peer_id):
                return False
            if (await replica.metadata(conversation)).kind is ConversationKind.DIRECT:
                return False
            await replica.leave(conversation)
        else:
            return False
        return True

    @staticmethod
    def _view(node: SimNode) -> AppView:
        assert node.view is not None  # up: it has just written
        return node.view

    async def _create(self, node: SimNode, step: Step) -> bool:
        assert node.replica is not None
        others = {
            other.peer_id: other.name
            for other in self.network.nodes
            if step.pick >> other.index & 1 and other is not node
        }
        kind = ConversationKind.DIRECT if step.flag else ConversationKind.GROUP
        if not others or (kind is ConversationKind.DIRECT and len(others) != 1):
            return False
        conversation = await node.replica.create_conversation(kind, title=f"c{step.conv}", others=others)
        self.conversations.append(conversation)
        self.creators[conversation] = node.peer_id
        return True

    async def _join(self, node: SimNode, conversation: str) -> bool:
        """The group's creator adds ``node`` if, as far as the creator knows, it is not in."""
        admin = next((n for n in self.network.nodes if n.peer_id == self.creators[conversation]), None)
        if admin is None or admin.replica is None or admin is node:
            return False
        if (await admin.replica.metadata(conversation)).kind is ConversationKind.DIRECT:
            return False
        if await admin.replica.is_member(conversation, node.peer_id):
            return False
        await admin.replica.add_member(conversation, node.peer_id, node.name)
        return True

    async def _network_step(self, node: SimNode, step: Step) -> bool:
        network = self.network
        if step.op is Op.OFFLINE:
            if not node.online:
                return False
            network.set_online(node.index, False)
        elif step.op is Op.ONLINE:
            offline = [n for n in network.nodes if not n.online]
            if not offline:
                return False
            network.set_online(offline[step.pick % len(offline)].index, True)
        elif step.op is Op.CRASH:
            if not node.up:
                return False
            peer_id = node.peer_id
            await network.crash(node.index, lose_store=step.flag)
            if step.flag:
                await self.ledger.forget_store(peer_id, [n for n in network.nodes if n is not node])
        elif step.op is Op.RESTART:
            if node.up:
                return False
            await network.start(node.index)
        elif step.op is Op.PARTITION:
            side = frozenset(n.index for n in network.nodes if step.pick >> n.index & 1)
            if not side or len(side) == len(network.nodes):
                return False
            network.partition(step.conv, side)
        elif step.op is Op.HEAL_PARTITION:
            if step.conv not in network.partitions:
                return False
            network.heal_partition(step.conv)
        return True

    async def heal(self) -> None:
        """Restart every crashed node (store kept), then heal the network."""
        for node in self.network.nodes:
            if not node.up:
                await self.network.start(node.index)
        self.network.heal()
