"""accuracy.png drawn by a helper process that imports matplotlib while the run trains.

matplotlib's import and its first figure (fonts, text layout) cost about 0.6-0.8 s of W1's 3 s ``python -m sim``, all
of it after the last round. A plain command-line run (:func:`sim.cli.main`) therefore forks this helper once its
config is checked: the helper imports matplotlib and draws a throwaway figure on the other core while the parent
builds the experiment and trains, then draws the run's figure when :func:`sim.results.plot_accuracy` asks and says
whether it wrote the file. It is the same code on the same rows, so the PNG is the same bytes
(tests/test_plot_process.py). When the helper is missing, died or failed, the parent draws the figure itself, as
before. The helper ignores SIGINT and SIGTERM (the parent handles them), sees end of file when the parent ends,
and is killed once it has drawn the figure or the parent exits, so it never outlives the run. A helper that takes
no request or sends no reply within ``REPLY_TIMEOUT_S`` is killed and the parent draws the figure (tested with a
stopped helper).

Limits: only a single run from the command line starts it (``--multirun`` and its joblib workers never do, nor
``run_experiment`` in-process). The helper points its stdin/stdout/stderr at /dev/null but keeps the other descriptors
the parent had at the fork; when the parent is killed outright (SIGKILL, no atexit) it holds them until it has warmed
up and reads end of file, about a second. A process the run forks after it (not spawns) inherits the request pipe,
so then the helper lives until both have ended.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import struct
import time
from pathlib import Path
from typing import Any

#: (helper pid, fd the parent writes requests to, fd it reads replies from, pid of the parent that started it)
_HELPER: tuple[int, int, int, int] | None = None
#: seconds plot() waits for the helper to take its request and reply before it kills it and the parent draws the figure
#: itself (a helper hung after the fork must not hold the finished run; drawing one figure takes well under a second)
REPLY_TIMEOUT_S = 60.0
_WARM_ROWS = [{"round": 0, "test_accuracy": 0.1, "train_loss": 2.0}, {"round": 1, "test_accuracy": 0.5}]


def start() -> None:
    """Fork the helper (once per process; nothing where ``os.fork`` does not exist)."""
    global _HELPER
    if _HELPER is not None or not hasattr(os, "fork"):
        return
    from_parent, to_helper = os.pipe()  # (read end, write end) of the requests
    from_helper_r, from_helper_w = os.pipe()  # of the replies
    stops = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # a Ctrl-C at the fork reaches the parent, never the new helper
    pid = os.fork()
    if pid == 0:  # the helper: never returns
        code = 1
        try:
            for sig in stops:
                signal.signal(sig, signal.SIG_IGN)  # the parent handles them; a blocked one pending here is dropped
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
            os.close(to_helper)
            os.close(from_helper_r)
            _serve(from_parent, from_helper_w)
            code = 0
        finally:
            os._exit(code)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
    os.close(from_parent)
    os.close(from_helper_w)
    os.set_blocking(to_helper, False)  # a request larger than the pipe's buffer must not block past the deadline
    _HELPER = (pid, to_helper, from_helper_r, os.getpid())
    atexit.register(stop)


def stop() -> None:
    """End the helper now (it holds no request then: every request is answered before this can run)."""
    global _HELPER
    if _HELPER is None:
        return
    pid, write_fd, read_fd, owner = _HELPER
    _HELPER = None
    if owner != os.getpid():  # a process forked from the run: the helper is its parent's
        return
    for fd in (write_fd, read_fd):
        os.close(fd)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def plot(path: Path, rows: list[dict[str, Any]], title: str, x_key: str) -> bool:
    """Have the helper write ``path``; True when it did, False when the caller must draw it itself."""
    if _HELPER is None or _HELPER[3] != os.getpid():
        return False
    _, write_fd, read_fd, _ = _HELPER
    try:
        # absolute: the helper keeps the working directory of the moment it was forked
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        _send(write_fd, pickle.dumps((str(Path(path).resolve()), rows, title, x_key)), deadline)
        ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.monotonic()))
        reply = _receive(read_fd) if ready else None
    except OSError:
        reply = None
    stop()  # one figure a run: the helper has done its work
    return reply == b"ok"


def _serve(read_fd: int, write_fd: int) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # hold none of the parent's output pipes open: a reader waits for their end of file
        os.dup2(devnull, fd)
    import io

    from .results import accuracy_figure, write_accuracy_png

    try:  # imports matplotlib and loads fonts while the parent works
        accuracy_figure(_WARM_ROWS, "warm-up").savefig(io.BytesIO(), format="png", dpi=100)
    except Exception:  # noqa: BLE001 - the request then fails and the parent draws the figure itself
        pass
    request = _receive(read_fd)
    if request is None:  # the parent ended without a figure
        return
    path, rows, title, x_key = pickle.loads(request)
    try:
        write_accuracy_png(Path(path), rows, title, x_key)
        reply = b"ok"
    except Exception as exc:  # noqa: BLE001 - any failure: the parent draws it itself
        reply = repr(exc).encode()
    _send(write_fd, reply)


def _send(fd: int, data: bytes, deadline: float | None = None) -> None:
    """One message; with a deadline (``fd`` non-blocking) TimeoutError once it passes with bytes still unwritten."""
    view = memoryview(struct.pack("<Q", len(data)) + data)
    while view:
        if deadline is not None and not select.select([], [fd], [], max(0.0, deadline - time.monotonic()))[1]:
            raise TimeoutError("the accuracy.png helper took no request")
        view = view[os.write(fd, view) :]


def _receive(fd: int) -> bytes | None:
    """One message, or None at end of file."""
    head = _read_exactly(fd, 8)
    if head is None:
        return None
    return _read_exactly(fd, struct.unpack("<Q", head)[0])


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
