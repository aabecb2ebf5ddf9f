"""Dividing the training pool among clients.

``dirichlet`` and ``shards`` give flwr-datasets' partitions, so a partition means what it means for Flower users.
``shards`` runs flwr-datasets' ``ShardPartitioner`` on a ``datasets.Dataset`` with a ``row`` column (the pool index)
and a ``label`` column; each partition's ``row`` values say which pool rows a client owns. ``dirichlet`` runs a NumPy
transcription of its ``DirichletPartitioner`` (:mod:`sim.data.dirichlet`, the same rows, checked against it in
tests/test_default_path_imports.py) so that the default run imports neither flwr-datasets nor ``datasets``.
``iid`` is a seeded shuffle cut into contiguous near-equal pieces, exactly what flwr-datasets'
(unseeded) ``IidPartitioner`` does to a shuffled dataset, without building one Dataset per client.
``natural`` keeps the source's own clients (sorted ids -> clients 0..N-1). ``flwr`` runs any
flwr-datasets partitioner named in the config (:mod:`sim.data.flwr_partition`).

Every random choice comes from ``derived_seed(seed, "partition")``, so the partition follows the
run seed and nothing else.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..seeding import derived_seed
from .flwr_run import run_flwr_partitioner


def natural_assignment(groups: np.ndarray | None, num_clients: int, dataset_name: str) -> list[np.ndarray]:
    """The rows of each natural client, in pool order."""
    if groups is None:
        raise ConfigError(
            "partition.name",
            "natural",
            "one of iid, dirichlet, shards for this file",
            f"Dataset {dataset_name} has no client ids (an npz needs a client_train array).",
        )
    num_ids = int(groups.max()) + 1 if len(groups) else 0
    if num_ids != num_clients:
        raise ConfigError(
            "num_clients",
            num_clients,
            f"{num_ids}, the number of distinct client ids",
            "With partition=natural every client id in the data is one client.",
        )
    order = np.argsort(groups, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(groups, minlength=num_clients))))
    return [order[bounds[k] : bounds[k + 1]] for k in range(num_clients)]


def iid_assignment(num_rows: int, num_clients: int, seed: int) -> list[np.ndarray]:
    """A random permutation cut into ``num_clients`` contiguous pieces whose sizes differ by <= 1."""
    perm = np.random.default_rng(derived_seed(seed, "partition")).permutation(num_rows)
    return np.array_split(perm, num_clients)


def dirichlet_assignment(labels: np.ndarray, part: dict, num_clients: int, seed: int) -> list[np.ndarray]:
    from .dirichlet import dirichlet_partition  # flwr-datasets' DirichletPartitioner without its imports

    try:
        return dirichlet_partition(
            labels,
            num_clients,
            float(part["alpha"]),
            int(part["min_partition_size"]),
            bool(part["self_balancing"]),
            derived_seed(seed, "partition"),
        )
    except ValueError as err:  # flwr gives up after 10 draws that leave some client too small
        raise ConfigError(
            "partition.min_partition_size",
            part["min_partition_size"],
            f"a size that Dirichlet(partition.alpha={part['alpha']}) can give all {num_clients} clients",
            f"flwr-datasets could not give every client at least {part['min_partition_size']} of the "
            f"{len(labels)} training rows ({err}). Lower partition.min_partition_size, raise "
            "partition.alpha, or use fewer clients.",
        ) from None


def label_mix_assignment(labels: np.ndarray, part: dict, num_clients: int, seed: int) -> list[np.ndarray]:
    """Client-centric Dirichlet skew, as in the FedAU paper's code (IBM/fedau, ``partition``).

    Each client draws its own label mix ``q_n ~ Dirichlet(alpha 1_C)``; the (shuffled) rows of each
    label are cut among all clients in proportion to ``q_n[label]``. Unlike flwr's
    DirichletPartitioner (a Dirichlet over clients per label), every client gets a share of about
    M / N rows, so many clients and a small alpha still leave no client empty.
    """
    rng = np.random.default_rng(derived_seed(seed, "partition"))
    classes = np.unique(labels)
    mix = rng.dirichlet(np.full(len(classes), float(part["alpha"])), size=num_clients)  # [N, C]
    pieces: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for j, label in enumerate(classes):
        rows = rng.permutation(np.flatnonzero(labels == label))
        share = mix[:, j] / mix[:, j].sum()
        cuts = np.floor(np.cumsum(share)[:-1] * len(rows)).astype(np.int64)
        for k, chunk in enumerate(np.split(rows, cuts)):
            pieces[k].append(chunk)
    return [np.sort(np.concatenate(p)).astype(np.int64) for p in pieces]


def shards_assignment(labels: np.ndarray, part: dict, num_clients: int, seed: int) -> list[np.ndarray]:
    """McMahan et al.'s shards via flwr-datasets' ``ShardPartitioner``.

    Rows are sorted by label and cut into shards of ``floor(M / (N * shards_per_client))`` rows;
    each client gets ``shards_per_client`` random shards. Rows that do not fill a used shard are
    left out of training (fewer than one shard per client), as in flwr-datasets.
    """
    from flwr_datasets.partitioner import ShardPartitioner

    per_client = int(part["shards_per_client"])
    if num_clients * per_client > len(labels):
        raise ConfigError(
            "partition.shards_per_client",
            per_client,
            f"at most {len(labels) // num_clients} for {num_clients} clients",
            f"Every shard needs a row and there are {len(labels)} training rows; "
            "use fewer shards per client or fewer clients.",
        )
    partitioner = ShardPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        num_shards_per_partition=per_client,
        seed=derived_seed(seed, "partition"),
    )
    return run_flwr_partitioner(partitioner, labels, num_clients)


def _check_no_empty_client(assignment: list[np.ndarray], part: dict) -> None:
    empty = [k for k, rows in enumerate(assignment) if len(rows) == 0]
    if not empty:
        return
    field, value = (
        ("partition.min_partition_size", part["min_partition_size"])
        if part["name"] == "dirichlet"
        else ("num_clients", len(assignment))
    )
    raise ConfigError(
        field,
        value,
        "a setting that gives every client at least one training row",
        f"{len(empty)} of {len(assignment)} clients got no rows (client {empty[0]} first). "
        "Use fewer clients, or for dirichlet a larger partition.alpha or "
        "partition.min_partition_size >= 1.",
    )


def partition_rows(
    labels: np.ndarray, groups: np.ndarray | None, part: dict, num_clients: int, seed: int, dataset_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(order, offsets)``: pool rows client after client, and where each client starts.

    ``order[offsets[k]:offsets[k + 1]]`` are client k's rows of the pool.
    """
    name = part["name"]
    if name == "natural":
        assignment = natural_assignment(groups, num_clients, dataset_name)
    else:
        if num_clients > len(labels):
            raise ConfigError(
                "num_clients",
                num_clients,
                f"at most {len(labels)}",
                f"There are only {len(labels)} training rows to share among the clients.",
            )
        if name == "iid":
            assignment = iid_assignment(len(labels), num_clients, seed)
        elif name == "dirichlet":
            assignment = dirichlet_assignment(labels, part, num_clients, seed)
        elif name == "label_mix":
            assignment = label_mix_assignment(labels, part, num_clients, seed)
        elif name == "flwr":
            from .flwr_partition import flwr_assignment

            assignment = flwr_assignment(labels, groups, part, num_clients, seed)
        else:
            assignment = shards_assignment(labels, part, num_clients, seed)
    _check_no_empty_client(assignment, part)
    sizes = np.fromiter((len(rows) for rows in assignment), dtype=np.int64, count=num_clients)
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    order = np.concatenate(assignment).astype(np.int64) if num_clients else np.zeros(0, np.int64)
    return order, offsets
