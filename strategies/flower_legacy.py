"""Any gossipsoup strategy as a Flower strategy in the *legacy* API (``flwr.server.strategy``).

Most published Flower baselines still build a ``ServerApp(config=ServerConfig(...), strategy=...)``
around a ``flwr.server.strategy.Strategy`` whose ``aggregate_fit`` receives ``(ClientProxy, FitRes)``
pairs. :class:`GossipsoupLegacyStrategy` subclasses that API's ``FedAvg`` and, like the message-API
adapter in ``strategies/flower.py``, replaces only the aggregation; it shares that module's checks,
node identity and state handling (:class:`~strategies.flower.ReplyAggregator`).

What differs from the message API, and why:

- models travel as a positional list of ndarrays (``Parameters``), so position i is the layout's
  i-th tensor (the order of ``model.state_dict()``, which is the usual NumPyClient convention);
- the client is ``ClientProxy.node_id`` (``cid`` where a proxy has no node id);
- the sample count is ``FitRes.num_examples``;
- legacy metrics hold scalars only, so an extra (e.g. the Fisher diagonal) travels as bytes in
  ``FitRes.metrics[name]`` (:func:`encode_extra`), and the request for it as the comma-separated
  string ``gossipsoup-requires`` in the fit config.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from flwr.common import FitIns, FitRes, Parameters, Scalar, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg

from sim.layout import Layout

from .base import Strategy
from .flower import REQUIRES_KEY, SCALAR_EXTRAS, AggregatorHolder, ClientUpdate, from_arrayrecord, log


def to_ndarrays(layout: Layout, flat: torch.Tensor) -> list[np.ndarray]:
    """The flat model as the legacy API's positional list (layout order)."""
    return [t.detach().cpu().numpy().copy() for t in layout.to_state_dict(flat).values()]


def named(layout: Layout, arrays: list[np.ndarray]) -> dict[str, np.ndarray] | str:
    """Positional arrays named by the layout, or a problem when their number differs."""
    if len(arrays) != len(layout):
        return f"it sent {len(arrays)} arrays, the model's layout has {len(layout)} ({layout.names})"
    return dict(zip(layout.names, arrays, strict=True))


def encode_extra(flat: torch.Tensor) -> bytes:
    """A per-client extra ``[P]`` (e.g. the Fisher diagonal) as bytes for ``FitRes.metrics``."""
    buffer = io.BytesIO()
    np.save(buffer, flat.detach().cpu().numpy().astype(np.float32), allow_pickle=False)
    return buffer.getvalue()


def decode_extra(layout: Layout, value: Any) -> dict[str, np.ndarray] | str:
    """The layout-named arrays of :func:`encode_extra`'s bytes, or a problem."""
    if not isinstance(value, bytes):
        return f"is a {type(value).__name__}, expected the bytes of encode_extra()"
    try:
        flat = np.load(io.BytesIO(value), allow_pickle=False)
    except (ValueError, OSError) as exc:
        return f"cannot be read ({exc})"
    if flat.shape != (layout.size,):
        return f"has shape {list(flat.shape)}, expected [{layout.size}] (the flat model)"
    return {s.name: flat[s.slice].reshape(s.shape) for s in layout}


class GossipsoupLegacyStrategy(AggregatorHolder, LegacyFedAvg):
    """A gossipsoup strategy behind ``flwr.server.strategy.FedAvg``'s interface.

    Arguments as for :class:`strategies.flower.GossipsoupStrategy`; other keywords go to the legacy
    ``FedAvg`` (``fraction_fit``, ``min_available_clients``, ``fit_metrics_aggregation_fn``, ...).
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
        if initial_params is not None and fedavg_kwargs.get("initial_parameters") is None:
            fedavg_kwargs["initial_parameters"] = ndarrays_to_parameters(to_ndarrays(layout, initial_params))
        super().__init__(**fedavg_kwargs)
        self._hold(
            strategy,
            layout,
            num_clients=num_clients,
            validate=validate,
            on_invalid=on_invalid,
            initial_params=initial_params,
        )

    def __repr__(self) -> str:
        return f"GossipsoupLegacyStrategy({self.aggregator.strategy.name}, on_invalid={self.aggregator.on_invalid!r})"

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        agg = self.aggregator
        arrays = named(agg.layout, parameters_to_ndarrays(parameters))
        if isinstance(arrays, str):
            raise ValueError(f"the global model does not fit the layout: {arrays}")
        agg.reference = from_arrayrecord(agg.layout, arrays, "the global model")
        agg.register(_node(p) for p in client_manager.all().values())
        pairs = super().configure_fit(server_round, parameters, client_manager)
        if agg.strategy.requires:
            for _, ins in pairs:
                ins.config[REQUIRES_KEY] = ",".join(sorted(agg.strategy.requires))
        return pairs

    def _read(self, proxy: ClientProxy, res: FitRes) -> ClientUpdate:
        layout, problems = self.aggregator.layout, []
        arrays: Mapping[str, Any] | None = None
        found = named(layout, parameters_to_ndarrays(res.parameters))
        if isinstance(found, str):
            problems.append(found)
        else:
            arrays = found
        extras: dict[str, Mapping[str, Any] | None] = {}
        for name in self.aggregator.strategy.requires:
            if name in SCALAR_EXTRAS:  # one number per client: a plain metric
                key = SCALAR_EXTRAS[name]
                extras[name] = {"value": res.metrics[key]} if key in res.metrics else None
            elif name in res.metrics:
                extra = decode_extra(layout, res.metrics[name])
                if isinstance(extra, str):
                    problems.append(f"extra {name!r} {extra}")
                extras[name] = None if isinstance(extra, str) else extra
        return ClientUpdate(_node(proxy), arrays, res.num_examples, extras, problems)

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if failures and not self.accept_failures:
            return None, {}
        agg = self.aggregator
        agg.failed_total += len(failures)
        if failures:
            log.info("aggregate_fit: %d failures", len(failures))
        params, counts, accepted = agg.aggregate(server_round, [self._read(p, r) for p, r in results])
        metrics: dict[str, Scalar] = {}
        if self.fit_metrics_aggregation_fn and accepted:
            metrics.update(
                self.fit_metrics_aggregation_fn([(results[i][1].num_examples, results[i][1].metrics) for i in accepted])
            )
        metrics.update(counts, **{"gossipsoup-failed": float(len(failures))})
        return ndarrays_to_parameters(to_ndarrays(agg.layout, params)), metrics


def _node(proxy: ClientProxy) -> Any:
    return getattr(proxy, "node_id", None) or proxy.cid
