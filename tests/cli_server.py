"""The fork server behind ``tests/forked_cli.py``: imports the project's heavy modules once, then forks one child per
request that runs ``python -m MODULE ARGS`` or ``python SCRIPT ARGS`` as a fresh interpreter would (own process, own
cwd and environment, stdout/stderr in files, the exit code a fresh interpreter would give).

Why: a fresh ``python -m sim`` spends 2-3 CPU seconds importing torch, scikit-learn and flwr_datasets before it
reads its first argument; the bad-input tests start over a hundred of them. A forked child starts in milliseconds and
is still a real process, so exit codes, stderr and "no traceback" are observed exactly as a user would see them.
Nothing that starts threads or sockets (Ray, gRPC, Flower) is imported here: forking those is unsafe.

Protocol (one JSON object a line): the client sends {"module" or "script", "args", "cwd", "env", "stdout", "stderr",
"new_session"}; the server answers {"pid": PID} once the child runs and {"returncode": RC} once it ended (-N: killed
by signal N).
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
import threading
import traceback

# what a run, sim.merge and sim.report import on their way; none of them starts a thread
PRELOAD = (
    "sim.cli",
    "sim.experiment",
    "sim.run",
    "sim.merge",
    "sim.report",
    "pandas",
    "sklearn.datasets",
    "flwr_datasets.partitioner",
    "torch._dynamo",
)
FORBIDDEN = ("ray", "grpc", "flwr")  # fork-unsafe once imported (threads, sockets)


def _exit_code(code: object) -> int:
    """The status a fresh interpreter exits with for ``SystemExit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _child(request: dict) -> None:
    """Become ``python -m MODULE ARGS`` in the request's cwd and environment; never returns."""
    code = 1
    try:
        if request.get("new_session"):
            os.setsid()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for fd, path, flags in (
            (0, os.devnull, os.O_RDONLY),
            (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
        ):
            new = os.open(path, flags, 0o644)
            os.dup2(new, fd)
            os.close(new)
        script = request.get("script")
        try:
            if script is None:
                sys.path[0] = os.getcwd()  # what `python -m` puts first
                sys.argv = [request["module"], *request["args"]]
                sys.modules.pop(request["module"], None)  # preloaded: `python -m` runs a second copy as __main__
                runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
            else:
                sys.path[0] = os.path.dirname(os.path.abspath(script))  # what `python SCRIPT` puts first
                sys.argv = [script, *request["args"]]
                runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as stop:
            code = _exit_code(stop.code)
        except KeyboardInterrupt:
            traceback.print_exc()
            code = 130
        except BaseException:
            traceback.print_exc()
            code = 1
        threading_shutdown = getattr(threading, "_shutdown", None)  # join non-daemon threads, as the interpreter does
        if threading_shutdown is not None:
            threading_shutdown()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream must not keep the child alive
                pass
        os._exit(code)


def main() -> None:
    for name in PRELOAD:
        __import__(name)
    loaded = sorted(m for m in FORBIDDEN if m in sys.modules)
    assert not loaded and threading.active_count() == 1, (loaded, threading.enumerate())
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    print(json.dumps({"ready": True}), file=reply)
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(request)
        print(json.dumps({"pid": pid}), file=reply)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), file=reply)


if __name__ == "__main__":
    main()
