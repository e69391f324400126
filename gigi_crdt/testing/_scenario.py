"""Scenarios: what the simulated users and the simulated network do, planned from a seed.

A scenario is a plain list of ``Step``s, fixed before anything runs: the same seed and
configuration always give the same steps (``plan_scenario``), and hypothesis can draw
the list directly (``steps_strategy`` in the tests). A step names its node and
conversation by index and carries a raw number, ``pick``, that chooses among whatever is
possible when it runs (which message to edit, which emoji): what is possible depends on
how far sync got, but the steps themselves never do.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

from ._faults import FaultRates


class Op(enum.StrEnum):
    """The kinds of step."""

    CREATE = "create"  # pick: bitmask of the other members; flag: a direct conversation
    SEND = "send"
    EDIT = "edit"
    DELETE = "delete"
    REACT = "react"
    READ = "read"
    JOIN = "join"  # the group's creator adds node ``node``
    LEAVE = "leave"
    OFFLINE = "offline"
    ONLINE = "online"
    CRASH = "crash"  # flag: the store is lost (the node comes back as a fresh device)
    RESTART = "restart"
    PARTITION = "partition"  # conv: the partition's id; pick: bitmask of one side
    HEAL_PARTITION = "heal-partition"  # conv: the partition's id


# Relative frequency of each user operation in a random scenario.
OP_WEIGHTS: dict[Op, int] = {
    Op.SEND: 50,
    Op.EDIT: 8,
    Op.DELETE: 4,
    Op.REACT: 12,
    Op.READ: 12,
    Op.JOIN: 3,
    Op.LEAVE: 2,
    Op.OFFLINE: 2,
    Op.ONLINE: 3,
}

NETWORK_OPS = frozenset({Op.OFFLINE, Op.ONLINE, Op.CRASH, Op.RESTART, Op.PARTITION, Op.HEAL_PARTITION})


@dataclass(frozen=True, slots=True)
class Step:
    """One thing that happens; see ``Op`` for what ``conv``, ``pick`` and ``flag`` mean."""

    op: Op
    node: int = 0
    conv: int = 0
    pick: int = 0
    flag: bool = False

    def __str__(self) -> str:
        extra = f" pick={self.pick}" if self.pick else ""
        extra += " flag" if self.flag else ""
        return f"{self.op.value} node={self.node} conv={self.conv}{extra}"


@dataclass(frozen=True, slots=True)
class ScenarioConfig:
    """Everything a run depends on besides its steps.

    Attributes:
        nodes: devices in the network (at least 2).
        ops: user and network operations after the conversations are created.
        seed: seeds the plan and every fault decision.
        groups: group conversations created at the start.
        directs: direct conversations created at the start.
        partitions: partitions that form and heal during the run.
        crashes: node crashes (each followed by a restart) during the run.
        lose_store: chance that a crash loses the node's store.
        rates: per-frame faults and latency of every link until the network heals.
        anti_entropy: seconds between the engines' anti-entropy rounds.
        converge_timeout: seconds to wait for convergence after the heal.
        tcp: link over real loopback TCP instead of memory streams.
        receipt_sample_every: ops between two samples of every receipt counter.
        membership: include join and leave operations.
        rest_after: seconds a node's unused conversation document stays in memory
            (``open_replica``); scaled down with the anti-entropy interval (30 s -> 0.3 s).
    """

    nodes: int = 5
    ops: int = 200
    seed: int = 0
    groups: int = 3
    directs: int = 2
    partitions: int = 2
    crashes: int = 1
    lose_store: float = 0.3
    rates: FaultRates = FaultRates()
    anti_entropy: float = 0.3
    converge_timeout: float = 30.0
    tcp: bool = False
    receipt_sample_every: int = 50
    membership: bool = True
    rest_after: float = 3.0

    def __post_init__(self) -> None:
        if self.nodes < 2:
            raise ValueError("a scenario needs at least 2 nodes")
        if self.ops < 0 or self.groups < 0 or self.directs < 0 or self.partitions < 0 or self.crashes < 0:
            raise ValueError("counts must not be negative")
        if self.groups + self.directs < 1:
            raise ValueError("a scenario needs at least one conversation")
        if not 0.0 <= self.lose_store <= 1.0:
            raise ValueError("lose_store must be within [0, 1]")
        if self.anti_entropy <= 0 or self.converge_timeout <= 0 or self.rest_after <= 0:
            raise ValueError("anti_entropy, converge_timeout and rest_after must be positive")

    @property
    def conversations(self) -> int:
        """Conversations created at the start (groups first)."""
        return self.groups + self.directs


def plan_scenario(config: ScenarioConfig) -> list[Step]:
    """The steps of a random scenario, a pure function of ``config`` (and so of its seed)."""
    rng = random.Random(f"gigi-harness/plan/{config.seed}")
    steps = [*_creations(config, rng)]
    timeline: list[list[Step]] = [[] for _ in range(config.ops + 1)]
    table = {op: w for op, w in OP_WEIGHTS.items() if config.membership or op not in (Op.JOIN, Op.LEAVE)}
    kinds, weights = list(table), list(table.values())
    for position in range(config.ops):
        op = rng.choices(kinds, weights)[0]
        timeline[position].append(
            Step(op, rng.randrange(config.nodes), rng.randrange(config.conversations), rng.randrange(1 << 30))
        )
    for ident in range(config.partitions):
        start, end = _window(config.ops, rng)
        side = rng.randrange(1, (1 << config.nodes) - 1)  # neither empty nor everyone
        timeline[start].insert(0, Step(Op.PARTITION, conv=ident, pick=side))
        timeline[end].insert(0, Step(Op.HEAL_PARTITION, conv=ident))
    for _ in range(config.crashes):
        start, end = _window(config.ops, rng)
        node = rng.randrange(config.nodes)
        timeline[start].insert(0, Step(Op.CRASH, node=node, flag=rng.random() < config.lose_store))
        timeline[end].insert(0, Step(Op.RESTART, node=node))
    for bucket in timeline:
        steps.extend(bucket)
    return steps


def _creations(config: ScenarioConfig, rng: random.Random) -> list[Step]:
    steps = []
    for conv in range(config.conversations):
        creator = rng.randrange(config.nodes)
        others = [n for n in range(config.nodes) if n != creator]
        direct = conv >= config.groups
        if direct:
            chosen = [rng.choice(others)]
        else:
            chosen = rng.sample(others, rng.randint(1, len(others)))
        steps.append(Step(Op.CREATE, creator, conv, sum(1 << n for n in chosen), direct))
    return steps


def _window(ops: int, rng: random.Random) -> tuple[int, int]:
    """A stretch of the run: starts anywhere, lasts 5 % to 30 % of it."""
    start = rng.randrange(ops + 1)
    length = max(1, int(ops * rng.uniform(0.05, 0.3)))
    return start, min(ops, start + length)
