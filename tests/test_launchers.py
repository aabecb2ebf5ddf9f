"""Sweeps on Hydra's joblib and Ray launchers give the basic launcher's numbers; bad sweep settings fail early.

The sweeps are real ``python -m sim --multirun`` processes (4 jobs, 2 rounds, 6 clients), forked from the tests'
server that imported torch once (tests/forked_cli.py; joblib's workers are fresh interpreters, as a user's are); the
Ray one joins the tests' shared local Ray (tests/conftest.py, ``ray_session``) by its GCS address.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from forked_cli import run_module

from sim.errors import ConfigError
from sim.sweeps import check_plugins, check_ray_address, search_space_values

JOB_ARGS = ("seed=0,1,2,3", "rounds=2", "num_clients=6", "participation.clients_per_round=3", "model.hidden=[16]")


def _sweep(cwd: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    argv = ["--multirun", *JOB_ARGS, "progress=false", f"hydra.sweep.dir={cwd / name}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    return run_module("sim", [*argv, *args], cwd, env, timeout=900)


def _metrics(sweep: Path) -> dict[str, pd.DataFrame]:
    return {job: pd.read_csv(sweep / job / "metrics.csv").drop(columns=["wall_s"]) for job in ("0", "1", "2", "3")}


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory) -> dict[str, pd.DataFrame]:
    cwd = tmp_path_factory.mktemp("basic")
    proc = _sweep(cwd, "sweep")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _metrics(cwd / "sweep")


def _assert_same_numbers(sweep: Path, basic: dict[str, pd.DataFrame]) -> None:
    for job, frame in _metrics(sweep).items():
        pd.testing.assert_frame_equal(frame, basic[job], check_exact=False, rtol=1e-6)
    seeds = [pd.read_json(sweep / j / "summary.json", typ="series")["seed"] for j in ("0", "1", "2", "3")]
    assert seeds == [0, 1, 2, 3]


@pytest.mark.slow
def test_joblib_sweep_matches_the_basic_launcher_and_is_one_mlflow_parent_with_four_children(tmp_path, basic_sweep):
    # Prepare: a SQLite store that does not exist yet (two jobs at once create and migrate it without the lock)
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    # Execute
    proc = _sweep(
        tmp_path,
        "sweep",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "logger=mlflow",
        f"logger.tracking_uri={uri}",
    )
    # Assert: the numbers of the basic launcher; one parent, closed when the sweep ended; files beside the store
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    _assert_same_numbers(tmp_path / "sweep", basic_sweep)
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("gossipsoup").experiment_id])
    parents = [r for r in runs if "gossipsoup.sweep_key" in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 4 and len(runs) == 5
    assert parents[0].info.status == "FINISHED" and {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert sorted(c.data.params["seed"] for c in children) == ["0", "1", "2", "3"]
    assert {c.info.artifact_uri.rsplit("/", 2)[0] for c in children} == {(tmp_path / "store" / "mlartifacts").as_uri()}
    assert not (tmp_path / "mlruns").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_launcher_on_a_local_head_matches_the_basic_launcher(tmp_path, basic_sweep, ray_session):
    # Prepare: the head is the tests' shared local Ray (2 CPUs), joined by its GCS address (a `ray start` head of
    # its own cost ~15 s more); a sweep that ran on it adds a driver to its job table
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    from ray._private import state

    address = ray_session.get_runtime_context().gcs_address
    jobs_before = len(state.jobs())
    # Execute
    proc = _sweep(tmp_path, "sweep", "hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address={address}")
    # Assert
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Ray Launcher is launching 4 jobs" in proc.stdout + proc.stderr
    _assert_same_numbers(tmp_path / "sweep", basic_sweep)
    assert len(state.jobs()) == jobs_before + 1


def test_a_launcher_or_sweeper_that_is_not_installed_names_the_extra(monkeypatch):
    # Prepare: Python cannot find the joblib plugin (a None entry in sys.modules makes find_spec say so)
    monkeypatch.setitem(sys.modules, "hydra_plugins.hydra_joblib_launcher", None)
    # Execute / Assert
    with pytest.raises(
        ConfigError, match=r"pip install 'gossipsoup\[sweeps\]' \(or pip install hydra-joblib-launcher\)"
    ):
        check_plugins(["seed=0,1", "hydra/launcher=joblib"])
    with pytest.raises(ConfigError, match=r"hydra/sweeper='optunaa' is not allowed.*optuna.*Did you mean optuna\?"):
        check_plugins(["hydra/sweeper=optunaa"])
    check_plugins(["hydra/launcher=basic", "seed=0,1"])  # built in: nothing to check


def test_an_unreachable_ray_address_is_refused_before_any_job():
    port = _free_port()  # nobody listens on it
    with pytest.raises(ConfigError, match=f"Connecting to 127.0.0.1:{port} failed"):
        check_ray_address(["hydra/launcher=ray_cluster", f"hydra.launcher.ray.init.address=127.0.0.1:{port}"])
    with pytest.raises(ConfigError, match="HOST:PORT"):
        check_ray_address(["hydra/launcher=ray", "hydra.launcher.ray.init.address=nohost"])


def test_ray_cluster_without_an_address_is_refused(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match="joins a running Ray cluster"):
        check_ray_address(["hydra/launcher=ray_cluster"])
    check_ray_address(["hydra/launcher=ray"])  # starts its own local Ray: nothing to reach


@pytest.mark.parametrize(
    "args, says",
    [
        (["hydra/sweeper=optuna"], "The search space is empty"),
        (["hydra/sweeper=optuna", "hydra.sweeper.params.train.lr=interval(abc, 1)"], "train.lr='interval"),
        (["hydra/sweeper=optuna", "train.lr=tag(log, interval(0.5, 0.1))"], "numbers LO < HI"),
        (["hydra/sweeper=optuna", "hydra.sweeper.params.train.lr=interval(1, 0.1)"], "numbers LO < HI"),
        (["hydra/sweeper=optuna", "hydra.sweeper.params.train.lr=choice()"], "empty choice"),
        (["hydra/sweeper=optuna", "hydra.sweeper.params.train.local_epochs=range(5, 1)"], "This range is empty"),
    ],
)
def test_empty_or_non_numeric_search_spaces_are_refused(args, says):
    with pytest.raises(ConfigError, match=says):
        search_space_values(args)


def test_search_space_bounds_and_choices_become_values_to_validate():
    args = [
        "hydra/sweeper=optuna",
        "train.lr=tag(log, interval(0.001, 0.5))",
        "hydra.sweeper.params.train.local_epochs=range(1, 7, 2)",
        "hydra.sweeper.params.strategy=choice(fedavg, fedadam)",
        "hydra.sweeper.params.train.batch_size=tag(int, interval(8, 64))",
    ]
    assert search_space_values(args) == [
        "train.local_epochs=1",
        "train.local_epochs=5",
        "strategy=fedavg",
        "strategy=fedadam",
        "train.batch_size=8",
        "train.batch_size=64",
        "train.lr=0.001",  # the command line's own sweeps come after the hydra.sweeper.params ones
        "train.lr=0.5",
    ]


@pytest.mark.parametrize("launcher", ["hydra/launcher=joblib", "hydra/launcher=ray_cluster"])
def test_the_config_check_still_covers_every_job_of_a_parallel_sweep(launcher):
    # A bad value in one job of the sweep is refused before Hydra hands any job to the launcher
    from sim.cli import preflight

    with pytest.raises(ConfigError, match="rounds"):
        preflight(["--multirun", launcher, "seed=0,1", "rounds=2,0"])


def _sweep_folder(root: Path, name: str, task: list[str], mtime: float) -> Path:
    folder = root / "multirun" / "2026-01-01" / name
    folder.mkdir(parents=True)
    (folder / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    os.utime(folder / "multirun.yaml", (mtime, mtime))
    return folder


def test_resume_true_on_a_sweep_continues_the_newest_launch_of_the_same_overrides(tmp_path):
    # Prepare: two launches of the command (the second one already resumed once), one of another command
    from sim.sweep_stop import resume_command, with_earlier_sweep_folder

    task = ["strategy=fedavg,fedadam", "seed=1,2"]
    _sweep_folder(tmp_path, "10-00-00", task, 1000)
    newest = _sweep_folder(tmp_path, "11-00-00", [*task[::-1], "resume=true"], 2000)
    _sweep_folder(tmp_path, "12-00-00", ["strategy=fedavg,fedadam", "seed=1,3"], 3000)
    args = ["--multirun", "hydra/launcher=joblib", *task, "resume=true"]
    # Execute / Assert: the newest folder whose overrides are these (in any order, resume= aside)
    assert with_earlier_sweep_folder(args, tmp_path) == [*args, f"hydra.sweep.dir={newest.resolve()}"]
    assert with_earlier_sweep_folder(args[:-1], tmp_path) == args[:-1]  # no resume=true: a new sweep
    other = tmp_path / "sweeps" / "y"  # another launch of the same command beside the fixed folder
    other.mkdir(parents=True)
    (other / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    fixed = [*args, "hydra.sweep.dir=sweeps/x"]
    assert with_earlier_sweep_folder(fixed, tmp_path) == fixed  # a fixed folder: Hydra reuses it as it is
    assert with_earlier_sweep_folder([*args[:-1], "seed=4", "resume=true"], tmp_path)[-1] == "resume=true"
    assert (
        resume_command(["-m", "model.hidden=[16]", "resume=false"])
        == "python -m sim -m 'model.hidden=[16]' resume=true"
    )
