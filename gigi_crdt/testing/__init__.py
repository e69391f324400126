"""A simulation harness for the sync engine: many nodes, a faulty network, a verdict.

Real replicas (SQLite, in a temporary directory) and real ``SyncEngine``s are linked over
trio memory streams or loopback TCP through a layer that loses, duplicates, delays and
reorders whole frames; partitions form and heal; nodes go offline, crash and restart with
their store or as a fresh device. A scenario of random operations, planned from a seed,
runs against that network; then the network heals and the invariants are checked::

    import trio
    from gigi_crdt.testing import FaultRates, ScenarioConfig, run_scenario

    config = ScenarioConfig(nodes=5, ops=300, seed=7, rates=FaultRates(loss=0.1, dup=0.05, reorder=0.2))
    result = trio.run(run_scenario, config)
    print(result.summary())      # verdict, violations, and the command that replays the seed
    assert result.ok

From the shell: ``gigi-crdt harness --nodes 10 --ops 10000 --seed 7 --loss 0.1``.
"""

from ._faults import Fate as Fate
from ._faults import FaultRates as FaultRates
from ._faults import FaultSource as FaultSource
from ._faults import FaultyStream as FaultyStream
from ._faults import RandomFaults as RandomFaults
from ._faults import ScriptedFaults as ScriptedFaults
from ._faults import WireStats as WireStats
from ._invariants import Violation as Violation
from ._network import Network as Network
from ._network import SimNode as SimNode
from ._network import StoreWatch as StoreWatch
from ._network import Transport as Transport
from ._network import open_network as open_network
from ._runner import ScenarioResult as ScenarioResult
from ._runner import harness_settings as harness_settings
from ._runner import run_scenario as run_scenario
from ._runner import seeded_faults as seeded_faults
from ._scenario import Op as Op
from ._scenario import ScenarioConfig as ScenarioConfig
from ._scenario import Step as Step
from ._scenario import plan_scenario as plan_scenario

__all__ = [
    "Fate",
    "FaultRates",
    "FaultSource",
    "FaultyStream",
    "Network",
    "Op",
    "RandomFaults",
    "ScenarioConfig",
    "ScenarioResult",
    "ScriptedFaults",
    "SimNode",
    "StoreWatch",
    "Step",
    "Transport",
    "Violation",
    "WireStats",
    "harness_settings",
    "open_network",
    "plan_scenario",
    "run_scenario",
    "seeded_faults",
]
