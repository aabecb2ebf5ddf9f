"""The ``attack`` block of the config, checked before any work starts.

``f`` is the number of Byzantine clients: an integer >= 0, or a fraction in (0, 1) of
``num_clients`` (rounded to the nearest count). At least one client must stay honest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sim.errors import ConfigError
from sim.validation import choice, integer, is_int, is_number, number

#: attack name -> its parameters and their defaults (the keys of configs/attack/<name>.yaml besides name, f)
PARAMETERS: dict[str, dict[str, Any]] = {
    "none": {},
    "sign_flip": {},
    "label_flip": {},
    "gaussian": {"mean": 0.0, "std": 1.0},
    "ipm": {"eps": 0.1},
    "alie": {"z": None},
    "min_max": {"perturbation": "std", "gamma_init": 10.0, "tolerance": 1e-5},
    "min_sum": {"perturbation": "std", "gamma_init": 10.0, "tolerance": 1e-5},
    "mimic": {"target": 0},
    "infinity": {},  # ByzFL's Inf; not "inf", which Hydra reads as a float in attack=inf
}
PERTURBATIONS = ("std", "unit_vec", "sign")
#: attacks that replace the Byzantine clients' models (all but label_flip, which changes their data)
CRAFTED = frozenset(PARAMETERS) - {"none", "label_flip"}
#: attacks whose rows are computed from the honest models of the same aggregation
OMNISCIENT = frozenset({"sign_flip", "ipm", "alie", "min_max", "min_sum", "mimic"})


@dataclass(frozen=True)
class AttackConfig:
    name: str = "none"
    f: float = 0  # as given: a count, or a fraction of num_clients
    num_byzantine: int = 0  # the resolved count
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.name != "none" and self.num_byzantine > 0

    @property
    def crafted(self) -> bool:
        return self.name in CRAFTED

    @classmethod
    def from_config(cls, cfg: Any, num_clients: int) -> AttackConfig:
        cfg = dict(cfg) if cfg is not None else {}
        name = choice("attack.name", cfg.get("name", "none"), tuple(PARAMETERS))
        if name == "none":
            return cls()
        count = byzantine_count(cfg.get("f", 0), num_clients)
        params = {key: cfg.get(key, default) for key, default in PARAMETERS[name].items()}
        return cls(name, cfg.get("f", 0), count, _checked(name, params))


def byzantine_count(f: Any, num_clients: int) -> int:
    """``f`` as a number of clients; ConfigError unless it leaves at least one honest client."""
    allowed = "an integer >= 0 (Byzantine clients) or a fraction in (0, 1) of num_clients"
    if is_int(f):
        count = integer("attack.f", f, 0, allowed=allowed)
    elif is_number(f) and 0 < f < 1:
        count = round(f * num_clients)
    else:
        raise ConfigError("attack.f", f, allowed)
    if count >= num_clients:
        raise ConfigError(
            "attack.f",
            f,
            f"fewer Byzantine clients than num_clients={num_clients}",
            f"That makes {count} Byzantine clients and leaves no honest one.",
        )
    return count


def _checked(name: str, params: dict[str, Any]) -> dict[str, Any]:
    if name == "gaussian":
        params["mean"] = number("attack.mean", params["mean"])
        params["std"] = number("attack.std", params["std"], 0)
    elif name == "ipm":
        params["eps"] = number("attack.eps", params["eps"], 0, lo_open=True)
    elif name == "alie" and params["z"] is not None:
        params["z"] = number(
            "attack.z", params["z"], 0, allowed="null (Baruch et al.'s z from n and f) or a finite number >= 0"
        )
    elif name in ("min_max", "min_sum"):
        choice("attack.perturbation", params["perturbation"], PERTURBATIONS)
        params["gamma_init"] = number("attack.gamma_init", params["gamma_init"], 0, lo_open=True)
        params["tolerance"] = number(
            "attack.tolerance",
            params["tolerance"],
            0,
            params["gamma_init"],
            lo_open=True,
            hi_open=True,
            allowed=f"a number in (0, gamma_init={params['gamma_init']:g})",
        )
    elif name == "mimic":
        params["target"] = integer("attack.target", params["target"], 0)
    return params
