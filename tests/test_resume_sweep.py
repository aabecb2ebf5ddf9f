"""``resume=true`` on a killed or interrupted sweep, and a Ray run that loses its driver: all end as if never
interrupted.

Real ``python -m sim`` processes, killed with SIGKILL at seeded moments (the files are compared byte
for byte, times aside, with those of an uninterrupted launch in another folder), or sent SIGINT /
SIGTERM as a process group, as Ctrl-C and a batch system do. Each is forked from the tests' server that imported
torch once (tests/forked_cli.py: own pid, process group, exit code and signals); joblib's workers are fresh
interpreters as a user's are.
"""

import json
import os
import random
import shlex
import signal
import time
from pathlib import Path

import pytest
from forked_cli import ForkedProcess, start_module

from tests.test_resume import COMMON, _run, assert_same_run, kill_then_resume

pytestmark = pytest.mark.slow

SWEEP = (*COMMON, "strategy=fedadam", "participation=markov", "rounds=40", "checkpoint.every=2")


def _job_folders(cwd: Path) -> dict[int, Path]:
    """Each job number's folder that holds a completed run (exactly one per job)."""
    folders: dict[int, Path] = {}
    for summary in cwd.glob("multirun/*/*/*/summary.json"):
        if json.loads(summary.read_text())["status"] == "completed":
            job = int(summary.parent.name)
            assert job not in folders, f"job {job} completed twice: {folders[job]} and {summary.parent}"
            folders[job] = summary.parent
    return folders


