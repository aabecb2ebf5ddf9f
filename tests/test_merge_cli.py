"""python -m sim.merge: merge saved checkpoints, score them, and refuse bad files."""

import subprocess
import sys

import pytest
import torch

from sim.checkpoint import load_checkpoint
from sim.merge import main
from sim.run import run_experiment

SMALL = ("num_clients=6", "participation.clients_per_round=3", "rounds=2", "train.epochs=1", "save_model=true",
         "model.hidden=[16]")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Three checkpoints of one setting (different training lr), like a small fine-tuning sweep."""
    from hydra import compose, initialize_config_module

    root = tmp_path_factory.mktemp("sweep")
    with initialize_config_module(config_module="configs", version_base="1.3"):
        for i, lr in enumerate([0.05, 0.1, 0.2]):
            cfg = compose(config_name="config", overrides=["progress=false", *SMALL, f"train.lr={lr}"])
            run_experiment(cfg, root / str(i))
    return root


def test_uniform_soup_of_a_sweep_folder(sweep, tmp_path, capsys):
    out = tmp_path / "soup.safetensors"
    assert main([str(sweep), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.count("model.safetensors") == 3 and "merge: uniform_soup" in table and "logit ensemble of 3" in table
    _, merged, meta = load_checkpoint(out)
    parts = [load_checkpoint(sweep / str(i) / "model.safetensors")[1] for i in range(3)]
    assert torch.allclose(merged, torch.stack(parts).mean(0), atol=1e-7)
    assert meta["merge_method"] == "uniform_soup"


def test_greedy_and_fisher_and_wise_ft(sweep, tmp_path, capsys):
    assert main([str(sweep), "--method", "greedy_soup", "--out", str(tmp_path / "g.safetensors")]) == 0
    assert main([str(sweep), "--method", "fisher_merge", "--out", str(tmp_path / "f.safetensors")]) == 0
    base = sweep / "0" / "model.safetensors"
    assert main([str(sweep / "1"), str(sweep / "2"), "--method", "interpolate", "--set", "alpha=0.0", "--base",
                 str(base), "--out", str(tmp_path / "w.safetensors")]) == 0
    assert torch.equal(load_checkpoint(tmp_path / "w.safetensors")[1], load_checkpoint(base)[1])  # alpha 0: base


def test_bad_inputs(sweep, tmp_path, capsys):
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    assert main([str(sweep / "0" / "model.safetensors"), str(corrupt)]) == 2
    assert "valid safetensors" in capsys.readouterr().err
    assert main([str(sweep), "--method", "interpolate"]) == 2  # needs --base
    assert "--base" in capsys.readouterr().err
    assert main([str(sweep), "--method", "interpolate", "--set", "alpha=1.5", "--base",
                 str(sweep / "0" / "model.safetensors")]) == 2
    assert "strategy.alpha" in capsys.readouterr().err
    assert main([str(sweep), "--method", "nope"]) == 2
    assert not (tmp_path / "merged.safetensors").exists()


def test_mismatched_layouts_name_the_first_tensor(sweep, tmp_path):
    other = tmp_path / "other"
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["progress=false", *SMALL, "model.hidden=[8]"])
    run_experiment(cfg, other)
    proc = subprocess.run([sys.executable, "-m", "sim.merge", str(sweep / "0"), str(other)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "net.0.weight [16, 64] against net.0.weight [8, 64]" in proc.stderr


def test_fine_tuning_starts_from_a_checkpoint_and_source_split_keeps_listed_classes(sweep, make_cfg, tmp_path):
    from sim.errors import ConfigError
    from sim.experiment import build_experiment

    ckpt = sweep / "0" / "model.safetensors"
    exp = build_experiment(make_cfg("model.hidden=[16]", f"model.init_checkpoint={ckpt}",
                                    "dataset.train_classes=[0,1,2]"))
    assert torch.equal(exp.initial_params, load_checkpoint(ckpt)[1])
    assert set(exp.data.y.unique().tolist()) == {0, 1, 2} and len(exp.data.y_test.unique()) == 10
    with pytest.raises(ConfigError, match="model.init_checkpoint") as err:
        build_experiment(make_cfg("model.hidden=[32]", f"model.init_checkpoint={ckpt}"))
    assert "net.0.weight [32, 64]" in str(err.value)


def test_shifted_test_set_and_csv(sweep, tmp_path, capsys):
    csv = tmp_path / "t.csv"
    assert main([str(sweep), "--shift-noise", "0.2", "--shift-pixels", "1", "--out", str(tmp_path / "m.safetensors"),
                 "--csv", str(csv)]) == 0
    assert "shifted test accuracy" in capsys.readouterr().out
    import pandas as pd

    table = pd.read_csv(csv)
    assert len(table) == 5 and (table["shifted_test_accuracy"] <= table["test_accuracy"] + 0.2).all()
