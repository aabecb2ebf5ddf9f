"""Byzantine-robust aggregation rules (docs/robust.md): ordinary strategies on the ``[K, P]`` stack.

Each takes ``f``, the number of Byzantine inputs to tolerate (null: the run's
``info.num_byzantine``), refuses an ``n`` it cannot tolerate (``check_tolerance``), and runs in FL,
gossip, ``python -m sim.merge`` and Flower like any other strategy.
"""

from .clipping import CenteredClipping, ClippedGossip
from .common import RobustRule
from .coordinate import CoordinateMedian, MeaMed, TrimmedMean
from .distance import Bulyan, Krum
from .geometric import GeometricMedian

__all__ = [
    "RobustRule",
    "CoordinateMedian",
    "TrimmedMean",
    "MeaMed",
    "Krum",
    "Bulyan",
    "GeometricMedian",
    "CenteredClipping",
    "ClippedGossip",
]
