"""The attack inside a run: which rows of an aggregation are Byzantine, and what they are replaced by.

Attacks craft *updates*: each honest model minus the aggregation's reference (the FL global model
that the round started from; in gossip the receiving node's own model), the vectors ByzFL's attacks
are written for (gradients or model differences), and the crafted update is added back to the
reference. Sign flip then sends ``reference - mean(honest updates)``, a model that undoes the
round's progress, rather than the negated model, which no paper means. For the attacks that are
shift-invariant (ALIE, mimic, Min-Max / Min-Sum with the std deviation) the two readings coincide.

Omniscient attacks (sign flip, IPM, ALIE, Min-Max, Min-Sum, mimic) see the honest inputs of the
same aggregation: in FL the models of the round's honest participants, in gossip the honest
neighbours whose messages reached the receiver (lost messages are not seen). With no honest input
to craft from they send the reference itself (a zero update). Gaussian and inf need no honest input.
"""

from __future__ import annotations

import dataclasses

import torch

from sim.seeding import torch_generator
from strategies import AggregationInfo

from . import crafting
from .config import OMNISCIENT, AttackConfig
from .selection import byzantine_ids


class Attack:
    """The configured attack and its Byzantine clients (drawn from the seed once per run)."""

    def __init__(self, config: AttackConfig, num_clients: int, seed: int):
        self.config, self.seed = config, seed
        self.ids = byzantine_ids(num_clients, config.num_byzantine, seed)
        self.mask = torch.zeros(num_clients, dtype=torch.bool)
        self.mask[self.ids] = True
        self.honest_ids = torch.nonzero(~self.mask).flatten()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def crafted(self) -> bool:
        """True when Byzantine rows are replaced (every attack but label_flip, which poisons data)."""
        return self.config.crafted

    def craft(
        self, honest: torch.Tensor, reference: torch.Tensor, count: int, num_inputs: int, key: tuple
    ) -> torch.Tensor:
        """``[count, P]`` Byzantine models from the honest models ``[H, P]`` of one aggregation of ``num_inputs``.

        ``key`` names the aggregation (round, and the receiver in gossip): Gaussian draws come from
        the stream ``("attack", *key)``, so they are the same in every backend and after a resume.
        """
        name, params = self.config.name, self.config.params
        updates = honest - reference
        if name in OMNISCIENT and updates.shape[0] == 0:
            return reference.expand(count, -1).clone()
        if name == "sign_flip":
            crafted = crafting.sign_flip(updates, count)
        elif name == "ipm":
            crafted = crafting.ipm(updates, count, params["eps"])
        elif name == "alie":
            z = params["z"] if params["z"] is not None else crafting.alie_z(num_inputs, count)
            crafted = crafting.alie(updates, count, z)
        elif name in ("min_max", "min_sum"):
            function = crafting.min_max if name == "min_max" else crafting.min_sum
            crafted = function(updates, count, params["perturbation"], params["gamma_init"], params["tolerance"])
        elif name == "mimic":
            crafted = crafting.mimic(updates, count, params["target"])
        elif name == "gaussian":
            generator = torch_generator(self.seed, "attack", *key)
            crafted = crafting.gaussian(updates, count, params["mean"], params["std"], generator)
        elif name == "infinity":
            crafted = crafting.inf(updates, count)
        else:  # pragma: no cover - AttackConfig admits no other crafted name
            raise ValueError(f"no crafted rows for attack {name!r}")
        return reference + crafted

    def substitute(
        self, models: torch.Tensor, client_ids: torch.Tensor, reference: torch.Tensor, round_: int
    ) -> tuple[torch.Tensor, int]:
        """FL: the round's stack with the Byzantine participants' rows crafted, and how many there are."""
        byzantine = self.mask[client_ids]
        count = int(byzantine.sum())
        if count == 0 or not self.crafted:
            return models, count
        out = models.clone()
        out[byzantine] = self.craft(models[~byzantine], reference, count, len(client_ids), ("round", round_))
        return out, count

    def received(self, params: torch.Tensor, node: int, senders: torch.Tensor, round_: int) -> tuple[torch.Tensor, int]:
        """Gossip: the stack ``node`` merges (own model, then one row per delivered sender), and its Byzantine count.

        Each Byzantine sender's row is crafted for this receiver from its honest senders' models
        (its own model is the reference, and is not among the honest inputs, so that mimic copies a
        neighbour and sign flip opposes the neighbourhood's pull, He et al. 2022's dissensus).
        """
        members = torch.cat([torch.tensor([node]), senders])
        byzantine = self.mask[senders]
        count = int(byzantine.sum())
        models = params[members]
        if count and self.crafted:
            rows = torch.nonzero(byzantine).flatten() + 1
            reference = params[node]
            honest = params[senders[~byzantine]]
            models[rows] = self.craft(honest, reference, count, len(members), ("round", round_, node))
        return models, count


def with_byzantine(info: AggregationInfo, count: int) -> AggregationInfo:
    """``info`` telling the rule how many of its inputs are Byzantine (``AggregationInfo.num_byzantine``)."""
    return dataclasses.replace(info, num_byzantine=count)
