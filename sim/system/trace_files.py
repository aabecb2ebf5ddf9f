"""Reading FedScale trace renderings (JSON, CSV, Parquet) into records with their line numbers.

FedScale ships its traces as pickled dicts keyed by client id (``client_device_capacity``:
``{id: {"computation": ms/sample, "communication": kbit/s}}``; ``client_behave_trace``:
``{id: {"active": [...], "inactive": [...], "finish_time": s, ...}}``). A pickle can run code when it is
opened, so it is never read here: ``python -m sim.system.convert --allow-pickle`` writes the JSON
rendering. JSON keeps FedScale's dict; CSV and Parquet are tables with a ``client`` column (availability:
one row per online interval, columns ``client, active, inactive, finish_time``). Every record carries the
line (JSON, CSV) or row (Parquet) it came from, so an error can name it.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

FORMATS = ("json", "csv", "parquet")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".p")


@dataclass
class Record:
    key: str  # the client id as written in the file
    fields: dict[str, Any]
    where: str  # "line 12" or "row 3"


def detect_format(field: str, path: str, declared: str) -> str:
    """The declared format, or (``auto``) the one the extension names; a pickle is refused."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(field, path, "the path of an existing trace file", "No file exists there.")
    with open(p, "rb") as f:
        head = f.read(2)
    if p.suffix.lower() in PICKLE_SUFFIXES or head[:1] == b"\x80":
        raise ConfigError(
            field,
            path,
            "a JSON, CSV or Parquet trace",
            "This is a pickle, which can run code when opened. If you trust it, convert it first: "
            f"python -m sim.system.convert --allow-pickle {path} OUT.json",
        )
    if declared != "auto":
        return declared
    suffix = p.suffix.lower().lstrip(".")
    if suffix in FORMATS:
        return suffix
    raise ConfigError(
        field,
        path,
        "a .json, .csv or .parquet file, or a declared format",
        "Set the format key to json, csv or parquet.",
    )


def _json_line(text: str, key: str) -> str:
    at = text.find(f'"{key}"')
    return f"line {text.count(chr(10), 0, at) + 1}" if at >= 0 else "the file"


def read_json(field: str, path: str) -> list[Record]:
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            field, path, "a JSON object keyed by client id", f"Not valid JSON at line {exc.lineno}: {exc.msg}."
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(field, path, "a JSON object keyed by client id", f"Line 1 holds a {type(data).__name__}.")
    out = []
    for key, value in data.items():
        if not isinstance(value, dict):
            raise ConfigError(
                field, path, "an object per client", f"Client {key} ({_json_line(text, key)}) holds {value!r}."
            )
        out.append(Record(str(key), value, _json_line(text, key)))
    return out


def read_csv(field: str, path: str, columns: tuple[str, ...]) -> list[Record]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            missing = [c for c in ("client", *columns) if c not in header]
            if missing:
                raise ConfigError(
                    field,
                    path,
                    f"a CSV table with the columns client, {', '.join(columns)}",
                    f"Line 1 (the header) lacks {', '.join(missing)}: {','.join(header)!r}.",
                )
            out = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                where = f"line {reader.line_num}"
                if len(row) != len(header):
                    raise ConfigError(
                        field, path, f"{len(header)} cells per line", f"{where.capitalize()} has {len(row)}."
                    )
                cells = dict(zip(header, (c.strip() for c in row), strict=True))
                out.append(
                    Record(cells["client"], {c: _float(field, path, where, c, cells[c]) for c in columns}, where)
                )
    except UnicodeDecodeError:
        raise ConfigError(field, path, "a text CSV file", "It is not UTF-8 text.") from None
    return out


def read_parquet(field: str, path: str, columns: tuple[str, ...]) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise ConfigError(field, path, "a Parquet file", f"It could not be read as Parquet: {exc}") from None
    missing = [c for c in ("client", *columns) if c not in table.column_names]
    if missing:
        raise ConfigError(
            field, path, f"a table with the columns client, {', '.join(columns)}", f"It lacks {', '.join(missing)}."
        )
    data = table.to_pydict()
    return [
        Record(str(data["client"][i]), {c: data[c][i] for c in columns}, f"row {i + 1}") for i in range(table.num_rows)
    ]


def _float(field: str, path: str, where: str, column: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(
            field, path, f"a number in column {column}", f"{where.capitalize()} holds {text!r}."
        ) from None


def read_records(field: str, path: str, declared: str, columns: tuple[str, ...]) -> list[Record]:
    """The file's records in file order (a parse error names the line)."""
    fmt = detect_format(field, path, declared)
    if fmt == "json":
        return read_json(field, path)
    if fmt == "csv":
        return read_csv(field, path, columns)
    return read_parquet(field, path, columns)
