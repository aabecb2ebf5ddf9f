"""``partition=flwr``: any row partitioner of flwr-datasets, named by class and configured by its kwargs.

``partition.partitioner`` is a class of :mod:`flwr_datasets.partitioner` and ``partition.args`` its
keyword arguments. The simulator fills the arguments that belong to the run, not to the partition:
``num_partitions`` is ``num_clients`` and ``seed`` is ``derived_seed(run seed, "partition")``, so a
run stays reproducible from its one seed; ``partition_by`` defaults to ``"label"``. The partitioner
sees a data set with three columns: ``row`` (the pool index), ``label`` and, when the source knows
its natural clients (``dataset.partition_column``, LEAF users, npz ``client_train``), ``group`` (their
ids 0..G-1), so ``partitioner=NaturalIdPartitioner args={partition_by: group}`` keeps the writers of
FEMNIST as clients. Rows are shuffled with the partition seed first, as ``FederatedDataset`` does,
so partitioners that cut contiguous runs (Iid, Linear, Size, ...) do not inherit the file's order.

Every check that needs no data (the class name, unknown or missing arguments, values the class's
own constructor refuses) runs in :func:`check_flwr_partition`, before any data are read.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..seeding import derived_seed
from ..validation import did_you_mean
from .flwr_run import run_flwr_partitioner

#: partitioners that split rows and can be built from plain config values (IdToSizeFncPartitioner
#: takes a Python callable; the Vertical* ones split columns, not rows)
SUPPORTED = (
    "IidPartitioner",
    "DirichletPartitioner",
    "ShardPartitioner",
    "PathologicalPartitioner",
    "LinearPartitioner",
    "SquarePartitioner",
    "ExponentialPartitioner",
    "SizePartitioner",
    "InnerDirichletPartitioner",
    "DistributionPartitioner",
    "ContinuousPartitioner",
    "NaturalIdPartitioner",
    "GroupedNaturalIdPartitioner",
)
#: arguments the run fills in (and the user may not set)
FILLED = {
    "num_partitions": "num_clients",
    "seed": "derived from the run seed (set seed=... instead)",
}
#: columns of the data set a partitioner sees, besides ``row``
COLUMNS = ("label", "group")
#: arguments given as lists in a config that the class wants as numpy arrays
ARRAY_ARGS = ("distribution_array",)


def _partitioner_class(name: Any):
    from flwr_datasets import partitioner as module

    if name not in SUPPORTED:
        raise ConfigError(
            "partition.partitioner",
            name,
            f"one of {', '.join(SUPPORTED)}",
            "IdToSizeFncPartitioner needs a Python function and the Vertical* partitioners split columns, "
            f"so neither can be set from a config.{did_you_mean(name, SUPPORTED)}",
        )
    return getattr(module, name)


def _parameters(cls) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls.__init__).parameters
    return {k: p for k, p in params.items() if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _user_args(part: dict) -> dict[str, Any]:
    args = part.get("args")
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise ConfigError(
            "partition.args",
            args,
            "null or a mapping of keyword arguments",
            "Write it as partition.args={alpha:0.5,min_partition_size:5} or +partition.args.alpha=0.5.",
        )
    return {str(k): v for k, v in args.items()}


def _check_values(args: dict[str, Any]) -> None:
    """Non-finite numbers anywhere in the arguments (flwr would accept ``alpha=inf`` and hang or NaN)."""
    for key, value in args.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        flat = [w for v in values for w in (v if isinstance(v, (list, tuple)) else [v])]
        if any(isinstance(w, float) and not math.isfinite(w) for w in flat):
            raise ConfigError(f"partition.args.{key}", value, "finite numbers")


def _failed_arg(err: Exception, args: dict[str, Any]) -> str:
    """The argument that a constructor's error message names, for the error's field."""
    text = str(err)
    named = [k for k in sorted(args, key=len, reverse=True) if k in text]
    return f"partition.args.{named[0]}" if named else "partition.args"


def _build(cls, args: dict[str, Any]):
    """The partitioner, with flwr's own argument errors turned into a ConfigError."""
    kwargs = {k: (np.asarray(v) if k in ARRAY_ARGS and isinstance(v, (list, tuple)) else v) for k, v in args.items()}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(**kwargs)
    except (ValueError, TypeError, KeyError) as err:
        field = _failed_arg(err, args)
        raise ConfigError(
            field,
            args.get(field.rpartition(".")[2], args),
            f"arguments that {cls.__name__} accepts",
            f"flwr-datasets refused them: {err}",
        ) from None


