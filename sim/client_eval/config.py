"""The ``eval`` block: which clients are scored on their own local test rows, and where those rows come from.

Checked before any work: :func:`check_eval_config` with the rest of the config (no data needed), then
:func:`check_eval_data` once the data are built (a client sample of clients that have no local test
rows would score nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sim.errors import ConfigError
from sim.finetune import check_finetune
from sim.seeding import torch_generator
from sim.validation import integer, is_int, number

CLIENTS_ALLOWED = "none, all, or an integer >= 1 (a fixed seeded sample of that many clients)"


@dataclass(frozen=True)
class EvalConfig:
    clients: int | str | None  # None: no per-client evaluation; "all"; or a sample size
    local_test_fraction: float
    finetune_steps: int

    @classmethod
    def from_config(cls, block: Any) -> EvalConfig:
        block = {} if block is None else block
        clients = block.get("clients", "none")
        if clients is None or (isinstance(clients, str) and clients in ("none", "all")):  # null reads as none
            chosen: int | str | None = None if clients in (None, "none") else "all"
        elif is_int(clients) and clients >= 1:
            chosen = int(clients)
        else:
            raise ConfigError("eval.clients", clients, CLIENTS_ALLOWED)
        fraction = number(
            "eval.local_test_fraction",
            block.get("local_test_fraction", 0.0),
            0.0,
            1.0,
            hi_open=True,
            detail="The share of each client's training rows kept as its local test (0: none carved).",
        )
        steps = integer("eval.finetune_steps", block.get("finetune_steps", 0), 0)
        return cls(chosen, fraction, steps)

    @property
    def active(self) -> bool:
        return self.clients is not None


def check_eval_config(cfg: Any) -> EvalConfig:
    """The ``eval`` block's values (ConfigError naming the field otherwise)."""
    conf = EvalConfig.from_config(cfg.get("eval"))
    check_finetune(conf.finetune_steps, conf.active)  # eval.finetune_steps (sim/finetune.py)
    return conf


def check_eval_data(conf: EvalConfig, local_sizes: torch.Tensor) -> None:
    """Per-client evaluation needs local test rows: refused when no client has any."""
    if conf.active and int(local_sizes.sum()) == 0:
        raise ConfigError(
            "eval.local_test_fraction",
            conf.local_test_fraction,
            "a fraction in (0, 1) when eval.clients is not none and the data have no per-client test rows",
            f"eval.clients={conf.clients} scores each client on its own local test rows; this data set has none "
            "(only LEAF data with a test/ folder and partition=natural bring their own).",
        )


def evaluated_clients(clients: int | str | None, eligible: torch.Tensor, seed: int) -> torch.Tensor:
    """The ids scored at every evaluation, sorted: every eligible client, or a seeded sample of ``clients`` of them.

    ``eligible`` ``[N]`` bool: clients with local test rows (and honest ones under an attack). The sample is
    drawn once from ``("eval", "clients")``, so the same clients are scored at every evaluation and the
    curve of their distribution is not sampling noise; a sample at least as large as the eligible set is all
    of it.
    """
    ids = torch.nonzero(eligible).flatten()
    if clients == "all" or not isinstance(clients, int) or clients >= len(ids):
        return ids
    pick = torch.randperm(len(ids), generator=torch_generator(seed, "eval", "clients"))[:clients]
    return ids[pick].sort().values
