"""FedScale's device-capacity and availability traces, mapped onto the run's clients.

Device capacity (``computation``: the model's inference latency in ms per sample; ``communication``:
kbit/s) becomes the system model's arrays with FedScale's units (``ClientMetadata.get_completion_time``
in fedscale/cloud/internal/client_metadata.py): compute seconds per sample
``augmentation_factor * computation / 1000`` (training costs about three inferences) and one bandwidth
for both directions, ``communication * 1024 / 8`` bytes/s (FedScale counts a model's size in kbit as
``bytes / 1024 * 8``).

Client mapping (``system.client_map``): ``id`` gives client k the record keyed ``k`` (every client must
have one); ``cycle`` gives client k the ``(k mod n)``-th record in file order, as FedScale's
``register_client`` does for availability (``user_trace_keys[client_id % len(user_trace)]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..validation import choice, is_number, number
from .availability import Availability, ClientTrace
from .trace_files import FORMATS, Record, read_records

CLIENT_MAPS = ("id", "cycle")
KBIT_BYTES = 1024 / 8  # FedScale's kbit: model bytes / 1024 * 8


def map_records(field: str, path: str, records: list[Record], num_clients: int, client_map: str) -> list[Record]:
    """The record of each client 0..N-1 under ``client_map``; ConfigError names a missing client or duplicate."""
    if not records:
        raise ConfigError(field, path, "a trace with at least one client", "The file has no records.")
    if client_map == "cycle":
        return [records[k % len(records)] for k in range(num_clients)]
    by_key: dict[str, Record] = {}
    for r in records:
        if r.key in by_key:
            raise ConfigError(
                field, path, "one record per client", f"Client {r.key} appears at {by_key[r.key].where} and {r.where}."
            )
        by_key[r.key] = r
    missing = [k for k in range(num_clients) if str(k) not in by_key]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
        raise ConfigError(
            field,
            path,
            f"a record for every client 0..{num_clients - 1} (system.client_map=id)",
            f"{len(missing)} client(s) have none: {shown}. Add them, or set system.client_map=cycle to reuse "
            "the file's records in order as FedScale does.",
        )
    return [by_key[str(k)] for k in range(num_clients)]


def _fmt(options: Mapping, key: str) -> str:
    return choice(f"system.{key}", options.get(key, "auto"), ("auto", *FORMATS))


def trace_arrays(options: Mapping[str, Any], num_clients: int) -> dict[str, np.ndarray]:
    """compute_s, bandwidth_up, bandwidth_down, latency_s from the device-capacity file."""
    field = "system.device_file"
    path = options.get("device_file")
    if not isinstance(path, str) or not path or path == "???":
        raise ConfigError(field, path, "the path of a FedScale device-capacity trace (JSON/CSV/Parquet)")
    client_map = choice("system.client_map", options.get("client_map", "id"), CLIENT_MAPS)
    factor = number("system.augmentation_factor", options.get("augmentation_factor", 3.0), 0, lo_open=True)
    latency = number("system.latency_s", options.get("latency_s", 0.0), 0)
    records = read_records(field, path, _fmt(options, "format"), ("computation", "communication"))
    rows = map_records(field, path, records, num_clients, client_map)
    for r in rows:
        for column in ("computation", "communication"):
            value = r.fields.get(column)
            if not (is_number(value) and value > 0):
                raise ConfigError(
                    field,
                    path,
                    f"a finite {column} > 0 for every client",
                    f"Client {r.key} ({r.where}) has {column}={value!r}.",
                )
    computation = np.array([float(r.fields["computation"]) for r in rows])
    bandwidth = np.array([float(r.fields["communication"]) for r in rows]) * KBIT_BYTES
    return {
        "compute_s": factor * computation / 1000.0,
        "bandwidth_up": bandwidth,
        "bandwidth_down": bandwidth.copy(),
        "latency_s": np.full(num_clients, latency),
    }


def _intervals(field: str, path: str, r: Record, grouped: list[Record] | None) -> ClientTrace:
    active: Any
    inactive: Any
    finish: Any
    if grouped is not None:  # a table: one row per interval
        rows = grouped
        active = [x.fields["active"] for x in rows]
        inactive = [x.fields["inactive"] for x in rows]
        finishes = {x.fields["finish_time"] for x in rows}
        if len(finishes) != 1:
            raise ConfigError(
                field, path, "one finish_time per client", f"Client {r.key} has {sorted(finishes)} ({r.where})."
            )
        finish = finishes.pop()
    else:
        active, inactive, finish = r.fields.get("active"), r.fields.get("inactive"), r.fields.get("finish_time")
    where = f"client {r.key} ({r.where})"
    if not (isinstance(active, list) and isinstance(inactive, list) and len(active) == len(inactive) and active):
        raise ConfigError(
            field,
            path,
            "equal-length, non-empty lists active and inactive per client",
            f"{where.capitalize()} does not have them.",
        )
    if not (is_number(finish) and finish > 0):
        raise ConfigError(
            field, path, "a finite finish_time > 0 per client", f"{where.capitalize()} has finish_time={finish!r}."
        )
    if not all(is_number(v) and v >= 0 for v in active + inactive):
        raise ConfigError(field, path, "finite times >= 0", f"{where.capitalize()} has a non-finite or negative time.")
    a, b = np.asarray(active, dtype=np.float64), np.asarray(inactive, dtype=np.float64)
    if (b < a).any():
        i = int(np.flatnonzero(b < a)[0])
        raise ConfigError(
            field, path, "active[i] <= inactive[i]", f"{where.capitalize()}: interval {i} is [{a[i]}, {b[i]}]."
        )
    if (np.diff(a) <= 0).any():
        raise ConfigError(
            field, path, "intervals sorted by start", f"{where.capitalize()}: active = {active} is not increasing."
        )
    if (b[:-1] >= a[1:]).any():
        i = int(np.flatnonzero(b[:-1] >= a[1:])[0])
        raise ConfigError(
            field,
            path,
            "disjoint intervals, inactive[i] < active[i + 1] (merge touching ones)",
            f"{where.capitalize()}: [{a[i]}, {b[i]}] overlaps [{a[i + 1]}, {b[i + 1]}].",
        )
    if b[-1] > finish:
        raise ConfigError(
            field,
            path,
            "intervals within [0, finish_time]",
            f"{where.capitalize()}: inactive {b[-1]} > finish_time {finish}.",
        )
    return ClientTrace(a, b, float(finish))


def read_availability(options: Mapping[str, Any], num_clients: int) -> Availability:
    """Each client's online intervals from FedScale's availability trace (``system.availability``)."""
    field, path = "system.availability", str(options.get("availability"))
    client_map = choice("system.client_map", options.get("client_map", "id"), CLIENT_MAPS)
    records = read_records(field, path, _fmt(options, "availability_format"), ("active", "inactive", "finish_time"))
    grouped: dict[str, list[Record]] | None = None
    if records and not isinstance(records[0].fields.get("active"), list):  # a table: group its rows by client
        grouped = {}
        for r in records:
            grouped.setdefault(r.key, []).append(r)
        records = [rows[0] for rows in grouped.values()]
    rows = map_records(field, path, records, num_clients, client_map)
    cache: dict[str, ClientTrace] = {}
    traces = []
    for r in rows:
        if r.key not in cache:
            cache[r.key] = _intervals(field, path, r, None if grouped is None else grouped[r.key])
        traces.append(cache[r.key])
    return Availability(traces)
