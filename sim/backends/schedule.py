"""Every client's minibatch rows for one round, as one padded index tensor instead of K lists.

``sim.training.batch_schedule`` defines the order: per epoch a fresh ``randperm`` of the client's
rows from its own generator, cut into batches of ``batch_size`` (the last one may be shorter); with
``local_steps`` the permutations run back to back until that many batches exist. Here the same
permutations are drawn (the same ``randperm`` calls on the same generators, so the same numbers) and
step ``s`` of client ``k`` is located arithmetically: permutation ``s // nb_k``, batch ``s % nb_k``
with ``nb_k = ceil(n_k / batch_size)``. Building the ``[K, S, B]`` index with tensor ops instead of
per-client ``split`` / ``repeat_interleave`` makes a 10,000-client round's bookkeeping cost
milliseconds rather than a second.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sim.data.augment import augment_params
from sim.seeding import torch_generators
from sim.training import TrainConfig, client_local_steps, steps_per_client


@dataclass
class StackedSchedule:
    sizes: torch.Tensor  # [K] rows per client
    steps: torch.Tensor  # [K] minibatch steps per client
    perms: torch.Tensor  # all clients' permutations back to back (local row numbers)
    perm_start: torch.Tensor  # [K] where each client's permutations begin in ``perms``
    batch_size: int
    #: augmentation (dy, dx, flip) of every scheduled row, client after client; None: no augmentation
    aug: torch.Tensor | None = None
    aug_start: torch.Tensor | None = None  # [K] where each client's rows begin in ``aug``

    @property
    def batches_per_perm(self) -> torch.Tensor:
        return (self.sizes + self.batch_size - 1) // self.batch_size

    def index(self, rows: torch.Tensor, row_offsets: torch.Tensor) -> torch.Tensor:
        """``[A, S, B]`` data-row indices of clients ``rows`` (positions in this schedule); -1 pads.

        ``row_offsets [A]`` is each client's first row in the data set; ``S`` is the most steps and
        ``B`` the batch size (or the largest client, if smaller).
        """
        steps, sizes = self.steps[rows], self.sizes[rows]
        S = int(steps.max()) if len(rows) else 0
        B = int(min(self.batch_size, int(sizes.max()) if len(rows) else 1))
        nb = self.batches_per_perm[rows].clamp_min(1)
        s = torch.arange(S).view(1, S, 1)
        i = torch.arange(B).view(1, 1, B)
        perm_no, batch_no = s // nb.view(-1, 1, 1), s % nb.view(-1, 1, 1)
        local = batch_no * self.batch_size + i  # position inside the permutation
        valid = (s < steps.view(-1, 1, 1)) & (local < sizes.view(-1, 1, 1))
        pos = self.perm_start[rows].view(-1, 1, 1) + perm_no * sizes.view(-1, 1, 1) + local
        pos = torch.where(valid, pos, torch.zeros((), dtype=pos.dtype))
        picked = self.perms[pos] if len(self.perms) else torch.zeros_like(pos)
        return torch.where(valid, picked + row_offsets.view(-1, 1, 1), torch.full((), -1, dtype=pos.dtype))

    def augmentation(self, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor | None:
        """``[A, S, B, 3]`` augmentation of the rows in ``index`` (from :meth:`index`), or None.

        Client k's scheduled rows take its draws in schedule order (step after step), which is the
        row-major order of the valid entries of ``index[k]``.
        """
        if self.aug is None or self.aug_start is None:
            return None
        valid = (index >= 0).reshape(len(index), -1)
        pos = torch.cumsum(valid.to(torch.long), 1) - 1 + self.aug_start[rows].view(-1, 1)
        pos = torch.where(valid, pos, torch.zeros((), dtype=pos.dtype))
        return self.aug[pos].reshape(*index.shape, 3)


def stacked_schedule(
    sizes: list[int], clients: list[int], rounds: list[int], cfg: TrainConfig, seed: int, stream: str = "train"
) -> StackedSchedule:
    """Draw every client's permutations exactly as ``batch_schedule`` does, for K clients at once.

    ``stream``: the seeded stream the batches come from (``TrainingSetup.generator``'s).
    """
    sizes_t = torch.tensor(sizes, dtype=torch.long)
    steps = steps_per_client(sizes_t, cfg, client_local_steps(cfg, seed, rounds, clients))
    nb = ((sizes_t + cfg.batch_size - 1) // cfg.batch_size).clamp_min(1)  # batches per permutation
    num_perms = torch.where(sizes_t > 0, (steps + nb - 1) // nb, torch.zeros_like(sizes_t))
    generators = torch_generators(seed, (stream,), [np.asarray(rounds), np.asarray(clients)])
    pieces = [
        torch.randperm(n, generator=g)
        for n, g, m in zip(sizes, generators, num_perms.tolist(), strict=True)
        for _ in range(m)
    ]
    perms = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)
    lengths = sizes_t * num_perms
    perm_start = torch.cumsum(lengths, 0) - lengths
    aug = aug_start = None
    if cfg.augments:
        # rows each client's schedule visits: whole permutations, then the first batches of one more
        full, rest = steps // nb, steps % nb
        visited = full * sizes_t + torch.minimum(rest * cfg.batch_size, sizes_t)
        draws = [
            augment_params(int(n), cfg.crop_padding, cfg.hflip, g)
            for n, g in zip(visited.tolist(), generators, strict=True)
        ]
        aug = torch.cat([d for d in draws if d is not None] or [torch.zeros((0, 3), dtype=torch.long)])
        aug_start = torch.cumsum(visited, 0) - visited
    return StackedSchedule(sizes_t, steps, perms, perm_start, cfg.batch_size, aug, aug_start)
