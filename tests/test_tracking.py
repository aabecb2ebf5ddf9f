"""logger=mlflow / tensorboard / wandb: what each tracker logged, read back through the library's own reader.

Every test runs a real 3-round FL run (6 clients, a 16-unit MLP) and compares what the tracker holds
with the run folder's metrics.csv, summary.json and files, which stay the source of truth.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from sim.cli import preflight
from sim.errors import ConfigError
from sim.resume import read_checkpoint
from sim.run import run_experiment
from sim.schema import config_dict
from sim.tracking.common import flatten

SMALL = ("num_clients=6", "participation.clients_per_round=3", "rounds=3", "model.hidden=[16]")


def _csv_columns(run) -> dict[str, dict[int, float]]:
    """metrics.csv as {column: {round: value}} without the empty cells (rounds not evaluated)."""
    frame = pd.read_csv(run / "metrics.csv")
    return {
        c: {int(r): float(v) for r, v in zip(frame["round"], frame[c], strict=True) if not math.isnan(v)} for c in frame
    }


def _mlflow_run(uri: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("gossipsoup")
    return client, client.search_runs([experiment.experiment_id])


def test_mlflow_holds_the_config_every_metric_per_round_and_the_result_files(make_cfg, tmp_path):
    # Prepare
    pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    cfg = make_cfg(*SMALL, "logger=mlflow", f"logger.tracking_uri={store}", "save_model=true")
    # Execute
    run_experiment(cfg, tmp_path / "run")
    # Assert
    client, runs = _mlflow_run(store.as_uri())
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    expected_params = {k: str(v) for k, v in flatten(config_dict(cfg)).items()}
    assert run.data.params == expected_params
    assert run.data.params["strategy.name"] == "fedavg" and run.data.params["model.hidden"] == "[16]"
    for column, by_round in _csv_columns(tmp_path / "run").items():
        history = client.get_metric_history(run.info.run_id, column)
        assert {m.step: m.value for m in history} == by_round, column
        assert len(history) == len(by_round), f"{column} logged twice at some step"
    assert run.data.metrics["summary.final.test_accuracy"] == _csv_columns(tmp_path / "run")["test_accuracy"][3]
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert files == {"summary.json", "metrics.csv", "accuracy.png", "model.safetensors"}


def test_a_resumed_run_continues_the_same_mlflow_run_without_losing_or_repeating_a_round(make_cfg, tmp_path):
    # Prepare: a 3-round run that keeps a checkpoint at round 2; losing the latest one makes the resume
    # redo round 3, which the tracker has already logged
    pytest.importorskip("mlflow")
    store = tmp_path / "mlruns"
    common = (*SMALL, "logger=mlflow", f"logger.tracking_uri={store}", "checkpoint.every=1", "checkpoint.keep_every=2")
    run_experiment(make_cfg(*common), tmp_path / "part")
    (tmp_path / "part" / "checkpoint.safetensors").unlink()
    state = read_checkpoint(tmp_path / "part")
    assert state["round"] == 2
    longer = OmegaConf.create({**state["config"], "rounds": 5})
    # Execute
    run_experiment(longer, tmp_path / "part", resume_state=state)
    run_experiment(make_cfg(*common, "rounds=5"), tmp_path / "full")
    # Assert: one MLflow run per run folder, the resumed one holding each round 0..5 once, as the full run
    client, runs = _mlflow_run(store.as_uri())
    by_dir = {r.data.tags["gossipsoup.run_dir"]: r for r in runs}
    assert len(runs) == 2 and by_dir[str(tmp_path / "part")].info.status == "FINISHED"
    for column in ("test_accuracy", "train_loss", "bytes_up"):
        resumed = client.get_metric_history(by_dir[str(tmp_path / "part")].info.run_id, column)
        full = client.get_metric_history(by_dir[str(tmp_path / "full")].info.run_id, column)
        assert sorted(m.step for m in resumed) == sorted(m.step for m in full) == sorted(set(m.step for m in full))
        assert {m.step: m.value for m in resumed} == {m.step: m.value for m in full}
    assert max(m.step for m in full) == 5


def test_tensorboard_event_files_hold_every_metric_per_round_and_the_config(make_cfg, tmp_path):
    # Prepare
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    cfg = make_cfg(*SMALL, "logger=tensorboard")
    # Execute
    run_experiment(cfg, tmp_path / "run")
    # Assert
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    for column, by_round in _csv_columns(tmp_path / "run").items():
        logged = {e.step: e.value for e in events.Scalars(column)}
        assert logged == pytest.approx(by_round, rel=1e-6), column  # TensorBoard stores float32
        assert len(events.Scalars(column)) == len(by_round)
    assert "accuracy" in events.Tags()["images"]
    content = events.PluginTagToContent("hparams")
    session = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["strategy.name"].string_value == "fedavg"
    assert session.hparams["rounds"].number_value == 3


def test_wandb_offline_run_holds_config_rows_and_files_and_prints_nothing(make_cfg, tmp_path, capfd):
    # Prepare
    pytest.importorskip("wandb")
    from sim.tracking.wandb_records import read_offline_run

    cfg = make_cfg(*SMALL, "logger=wandb")
    # Execute
    run_experiment(cfg, tmp_path / "run")
    # Assert
    out, err = capfd.readouterr()
    assert "wandb" not in (out + err).lower()
    (folder,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    logged = read_offline_run(folder)
    assert logged.exit_code == 0
    assert logged.config["strategy"]["name"] == "fedavg" and logged.config["rounds"] == 3
    rows = {int(row["round"]): row for row in logged.history}
    for column, by_round in _csv_columns(tmp_path / "run").items():
        assert {r: rows[r][column] for r in by_round} == by_round, column
    assert sorted(rows) == [0, 1, 2, 3] and len(logged.history) == 4
    assert {"summary.json", "metrics.csv", "accuracy.png"} <= set(logged.files)
    assert logged.summary["test_accuracy"] == _csv_columns(tmp_path / "run")["test_accuracy"][3]


@pytest.mark.parametrize(
    "overrides, says",
    [
        (["logger=mlflow", "logger.tracking_uri={file}/mlruns"], "is a file, not a folder"),
        (["logger=mlflow", "logger.tracking_uri=file:///proc/mlruns"], "Writing in /proc failed"),
        (["logger=mlflow", "logger.tracking_uri=sqlite:///{file}/db.sqlite"], "is a file, not a folder"),
        (["logger=mlflow", "logger.tracking_uri=http://127.0.0.1:{port}"], "Connecting to 127.0.0.1"),
        (["logger=mlflow", "logger.experiment=''"], "a non-empty string"),
        (["logger=tensorboard", "logger.log_dir={file}/tb"], "is a file, not a folder"),
        (["logger=wandb", "logger.mode=online1"], "logger.mode"),
        (["logger=wandb", "logger.dir={file}"], "is a file, not a folder"),
        (["logger=mlfow"], "mlflow"),
    ],
)
def test_bad_tracking_settings_are_refused_before_any_job(tmp_path, overrides, says):
    # Prepare: a plain file where a folder is needed, and a port nobody listens on
    import socket

    (tmp_path / "plain").write_text("not a folder")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [o.format(file=tmp_path / "plain", port=port) for o in overrides]
    # Execute / Assert
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")):
        preflight(["progress=false", *args])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]


def test_a_logger_whose_library_is_missing_names_the_extra_to_install(monkeypatch):
    # Prepare: Python cannot find wandb (a None entry in sys.modules makes find_spec say so)
    monkeypatch.setitem(sys.modules, "wandb", None)
    # Execute / Assert
    with pytest.raises(ConfigError, match=r"gossipsoup\[tracking\].*pip install wandb"):
        preflight(["logger=wandb"])


def test_a_run_that_fails_is_marked_failed_with_its_rows_so_far(make_cfg, tmp_path):
    # Prepare: a server learning rate that turns the model into NaN after a few rounds
    pytest.importorskip("mlflow")
    from sim.errors import RunError

    store = tmp_path / "mlruns"
    cfg = make_cfg(*SMALL, "rounds=5", "strategy=fedadam", "strategy.server_lr=1e30", "logger=mlflow")
    cfg.logger.tracking_uri = str(store)
    # Execute
    with pytest.raises(RunError):
        run_experiment(cfg, tmp_path / "run")
    # Assert
    client, runs = _mlflow_run(store.as_uri())
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert runs[0].data.tags["gossipsoup.status"] == "failed"
    logged = {m.step for m in client.get_metric_history(runs[0].info.run_id, "round")}
    assert logged == set(_csv_columns(tmp_path / "run")["round"])
    assert "summary.json" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}


def _docs_read_back() -> str:
    """The read-back code of docs/tracking.md, as written there (the python block after its marker)."""
    text = (Path(__file__).parents[1] / "docs" / "tracking.md").read_text()
    block = text.split("<!-- read-back -->", 1)[1].split("```python\n", 1)[1]
    return block.split("```", 1)[0]


def test_the_default_store_is_sqlite_beside_the_command_and_reads_back_as_the_docs_show(
    make_cfg, tmp_path, monkeypatch
):
    # Prepare: a run with logger=mlflow and no tracking_uri, started in tmp_path (the launch folder)
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_experiment(make_cfg(*SMALL, "logger=mlflow"), tmp_path / "run")
    # Execute: the docs' code, verbatim, in a fresh process without MLFLOW_ALLOW_FILE_STORE
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    shown = subprocess.run(
        [sys.executable, "-c", _docs_read_back()], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    # Assert: the store is ./mlflow.db, the files are in ./mlartifacts beside it, the numbers are metrics.csv's
    assert shown.returncode == 0, shown.stderr[-2000:]
    name, accuracy, files = shown.stdout.strip().splitlines()
    assert name.endswith("FINISHED fedavg")
    expected = [(r, round(v, 4)) for r, v in sorted(_csv_columns(tmp_path / "run")["test_accuracy"].items())]
    assert accuracy == str(expected)
    assert files.startswith((tmp_path / "mlartifacts").as_uri() + "/")
    assert "'summary.json'" in files and "'metrics.csv'" in files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlartifacts", "mlflow.db", "mlflow.db.lock", "run"]


def test_mlflow_stores_resolve_against_the_launch_folder_and_lock_beside_the_store(tmp_path, monkeypatch):
    from sim.tracking.uris import artifact_root, lock_file, mlflow_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert mlflow_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"  # four slashes: an absolute path
    assert mlflow_uri("sqlite:///db/x.db", tmp_path) == f"sqlite:///{tmp_path}/db/x.db"
    assert mlflow_uri("sqlite:////abs/x.db", tmp_path) == "sqlite:////abs/x.db"
    assert mlflow_uri("runs", tmp_path) == (tmp_path / "runs").as_uri()
    assert lock_file("sqlite:////abs/x.db") == Path("/abs/x.db.lock")
    assert lock_file((tmp_path / "runs").as_uri()) == tmp_path / "runs" / ".gossipsoup.lock"
    assert lock_file("http://host:5000") is None
    assert artifact_root("sqlite:////abs/x.db") == "file:///abs/mlartifacts"
    assert artifact_root((tmp_path / "runs").as_uri()) is None
