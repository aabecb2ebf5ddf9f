"""Dividing the training pool among clients.

``dirichlet`` and ``shards`` are flwr-datasets' own partitioners, so a partition means what it
means for Flower users; they see a ``datasets.Dataset`` with a ``row`` column (the pool index) and
a ``label`` column, and each partition's ``row`` values say which pool rows a client owns.
``iid`` is a seeded shuffle cut into contiguous near-equal pieces, exactly what flwr-datasets'
(unseeded) ``IidPartitioner`` does to a shuffled dataset, without building one Dataset per client.
``natural`` keeps the source's own clients (sorted ids -> clients 0..N-1). ``flwr`` runs any
flwr-datasets partitioner named in the config (:mod:`sim.data.flwr_partition`).

Every random choice comes from ``derived_seed(seed, "partition")``, so the partition follows the
run seed and nothing else.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np

from ..errors import ConfigError
from ..seeding import derived_seed


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


def _row_column(dataset) -> np.ndarray:
    """The ``row`` column in the dataset's current order (sorting leaves an index mapping).

    Reading it through ``dataset["row"]`` takes minutes for millions of rows, so the Arrow table
    and the index mapping are read directly when this ``datasets`` version has them.
    """
    if not hasattr(dataset, "_indices"):
        return np.asarray(dataset["row"], dtype=np.int64)
    rows = dataset.data.column("row").to_numpy()
    if dataset._indices is not None:
        rows = rows[dataset._indices.column(0).to_numpy()]
    return rows.astype(np.int64)


def run_flwr_partitioner(
    partitioner,
    labels: np.ndarray,
    num_clients: int,
    *,
    groups: np.ndarray | None = None,
    order: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Pool rows of each partition of a flwr-datasets partitioner applied to ``labels``.

    The partitioner sees columns ``row`` (pool index), ``label`` and, when ``groups`` are given,
    ``group`` (natural client ids, for ``NaturalIdPartitioner(partition_by="group")``); ``order``
    presents the rows in that order (a seeded shuffle, as ``FederatedDataset`` does) instead of
    pool order. The public route (``load_partition(k)["row"]``) costs milliseconds per client, so
    when the partitioner exposes its assignment (flwr-datasets 0.5-0.6 do) it is read in one go;
    the public route remains the fallback and the tests check that both agree.
    """
    import datasets

    rows = np.arange(len(labels), dtype=np.int64) if order is None else np.asarray(order, dtype=np.int64)
    columns = {"row": rows, "label": labels[rows]}
    if groups is not None:
        columns["group"] = np.asarray(groups, dtype=np.int64)[rows]
    partitioner.dataset = datasets.Dataset.from_dict(columns)
    with warnings.catch_warnings():  # retry notices and a pyarrow deprecation in dataset.sort
        warnings.simplefilter("ignore")
        made = partitioner.num_partitions  # the property computes the whole assignment
        if made != num_clients:
            raise ConfigError(
                "num_clients",
                num_clients,
                f"{made}, the number of partitions {type(partitioner).__name__} made",
                "The partition's arguments or the data fix the number of clients here.",
            )
        assignment = getattr(partitioner, "_partition_id_to_indices", None)
        if isinstance(assignment, dict) and 0 < num_clients and not assignment:
            with contextlib.redirect_stderr(io.StringIO()):  # NaturalId's tqdm bar
                partitioner.load_partition(0)  # some partitioners (NaturalId) assign rows on first load
            assignment = getattr(partitioner, "_partition_id_to_indices", None)
        if not (isinstance(assignment, dict) and len(assignment) == num_clients):
            return [np.asarray(partitioner.load_partition(k)["row"], dtype=np.int64) for k in range(num_clients)]
    column = _row_column(partitioner.dataset)
    return [column[np.asarray(assignment[k], dtype=np.int64)] for k in range(num_clients)]


def dirichlet_assignment(labels: np.ndarray, part: dict, num_clients: int, seed: int) -> list[np.ndarray]:
    from flwr_datasets.partitioner import DirichletPartitioner

    partitioner = DirichletPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        alpha=float(part["alpha"]),
        min_partition_size=int(part["min_partition_size"]),
        self_balancing=bool(part["self_balancing"]),
        seed=derived_seed(seed, "partition"),
    )
    try:
        return run_flwr_partitioner(partitioner, labels, num_clients)
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
