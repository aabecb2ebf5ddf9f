"""Convert a FedScale trace pickle to the JSON rendering that ``system=trace`` reads.

    python -m sim.system.convert --allow-pickle client_device_capacity device.json

Unpickling runs whatever code the file names, so the converter refuses to open a pickle unless
``--allow-pickle`` says the user trusts it. The pickle must hold FedScale's dict keyed by client id:
device capacity (``{id: {"computation", "communication"}}``) or availability (``{id: {"active",
"inactive", "finish_time", ...}}``); numpy scalars and arrays become JSON numbers and lists.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError, GossipsoupError


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _plain(value.tolist())
    return value


def convert(source: str, target: str, allow_pickle: bool) -> int:
    """Write ``source``'s dict as JSON to ``target``; returns the number of clients."""
    if not allow_pickle:
        raise ConfigError(
            "--allow-pickle",
            False,
            "given explicitly to open a pickle",
            f"Opening {source} would run any code it contains; pass --allow-pickle only for a file you trust.",
        )
    path = Path(source)
    if not path.is_file():
        raise ConfigError("source", source, "an existing FedScale trace pickle", "No file exists there.")
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)  # noqa: S301 - the user allowed it explicitly
    except Exception as exc:  # unpickling raises many types
        raise ConfigError("source", source, "a readable pickle", f"It could not be unpickled: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError("source", source, "FedScale's dict of per-client dicts", f"It holds a {type(data).__name__}.")
    Path(target).write_text(json.dumps(_plain(data), indent=1) + "\n", encoding="utf-8")
    return len(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.system.convert", description=__doc__.split("\n")[0])
    parser.add_argument("source", help="a FedScale trace pickle (client_device_capacity, client_behave_trace)")
    parser.add_argument("target", help="the JSON file to write")
    parser.add_argument("--allow-pickle", action="store_true", help="open the pickle (it can run code: trust it first)")
    args = parser.parse_args(argv)
    try:
        count = convert(args.source, args.target, args.allow_pickle)
    except GossipsoupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote {count} clients to {args.target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
