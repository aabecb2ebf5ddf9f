"""Tracking URIs: where ``null`` and relative paths point, and whether the place can take writes.

Checked in the config check, before any job: a tracking store that cannot be written would otherwise
fail the first job after its data and model were built, and every other job of the sweep after it.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlparse

from sim.errors import ConfigError

from .common import check_writable_dir

LOCAL_STORE = "mlflow.db"  # MLflow 3's own default store: a SQLite file in the folder the command ran in
ARTIFACTS = "mlartifacts"  # beside a SQLite store: its runs' files (MLflow would put them in ./mlruns of the cwd)


def mlflow_uri(value: str | None, launch_dir: Path) -> str:
    """``null``: ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///mlflow.db`` in the folder the command started in.

    A SQLite store needs nothing set to be read back (MLflow 3 refuses its file store unless
    ``MLFLOW_ALLOW_FILE_STORE=true``). A plain or relative path is a file store folder, and a relative
    ``sqlite:///`` path a database file, relative to that launch folder (not to the run folder, so every
    job of a sweep and every later run lands in the same store).
    """
    if value is None:
        value = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{LOCAL_STORE}"
    parsed = urlparse(value)
    if parsed.scheme == "sqlite":
        store = local_store(value)
        if store is not None and not store.is_absolute():
            return f"sqlite:///{(launch_dir / store.expanduser()).resolve()}"
        return value
    if parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        path = Path(unquote(parsed.path)) if parsed.scheme == "file" else Path(value)
        return (launch_dir / path.expanduser()).resolve().as_uri()
    return value


def local_store(uri: str) -> Path | None:
    """The folder (file store) or database file (sqlite) of a URI on this machine; None for a server."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "sqlite":
        return Path(unquote(parsed.path)[1:])  # sqlite:///rel.db is relative, sqlite:////abs.db absolute
    return None


def artifact_root(uri: str) -> str | None:
    """Where a new experiment keeps its runs' files: ``mlartifacts/`` beside a SQLite file, else MLflow's choice."""
    store = local_store(uri)
    if urlparse(uri).scheme == "sqlite" and store is not None:
        return (store.parent / ARTIFACTS).as_uri()
    return None


def lock_file(uri: str) -> Path | None:
    """A file beside a local store that every process using the store locks while it opens it; None for a server.

    Opening a new SQLite store creates and migrates its schema; two processes doing that at once
    break it ("table _alembic_tmp_tags already exists"), so the client is created under this lock.
    """
    store = local_store(uri)
    if store is None:
        return None
    scheme = urlparse(uri).scheme
    return store / ".gossipsoup.lock" if scheme == "file" else store.with_name(store.name + ".lock")


def check_mlflow_uri(field: str, value: str | None, launch_dir: Path) -> str:
    uri = mlflow_uri(value, launch_dir)
    parsed = urlparse(uri)
    store = local_store(uri)
    if parsed.scheme == "file" and store is not None:
        check_writable_dir(field, value, store)
    elif parsed.scheme == "sqlite" and store is not None:
        if store.is_dir():
            raise ConfigError(field, value, "sqlite:///PATH to a database file", f"{store} is a folder.")
        check_writable_dir(field, value, store.parent)
    elif parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        _check_reachable(field, value or uri, parsed.hostname or "", port)
    return uri


@lru_cache(maxsize=16)
def _reachable(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=3):
            return ""
    except OSError as exc:
        return str(exc)


def _check_reachable(field: str, value: str, host: str, port: int) -> None:
    problem = _reachable(host, port)
    if problem:
        raise ConfigError(
            field,
            value,
            "a tracking server this machine can reach, a file: URI or a folder",
            f"Connecting to {host}:{port} failed ({problem}).",
        )
