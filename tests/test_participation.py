"""Participation patterns: determinism, empirical rates and transitions, correlated p_n, empty rounds."""

import numpy as np
import pandas as pd
import pytest

from sim.participation import build_participation
from sim.patterns import Bernoulli, Cyclic, Markov
from sim.run import run_experiment
from sim.seeding import numpy_rng

P = np.array([0.5, 0.2, 0.1, 0.05])


def _model(name, **options):
    cfg = {"name": name, "probability": "constant", "p": 0.5, **options}
    model = build_participation(cfg, len(P), seed=3)
    model.pattern.__init__(P, 3, **options)  # the same pattern around four different p_n
    return model


def _simulate(pattern, rounds):
    """``[rounds, N]`` activity of a pattern from a fresh start, as the engine reads it round by round."""
    pattern.reset()
    return np.array([pattern.step(r) for r in range(1, rounds + 1)])


def _binomial_sigma(p, n):
    return np.sqrt(p * (1 - p) / n)


def test_bernoulli_rates_and_independence_match_p_empirically():
    p, rounds = np.array([0.9, 0.5, 0.2, 0.05]), 20000
    pattern = Bernoulli(p, 3)
    active = _simulate(pattern, rounds)
    assert np.all(np.abs(active.mean(axis=0) - p) < 5 * _binomial_sigma(p, rounds)), active.mean(axis=0)
    assert np.array_equal(pattern.long_run_rate(), p)  # what the known-probability oracle is given
    # independent rounds: P(active now | active before) is p again (a sticky chain would exceed it)
    stay = (active[1:] & active[:-1]).sum(axis=0) / active[:-1].sum(axis=0)
    assert np.all(np.abs(stay - p) < 5 * _binomial_sigma(p, active[:-1].sum(axis=0))), stay


MARKOV_P = np.array([0.9, 0.5, 0.2, 0.1, 0.05])


def _markov_transitions(p, q):
    """docs/design.md: to-active q, to-inactive q (1/p - 1), both divided by the latter when it exceeds 1."""
    to_active, to_inactive = np.full_like(p, q), q * (1 / p - 1)
    scale = np.where(to_inactive > 1, to_inactive, 1.0)
    return to_active / scale, to_inactive / scale


@pytest.mark.parametrize("q", [0.05, 0.3])  # q = 0.3 makes 1/p - 1 exceed 1/q for p <= 0.2: the divided branch
def test_markov_transitions_and_rates_match_the_formulas_empirically(q):
    rounds = 20000
    chain = Markov(MARKOV_P, 3, q=q)
    active = _simulate(chain, rounds)
    to_active, to_inactive = _markov_transitions(MARKOV_P, q)
    was_on, was_off = active[:-1], ~active[:-1]
    n_on, n_off = was_on.sum(axis=0), was_off.sum(axis=0)
    left = (was_on & ~active[1:]).sum(axis=0) / n_on
    joined = (was_off & active[1:]).sum(axis=0) / n_off
    assert np.all(np.abs(left - to_inactive) < 5 * _binomial_sigma(to_inactive, n_on) + 1e-12), (left, to_inactive)
    assert np.all(np.abs(joined - to_active) < 5 * _binomial_sigma(to_active, n_off)), (joined, to_active)
    # each client's share of active rounds is p_n; rounds are correlated, which stretches the error by
    # (1 + lambda) / (1 - lambda) with lambda = 1 - to_active - to_inactive the chain's second eigenvalue
    lam = 1 - to_active - to_inactive
    sigma = _binomial_sigma(MARKOV_P, rounds) * np.sqrt((1 + lam) / (1 - lam))
    assert np.all(np.abs(active.mean(axis=0) - MARKOV_P) < 5 * sigma), (active.mean(axis=0), MARKOV_P)
    assert np.allclose(chain.long_run_rate(), MARKOV_P)  # what the known-probability oracle is given


