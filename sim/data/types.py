"""The one container that every loop and backend reads client data from.

All clients' training rows live in one tensor, client after client, with ``offsets`` marking where
each client starts. A client's data is then a pair of views (no copy), a vectorized backend can
gather many clients' batches with one index tensor, and a Ray backend can ship each client's slice
to the object store once.

A client may also hold a local test split (``eval.local_test_fraction``, or a data set's natural per-user
test rows; :mod:`sim.data.local_test`), laid out the same way: client k's local test rows are
``x_local[local_offsets[k]:local_offsets[k + 1]]``. Per-client evaluation (:mod:`sim.client_eval`) scores
each client's model on them; training never reads them. Without such a split every client has none.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .inputs import InputSpec


@dataclass
class FederatedData:
    x: torch.Tensor  # [M, D] flat stored rows (see ``inputs``); client k owns rows offsets[k]:offsets[k+1]
    y: torch.Tensor  # [M] int64 labels
    offsets: torch.Tensor  # [N + 1] int64, offsets[0] == 0, offsets[-1] == M
    x_val: torch.Tensor  # [V, D] server-held validation split (V may be 0)
    y_val: torch.Tensor  # [V]
    x_test: torch.Tensor  # [T, D]
    y_test: torch.Tensor  # [T]
    num_classes: int
    input_shape: tuple[int, ...]  # shape of one example before flattening, e.g. (1, 8, 8)
    name: str
    #: how stored rows become model inputs (dtype, normalization); None: float features of input_shape
    inputs: InputSpec | None = None
    #: per-client local test rows, client after client (None: no client has any; set to empty by __post_init__)
    x_local: torch.Tensor | None = None  # [L, D]
    y_local: torch.Tensor | None = None  # [L]
    local_offsets: torch.Tensor | None = None  # [N + 1] int64

    def __post_init__(self) -> None:
        if self.inputs is None:
            self.inputs = InputSpec(tuple(int(d) for d in self.input_shape))
        if self.local_offsets is None:
            self.x_local = self.x[:0]
            self.y_local = self.y[:0]
            self.local_offsets = torch.zeros(self.num_clients + 1, dtype=torch.int64)

    @property
    def spec(self) -> InputSpec:
        assert self.inputs is not None  # set by __post_init__
        return self.inputs

    @property
    def num_clients(self) -> int:
        return int(self.offsets.numel() - 1)

    @property
    def client_sizes(self) -> torch.Tensor:
        """``[N]`` int64 number of training rows per client."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def local_sizes(self) -> torch.Tensor:
        """``[N]`` int64 number of local test rows per client (all 0 without a local test split)."""
        assert self.local_offsets is not None  # set by __post_init__
        return self.local_offsets[1:] - self.local_offsets[:-1]

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    def client(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
        return self.x[lo:hi], self.y[lo:hi]

    def local(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Client k's local test rows and labels (empty without a local test split)."""
        assert self.x_local is not None and self.y_local is not None and self.local_offsets is not None
        lo, hi = int(self.local_offsets[k]), int(self.local_offsets[k + 1])
        return self.x_local[lo:hi], self.y_local[lo:hi]
