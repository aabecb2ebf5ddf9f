"""Any gossipsoup strategy as a Flower strategy, in Flower's message API (``flwr.serverapp``).

:class:`GossipsoupStrategy` subclasses Flower's own ``FedAvg`` and replaces only ``aggregate_train``
(and wraps ``configure_train``), so node sampling, configuration, federated evaluation and
``start()`` stay exactly Flower's, and a Flower user swaps one constructor call. Per round:

- ``configure_train`` remembers the global model it sends (the strategy's ``info.reference``),
  registers the connected nodes, and asks clients for the extras the rule needs through the
  config key ``gossipsoup-requires`` (e.g. ``["fisher"]``);
- ``aggregate_train`` reads each reply: the model from its ``ArrayRecord`` (one array per layout
  tensor, same names and shapes), the sample count from ``num-examples`` in its ``MetricRecord``,
  the client from ``msg.metadata.src_node_id`` (node ids map to rows 0..N-1 of the strategy's
  per-client state in order of first sight, growing when nodes join, so FedAU's intervals follow
  the node), and each extra
  from an ``ArrayRecord`` named after it. Bad replies (mismatched keys or shapes, missing
  ``num-examples``, NaN / Inf) raise :class:`InvalidReplyError` naming node, key and shape, or, with
  ``on_invalid="reject"``, are dropped and counted in the returned ``MetricRecord``.

The checking and aggregation (:class:`ReplyAggregator`) know nothing of messages, so the legacy
adapter (``strategies/flower_legacy.py``) reuses them. This module imports flwr; ``import
strategies`` does not import it, so the simulator never needs Flower installed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from sim.checks import check_finite
from sim.errors import ConfigError, RunError
from sim.layout import Layout

from .base import AggregationInfo, State, Strategy
from .client_state import client_held_state

log = logging.getLogger("flwr")  # Flower's console handler, so warnings show in Flower's logs

NUM_EXAMPLES = "num-examples"  # Flower's own key for the sample count
REQUIRES_KEY = "gossipsoup-requires"  # config key: per-client extras the strategy needs
START_LOSS_METRIC = "start-loss"  # reply metric: the client's mean loss at the received model (q-FedAvg)
#: extras that are one number per client, sent in the reply's MetricRecord rather than as an ArrayRecord
SCALAR_EXTRAS = {"start_loss": START_LOSS_METRIC}
ON_INVALID = ("error", "reject")


class InvalidReplyError(RunError):
    """Client replies the adapter cannot aggregate; ``problems`` has one line per bad reply."""

    def __init__(self, server_round: int, problems: list[str]):
        self.problems = problems
        shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5 else [])
        super().__init__(
            f"round {server_round}: {len(problems)} client repl{'y' if len(problems) == 1 else 'ies'} "
            "cannot be aggregated:\n  "
            + "\n  ".join(shown)
            + "\nFix the client, or build the adapter with on_invalid='reject' to drop such replies."
        )


# ---- conversions between the flat [P] vector and Flower records -----------------------------
def to_arrayrecord(layout: Layout, flat: torch.Tensor) -> ArrayRecord:
    """One ``Array`` per layout tensor, named as in the model's state dict."""
    return ArrayRecord(
        {name: Array(np.ascontiguousarray(t.detach().cpu().numpy())) for name, t in layout.to_state_dict(flat).items()}
    )


def read_arrays(
    layout: Layout, arrays: Mapping[str, Any], what: str = "arrays"
) -> tuple[torch.Tensor | None, list[str]]:
    """``(flat [P], [])`` when ``arrays`` (name -> Flower ``Array`` or ndarray) fits the layout,
    else ``(None, problems)`` naming the keys, shapes and non-finite entries that do not."""
    expected = layout.names
    missing = [n for n in expected if n not in arrays]
    unexpected = [k for k in arrays if k not in set(expected)]
    if missing or unexpected:
        mismatch = ([f"missing {missing}"] if missing else []) + ([f"unexpected {unexpected}"] if unexpected else [])
        return None, [f"{what}: keys do not match the model's layout ({', '.join(mismatch)})"]
    problems: list[str] = []
    parts: list[torch.Tensor] = []
    for spec in layout:
        value = arrays[spec.name]
        shape = tuple(int(d) for d in value.shape)
        if shape != spec.shape:
            problems.append(
                f"{what}: array {spec.name!r} has shape {list(shape)}, the layout expects {list(spec.shape)}"
            )
            continue
        try:
            arr = value if isinstance(value, np.ndarray) else value.numpy()
        except (TypeError, ValueError) as exc:
            problems.append(f"{what}: array {spec.name!r} cannot be read as a numpy array ({exc})")
            continue
        if arr.dtype.kind not in "fiu":
            problems.append(f"{what}: array {spec.name!r} has dtype {arr.dtype}, expected a real number type")
            continue
        bad = int(arr.size - np.isfinite(arr).sum())
        if bad:
            problems.append(f"{what}: array {spec.name!r} has {bad} NaN/Inf entr{'y' if bad == 1 else 'ies'}")
            continue
        parts.append(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).reshape(-1))
    if problems:
        return None, problems
    return (torch.cat(parts) if parts else torch.zeros(0)), []