def test_a_killed_sweep_run_again_with_resume_true_skips_finished_jobs_and_resumes_the_others(tmp_path):
    # Prepare: the uninterrupted sweep in its own folder, and the same command to be killed in another
    full, part = tmp_path / "full", tmp_path / "part"
    full.mkdir(), part.mkdir()
    assert _run(full, "-m", "seed=0,1,2", *SWEEP).returncode == 0
    proc = start_module("sim", ["-m", "seed=0,1,2", *SWEEP], part)
    # Execute: SIGKILL at a seeded moment once job 1 has checkpointed (job 0 has then completed)
    deadline = time.monotonic() + 240
    while not list(part.glob("multirun/*/*/1/checkpoint.safetensors")):
        assert proc.poll() is None and time.monotonic() < deadline, "job 1 never wrote a checkpoint"
        time.sleep(0.02)
    time.sleep(random.Random(0).uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    first = _job_folders(part)
    assert list(first) == [0], "only job 0 had completed when the sweep was killed"
    done_at = (first[0] / "summary.json").stat().st_mtime_ns
    again = _run(part, "-m", "seed=0,1,2", *SWEEP, "resume=true")  # the same command, now with resume=true
    # Assert: job 0 was skipped (its files untouched), jobs 1 and 2 finished; every job equals the reference
    assert again.returncode == 0, again.stderr[-2000:]
    log = again.stdout + again.stderr
    assert "completed by an earlier launch; skipped" in log and "resumed after round" in log, log[-2000:]
    resumed, reference = _job_folders(part), _job_folders(full)
    assert sorted(resumed) == sorted(reference) == [0, 1, 2]
    assert (resumed[0] / "summary.json").stat().st_mtime_ns == done_at
    assert {f.parent for f in resumed.values()} == {first[0].parent}  # all of them in the killed launch's folder
    for job in (0, 1, 2):
        assert_same_run(resumed[job], reference[job])


def test_resume_true_on_a_new_command_starts_the_run_and_a_rerun_skips_it(tmp_path):
    args = (*COMMON, "strategy=fedavg", "rounds=3", "resume=true", "hydra.run.dir=run")
    first = _run(tmp_path, *args)
    assert first.returncode == 0, first.stderr[-2000:]
    written = (tmp_path / "run" / "summary.json").read_bytes()
    again = _run(tmp_path, *args)
    assert again.returncode == 0 and "skipped" in again.stdout + again.stderr
    assert (tmp_path / "run" / "summary.json").read_bytes() == written


def test_a_ray_run_that_loses_its_driver_resumes_to_the_uninterrupted_result(tmp_path, ray_session):
    # The driver alone is SIGKILLed mid-run; the cluster it drove (the tests' shared Ray, joined by address: three Ray
    # starts of their own made this test ~2 minutes) outlives it and reclaims its actors, and the resume's driver runs
    # the rest there. A run starting its own Ray is covered by test_ray_backend.py's address=null tests.
    head = ray_session.get_runtime_context().gcs_address
    args = (*COMMON, "backend=ray", f"backend.address={head}", "backend.num_actors=2")
    args = (*args, "strategy=fedadam", "participation=markov")
    kill_then_resume(tmp_path, (*args, "rounds=40", "checkpoint.every=1"), seed=1, spread=0.3, new_session=True)


TINY = ("num_clients=6", "participation.clients_per_round=3", "model.hidden=[16]", "progress=false")
JOBLIB = ("--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *TINY, "checkpoint.every=null")


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc): the launcher's joblib workers and their helpers."""
    parent_of = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent_of[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _interrupt_sweep(cwd: Path, args: tuple, sig: signal.Signals, running: int = 2) -> tuple[int, str]:
    """Start the sweep as its own process group; once ``running`` jobs are in their rounds, send ``sig`` to the group.

    Returns the exit code and stderr; asserts that no process the sweep started outlives it.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc: ForkedProcess = start_module("sim", list(args), cwd, env, new_session=True)
    deadline = time.monotonic() + 300
    while len(list(cwd.glob("multirun/*/*/*/metrics.csv"))) < running:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the jobs never started their rounds"
        time.sleep(0.05)
    started = _descendants(proc.pid)
    assert len(started) >= 2 or "hydra/launcher=joblib" not in args, "joblib's workers run the jobs"
    os.killpg(proc.pid, sig)
    try:
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()  # a no-op once it ended; the fork server runs one child at a time
        proc.wait(timeout=60)
        time.sleep(1)  # a worker that would survive has had time to be reparented; none may be left
        left = sorted(pid for pid in started if _alive(pid))
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert left == [], f"processes of the sweep outlived it: {left}"
    return proc.returncode, err


def _mlflow_runs(cwd: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("gossipsoup").experiment_id])
    parents = [r for r in runs if "gossipsoup.sweep_key" in r.data.tags]
    return parents, [r for r in runs if r.data.tags.get("mlflow.parentRunId")]


def test_ctrl_c_on_a_joblib_sweep_says_once_how_to_resume_and_the_resume_completes_it_in_its_folder(tmp_path):
    # Prepare: 4 jobs on 2 workers, tracked in MLflow's default store
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("mlflow")
    args = (*JOBLIB, "strategy=fedavg,fedadam", "seed=1,2", "rounds=40", "logger=mlflow")
    # Execute: Ctrl-C (SIGINT to the process group) once two jobs run their rounds
    code, err = _interrupt_sweep(tmp_path, args, signal.SIGINT)
    # Assert: exit 130, no traceback, one line naming the same command with resume=true; the parent KILLED
    assert code == 130, err[-3000:]
    assert "Traceback" not in err and "leaked" not in err, err[-3000:]
    resume_lines = [line for line in err.splitlines() if "Resume it with" in line]
    assert resume_lines == [
        f"interrupted by SIGINT; the sweep is saved. Resume it with: python -m sim {shlex.join(args)} resume=true"
    ]
    (sweep,) = tmp_path.glob("multirun/*/*")
    parents, _ = _mlflow_runs(tmp_path)
    assert [p.info.status for p in parents] == ["KILLED"]
    statuses = {p.parent.name: json.loads(p.read_text())["status"] for p in sweep.glob("*/summary.json")}
    assert "interrupted" in statuses.values() and len(statuses) <= 3, statuses
    # Execute: the command that line gives
    command = shlex.split(resume_lines[0].split("Resume it with: ", 1)[1])
    assert command[:3] == ["python", "-m", "sim"]
    again = _run(tmp_path, *command[3:])
    # Assert: every job completed in the first launch's folder, under the one parent run, now FINISHED
    assert again.returncode == 0, again.stderr[-3000:]
    assert list(tmp_path.glob("multirun/*/*")) == [sweep]
    done = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/summary.json")}
    assert sorted(done) == ["0", "1", "2", "3"] and {s["status"] for s in done.values()} == {"completed"}
    assert {(s["strategy"], s["seed"]) for s in done.values()} == {
        (a, b) for a in ("fedavg", "fedadam") for b in (1, 2)
    }
    parents, children = _mlflow_runs(tmp_path)
    assert [p.info.status for p in parents] == ["FINISHED"] and len(children) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}


def test_sigterm_to_a_joblib_sweep_leaves_no_process_and_one_line(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    args = (*JOBLIB, "seed=1,2", "rounds=400")
    code, err = _interrupt_sweep(tmp_path, args, signal.SIGTERM)
    assert code == 143, err[-3000:]
    assert "Traceback" not in err and "leaked" not in err, err[-3000:]
    assert [line for line in err.splitlines() if "resume" in line] == [
        f"interrupted by SIGTERM; the sweep is saved. Resume it with: python -m sim {shlex.join(args)} resume=true"
    ]
    summaries = [json.loads(p.read_text()) for p in tmp_path.glob("multirun/*/*/*/summary.json")]
    assert [s["status"] for s in summaries] == ["interrupted", "interrupted"]  # saved at a round boundary


def test_ctrl_c_on_a_sweep_of_the_basic_launcher_stops_it_with_one_line(tmp_path):
    # Prepare: two jobs one after the other in the launcher's own process
    pytest.importorskip("mlflow")
    args = ("--multirun", *TINY, "checkpoint.every=null", "seed=1,2", "rounds=400", "logger=mlflow")
    # Execute: Ctrl-C while the first job runs its rounds
    code, err = _interrupt_sweep(tmp_path, args, signal.SIGINT, running=1)
    # Assert: one line, the first job saved at a round boundary, the second never started, the parent KILLED
    assert code == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert [line for line in err.splitlines() if "resume" in line] == [
        f"interrupted by SIGINT; the sweep is saved. Resume it with: python -m sim {shlex.join(args)} resume=true"
    ]
    (sweep,) = tmp_path.glob("multirun/*/*")
    assert json.loads((sweep / "0" / "summary.json").read_text())["status"] == "interrupted"
    assert not (sweep / "1").exists()
    parents, children = _mlflow_runs(tmp_path)
    assert [p.info.status for p in parents] == ["KILLED"] and [c.info.status for c in children] == ["KILLED"]


@pytest.fixture
def joblib_worker(tmp_path, monkeypatch):
    """This process as a joblib worker of a stopped sweep: the job wrapper's SIGTERM handler raises SweepStop.

    A worker gets SIGTERM twice when the group is signalled: from the group, and again from its launcher, which
    passes the signal on (sim/sweep_stop.py). ``signal_at(name)`` wraps sim.run's ``name`` so that SIGTERM reaches
    this process when the run calls it, as a late copy does.
    """
    import sim.run
    from sim import sweep_stop

    monkeypatch.setenv(sweep_stop.STOP_ENV, str(tmp_path / "stop"))
    monkeypatch.setenv(sweep_stop.LAUNCHER_ENV, "0")  # not this process: sweep_job takes it for a worker
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    handlers = {s: signal.getsignal(s) for s in sweep_stop.SIGNALS}

    def signal_at(name: str) -> None:
        real = getattr(sim.run, name)

        def late_copy(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGTERM)
            return real(*args, **kwargs)

        monkeypatch.setattr(sim.run, name, late_copy)

    yield signal_at
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # sweep_job blocks the signals again after its job
    for s, h in handlers.items():
        signal.signal(s, h)


def test_sigterm_again_while_an_interrupted_job_writes_its_summary_leaves_the_summary_written(
    make_cfg, tmp_path, joblib_worker
):
    # Prepare: SIGTERM in the first round, and once more when the run writes its summary
    from sim.run import run_experiment
    from sim.sweep_stop import sweep_job

    cfg = make_cfg(*TINY, "strategy=fedavg", "rounds=3", "checkpoint.every=null")
    joblib_worker("run_federated")
    joblib_worker("write_json")
    # Execute
    objective = sweep_job(lambda c: run_experiment(c, tmp_path / "run")["final"]["test_accuracy"])(cfg)
    # Assert: the job stopped after round 1 with its checkpoint and summary; the sweep is marked stopped
    assert objective != objective  # NaN: the job returned as an interrupted one does
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "round 1" in summary["error"], summary.get("error")
    assert (tmp_path / "run" / "checkpoint.safetensors").is_file()
    assert (tmp_path / "stop").read_text() == "SIGTERM"


def test_sigterm_in_the_last_round_completes_the_job_then_stops_the_sweep(make_cfg, tmp_path, joblib_worker):
    # Prepare: SIGTERM during the only round, which ends the run anyway (no boundary to stop at before the end)
    from sim.run import run_experiment
    from sim.sweep_stop import SweepStop, _job_signals

    cfg = make_cfg(*TINY, "strategy=fedavg", "rounds=1", "checkpoint.every=null")
    joblib_worker("run_federated")
    # Execute / Assert: the signal reaches the worker's handler once the run's files are written (before, it was lost)
    with pytest.raises(SweepStop), _job_signals(in_launcher=False):
        run_experiment(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"
