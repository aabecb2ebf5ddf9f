"""``run_module``: ``python -m MODULE ARGS`` in a process of its own, forked from a server that imported torch once.

A drop-in for ``subprocess.run([sys.executable, "-m", MODULE, *ARGS], cwd=..., capture_output=True, text=True)`` in
tests whose subject is what the command prints and its exit code (bad input, a short run), not how the interpreter
starts: the child is a real process, so ``sys.exit(2)``, an uncaught traceback or a ``print`` reach the test as they
would reach a user, at about a tenth of a second instead of 2-3 CPU seconds of imports. Tests that need a fresh
interpreter (what gets imported, Ray, Flower, signals to a process group) keep ``subprocess``. See cli_server.py.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

_SERVER: subprocess.Popen | None = None
_PENDING = bytearray()  # bytes read from the server's replies past the last full line


def _server() -> subprocess.Popen:
    """The fork server of this pytest process, started on first use and stopped when the process exits."""
    global _SERVER
    if _SERVER is None or _SERVER.poll() is not None:
        _SERVER = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("cli_server.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        _PENDING.clear()
        atexit.register(_stop, _SERVER)
        assert json.loads(_read_line(_SERVER, 600)) == {"ready": True}
    return _SERVER


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.stdin.close()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


def _read_line(server: subprocess.Popen, timeout: float | None) -> str:
    """The server's next reply line; reads the pipe's descriptor directly so that select() sees every byte."""
    fd = server.stdout.fileno()
    while b"\n" not in _PENDING:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise TimeoutError
        chunk = os.read(fd, 65536)
        if not chunk:
            raise RuntimeError(f"the CLI fork server ended (exit code {server.poll()})")
        _PENDING.extend(chunk)
    end = _PENDING.index(b"\n") + 1
    line = bytes(_PENDING[:end]).decode()
    del _PENDING[:end]
    return line


def run_module(
    module: str, args: list[str], cwd: Path | str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``python -m module *args`` in ``cwd`` with ``env`` (default: this process's environment); return what
    ``subprocess.run(..., capture_output=True, text=True)`` would."""
    return _run({"module": module}, ["-m", module], args, cwd, env, timeout)


def run_script(
    script: Path | str, args: list[str], cwd: Path | str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``run_module`` for ``python SCRIPT *args``."""
    script = str(Path(script).resolve())
    return _run({"script": script}, [script], args, cwd, env, timeout)


def _run(
    what: dict[str, str], head: list[str], args: list[str], cwd: Path | str, env: dict[str, str] | None, timeout: float
) -> subprocess.CompletedProcess:
    server = _server()
    with tempfile.TemporaryDirectory(prefix="forked_cli") as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        request = {
            **what,
            "args": [str(a) for a in args],
            "cwd": str(Path(cwd).resolve()),
            "env": dict(os.environ if env is None else env),
            "stdout": str(out),
            "stderr": str(err),
        }
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        pid = json.loads(_read_line(server, 60))["pid"]
        try:
            returncode = json.loads(_read_line(server, timeout))["returncode"]
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            _read_line(server, 60)
            raise subprocess.TimeoutExpired([*head, *args], timeout) from None
        argv = [sys.executable, *head, *request["args"]]
        return subprocess.CompletedProcess(argv, returncode, out.read_text(), err.read_text())