def from_arrayrecord(layout: Layout, record: Mapping[str, Any], what: str = "arrays") -> torch.Tensor:
    """The flat ``[P]`` model in ``record``; raises ``RunError`` naming what does not fit."""
    flat, problems = read_arrays(layout, record, what)
    if flat is None:
        raise RunError("; ".join(problems))
    return flat


# ---- the API-independent part ----------------------------------------------------------------
@dataclass
class ClientUpdate:
    """One client's reply, as the API-specific adapter read it (values not yet checked)."""

    node: Hashable  # who sent it (a Flower node id)
    arrays: Mapping[str, Any] | None  # name -> Array / ndarray; None when the reply carried no model
    num_examples: Any  # raw value; None when missing
    extras: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)  # None: missing or unreadable
    problems: list[str] = field(default_factory=list)  # found while reading the reply


class _Row(NamedTuple):
    """A checked update, ready for the strategy."""

    client_id: int  # row in the per-client state
    params: torch.Tensor  # flat [P]
    num_samples: float
    extras: dict[str, torch.Tensor]  # name -> flat [P] (a 0-d number for SCALAR_EXTRAS), one per required extra


#: what cannot carry a client's own state (strategies/client_state.py)
FLOWER = "Flower's messages (one model for every client) and stateless ClientApps"


