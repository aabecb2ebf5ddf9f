"""Running a flwr-datasets partitioner over the pool's labels: which pool rows each partition holds.

Shared by the built-in partitions that are flwr-datasets' own (:mod:`sim.data.partition`: dirichlet,
shards) and by ``partition=flwr`` (:mod:`sim.data.flwr_partition`), below both so that neither
imports the other for it.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np

from ..errors import ConfigError


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