def _completed_args(part: dict, cls, num_clients: int, seed: int) -> dict[str, Any]:
    """The user's arguments plus those the run fills; ConfigError for unknown, reserved or missing ones."""
    params = _parameters(cls)
    args = _user_args(part)
    settable = [k for k in params if k not in FILLED]
    for key in args:
        if key in FILLED and key in params:
            raise ConfigError(
                f"partition.args.{key}", args[key], "not set here", f"The simulator sets it: {FILLED[key]}."
            )
        if key not in params:
            raise ConfigError(
                f"partition.args.{key}",
                args[key],
                f"an argument of {cls.__name__}: {', '.join(settable) or 'none'}",
                did_you_mean(key, settable).strip(),
            )
    _check_values(args)
    if "partition_by" in params:
        args.setdefault("partition_by", "label")
        if args["partition_by"] not in COLUMNS:
            raise ConfigError(
                "partition.args.partition_by",
                args["partition_by"],
                "label, or group (the natural client ids of dataset.partition_column, LEAF users, ...)",
                did_you_mean(args["partition_by"], COLUMNS).strip(),
            )
    if "num_partitions" in params:
        args["num_partitions"] = num_clients
    if "seed" in params:
        args["seed"] = derived_seed(seed, "partition")
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in args]
    if missing:
        raise ConfigError(
            f"partition.args.{missing[0]}",
            None,
            f"a value: {cls.__name__} requires {', '.join(missing)}",
            f"e.g. +partition.args.{missing[0]}=...",
        )
    return args


def check_flwr_partition(part: dict) -> None:
    """Every check of ``partition=flwr`` that needs no data: class, argument names, values the class refuses."""
    cls = _partitioner_class(part.get("partitioner"))
    args = _completed_args(part, cls, num_clients=2, seed=0)
    _build(cls, args)


def _check_counts(cls, args: dict[str, Any], groups: np.ndarray | None, num_clients: int, num_rows: int) -> None:
    """Partition counts that are fixed by the data or the arguments rather than by ``num_partitions``."""
    by_group = args.get("partition_by") == "group"
    if by_group and groups is None:
        raise ConfigError(
            "partition.args.partition_by",
            "group",
            "label for this data set",
            "The data set has no natural client ids (set dataset.partition_column for dataset=hf).",
        )
    if cls.__name__ == "NaturalIdPartitioner":
        distinct = len(np.unique(groups)) if by_group and groups is not None else None
        if distinct is not None and distinct != num_clients:
            raise ConfigError(
                "num_clients",
                num_clients,
                f"{distinct}, the number of distinct client ids",
                "With NaturalIdPartitioner every natural id is one client.",
            )
    sizes = args.get("partition_sizes")
    if isinstance(sizes, (list, tuple)):
        if len(sizes) != num_clients:
            raise ConfigError(
                "partition.args.partition_sizes",
                list(sizes),
                f"{num_clients} sizes, one per client (num_clients)",
            )
        if all(isinstance(s, int) for s in sizes) and sum(sizes) > num_rows:
            raise ConfigError(
                "partition.args.partition_sizes",
                list(sizes),
                f"sizes adding up to at most {num_rows}, the number of training rows",
            )


def flwr_assignment(
    labels: np.ndarray, groups: np.ndarray | None, part: dict, num_clients: int, seed: int
) -> list[np.ndarray]:
    """Pool rows of each client under ``partition.partitioner`` (see the module docstring)."""
    cls = _partitioner_class(part.get("partitioner"))
    args = _completed_args(part, cls, num_clients, seed)
    _check_counts(cls, args, groups, num_clients, len(labels))
    partitioner = _build(cls, args)
    order = np.random.default_rng(derived_seed(seed, "partition", "shuffle")).permutation(len(labels))
    try:
        return run_flwr_partitioner(partitioner, labels, num_clients, groups=groups, order=order)
    except ConfigError:
        raise
    except (ValueError, IndexError) as err:  # e.g. Dirichlet draws that never meet min_partition_size
        raise ConfigError(
            "partition.args",
            _user_args(part),
            f"arguments with which {cls.__name__} can share {len(labels)} rows among {num_clients} clients",
            f"flwr-datasets failed: {err}",
        ) from None
