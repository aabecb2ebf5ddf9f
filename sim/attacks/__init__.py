"""Byzantine clients: who they are, what they send, and how a run lets them in.

``config`` checks the ``attack`` block; ``selection`` draws the Byzantine ids and flips label
flippers' labels; ``crafting`` holds the attacks as functions of the honest stack ``[H, P]``;
``engine`` replaces the Byzantine rows of an aggregation. User documentation: docs/attacks.md.
"""

from .config import CRAFTED, OMNISCIENT, PARAMETERS, AttackConfig, byzantine_count
from .engine import Attack, with_byzantine
from .selection import byzantine_ids, flip_labels

__all__ = [
    "CRAFTED",
    "OMNISCIENT",
    "PARAMETERS",
    "Attack",
    "AttackConfig",
    "byzantine_count",
    "byzantine_ids",
    "flip_labels",
    "with_byzantine",
]
