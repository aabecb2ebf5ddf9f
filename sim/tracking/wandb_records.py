"""Read what an offline W&B run recorded, from its ``run-<id>.wandb`` file, with wandb's own protobufs.

wandb 0.31 has no Python reader of its transaction log any more (``wandb.sdk.internal.datastore``
went with the Go core), so this walks the log's framing itself and hands each record to wandb's
``Record`` protobuf. The framing is LevelDB's log format under a 7-byte header (``:W&B``, magic
0xBEE1, version 0): 32 KiB blocks of chunks, each with a CRC-32 (not checked here), a length and a
type (full, first, middle, last). Used by the tests to check what the tracker logged, and handy to
look at an offline run without uploading it: ``python -m sim.tracking.wandb_records RUN_DIR``.
"""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    run: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    exit_code: int | None = None


def raw_records(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log (no :W&B header)")
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the rest of a block too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            records.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            records.append(pending + chunk)
        else:  # zeros: the writer stopped mid-block
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
    return records


def _items(items) -> dict[str, Any]:
    return {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in items}


def read_offline_run(run_dir: Path) -> OfflineRun:
    """Everything one ``offline-run-*`` folder recorded: run info, config, history rows, summary, files."""
    from wandb.proto import wandb_internal_pb2 as pb

    (log_file,) = Path(run_dir).glob("run-*.wandb")
    out = OfflineRun()
    for raw in raw_records(log_file):
        record = pb.Record()  # type: ignore[attr-defined]
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out.run = {"id": record.run.run_id, "group": record.run.run_group, "name": record.run.display_name}
            out.config.update(_items(record.run.config.update))
        elif kind == "config":
            out.config.update(_items(record.config.update))
        elif kind == "history":
            out.history.append(_items(record.history.item))
        elif kind == "summary":
            out.summary.update(_items(record.summary.update))
        elif kind == "files":
            out.files.extend(f.path for f in record.files.files)
        elif kind == "exit":
            out.exit_code = record.exit.exit_code
    return out


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        run = read_offline_run(Path(folder))
        print(json.dumps({"run": run.run, "rows": len(run.history), "summary": run.summary, "files": run.files}))
