"""Bad attack settings are refused before any work, naming the field: composed exactly as ``python -m sim`` does."""

import pytest
from forked_cli import run_module
from hydra import initialize_config_module

from sim.cli import _compose
from sim.errors import ConfigError
from sim.experiment import validate_config


def _refused(field: str, *overrides: str) -> str:
    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = _compose("config", ["progress=false", "num_clients=10", *overrides])
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert info.value.field == field, str(info.value)
    return str(info.value)


@pytest.mark.parametrize("f", ["10", "11", "0.96", "-1", "1.0", "0.0", "abc", "inf", "true", "null"])
def test_f_must_leave_an_honest_client_and_be_a_count_or_a_fraction(f):
    _refused("attack.f", "attack=sign_flip", f"attack.f={f}")


def test_f_of_all_clients_says_that_no_honest_client_is_left():
    assert "leaves no honest one" in _refused("attack.f", "attack=alie", "attack.f=0.96")


def test_f_counts_gossip_nodes_too():
    _refused("attack.f", "attack=ipm", "attack.f=10", "mode=gossip", "topology=ring")


@pytest.mark.parametrize(
    "attack,field,value",
    [
        ("gaussian", "std", "-0.5"),
        ("gaussian", "std", "abc"),
        ("gaussian", "mean", "nan"),
        ("ipm", "eps", "0"),
        ("ipm", "eps", "-0.1"),
        ("alie", "z", "-1"),
        ("alie", "z", "abc"),
        ("alie", "z", "inf"),
        ("min_max", "perturbation", "unit"),
        ("min_sum", "gamma_init", "0"),
        ("min_sum", "gamma_init", "-3"),
        ("min_max", "tolerance", "0"),
        ("min_max", "tolerance", "10.0"),
        ("mimic", "target", "-1"),
        ("mimic", "target", "1.5"),
    ],
)
def test_bad_attack_parameters_are_refused(attack, field, value):
    _refused(f"attack.{field}", f"attack={attack}", f"attack.{field}={value}")


def test_a_misspelt_perturbation_gets_a_suggestion():
    assert "Did you mean unit_vec?" in _refused("attack.perturbation", "attack=min_max", "attack.perturbation=unit_ve")


def test_a_parameter_of_another_attack_is_refused():
    _refused("attack.eps", "attack=sign_flip", "+attack.eps=0.1")


def test_asynchronous_gossip_refuses_attacks():
    message = _refused("attack.name", "attack=alie", "mode=gossip", "topology=ring", "gossip.schedule=async")
    assert "gossip.schedule=sync" in message


def test_label_flip_needs_training_that_noop_train_skips():
    pytest.importorskip("ray")
    _refused("attack.name", "attack=label_flip", "backend=ray", "backend.noop_train=true")


def test_command_line_refuses_too_many_byzantine_clients_before_any_work(tmp_path):
    result = run_module(
        "sim", ["num_clients=4", "attack=sign_flip", "attack.f=4", f"hydra.run.dir={tmp_path}/r"], tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert "attack.f" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "r" / "metrics.csv").exists()


# ---- more Byzantine inputs than the rule tolerates (robust rules: strategies/robust/) ----------------


def test_fl_refuses_more_byzantine_participants_than_krum_tolerates():
    """10 models a round, up to 4 Byzantine among them: Krum needs n > 2f + 2 = 10."""
    _refused("strategy.f", "strategy=krum", "attack=sign_flip", "attack.f=4", "participation.clients_per_round=10")


def test_fl_accepts_as_many_as_krum_tolerates():
    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = _compose(
            "config", ["progress=false", "num_clients=10", "strategy=krum", "attack=sign_flip", "attack.f=3"]
        )
    validate_config(cfg)


def test_gossip_refuses_a_neighbourhood_with_more_byzantine_nodes_than_the_rule_tolerates():
    from sim.experiment import build_experiment

    with initialize_config_module(config_module="configs", version_base="1.3"):
        base = ["progress=false", "num_clients=10", "model=logreg", "mode=gossip", "topology=complete"]
        too_many = _compose("config", [*base, "strategy=krum", "attack=alie", "attack.f=4"])
        tolerated = _compose("config", [*base, "strategy=krum", "attack=alie", "attack.f=3"])
    with pytest.raises(ConfigError) as info:
        build_experiment(too_many)
    assert info.value.field == "strategy.f"
    assert build_experiment(tolerated).attack is not None