class ReplyAggregator:
    """Checks client updates, keeps node identity and the strategy's state, calls the strategy."""

    def __init__(
        self,
        strategy: Strategy,
        layout: Layout,
        *,
        num_clients: int | None = None,
        validate: Callable[[torch.Tensor], float] | None = None,
        on_invalid: str = "error",
        initial_params: torch.Tensor | None = None,
    ):
        if not isinstance(strategy, Strategy):
            raise ConfigError("strategy", type(strategy).__name__, "a gossipsoup Strategy (see strategies/)")
        if strategy.offline_only or strategy.gossip_only:
            why = str(strategy.offline_only or strategy.gossip_only)
            raise ConfigError("strategy", strategy.name, "a rule a Flower server can apply", why)
        held = client_held_state(strategy, FLOWER, "Run it with python -m sim.")
        if held is not None:  # FedPer/FedRep/FedBN's local layers, Ditto's personal models
            raise ConfigError("strategy", strategy.name, "a rule whose clients keep nothing between rounds", held)
        if strategy.needs_server:  # SCAFFOLD, FedDyn, FedNova: a client part that Flower's messages do not carry
            raise ConfigError(
                "strategy",
                strategy.name,
                "a rule a Flower server can apply (for FedProx use flwr's FedProx with a gossipsoup ClientApp)",
                f"{strategy.name} needs its client part (control variates, gradient memory or local step counts) "
                "on gossipsoup's own engine; run it with python -m sim.",
            )
        if on_invalid not in ON_INVALID:
            raise ConfigError("on_invalid", on_invalid, f"one of {', '.join(ON_INVALID)}")
        if num_clients is not None and (
            isinstance(num_clients, bool) or not isinstance(num_clients, int) or num_clients < 1
        ):
            raise ConfigError(
                "num_clients", num_clients, "null (the nodes connected at the first round) or an int >= 1"
            )
        if strategy.needs_validation and validate is None:
            raise ConfigError(
                "validate",
                None,
                "a server-side function params [P] -> score (higher is better)",
                f"Strategy {strategy.name} scores candidate models on held-out data.",
            )
        self.strategy, self.layout, self.validate, self.on_invalid = strategy, layout, validate, on_invalid
        self.fixed_clients = num_clients  # None: N follows the nodes seen
        self.num_clients = num_clients  # N of the current state
        self.state: State | None = None  # created at the first aggregation, sized num_clients
        self.reference = None if initial_params is None else initial_params.detach().float().clone()
        self.node_index: dict[Hashable, int] = {}  # node id -> row in the per-client state
        self.rejected_total = 0
        self.failed_total = 0

    def register(self, nodes: Iterable[Hashable]) -> None:
        """Give new nodes the next free indices (sorted, so a run's mapping does not depend on order)."""
        # ids are opaque: Flower's are ints, a legacy proxy's cid is a str, and ids of mixed types do not compare
        new: list[Any] = list(set(nodes) - set(self.node_index))
        try:
            new.sort()
        except TypeError:
            new.sort(key=str)
        for node in new:
            if self.fixed_clients is None or len(self.node_index) < self.fixed_clients:
                self.node_index[node] = len(self.node_index)

    def _sized_state(self, reference: torch.Tensor) -> tuple[State, int]:
        """The state and its N, with a row for every registered node: created (sized ``num_clients``, or
        the nodes seen so far) at the first aggregation, grown when nodes joined since."""
        if self.state is None or self.num_clients is None:
            self.num_clients = self.fixed_clients or max(1, len(self.node_index))
            self.state = self.strategy.init_state(reference, self.num_clients)
        elif len(self.node_index) > self.num_clients:
            self._grow(self.state, self.num_clients, reference, len(self.node_index))
            self.num_clients = len(self.node_index)
        return self.state, self.num_clients

    def _grow(self, state: State, old_n: int, reference: torch.Tensor, n: int) -> None:
        """Give nodes that joined after the state was created their rows, as ``init_state`` makes them.

        Per-client state entries are the tensors whose first dimension is N in the state and n in
        a fresh ``init_state(reference, n)``; the old rows are kept, the new ones come from the fresh state.
        """
        fresh = self.strategy.init_state(reference, n)
        for key, old in state.items():
            new = fresh.get(key)
            if (
                isinstance(old, torch.Tensor)
                and isinstance(new, torch.Tensor)
                and old.dim()
                and new.dim()
                and old.shape[0] == old_n
                and new.shape[0] == n
                and old.shape[1:] == new.shape[1:]
            ):
                new[:old_n] = old
                state[key] = new

    def _check(self, u: ClientUpdate, seen: set[Hashable]) -> tuple[list[str], _Row | None]:
        problems = list(u.problems)
        if u.node in seen:
            problems.append("a second reply from this node in one round")
        index = self.node_index.get(u.node)
        if index is None:
            problems.append(
                f"node is beyond num_clients={self.fixed_clients}, the number of clients the adapter was built for"
            )
        n = u.num_examples
        if n is None:
            problems.append(f"its MetricRecord has no {NUM_EXAMPLES!r}")
        elif isinstance(n, bool) or not isinstance(n, (int, float)) or not math.isfinite(n) or n < 0:
            problems.append(f"{NUM_EXAMPLES!r} is {n!r}, expected a finite number >= 0")
        flat = None
        if u.arrays is not None:
            flat, found = read_arrays(self.layout, u.arrays)
            problems += found
        elif not u.problems:  # the adapters say why a reply has no model; an update built by hand may not
            problems.append("the reply carried no model")
        extras: dict[str, torch.Tensor] = {}
        for name in sorted(self.strategy.requires):
            record = u.extras.get(name)
            if record is None:
                problems.append(f"no {name!r} record, which strategy {self.strategy.name} needs from every client")
                continue
            if name in SCALAR_EXTRAS:
                value = record.get("value")
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    problems.append(f"{SCALAR_EXTRAS[name]!r} is {value!r}, expected a finite number")
                else:
                    extras[name] = torch.tensor(float(value))
                continue
            extra, found = read_arrays(self.layout, record, name)
            problems += found
            if extra is not None:
                extras[name] = extra
        if problems:
            return problems, None
        assert index is not None and flat is not None, "a missing index or model adds a problem above"
        return [], _Row(index, flat, float(n), extras)

    def aggregate(
        self, server_round: int, updates: list[ClientUpdate]
    ) -> tuple[torch.Tensor, dict[str, float], list[int]]:
        """The new global model, the round's counts and the positions of the updates aggregated.

        Raises InvalidReplyError in "error" mode when any update is bad.
        """
        reference = self.reference
        if reference is None:
            raise RunError(
                "the adapter has no current global model: configure_train was not called "
                "and no initial_params were given"
            )
        self.register(u.node for u in updates)  # a round's new nodes get indices in sorted order
        seen: set[Hashable] = set()
        rows: list[_Row] = []
        accepted: list[int] = []
        problems: list[str] = []
        for i, u in enumerate(updates):
            found, row = self._check(u, seen)
            seen.add(u.node)
            if row is None:
                problems.append(f"reply from node {u.node}: " + "; ".join(found))
            else:
                rows.append(row)
                accepted.append(i)
        if problems:
            if self.on_invalid == "error":
                raise InvalidReplyError(server_round, problems)
            for p in problems:
                log.warning("round %d: rejected %s", server_round, p)
            self.rejected_total += len(problems)
        state, num_clients = self._sized_state(reference)
        ids = torch.tensor([r.client_id for r in rows], dtype=torch.long)
        info = AggregationInfo(
            client_ids=ids,
            num_samples=torch.tensor([r.num_samples for r in rows], dtype=torch.float64),
            round=server_round,
            num_clients=num_clients,
            layout=self.layout,
            reference=reference,
            validate=self.validate,
            extras={name: torch.stack([r.extras[name] for r in rows]) for name in self.strategy.requires}
            if rows
            else {},
        )
        if rows:
            params, state = self.strategy.aggregate(torch.stack([r.params for r in rows]), info, state)
        else:
            params, state = self.strategy.on_empty_round(info, state)
        self.state = state
        check_finite(params, ids, server_round, "the aggregated parameters")
        self.reference = params.detach().float()
        counts = {"gossipsoup-aggregated": float(len(rows)), "gossipsoup-rejected": float(len(problems))}
        metrics = {k: float(v) for k, v in self.strategy.round_metrics(state, None).items()}
        return self.reference, {**counts, **metrics}, accepted


