"""Soups inside the engine: Fisher diagonals computed only when asked, validation reaching greedy soups."""

import pandas as pd

from sim.run import run_experiment

SMALL = ("num_clients=6", "participation.clients_per_round=3", "rounds=2", "model=logreg", "train.epochs=1")


def test_fisher_merge_gets_fisher_diagonals_from_the_backend(make_cfg, tmp_path):
    summary = run_experiment(make_cfg(*SMALL, "strategy=fisher_merge"), tmp_path)
    m = pd.read_csv(tmp_path / "metrics.csv")
    model_bytes = summary["num_parameters"] * 4
    assert m["bytes_up"].tolist()[1:] == [3 * 2 * model_bytes] * 2  # each client sends model + Fisher
    assert m["bytes_down"].tolist()[1:] == [3 * model_bytes] * 2
    assert m["test_accuracy"].iloc[-1] > m["test_accuracy"].iloc[0]


def test_greedy_soup_as_server_rule_and_as_gossip_merge(make_cfg, tmp_path):
    fl = run_experiment(make_cfg(*SMALL, "strategy=greedy_soup"), tmp_path / "fl")
    gl = run_experiment(make_cfg(*SMALL, "strategy=greedy_soup", "mode=gossip", "topology=ring"), tmp_path / "gl")
    assert fl["status"] == gl["status"] == "completed"
    assert fl["final"]["test_accuracy"] > 0.3 and gl["final"]["test_accuracy"] > 0.3
