"""One virtual environment per peer, so that no peer's dependencies (or their import cost) leak into another's.

Every environment gets ``torch==2.13.0`` first: asking for torch later, or letting a peer pull it in, would
fetch a multi-GB CUDA build; with the CPU wheel already in place the peer's own requirements reuse it. The
environments live under ``$GOSSIPSOUP_PEERS_HOME`` (default ``~/.cache/gossipsoup-peers``), outside the work
tree; each holds a ``ready.json`` with the requirements it was built from, so a changed pin rebuilds it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TORCH = "torch==2.13.0"
#: Flower at the version this project is developed and tested against (pyproject's `flower` extra: >=1.42,<2)
FLWR = "flwr[simulation]==1.42.0"

#: each peer's requirements, installed in this order after torch (gossipsoup: this checkout, editable)
REQUIREMENTS: dict[str, list[list[str]]] = {
    "gossipsoup": [[TORCH], ["-e", str(ROOT)]],
    "pfl": [[TORCH], ["pfl[pytorch]==0.6.0"]],
    "flower": [[TORCH], [FLWR, "numpy"]],
    "torch": [[TORCH], ["numpy"]],
}


def home() -> Path:
    return Path(os.environ.get("GOSSIPSOUP_PEERS_HOME", Path.home() / ".cache" / "gossipsoup-peers"))


def python_of(peer: str) -> Path:
    return home() / peer / "bin" / "python"


def is_ready(peer: str) -> bool:
    marker = home() / peer / "ready.json"
    return marker.exists() and json.loads(marker.read_text()) == REQUIREMENTS[peer]


def ensure(peer: str, log=print) -> Path:
    """The peer's interpreter, building its environment first when it is missing or out of date."""
    if is_ready(peer):
        return python_of(peer)
    where = home() / peer
    if where.exists():
        shutil.rmtree(where)
    log(f"[peers] creating {where} ({', '.join(' '.join(r) for r in REQUIREMENTS[peer])})")
    venv.EnvBuilder(with_pip=True).create(where)
    for req in REQUIREMENTS[peer]:
        subprocess.run([str(python_of(peer)), "-m", "pip", "install", "-q", *req], check=True)
    (where / "ready.json").write_text(json.dumps(REQUIREMENTS[peer]))
    return python_of(peer)


if __name__ == "__main__":
    for name in sys.argv[1:] or list(REQUIREMENTS):
        print(name, ensure(name))
