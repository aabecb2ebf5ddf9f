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
_IN_FLIGHT: ForkedProcess | None = None


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
    return start_module(module, args, cwd, env).result(timeout)


def run_script(
    script: Path | str, args: list[str], cwd: Path | str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``run_module`` for ``python SCRIPT *args``."""
    script = str(Path(script).resolve())
    return ForkedProcess({"script": script}, [script], args, cwd, env).result(timeout)


def start_module(
    module: str, args: list[str], cwd: Path | str, env: dict[str, str] | None = None, new_session: bool = False
) -> ForkedProcess:
    """``subprocess.Popen([sys.executable, "-m", module, *args], ...)`` with stdout and stderr captured: for tests
    that signal the run while it works. ``new_session``: the child leads a process group of its own."""
    return ForkedProcess({"module": module}, ["-m", module], args, cwd, env, new_session)


class ForkedProcess:
    """One forked run in flight (the server forks one at a time): ``pid``, ``poll``, ``send_signal``, ``wait`` and
    ``communicate`` as ``subprocess.Popen`` has them."""

    def __init__(
        self,
        what: dict[str, str],
        head: list[str],
        args: list[str],
        cwd: Path | str,
        env: dict[str, str] | None,
        new_session: bool = False,
    ) -> None:
        global _IN_FLIGHT
        assert _IN_FLIGHT is None or _IN_FLIGHT.returncode is not None, "one forked run at a time"
        self._server = _server()
        self._tmp = tempfile.TemporaryDirectory(prefix="forked_cli")
        self._out, self._err = Path(self._tmp.name, "stdout"), Path(self._tmp.name, "stderr")
        self.args = [sys.executable, *head, *(str(a) for a in args)]
        request = {
            **what,
            "args": [str(a) for a in args],
            "cwd": str(Path(cwd).resolve()),
            "env": dict(os.environ if env is None else env),
            "stdout": str(self._out),
            "stderr": str(self._err),
            "new_session": new_session,
        }
        self.returncode: int | None = None
        self._server.stdin.write(json.dumps(request) + "\n")
        self._server.stdin.flush()
        self.pid: int = json.loads(_read_line(self._server, 60))["pid"]
        _IN_FLIGHT = self

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                self.returncode = json.loads(_read_line(self._server, 0))["returncode"]
            except TimeoutError:
                pass
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            try:
                self.returncode = json.loads(_read_line(self._server, timeout))["returncode"]
            except TimeoutError:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self._out.read_text(), self._err.read_text()

    def result(self, timeout: float | None) -> subprocess.CompletedProcess:
        """Wait (killing the child after ``timeout`` seconds, as ``subprocess.run`` does) and return the outcome."""
        try:
            self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.wait()
            raise
        try:
            return subprocess.CompletedProcess(self.args, self.returncode, *self.communicate())
        finally:
            self._tmp.cleanup()
