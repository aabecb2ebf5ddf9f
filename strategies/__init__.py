"""Aggregation rules: given K models, which single model to keep.

Every rule is a small class with ``init_state`` and ``aggregate`` (state as data, in the manner of
FedJAX's aggregators). The same object serves as an FL server rule and as a gossip merge rule.
Hydra's ``_target_`` in ``configs/strategy/*.yaml`` is the registry.
"""

from .all_clients import MIFA, FedAvgAll, KnownProbability
from .base import AggregationInfo, Strategy, build_strategy, weighted_average
from .client_side import FedDyn, FedNova, FedProx, Scaffold
from .fedau import FedAU
from .fedavg import FedAvg
from .fedopt import ServerOptimizer
from .gossip import GossipAvg
from .qfedavg import QFedAvg
from .robust import (
    Bulyan,
    CenteredClipping,
    ClippedGossip,
    CoordinateMedian,
    GeometricMedian,
    Krum,
    MeaMed,
    TrimmedMean,
)
from .soups import FisherMerge, GreedySoup, Interpolate, SparseSoup, UniformSoup
from .task_merging import TaskArithmetic
from .variance import VarianceCorrected

__all__ = [
    "AggregationInfo",
    "Strategy",
    "build_strategy",
    "weighted_average",
    "FedAvg",
    "FedProx",
    "Scaffold",
    "FedDyn",
    "FedNova",
    "ServerOptimizer",
    "QFedAvg",
    "FedAU",
    "FedAvgAll",
    "KnownProbability",
    "MIFA",
    "GossipAvg",
    "VarianceCorrected",
    "UniformSoup",
    "GreedySoup",
    "FisherMerge",
    "Interpolate",
    "SparseSoup",
    "TaskArithmetic",
    "CoordinateMedian",
    "TrimmedMean",
    "MeaMed",
    "Krum",
    "Bulyan",
    "GeometricMedian",
    "CenteredClipping",
    "ClippedGossip",
]
