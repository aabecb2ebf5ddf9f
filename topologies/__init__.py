"""Communication graphs for gossip learning: builders, mixing weights, time-varying schedules.

``build_topology(cfg.topology, num_nodes, seed)`` returns a :class:`Topology` whose
``mixing_matrix(round)`` is the sparse ``W`` of one synchronous gossip step ``X <- W @ X``;
``validate_topology_config`` checks a config without building anything. Federated learning is the
``star`` topology with node 0 as the server.
"""

from .config import TOPOLOGIES
from .mixing import MIXING_RULES, mixing_matrix, mixing_weights
from .topology import Topology, build_topology, validate_topology_config

__all__ = [
    "MIXING_RULES",
    "TOPOLOGIES",
    "Topology",
    "build_topology",
    "mixing_matrix",
    "mixing_weights",
    "validate_topology_config",
]
