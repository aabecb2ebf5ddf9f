"""A sweep (``--multirun``) that is interrupted ends like one run: every started job saved, one line to resume.

Ctrl-C reaches every process of the command; SIGTERM may reach the launcher alone or the group.
Left to Hydra and joblib, the launcher dies with a traceback (KeyboardInterrupt inside joblib, a
leaked-semaphore warning) or, on SIGTERM, without cleaning up, leaving idle loky workers behind,
and each job prints its own ``resume=RUN`` line. Here instead, on the basic and joblib launchers:

- the launcher process notes the signal, passes it on to its child processes (joblib's workers),
  and marks the sweep stopped in a file whose path its jobs inherit (``STOP_ENV``);
- a job that is running stops at its next round boundary and saves a checkpoint and its summary (:mod:`sim.run`,
  which holds the signals until the summary is written: a worker also gets the launcher's copy of the signal),
  marks the sweep stopped too (the basic launcher's jobs take the signal in the launcher's process),
  then returns instead of ending its process; a job not yet started sees the mark and does not start,
  so Hydra's sweep ends normally (with its callbacks: the MLflow parent is marked KILLED);
- the launcher then prints one line, the same command with ``resume=true`` (which continues the sweep
  in its own folder, :func:`sim.resume_folder.earlier_sweep_folder`), shuts joblib's workers down and
  exits with 130 (SIGINT) or 143 (SIGTERM).

On joblib, the launcher blocks both signals in its threads before any worker exists; a worker
inherits that mask, so one that is idle (never given a job, or between jobs) cannot be killed by a
signal to the process group while jobs are saving, which would make joblib abort every job at once.
A job unblocks them while it runs. A thread of the launcher receives them with ``sigwait``.
"""

from __future__ import annotations

import functools
import math
import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import RunInterrupted

STOP_ENV = "GOSSIPSOUP_SWEEP_STOP"  # a file that exists once the sweep was told to stop
LAUNCHER_ENV = "GOSSIPSOUP_SWEEP_LAUNCHER"  # the launcher's process id (a job elsewhere runs in a worker)
SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: launchers whose jobs run in this process or in its joblib workers; others keep their own behaviour
HANDLED = ("basic", "joblib")


class SweepStop(BaseException):
    """A signal stopped the sweep (a BaseException: Hydra's error report catches and prints Exceptions)."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


def _value(args: list[str], key: str) -> str | None:
    found = [a.split("=", 1)[1] for a in args if "=" in a and a.split("=", 1)[0].lstrip("+~") == key]
    return found[-1] if found else None


def _is_multirun(args: list[str]) -> bool:
    return "--multirun" in args or "-m" in args or _value(args, "hydra.mode") == "MULTIRUN"


def resume_command(args: list[str]) -> str:
    """The command line that continues this sweep: the same one, with ``resume=true`` instead of any resume=."""
    kept = [a for a in args if a.split("=", 1)[0].lstrip("+~") != "resume"]
    return shlex.join(["python", "-m", "sim", *kept, "resume=true"])


def with_earlier_sweep_folder(args: list[str], cwd: Path) -> list[str]:
    """``resume=true`` on a sweep: the overrides plus ``hydra.sweep.dir=`` of the launch it continues, if any."""
    from .resume_folder import DEFAULT_SWEEP_DIR, earlier_sweep_folder

    if _value(args, "resume") != "true":
        return args
    pattern = _value(args, "hydra.sweep.dir") or DEFAULT_SWEEP_DIR
    task = [a for a in args if "=" in a and not a.lstrip("+~").startswith("hydra")]
    earlier = earlier_sweep_folder(pattern, task, cwd)
    return args if earlier is None else [*args, f"hydra.sweep.dir={earlier}"]


def run_command(task: Callable[[], Any], argv: list[str]) -> None:
    """Run ``task`` (Hydra's main) for this command line; a sweep on the basic or joblib launcher as above."""
    args = argv[1:]
    launcher = _value(args, "hydra/launcher") or "basic"
    if not _is_multirun(args) or launcher not in HANDLED:
        task()
        return
    sys.argv = [argv[0], *with_earlier_sweep_folder(args, Path.cwd())]
    stop_dir = tempfile.mkdtemp(prefix="gossipsoup-sweep-")
    stop_file = Path(stop_dir) / "stop"
    os.environ[STOP_ENV], os.environ[LAUNCHER_ENV] = str(stop_file), str(os.getpid())
    try:
        with _signals(stop_file, blocked=launcher == "joblib"):
            try:
                task()
            except SweepStop as exc:  # a signal between two jobs of the basic launcher
                _mark_stopped(stop_file, exc.signal_name)
            finally:
                _shut_down_joblib_workers()
        name = stop_file.read_text().strip() if stop_file.exists() else ""
    finally:
        shutil.rmtree(stop_dir, ignore_errors=True)
        del os.environ[STOP_ENV], os.environ[LAUNCHER_ENV]
    if name:
        print(f"interrupted by {name}; the sweep is saved. Resume it with: {resume_command(args)}", file=sys.stderr)
        raise SystemExit(130 if name == "SIGINT" else 143)


def in_sweep() -> bool:
    """This process runs a job of a sweep that this module handles (its interruption is reported once, here)."""
    return bool(os.environ.get(STOP_ENV))


def sweep_stopped() -> bool:
    """The launcher of this sweep was told to stop."""
    marker = os.environ.get(STOP_ENV)
    return bool(marker) and Path(str(marker)).exists()


def _mark_stopped(stop_file: Path, name: str) -> None:
    """Write the signal's name into the stop file, unless an earlier signal did (the first one is reported)."""
    try:
        with open(stop_file, "x") as handle:
            handle.write(name)
    except FileExistsError:
        pass


def _stop(stop_file: Path, signum: int) -> None:
    _mark_stopped(stop_file, signal.Signals(signum).name)
    for pid in _children(os.getpid()):  # a signal to the launcher alone still stops its workers' jobs
        try:
            os.kill(pid, signum)
        except OSError:
            pass


@contextmanager
def _signals(stop_file: Path, blocked: bool) -> Iterator[None]:
    if blocked:  # joblib: signals blocked here and in every worker started from here; a thread receives them
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)

        def watch() -> None:
            while True:
                _stop(stop_file, signal.sigwait(SIGNALS))

        threading.Thread(target=watch, name="sweep-signals", daemon=True).start()
        for s in SIGNALS:  # threads that existed before (torch's) may still take one: note it, raise nothing
            signal.signal(s, lambda signum, frame: _stop(stop_file, signum))
        yield  # mask and handlers stay: the process ends right after, and a late signal must not kill it mid-cleanup
        return

    def handler(signum: int, frame: object) -> None:  # jobs in this process: run.py's handler covers their rounds
        _stop(stop_file, signum)
        raise SweepStop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc; none elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields and int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _shut_down_joblib_workers() -> None:
    """Stop joblib's reusable worker pool now (idle workers would otherwise outlive a stopped sweep)."""
    module = sys.modules.get("joblib.externals.loky.reusable_executor")
    executor = getattr(module, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True)  # idle by now: each leaves on its own (killing them leaks semaphores)


