"""python -m sim.merge: merge saved checkpoints, score them, and refuse bad files."""

import shutil
from pathlib import Path

import pytest
import torch
from forked_cli import run_module

from sim.checkpoint import load_checkpoint, save_checkpoint
from sim.merge import main
from sim.run import run_experiment

SMALL = (
    "num_clients=6",
    "participation.clients_per_round=3",
    "rounds=2",
    "train.epochs=1",
    "save_model=true",
    "model.hidden=[16]",
)


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
    assert (
        main(
            [
                str(sweep / "1"),
                str(sweep / "2"),
                "--method",
                "interpolate",
                "--set",
                "alpha=0.0",
                "--base",
                str(base),
                "--out",
                str(tmp_path / "w.safetensors"),
            ]
        )
        == 0
    )
    assert torch.equal(load_checkpoint(tmp_path / "w.safetensors")[1], load_checkpoint(base)[1])  # alpha 0: base


def test_bad_inputs(sweep, tmp_path, capsys):
    corrupt = tmp_path / "bad.safetensors"
    corrupt.write_bytes(b"not a safetensors file")
    assert main([str(sweep / "0" / "model.safetensors"), str(corrupt)]) == 2
    assert "valid safetensors" in capsys.readouterr().err
    assert main([str(sweep), "--method", "interpolate"]) == 2  # needs --base
    assert "--base" in capsys.readouterr().err
    assert (
        main(
            [
                str(sweep),
                "--method",
                "interpolate",
                "--set",
                "alpha=1.5",
                "--base",
                str(sweep / "0" / "model.safetensors"),
            ]
        )
        == 2
    )
    assert "strategy.alpha" in capsys.readouterr().err
    assert main([str(sweep), "--method", "nope"]) == 2
    assert main([str(sweep), "--shift-pixels", "8", "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "--shift-pixels=8 is not allowed: fewer than the image width, 8" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [corrupt] and not list(sweep.rglob("merged*"))


def test_mismatched_layouts_name_the_first_tensor(sweep, tmp_path):
    other = tmp_path / "other"
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["progress=false", *SMALL, "model.hidden=[8]"])
    run_experiment(cfg, other)
    proc = run_module("sim.merge", [str(sweep / "0"), str(other)], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "net.0.weight [16, 64] against net.0.weight [8, 64]" in proc.stderr


def test_fine_tuning_starts_from_a_checkpoint_and_source_split_keeps_listed_classes(sweep, make_cfg, tmp_path):
    from sim.errors import ConfigError
    from sim.experiment import build_experiment

    ckpt = sweep / "0" / "model.safetensors"
    exp = build_experiment(
        make_cfg("model.hidden=[16]", f"model.init_checkpoint={ckpt}", "dataset.train_classes=[0,1,2]")
    )
    assert torch.equal(exp.initial_params, load_checkpoint(ckpt)[1])
    assert set(exp.data.y.unique().tolist()) == {0, 1, 2} and len(exp.data.y_test.unique()) == 10
    with pytest.raises(ConfigError, match="model.init_checkpoint") as err:
        build_experiment(make_cfg("model.hidden=[32]", f"model.init_checkpoint={ckpt}"))
    assert "net.0.weight [32, 64]" in str(err.value)


def test_shifted_test_set_and_csv(sweep, tmp_path, capsys):
    csv = tmp_path / "t.csv"
    assert (
        main(
            [
                str(sweep),
                "--shift-noise",
                "0.2",
                "--shift-pixels",
                "1",
                "--out",
                str(tmp_path / "m.safetensors"),
                "--csv",
                str(csv),
            ]
        )
        == 0
    )
    assert "shifted test accuracy" in capsys.readouterr().out
    import pandas as pd

    table = pd.read_csv(csv)
    assert len(table) == 5 and (table["shifted_test_accuracy"] <= table["test_accuracy"] + 0.2).all()


def _run_folder(path, like, params):
    """A run folder holding ``params`` as its model, with the run config (data, model) of ``like``."""
    layout = load_checkpoint(like / "model.safetensors")[0]
    path.mkdir(parents=True)
    shutil.copy(like / "summary.json", path / "summary.json")
    save_checkpoint(path / "model.safetensors", layout, params)
    return path


def test_fisher_merge_takes_each_entry_from_the_model_whose_fisher_is_not_zero(sweep, tmp_path):
    """Hidden unit 0 is dead in model A (zero input weights, bias -1: its ReLU never fires) and firing
    in B (bias +1, inputs in [0, 1]), so A's Fisher is exactly 0 on that unit's bias and outgoing
    weights while B's is not: there the Fisher merge must take B's values, whatever per-model scaling
    or floor it uses; the plain average would sit halfway. Unit 1 is dead in B and firing in A, so the
    rule is checked in both directions."""
    layout, a, _ = load_checkpoint(sweep / "0" / "model.safetensors")
    b = load_checkpoint(sweep / "1" / "model.safetensors")[1]
    for dead, alive, unit in ((a, b, 0), (b, a, 1)):
        layout.view(dead, "net.0.weight")[unit].zero_()
        layout.view(dead, "net.0.bias")[unit] = -1.0
        layout.view(alive, "net.0.bias")[unit] = 1.0
    out = tmp_path / "fisher.safetensors"
    folders = [_run_folder(tmp_path / n, sweep / "0", p) for n, p in (("a", a), ("b", b))]
    assert main([*map(str, folders), "--method", "fisher_merge", "--out", str(out)]) == 0
    merged = load_checkpoint(out)[1]

    def unit_entries(params, unit):  # the dead unit's bias and its outgoing weights
        bias, outgoing = layout.view(params, "net.0.bias"), layout.view(params, "net.2.weight")
        return torch.cat([bias[unit : unit + 1], outgoing[:, unit]])

    for unit, alive, dead in ((0, b, a), (1, a, b)):
        got, want, other = unit_entries(merged, unit), unit_entries(alive, unit), unit_entries(dead, unit)
        assert (got - want).abs().max() <= 0.01 * (want - other).abs().max(), (unit, got, want, other)
    assert (unit_entries(merged, 0) - unit_entries((a + b) / 2, 0)).abs().max() > 0.3  # not the plain average


def test_greedy_soup_keeps_the_pair_whose_average_is_best_and_drops_the_bad_one(sweep, tmp_path, capsys):
    """A = M + d and B = M - d are each worse than the trained model M, but their soup is exactly M;
    C = M + 10 d' is far worse. Greedy soup must keep A and B (the soup improves) and drop C, so the
    result is M: stopping after the first ingredient gives A or B, keeping all gives M + 10 d' / 3."""
    m = load_checkpoint(sweep / "0" / "model.safetensors")[1]
    gen = torch.Generator().manual_seed(0)
    d, d2 = (m.std() * torch.randn(m.shape, generator=gen) for _ in range(2))
    ingredients = {"a": m + d, "b": m - d, "c": m + 10 * d2}
    folders = [_run_folder(tmp_path / n, sweep / "0", p) for n, p in ingredients.items()]
    out = tmp_path / "greedy.safetensors"
    assert main([*map(str, folders), "--method", "greedy_soup", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "greedy_soup kept 2 of 3" in captured.err
    assert torch.allclose(load_checkpoint(out)[1], m, atol=1e-6)
    rows = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in captured.out.splitlines()[2:]}
    val = {n: rows[str(f / "model.safetensors")] for n, f in zip(ingredients, folders, strict=True)}
    assert max(val.values()) < rows["merge: greedy_soup"]  # the soup beats every ingredient


def test_default_out_is_printed_and_sits_beside_the_first_checkpoint_and_base_is_scored(sweep, tmp_path, capsys):
    m = load_checkpoint(sweep / "0" / "model.safetensors")[1]
    first, second = (_run_folder(tmp_path / n, sweep / "0", p) for n, p in (("x", m), ("y", m * 0.5)))
    base = sweep / "2" / "model.safetensors"
    assert main([str(first), str(second), "--method", "interpolate", "--set", "alpha=0.25", "--base", str(base)]) == 0
    out = first / "merged_interpolate.safetensors"
    captured = capsys.readouterr()
    assert f"wrote the merged model to {out}" in captured.err
    assert not (tmp_path / "merged.safetensors").exists() and not Path("merged.safetensors").exists()
    want = 0.75 * load_checkpoint(base)[1] + 0.25 * (m * 0.75)
    assert torch.allclose(load_checkpoint(out)[1], want, atol=1e-6)
    names = [line.split("|")[1].strip() for line in captured.out.splitlines()[2:]]
    assert names == [
        str(first / "model.safetensors"),
        str(second / "model.safetensors"),
        f"base: {base}",
        "merge: interpolate",
        "logit ensemble of 2",
    ]
