"""Checks on what clients and strategies hand back, shared by the FL and gossip loops."""

from __future__ import annotations

import torch

from .errors import RunError


def check_finite(params: torch.Tensor, client_ids: torch.Tensor, round_: int, what: str) -> None:
    # one cheap reduction first: a sum is finite whenever every term is (it can overflow to Inf
    # while all terms are finite, and then the exact check below decides)
    if bool(torch.isfinite(params.sum(dim=-1, dtype=torch.float64)).all()):
        return
    bad = ~torch.isfinite(params).all(dim=-1)
    if bool(bad.any()):
        ids = client_ids[bad].tolist() if params.dim() == 2 else []
        who = f"client(s) {ids[:10]}" if ids else "the aggregate"
        raise RunError(
            f"round {round_}: {what} from {who} contain NaN or Inf. Local training or the server step "
            f"diverged; lower train.lr (or the strategy's server_lr) and run again."
        )