def sweep_job(task: Callable[[Any], float]) -> Callable[[Any], float]:
    """Wrap Hydra's task function: a job of a stopped sweep does not start, and an interrupted one returns."""

    @functools.wraps(task)
    def job(cfg: Any) -> float:
        if not os.environ.get(STOP_ENV):
            return task(cfg)
        in_launcher = os.environ.get(LAUNCHER_ENV) == str(os.getpid())
        if sweep_stopped():
            _discard_unstarted_job()
            return math.nan
        try:
            with _job_signals(in_launcher):
                return task(cfg)
        except RunInterrupted as exc:  # stopped at a round boundary, checkpoint written; no later job starts
            _mark_stopped(Path(os.environ[STOP_ENV]), "SIGINT" if exc.exit_code == 130 else "SIGTERM")
            return math.nan
        except SweepStop:  # stopped outside its rounds: what a resume finds in its folder is enough
            return math.nan

    return job


_job_running = threading.Event()


def _stop_job(signum: int, frame: object) -> None:
    """A joblib worker's handler: stop the job that runs, if any (Python may run a handler after the job ended)."""
    if _job_running.is_set():
        raise SweepStop(signal.Signals(signum).name)


@contextmanager
def _job_signals(in_launcher: bool) -> Iterator[None]:
    """In a joblib worker: SIGINT / SIGTERM stop the job (SweepStop) and are blocked again once it returns.

    The handler stays installed after the job: a signal that arrived just before the mask went back
    up is handled later, and must then do nothing rather than raise in joblib's own loop.
    """
    if in_launcher:
        yield
        return
    for s in SIGNALS:
        signal.signal(s, _stop_job)
    _job_running.set()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        _job_running.clear()


def _discard_unstarted_job() -> None:
    """Remove the folder Hydra made for a job that will not run (nothing but Hydra's bookkeeping in it)."""
    from hydra.core.hydra_config import HydraConfig

    from .resume_folder import holds_a_run

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if out_dir.is_dir() and not holds_a_run(out_dir):
        leftovers = [p for p in out_dir.iterdir() if p.name != ".hydra" and p.suffix != ".log"]
        if not leftovers:
            shutil.rmtree(out_dir, ignore_errors=True)
