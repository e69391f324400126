"""The node: one peer with its store, sync engine, secure links and discovery, behind one API."""

from ._config import INTERFACE_VARIABLE as INTERFACE_VARIABLE
from ._config import NodeConfig as NodeConfig
from ._config import default_data_dir as default_data_dir
from ._events import ContactKeyChanged as ContactKeyChanged
from ._events import NodeEvent as NodeEvent
from ._node import Node as Node
from ._node import open_node as open_node

__all__ = [
    "INTERFACE_VARIABLE",
    "ContactKeyChanged",
    "Node",
    "NodeConfig",
    "NodeEvent",
    "default_data_dir",
    "open_node",
]
