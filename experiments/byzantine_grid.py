"""The Byzantine sweep's grid: the setting, the rules, the attacks and which sweeps run in which order.

Shared by the sweep (experiments/byzantine.py) and the report (experiments/byzantine_report.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
HONEST_FL, HONEST_GOSSIP, DEGREE, ROUNDS = 10, 12, 6, 20
COMMON = (
    "progress=false",
    "dataset=digits",
    "model=logreg",
    "backend=vectorized",
    "train.epochs=1",
    "train.batch_size=10",
    "train.lr=0.1",
)
HETEROGENEITY = {
    "iid": ("partition=iid",),
    "dir1": ("partition=dirichlet", "partition.alpha=1.0"),
    "dir0.1": ("partition=dirichlet", "partition.alpha=0.1"),
}
ATTACKS = {
    "none": (),
    "sign_flip": ("attack=sign_flip",),
    "label_flip": ("attack=label_flip",),
    "gaussian": ("attack=gaussian",),
    "ipm": ("attack=ipm",),
    "alie": ("attack=alie",),
    "alie_z1.5": ("attack=alie", "attack.z=1.5"),
    "min_max": ("attack=min_max",),
    "min_sum": ("attack=min_sum",),
    "mimic": ("attack=mimic",),
    "infinity": ("attack=infinity",),
}
ROBUST_FL = (
    "median",
    "trimmed_mean",
    "meamed",
    "krum",
    "multi_krum",
    "bulyan",
    "geometric_median",
    "centered_clipping",
)
NNM_FL = ("median", "trimmed_mean", "krum")
FL_RULES = ("fedavg", *ROBUST_FL, *(f"nnm+{rule}" for rule in NNM_FL))
ALIE_RULES = ("fedavg", "median", "krum", "nnm+median", "nnm+krum")  # the literature's ALIE claim, at f = 1 and 3
GOSSIP_RULES = ("gossip_avg", "clipped_gossip", "median", "trimmed_mean")
CHANCE = 0.1  # a diverged (NaN) model: counted as a constant prediction on 10 balanced classes
DIVERGED = -1.0  # in the printed tables: every seed diverged


@dataclass(frozen=True)
class Grid:
    """One sweep: every rule x attack x heterogeneity x seed at each f (``attacks=None``: the top ones)."""

    name: str
    mode: str
    fs: tuple[int, ...]
    rules: tuple[str, ...]
    attacks: tuple[str, ...] | None
    top_from: str = ""  # attacks=None: the attacks most often worst in this grid's results
    hets: tuple[str, ...] = tuple(HETEROGENEITY)


#: ``--reduced``: the attacks that were a rule's worst in the full f = 2 sweep, plus no attack, ALIE and infinity
REDUCED_ATTACKS = ("none", "sign_flip", "gaussian", "ipm", "alie", "min_max", "mimic", "infinity")


def grids(smoke: bool, reduced: bool = False) -> list[Grid]:
    """The sweeps, most informative first, so that a cut-short run still answers the main questions.

    ``reduced``: FL at f = 2 only, every rule, ``REDUCED_ATTACKS`` (about a quarter of the full sweep's runs).
    """
    if reduced:
        return [Grid("fl_reduced", "federated", (2,), FL_RULES, REDUCED_ATTACKS)]
    if smoke:
        return [
            Grid("fl_smoke", "federated", (2,), ("fedavg",), ("none", "gaussian"), hets=("iid",)),
            Grid("gossip_smoke", "gossip", (2,), ("clipped_gossip",), ("sign_flip",), hets=("iid",)),
        ]
    every = tuple(ATTACKS)
    return [
        Grid("fl_full", "federated", (2,), FL_RULES, every),
        Grid("gossip_full", "gossip", (2,), GOSSIP_RULES, every),
        Grid("fl_full", "federated", (4,), FL_RULES, every),
        Grid("fl_worst", "federated", (1, 3), FL_RULES, None, top_from="fl_full"),
        Grid("gossip_worst", "gossip", (4,), GOSSIP_RULES, None, top_from="gossip_full"),
        Grid("fl_alie", "federated", (1, 3), ALIE_RULES, ("none", "alie", "alie_z1.5")),
    ]


def tolerated(rule: str, mode: str, f: int) -> bool:
    """Skip what a rule refuses by construction (Bulyan needs n >= 4f + 3) instead of logging refusals."""
    return not (rule == "bulyan" and HONEST_FL + f < 4 * f + 3)