# ---- the message-API adapter -----------------------------------------------------------------
class AggregatorHolder:
    """What both adapters (message API here, legacy API in ``flower_legacy``) share: a
    :class:`ReplyAggregator` built from the same arguments, and its state as ``adapter.state``."""

    aggregator: ReplyAggregator

    def _hold(self, strategy: Strategy, layout: Layout, **options: Any) -> None:
        self.aggregator = ReplyAggregator(strategy, layout, **options)

    @property
    def state(self) -> State | None:
        """The strategy's memory across rounds (tensors and numbers: a checkpoint can save it)."""
        return self.aggregator.state


class GossipsoupStrategy(AggregatorHolder, FlowerFedAvg):
    """A gossipsoup :class:`~strategies.base.Strategy` running as Flower's message-API strategy.

    ``strategy``/``layout``: the rule and the model's layout (``Layout.from_module(model)``).
    ``num_clients``: N for rules that keep per-client state or divide by N (FedAU, MIFA); ``None``
    takes the nodes connected at the first round. ``validate``: a server-side ``params [P] -> score``
    for rules that score candidates (greedy soup). ``on_invalid``: ``"error"`` or ``"reject"``.
    Every other keyword goes to Flower's ``FedAvg`` (``fraction_train``, ``min_available_nodes``, ...).
    """

    def __init__(
        self,
        strategy: Strategy,
        layout: Layout,
        *,
        num_clients: int | None = None,
        validate: Callable[[torch.Tensor], float] | None = None,
        on_invalid: str = "error",
        initial_params: torch.Tensor | None = None,
        **fedavg_kwargs: Any,
    ):
        super().__init__(**fedavg_kwargs)
        self._hold(
            strategy,
            layout,
            num_clients=num_clients,
            validate=validate,
            on_invalid=on_invalid,
            initial_params=initial_params,
        )

    def summary(self) -> None:
        super().summary()
        agg = self.aggregator
        log.info(
            "gossipsoup strategy %s (requires %s), on_invalid=%s",
            agg.strategy.name,
            sorted(agg.strategy.requires) or "nothing",
            agg.on_invalid,
        )

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        agg = self.aggregator
        agg.reference = from_arrayrecord(agg.layout, arrays, "the global model")
        agg.register(grid.get_node_ids())
        if agg.strategy.requires:
            config[REQUIRES_KEY] = sorted(agg.strategy.requires)
        return super().configure_train(server_round, arrays, config, grid)

    def _read(self, msg: Message) -> ClientUpdate:
        content, problems = msg.content, []
        records = dict(content.array_records)
        extras: dict[str, Any] = {name: records.pop(name, None) for name in self.aggregator.strategy.requires}
        for name, key in SCALAR_EXTRAS.items():
            if name in extras:
                found = [m[key] for m in content.metric_records.values() if key in m]
                extras[name] = {"value": found[0]} if found else None
        arrays = records.get(self.arrayrecord_key)
        if arrays is None and len(records) == 1:  # Flower's FedAvg accepts one ArrayRecord under any key
            arrays = next(iter(records.values()))
        if arrays is None:
            problems.append(f"no model ArrayRecord {self.arrayrecord_key!r} (it has {sorted(content.array_records)})")
        num_examples = next(
            (m[self.weighted_by_key] for m in content.metric_records.values() if self.weighted_by_key in m), None
        )
        return ClientUpdate(msg.metadata.src_node_id, arrays, num_examples, extras, problems)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid, failed = self._check_and_log_replies(replies, is_train=True, validate=False)
        agg = self.aggregator
        agg.failed_total += len(failed)
        params, counts, accepted = agg.aggregate(server_round, [self._read(m) for m in valid])
        metrics = MetricRecord({**counts, "gossipsoup-failed": float(len(failed))})
        if accepted:  # the clients' own metrics, averaged as Flower's FedAvg does, over the accepted replies
            try:
                client = self.train_metrics_aggr_fn([valid[i].content for i in accepted], self.weighted_by_key)
                metrics = MetricRecord({**client, **metrics})
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("round %d: client metrics not aggregated (%s)", server_round, exc)
        return to_arrayrecord(agg.layout, params), metrics
