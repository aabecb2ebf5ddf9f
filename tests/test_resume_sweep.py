"""``resume=true`` on a killed sweep, and a Ray run that loses its driver: both end as if never interrupted.

Real ``python -m sim`` processes, killed with SIGKILL at seeded moments; the files are compared byte
for byte (times aside) with those of an uninterrupted launch in another folder.
"""

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_resume import COMMON, _argv, _run, assert_same_run, kill_then_resume

pytestmark = pytest.mark.slow

SWEEP = (*COMMON, "strategy=fedadam", "participation=markov", "rounds=60", "checkpoint.every=2")


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
    proc = subprocess.Popen(_argv("-m", "seed=0,1,2", *SWEEP), cwd=part, stderr=subprocess.DEVNULL)
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
    again = subprocess.run(  # the same command, now with resume=true
        _argv("-m", "seed=0,1,2", *SWEEP, "resume=true"), cwd=part, capture_output=True, text=True, timeout=300
    )
    # Assert: job 0 was skipped (its files untouched), jobs 1 and 2 finished; every job equals the reference
    assert again.returncode == 0, again.stderr[-2000:]
    log = again.stdout + again.stderr
    assert "completed by an earlier launch; skipped" in log and "resumed after round" in log, log[-2000:]
    resumed, reference = _job_folders(part), _job_folders(full)
    assert sorted(resumed) == sorted(reference) == [0, 1, 2]
    assert (resumed[0] / "summary.json").stat().st_mtime_ns == done_at
    assert resumed[1].parent == first[0].parent  # job 1 continued in the killed launch's folder
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


@pytest.mark.xdist_group("ray")
def test_a_ray_run_that_loses_its_driver_resumes_to_the_uninterrupted_result(tmp_path):
    # the driver alone is killed; Ray's processes it started are stopped with its process group afterwards
    args = (*COMMON, "backend=ray", "backend.num_actors=2", "strategy=fedadam", "participation=markov")
    kill_then_resume(tmp_path, (*args, "rounds=40", "checkpoint.every=1"), seed=1, spread=0.3, new_session=True)
