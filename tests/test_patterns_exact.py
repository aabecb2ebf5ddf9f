"""Participation patterns pinned to exact numbers: lengths, transition probabilities, defaults and the
streams every draw comes from (tests/test_participation.py checks the same rules statistically)."""

import numpy as np
import pytest

from sim.errors import ConfigError
from sim.patterns import Bernoulli, Cyclic, Markov, check_probability_config, client_probabilities
from sim.seeding import numpy_rng


def test_cyclic_lengths_have_a_floor_of_one_round_each():
    # Prepare / Execute: p = 0.001 rounds to 0 active rounds, p = 1 leaves 0 inactive rounds
    cyclic = Cyclic(np.array([0.001, 0.5, 1.0]), seed=0, period=10)
    # Assert
    assert cyclic.active_len.tolist() == [1, 5, 10]
    assert cyclic.inactive_len.tolist() == [9, 5, 1]
    assert np.allclose(cyclic.long_run_rate(), [0.1, 0.5, 10 / 11])


def test_cyclic_default_period_is_100():
    cyclic = Cyclic(np.array([0.25]), seed=0)
    assert cyclic.active_len.tolist() == [25] and cyclic.inactive_len.tolist() == [75]


def test_cyclic_phase_is_drawn_per_client_from_the_phase_stream():
    cyclic = Cyclic(np.full(20, 0.5), seed=4, period=10)
    expected = np.floor(numpy_rng(4, "participation", "phase").random(20) * 5)
    assert cyclic.countdown.tolist() == expected.tolist()
    assert len(set(cyclic.countdown.tolist())) > 1
    assert not cyclic.active.any()  # every client starts inactive


def test_cyclic_first_rounds_by_hand():
    # countdown c: inactive for rounds 1..c, then active for 2 rounds, inactive 3, ...
    cyclic = Cyclic(np.array([0.4]), seed=0, period=5)
    c = int(cyclic.countdown[0])
    rounds = [bool(cyclic.step(r)[0]) for r in range(1, c + 7)]
    assert rounds == [False] * c + [True, True, False, False, False, True]


@pytest.mark.parametrize("options", [{"period": 1}, {"period": 7}, {}])
def test_cyclic_accepts_any_period_of_at_least_one(options):
    Cyclic.check_options(options)


@pytest.mark.parametrize(
    "options, field",
    [
        ({"period": 0}, "participation.period"),
        ({"period": 2.5}, "participation.period"),
        ({"period": True}, "participation.period"),
        ({"perod": 5}, "participation"),
    ],
)
def test_cyclic_rejects_bad_periods_and_unknown_options(options, field):
    # the field (and for an unknown option, the option's name) is what the CLI tells the user to fix
    with pytest.raises(ConfigError) as err:
        Cyclic.check_options(options)
    assert err.value.field == field and (field != "participation" or err.value.value == ["perod"])


def test_markov_rescales_when_leaving_is_more_likely_than_one():
    # p = 0.25, q = 0.5: q (1/p - 1) = 1.5 > 1, so both probabilities are divided by 1.5
    chain = Markov(np.array([0.5, 0.25]), seed=0, q=0.5)
    assert np.allclose(chain.to_active, [0.5, 1 / 3])
    assert np.allclose(chain.to_inactive, [0.5, 1.0])
    assert np.allclose(chain.long_run_rate(), [0.5, 0.25])


def test_markov_default_q_is_0_05():
    chain = Markov(np.array([0.5]), seed=0)
    assert np.allclose(chain.to_active, [0.05]) and np.allclose(chain.to_inactive, [0.05])


def test_markov_initial_state_and_step_come_from_their_streams():
    p = np.tile([0.5, 0.25, 0.5, 0.9, 0.1, 0.5, 0.5, 0.5], 4)  # 32 clients: another stream cannot agree by chance
    chain = Markov(p, seed=3, q=0.5)
    start = numpy_rng(3, "participation", "initial").random(len(p)) < p
    assert chain.active.tolist() == start.tolist()
    assert 0 < start.sum() < len(p)  # both branches of the step below are taken
    u = numpy_rng(3, "participation", 1).random(len(p))
    expected = np.where(start, u >= chain.to_inactive, u < chain.to_active)
    assert chain.step(1).tolist() == expected.tolist()
    assert chain.active.tolist() == expected.tolist()


@pytest.mark.parametrize("q", [1, 0.05])
def test_markov_accepts_q_in_the_unit_interval(q):
    Markov.check_options({"q": q})


@pytest.mark.parametrize(
    "options, field", [({"q": 0}, "participation.q"), ({"q": 1.5}, "participation.q"), ({"qq": 0.1}, "participation")]
)
def test_markov_rejects_bad_q_and_unknown_options(options, field):
    with pytest.raises(ConfigError) as err:
        Markov.check_options(options)
    assert err.value.field == field and (field != "participation" or err.value.value == ["qq"])


def test_bernoulli_draws_one_number_per_client_from_the_round_stream():
    p = np.full(10, 0.5)
    expected = numpy_rng(3, "participation", 2).random(10) < p
    assert Bernoulli(p, seed=3).step(2).tolist() == expected.tolist()
    assert 0 < expected.sum() < 10


def test_bernoulli_takes_no_options():
    Bernoulli.check_options({})
    with pytest.raises(ConfigError) as err:
        Bernoulli.check_options({"p": 0.5})
    assert err.value.field == "participation" and err.value.value == ["p"]


@pytest.mark.parametrize("cfg", [{"probability": "constant", "p": 1}, {"mean": 1}, {"floor": 1}, {"alpha": 1e-9}, {}])
def test_probability_config_accepts_the_boundaries(cfg):
    check_probability_config(cfg)


@pytest.mark.parametrize(
    "cfg, named",
    [
        ({"probability": "constant", "p": 0}, "participation.p"),
        ({"probability": "constant", "p": 1.5}, "participation.p"),
        ({"probability": "constant", "p": True}, "participation.p"),
        ({"probability": "constant", "p": "0.5"}, "participation.p"),
        ({"probability": "constant"}, "participation.p"),
        ({"p": 2}, "participation.p"),
        ({"mean": 0}, "participation.mean"),
        ({"mean": 1.5}, "participation.mean"),
        ({"floor": 0}, "participation.floor"),
        ({"floor": 1.5}, "participation.floor"),
        ({"alpha": 0}, "participation.alpha"),
        ({"probability": "corelated"}, "participation.probability"),
    ],
)
def test_probability_config_rejects_out_of_range_values(cfg, named):
    with pytest.raises(ConfigError) as err:
        check_probability_config(cfg)
    assert err.value.field == named


def test_constant_probability_is_p_for_every_client():
    assert client_probabilities({"probability": "constant", "p": 0.3}, 3, 0, None).tolist() == [0.3] * 3


def test_correlated_probability_uses_the_defaults_and_the_probabilities_stream():
    # Prepare: two classes, one client with only class 0, one with a 1:3 mix, one with no data, one with one row
    counts = np.array([[4, 0], [1, 3], [0, 0], [1, 0]])
    m = numpy_rng(5, "participation", "probabilities").dirichlet([0.1, 0.1])
    # Execute
    p = client_probabilities({}, 4, 5, counts)
    # Assert: mean 0.1 * 2 classes * (label share @ m), clipped to [0.02, 1]
    expected = np.clip(0.2 * np.array([m[0], 0.25 * m[0] + 0.75 * m[1], 0.0, m[0]]), 0.02, 1.0)
    assert np.allclose(p, expected)
    assert p[2] == 0.02 and p[3] > 0.02  # the one-row client is not clipped, so its share is seen