def test_markov_starts_from_bernoulli_p():
    p = np.repeat([0.7, 0.2], 2000)
    chain = Markov(p, 5, q=0.05)
    chain.reset()
    for value in (0.7, 0.2):
        start = chain.active[p == value]
        assert abs(start.mean() - value) < 5 * _binomial_sigma(value, len(start))


def test_cyclic_is_active_round_t_p_rounds_of_each_period_from_a_random_phase():
    period, p = 40, np.repeat([0.5, 0.2, 0.07, 0.01, 1.0], 60)
    pattern = Cyclic(p, 3, period=period)
    active = _simulate(pattern, 400)
    on = np.array([20, 8, 3, 1, 40]).repeat(60)  # max(1, round(40 p)): 2.8 rounds up, 0.4 to the minimum 1
    off = np.array([20, 32, 37, 39, 1]).repeat(60)  # max(1, 40 - on)
    for n in range(len(p)):
        changes = np.flatnonzero(np.diff(active[:, n].astype(int))) + 1
        runs = np.diff(changes)  # whole runs between the first and the last change
        states = active[changes[:-1], n]
        assert np.all(runs[states] == on[n]) and np.all(runs[~states] == off[n]), (n, p[n], runs)
        first_on = int(np.argmax(active[:, n])) + 1
        assert 1 <= first_on <= off[n]  # starts inactive somewhere in its inactive phase
    first = np.argmax(active, axis=0)[p == 0.2] + 1
    assert len(np.unique(first)) > 20  # the phase is drawn per client, not shared (32 possible starts)
    share = active[-5 * period :].mean(axis=0)  # 5 whole periods where the period is 40
    assert np.allclose(share[p < 1], (on / period)[p < 1])
    assert np.allclose(pattern.long_run_rate(), on / (on + off))  # 40 / 41 where p = 1


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


def test_correlated_probability_by_hand():
    """p_n = min(1, max(floor, mean * C * sum_c share_nc m_c)), m ~ Dirichlet(alpha) from the run's stream."""
    counts = np.array([[10, 0, 0], [0, 3, 0], [0, 0, 7], [2, 2, 4], [0, 6, 2]])
    cfg = {"name": "bernoulli", "probability": "correlated", "mean": 0.6, "alpha": 0.5, "floor": 0.1}
    m = numpy_rng(1, "participation", "probabilities").dirichlet([0.5, 0.5, 0.5])
    assert np.allclose(m, [0.8477, 0.0283, 0.1240], atol=1e-4)  # seed 1: label 0 common, label 1 rare

    p = build_participation(cfg, 5, seed=1, label_counts=counts).probabilities.numpy()

    expected = []
    for row in counts:
        dot = sum(row[c] / row.sum() * m[c] for c in range(3))
        expected.append(min(1.0, max(0.1, 0.6 * 3 * dot)))
    assert np.allclose(p, expected, rtol=1e-12)
    # the cases the formula has: capped (1.8 * 0.848), floored (1.8 * 0.028), and in between
    assert p[0] == 1.0 and p[1] == 0.1 and p[4] == 0.1
    assert p[2] == pytest.approx(1.8 * m[2]) and p[3] == pytest.approx(1.8 * (0.25 * m[0] + 0.25 * m[1] + 0.5 * m[2]))


def test_round_without_participants_keeps_the_model_and_is_recorded(make_cfg, tmp_path):
    cfg = make_cfg(
        "num_clients=4",
        "rounds=12",
        "participation=bernoulli",
        "participation.probability=constant",
        "participation.p=0.1",
        "strategy=fedau",
        "model=logreg",
        "train.epochs=1",
    )
    run_experiment(cfg, tmp_path)
    m = pd.read_csv(tmp_path / "metrics.csv")
    empty = m[(m["round"] > 0) & (m["num_participants"] == 0)]
    assert len(empty) > 0
    for r in empty["round"]:
        assert m.loc[m["round"] == r, "test_loss"].item() == m.loc[m["round"] == r - 1, "test_loss"].item()
        assert m.loc[m["round"] == r, "bytes_up"].item() == 0
    assert "fedau_weight_rel_error" in m.columns
