"""Participation patterns: determinism, long-run rates, correlated p_n, empty rounds."""

import numpy as np
import pandas as pd
import pytest
import torch

from sim.participation import build_participation
from sim.run import run_experiment

P = np.array([0.5, 0.2, 0.1, 0.05])


def _model(name, **options):
    cfg = {"name": name, "probability": "constant", "p": 0.5, **options}
    model = build_participation(cfg, len(P), seed=3)
    model.pattern.__init__(P, 3, **options)  # the same pattern around four different p_n
    return model


def _frequencies(model, rounds):
    hits = np.zeros(len(P))
    for r in range(1, rounds + 1):
        hits[model.sample(r).numpy()] += 1
    return hits / rounds


@pytest.mark.parametrize("name, options", [("bernoulli", {}), ("markov", {"q": 0.05}), ("cyclic", {"period": 40})])
def test_long_run_rates(name, options):
    model = _model(name, **options)
    freq = _frequencies(model, 20000)
    expected = model.probabilities.numpy()
    assert np.allclose(freq, expected, rtol=0.1, atol=0.005), (freq, expected)
    if name != "cyclic":
        assert np.allclose(expected, P)
    else:  # round(40 p) active rounds of each 40-round period
        assert np.allclose(expected, np.array([20, 8, 4, 2]) / 40)


def test_markov_is_sticky_and_cyclic_runs_in_blocks():
    markov, cyclic = _model("markov", q=0.05), _model("cyclic", period=40)
    m = np.array([np.isin(0, markov.sample(r).numpy()) for r in range(1, 2001)])
    switches = np.count_nonzero(m[1:] != m[:-1])
    assert switches < 0.15 * 2000  # a Bernoulli(0.5) stream would switch ~1000 times
    c = np.array([np.isin(1, cyclic.sample(r).numpy()) for r in range(1, 401)])
    runs = np.diff(np.flatnonzero(np.diff(c.astype(int)) != 0))
    assert set(runs.tolist()) <= {8, 32}  # active blocks of 8 and inactive blocks of 32 rounds


@pytest.mark.parametrize("name", ["bernoulli", "markov", "cyclic"])
def test_same_seed_same_stream_in_any_call_order(name):
    a, b = _model(name), _model(name)
    forward = [a.sample(r).tolist() for r in range(1, 30)]
    assert b.sample(17).tolist() == forward[16]  # out of order: replays from round 1
    assert [b.sample(r).tolist() for r in range(1, 30)] == forward


def test_correlated_probabilities_follow_labels_with_a_floor():
    counts = np.zeros((50, 10))
    counts[np.arange(50), np.arange(50) % 10] = 20  # client n holds only label n % 10
    cfg = {"name": "bernoulli", "probability": "correlated", "mean": 0.1, "alpha": 0.1, "floor": 0.02}
    p = build_participation(cfg, 50, seed=0, label_counts=counts).probabilities.numpy()
    assert p.min() >= 0.02 and p.max() <= 1
    assert np.allclose(p[:10], p[10:20])  # same labels, same p_n
    assert len(np.unique(np.round(p, 8))) > 1
    other = build_participation(cfg, 50, seed=1, label_counts=counts).probabilities.numpy()
    assert not np.allclose(p, other)


def test_round_without_participants_keeps_the_model_and_is_recorded(make_cfg, tmp_path):
    cfg = make_cfg("num_clients=4", "rounds=12", "participation=bernoulli", "participation.probability=constant",
                   "participation.p=0.1", "strategy=fedau", "model=logreg", "train.epochs=1")
    run_experiment(cfg, tmp_path)
    m = pd.read_csv(tmp_path / "metrics.csv")
    empty = m[(m["round"] > 0) & (m["num_participants"] == 0)]
    assert len(empty) > 0
    for r in empty["round"]:
        assert m.loc[m["round"] == r, "test_loss"].item() == m.loc[m["round"] == r - 1, "test_loss"].item()
        assert m.loc[m["round"] == r, "bytes_up"].item() == 0
    assert "fedau_weight_rel_error" in m.columns
