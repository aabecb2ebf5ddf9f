"""Result files a person and pandas can read, written so a crash never leaves half a file.

Every write goes to a temporary file in the same folder and is renamed over the target, so a reader
(or a later report) sees either the previous complete file or the new complete file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

BASE_COLUMNS = (
    "round",
    "test_accuracy",
    "test_loss",
    "train_loss",
    "num_participants",
    "bytes_up",
    "bytes_down",
    "wall_s",
)


def write_atomic(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``.

    Takes a callback so that writers that want a path (parquet, savefig) are atomic too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: Path(tmp).write_bytes(data))


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its header's keys sorted, so equal contents give equal bytes.

    The safetensors library keeps the header (tensor entries and ``__metadata__``) in a hash map whose
    order changes from process to process; a resumed run could then never write a file byte for
    byte equal to the uninterrupted run's. Offsets are explicit in each entry, so reordering the
    JSON changes nothing else; the header stays padded with spaces to a multiple of 8 bytes.
    """
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes that ``safetensors.torch.load`` has already accepted."""
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]).get("__metadata__") or {}


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)  # full precision: two runs with one seed compare bit for bit
    return value


class ClientLog:
    """``clients.csv``: one row per evaluated client per evaluation (``eval.clients``), rewritten atomically.

    An evaluation stages its per-client values (:meth:`stage`); the metrics row appended next gives them
    their ``round`` and ``time_s`` (:meth:`commit`). Lines are kept as formatted text, which a checkpoint
    carries (:meth:`saved`), so a resumed run continues the file with the same bytes.
    """

    def __init__(self, path: Path, lines: list[str] | None = None, header: str | None = None):
        self.path = Path(path)
        self.lines: list[str] = list(lines or [])
        self.header = header
        self.staged: dict[str, list] | None = None

    def stage(self, columns: dict[str, list]) -> None:
        self.staged = columns

    def commit(self, row: dict[str, Any]) -> None:
        if self.staged is None:
            return
        names = list(self.staged)
        header = ",".join(["round", "time_s", *names])
        if self.header is not None and self.header != header:
            raise ValueError(f"clients.csv columns changed from {self.header} to {header}")
        self.header = header
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        lead = [_cell(row.get("round")), _cell(row.get("time_s"))]
        for values in zip(*self.staged.values(), strict=True):
            writer.writerow(lead + [_cell(v) for v in values])
        self.lines.append(buf.getvalue())
        self.staged = None

    def flush(self) -> None:
        if self.header is not None:
            atomic_write_text(self.path, self.header + "\n" + "".join(self.lines))

    def saved(self) -> Any:
        """The header and lines so far as a uint8 tensor (a checkpoint's ``clients``)."""
        import torch

        text = "\n".join([self.header or "", "".join(self.lines)])
        return torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8)

    @classmethod
    def restore(cls, path: Path, saved: Any) -> ClientLog:
        header, _, body = bytes(saved.numpy().tobytes()).decode().partition("\n")
        return cls(path, [body] if body else [], header or None)


class MetricsLog:
    """Rows of per-round metrics, rewritten atomically as ``metrics.csv`` on each flush.

    ``clients`` (per-client evaluation only) is written beside it on each flush; a row appended while an
    evaluation's per-client values are staged gives them their round and time.
    """

    def __init__(self, path: Path, columns: Iterable[str] = BASE_COLUMNS):
        self.path = Path(path)
        self.columns = list(columns)
        self.rows: list[dict[str, Any]] = []
        self.clients: ClientLog | None = None

    def append(self, row: dict[str, Any]) -> None:
        for key in row:
            if key not in self.columns:
                self.columns.append(key)
        self.rows.append(row)
        if self.clients is not None:
            self.clients.commit(row)

    def flush(self) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow([_cell(row.get(c)) for c in self.columns])
        atomic_write_text(self.path, buf.getvalue())
        if self.clients is not None:
            self.clients.flush()

    def column(self, name: str) -> list[Any]:
        return [r.get(name) for r in self.rows]


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, default=_json_default, allow_nan=True) + "\n")


def plot_accuracy(path: Path, rows: list[dict[str, Any]], title: str, x_key: str = "round") -> None:
    """Test accuracy (and mean local training loss) against rounds, as a PNG: by the helper that a command-line run
    started with matplotlib already imported (sim/plot_process.py), otherwise here."""
    from .plot_process import plot

    if not plot(path, rows, title, x_key):
        write_accuracy_png(path, rows, title, x_key)


def write_accuracy_png(path: Path, rows: list[dict[str, Any]], title: str, x_key: str = "round") -> None:
    """:func:`plot_accuracy` in this process."""
    fig = accuracy_figure(rows, title, x_key)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    atomic_write_bytes(path, buf.getvalue())


def accuracy_figure(rows: list[dict[str, Any]], title: str, x_key: str = "round") -> Any:
    """The figure of :func:`plot_accuracy`: rounds on whole-number ticks (3 rounds get no tick at 0.5)."""
    # a Figure of its own, not pyplot's: pyplot costs ~0.4 s of start-up (its backends) and keeps global state
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    evals = [r for r in rows if r.get("test_accuracy") is not None and not math.isnan(r["test_accuracy"])]
    trains = [r for r in rows if r.get("train_loss") is not None and not math.isnan(r["train_loss"])]
    fig = Figure(figsize=(10, 4))
    ax_acc, ax_loss = fig.subplots(1, 2)
    ax_acc.plot([r[x_key] for r in evals], [r["test_accuracy"] for r in evals], marker=".")
    ax_acc.set_xlabel(x_key)
    ax_acc.set_ylabel("test accuracy")
    ax_acc.set_ylim(0, 1)
    ax_acc.grid(alpha=0.3)
    ax_loss.plot([r[x_key] for r in trains], [r["train_loss"] for r in trains], color="tab:orange")
    ax_loss.set_xlabel(x_key)
    ax_loss.set_ylabel("mean local training loss")
    ax_loss.grid(alpha=0.3)
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title)
    fig.tight_layout()
    return fig
