"""Every config value is checked in-process, before any work: composed exactly as ``python -m sim`` does.

The command-line side (exit code 2, no traceback, no files) is covered once per class in
test_bad_input.py; here the bulk of the cases run in milliseconds each.
"""

import copy
import functools
import re
from pathlib import Path

import numpy as np
import pytest
from hydra import initialize_config_module
from omegaconf import DictConfig, OmegaConf

from sim.cli import _compose
from sim.data import load_federated_data
from sim.errors import ConfigError
from sim.experiment import build_experiment, validate_config
from sim.schema import _file, group_options

#: a FedScale device-capacity trace (30 clients) for the options that need one: system=trace
DEVICE_TRACE = f"system.device_file={Path(__file__).parent / 'fixtures' / 'fedscale_devices.json'}"

GOSSIP_ASYNC = ["mode=gossip", "topology=ring", "gossip.schedule=async"]


def _validate(*overrides: str):
    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = _compose("config", ["progress=false", *overrides])
    validate_config(cfg)
    return cfg


@functools.cache
def _composed(*overrides: str) -> DictConfig:
    """The composed config of ``overrides``, once per set: composing costs ~0.13 s and hundreds of cases share few."""
    with initialize_config_module(config_module="configs", version_base="1.3"):
        return _compose("config", ["progress=false", *overrides])


def _refused_value(field: str, value: str, *overrides: str) -> str:
    """As ``_refused(field, *overrides, f"{field}={value}")``, with the value set on a cached composition.

    The value arrives as Hydra's override parser would hand it over (``abc`` a string, ``inf``/``nan`` floats),
    so what is checked is the validation, not Hydra's parsing (which the ``_refused`` cases exercise).
    """
    cfg = copy.deepcopy(_composed(*overrides))
    OmegaConf.update(cfg, field, float(value) if value in ("inf", "nan") else value, merge=False)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert info.value.field == field, str(info.value)
    return str(info.value)


def _refused(field: str, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        _validate(*overrides)
    assert info.value.field == field, str(info.value)
    return str(info.value)


@pytest.mark.parametrize("experiment", group_options()["experiment"])
def test_every_experiment_file_composes_and_validates(experiment):
    _validate(f"experiment={experiment}")


@pytest.mark.parametrize(
    "group,option", [(g, o) for g, opts in group_options().items() if g != "experiment" for o in opts]
)
def test_every_group_option_validates(group, option, tmp_path):
    extra = {
        "topology": ["mode=gossip", "num_clients=12"],
        "dataset": ["partition=iid"],
        "partition": ["dataset=synthetic"],
    }.get(group, [])
    if (group, option) == ("dataset", "npz"):
        path = tmp_path / "ok.npz"
        np.savez(path, x_train=np.zeros((40, 3)), y_train=np.arange(40) % 2)
        extra.append(f"dataset.path={path}")
    if (group, option) == ("dataset", "hf"):
        path = tmp_path / "ok.csv"
        path.write_text("x,label\n" + "".join(f"{i},{i % 2}\n" for i in range(40)))
        extra.append(f"dataset.path={path}")
    if (group, option) == ("dataset", "leaf"):
        path = tmp_path / "leaf.json"
        path.write_text('{"users": ["u"], "user_data": {"u": {"x": [[0.0]], "y": [0]}}}')
        extra.append(f"dataset.path={path}")
    if (group, option) == ("topology", "file"):
        path = tmp_path / "ring.txt"
        path.write_text("\n".join(f"{i} {(i + 1) % 12}" for i in range(12)))
        extra.append(f"topology.path={path}")
    if group == "strategy" and option in GOSSIP_RULES:
        extra = ["mode=gossip", "topology=ring"]
    if (group, option) == ("system", "trace"):
        extra.append(DEVICE_TRACE)
    if group == "backend" and option == "ray":
        pytest.importorskip("ray")
    if (group, option) == ("strategy", "sparse_soup"):  # a rule for python -m sim.merge only: runs refuse it
        assert "sim.merge" in _refused("strategy", "strategy=sparse_soup")
        return
    _validate(f"{group}={option}", *extra)


# Class 1: every float option must be finite; `v > 0` alone let inf through.
#: strategies that only gossip can run (their keys are read in mode=gossip); every other rule is read in FL,
#: where server-only rules (SCAFFOLD, FedDyn) are accepted
GOSSIP_RULES = ("gossip_avg", "variance_corrected", "clipped_gossip", "choco")

NON_FINITE = {
    "train.lr": [],
    "train.weight_decay": [],
    "train.momentum": [],
    "train.label_smoothing": [],
    "strategy.server_lr": [],
    "strategy.tau": ["strategy=fedadam"],
    "strategy.beta1": ["strategy=fedyogi"],
    "strategy.fisher_floor": ["strategy=fisher_merge"],
    "strategy.scaling": ["strategy=ties"],
    "strategy.density": ["strategy=dare"],
    "strategy.alpha": ["strategy=interpolate"],
    "strategy.eps": ["strategy=variance_corrected"],
    "strategy.c": ["strategy=variance_corrected"],
    "participation.alpha": ["participation=bernoulli"],
    "participation.mean": ["participation=markov"],
    "participation.floor": ["participation=cyclic"],
    "participation.q": ["participation=markov"],
    "gossip.wake_interval": GOSSIP_ASYNC,
    "gossip.delay_value": GOSSIP_ASYNC,
    "gossip.delay_low": GOSSIP_ASYNC,
    "gossip.mean_online": GOSSIP_ASYNC,
    "gossip.mean_offline": GOSSIP_ASYNC,
    "gossip.eval_interval": GOSSIP_ASYNC,
    "gossip.drop_prob": GOSSIP_ASYNC,
    "gossip.online_prob": GOSSIP_ASYNC,
    "partition.alpha": [],
    "dataset.alpha": ["dataset=synthetic"],
    "dataset.size_lognormal_mean": ["dataset=synthetic"],
    "dataset.val_fraction": [],
    "topology.mean_degree": ["mode=gossip", "topology=erdos_renyi"],
    "topology.p": ["mode=gossip", "topology=small_world"],
}


@pytest.mark.parametrize("value", ["inf", "nan"])
@pytest.mark.parametrize("field", list(NON_FINITE))
def test_non_finite_numbers_are_refused(field, value):
    _refused_value(field, value, *NON_FINITE[field])


#: overrides an option cannot validate without (a file it reads)
OPTION_NEEDS = {("system", "trace"): [DEVICE_TRACE]}


def _numeric_leaves():
    """(field, overrides that make it read) for every number in config.yaml and every group option's file.

    The backend group is left to its own tests (tests/test_backend_config.py).
    """
    context = {
        "topology": ["mode=gossip", "num_clients=12"],
        "gossip": GOSSIP_ASYNC,
    }
    root, _ = _file("config")
    blocks = [("", root, [])]
    blocks += [
        (f"{group}.", _file(f"{group}/{option}")[0], [f"{group}={option}", *OPTION_NEEDS.get((group, option), [])])
        for group, options in group_options().items()
        if group not in ("experiment", "backend", "mode")
        for option in options
        if (group, option) != ("dataset", "npz")
    ]
    leaves = {}
    for prefix, content, extra in blocks:
        for key, value in content.items():
            nested = value.items() if isinstance(value, dict) else [(None, value)]
            for sub, leaf in nested:
                field = f"{prefix}{key}" + (f".{sub}" if sub else "")
                if isinstance(leaf, (int, float)) and not isinstance(leaf, bool):
                    group = field.split(".")[0]
                    gossip_rule = group == "strategy" and extra[0].split("=")[1] in GOSSIP_RULES
                    where = ["mode=gossip", "topology=ring"] if gossip_rule else context.get(group, [])
                    leaves.setdefault(field, [*extra, *where])
    return leaves


NUMERIC_LEAVES = _numeric_leaves()


@pytest.mark.parametrize("field", list(NUMERIC_LEAVES))
def test_every_number_in_the_config_files_is_checked(field):
    """A new numeric key without a check fails here: a word and an infinite value must both be refused."""
    _refused_value(field, "abc", *NUMERIC_LEAVES[field])
    if isinstance(OmegaConf.select(_composed(*NUMERIC_LEAVES[field]), field), float):
        _refused_value(field, "inf", *NUMERIC_LEAVES[field])


def test_a_value_set_on_a_cached_composition_is_refused_as_the_same_override():
    """The shortcut above agrees with the command line's path: same field, same message."""
    for field, value, extra in [("train.lr", "abc", []), ("strategy.tau", "nan", ["strategy=fedadam"])]:
        assert _refused_value(field, value, *extra) == _refused(field, *extra, f"{field}={value}")


@pytest.mark.parametrize(
    "field,extra",
    [
        ("train.lr", []),
        ("strategy.server_lr", ["strategy=fedavgm"]),
        ("gossip.eval_interval", GOSSIP_ASYNC),
        ("partition.alpha", []),
        ("participation.p", ["participation=bernoulli", "participation.probability=constant"]),
    ],
)
def test_strings_and_booleans_are_not_numbers(field, extra):
    for value in ("abc", "true"):
        _refused(field, *extra, f"{field}={value}")


# Class 3: keys. The schema is the chosen option's YAML file; typos get the closest key.
@pytest.mark.parametrize(
    "override,field,suggestion",
    [
        ("+train.foo=1", "train.foo", None),
        ("train.lrr=0.1", "train.lrr", "train.lr"),
        ("+strategy.typo=1", "strategy.typo", None),
        ("+strategy.server_lrr=1", "strategy.server_lrr", "strategy.server_lr"),
        ("learning_rate=0.1", "learning_rate", None),
        ("lr=0.1", "lr", "train.lr"),
        ("+roundz=3", "roundz", "rounds"),
        ("gossip.wake_intervall=2", "gossip.wake_intervall", "gossip.wake_interval"),
        ("++dataset.iidd=true", "dataset.iidd", None),
        ("+model.hiden=[8]", "model.hiden", "model.hidden"),
    ],
)
def test_unknown_keys_are_refused_with_a_suggestion(override, field, suggestion):
    message = _refused(field, override)
    assert "+" not in message.split("is not allowed")[1]  # never Hydra's advice to append the key
    if suggestion:
        assert f"Did you mean {suggestion}?" in message


def test_a_key_of_another_option_is_refused():
    message = _refused("strategy.tau", "strategy=fedavg", "+strategy.tau=0.1")
    assert "configs/strategy/fedavg.yaml" in message


@pytest.mark.parametrize(
    "overrides, field, owners",
    [
        # the default backend (auto) lacks Ray's actor count; every option that has the key is named, none other
        (("backend.num_actors=2",), "backend.num_actors", ["backend=ray"]),
        (("backend=sequential", "backend.kernel=dense"), "backend.kernel", ["backend=auto", "backend=vectorized"]),
        (("strategy=fedavg", "+strategy.tau=0.1"), "strategy.tau", ["strategy=fedadam", "strategy=fedyogi"]),
    ],
)
def test_a_key_of_another_option_names_the_options_that_have_it(overrides, field, owners):
    message = _refused(field, *overrides)
    named = sorted(set(re.findall(rf"{field.split('.')[0]}=\w+", message.split("is not allowed")[1])))
    assert set(owners) <= set(named), message
    assert "No config file has this key" not in message
    group, key = field.split(".")
    for option in group_options()[group]:  # named exactly when the option's file declares the key
        assert (f"{group}={option} (" in message) == (key in _file(f"{group}/{option}")[0]), (option, message)


def test_keys_of_the_chosen_option_pass_and_experiments_may_set_group_keys():
    _validate("strategy=fedadam", "strategy.tau=0.01")
    _validate("experiment=fedau", "dataset.size_cap=500")


def test_unknown_options_suggest_the_closest():
    from sim.cli import preflight

    with pytest.raises(ConfigError, match="Did you mean fedavg?") as info:
        preflight(["strategy=fedavx"])
    assert info.value.field == "strategy"


def test_progress_and_save_model_must_be_booleans():
    _refused("progress", "progress=maybe")
    _refused("progress", "progress=1")
    _refused("save_model", "save_model=yes")


def test_the_gossip_block_is_checked_in_federated_mode():
    _refused("gossip.drop_prob", "mode=federated", "gossip.drop_prob=2")
    _refused("gossip.schedule", "mode=federated", "gossip.schedule=asynch")


# Class 4: values that would make the run meaningless.
def test_async_evaluation_interval_longer_than_the_run_is_refused():
    _refused("gossip.eval_interval", *GOSSIP_ASYNC, "rounds=3", "gossip.eval_interval=3.5")
    _validate(*GOSSIP_ASYNC, "rounds=3", "gossip.eval_interval=3")  # evaluates once, at the end


def test_async_evaluations_cannot_outnumber_wake_ups_a_hundredfold():
    # wake_interval=1e12 with eval_interval=1 would queue 1e12 evaluation events
    message = _refused("gossip.eval_interval", *GOSSIP_ASYNC, "gossip.wake_interval=1e12")
    assert "evaluations" in message
    _validate(*GOSSIP_ASYNC, "gossip.wake_interval=1e12", "gossip.eval_interval=1e12")


def test_strategy_labels_and_seeds():
    _refused("strategy.name", "strategy.name=3")
    _refused("strategy.seed", "strategy=dare", "strategy.seed=-1")  # a negative seed crashed numpy mid-run


def test_a_delay_that_outlasts_the_run_is_refused():
    _refused("gossip.delay_value", *GOSSIP_ASYNC, "rounds=4", "gossip.delay_value=4")
    _refused(
        "gossip.delay_low",
        *GOSSIP_ASYNC,
        "rounds=4",
        "gossip.delay=uniform",
        "gossip.delay_low=5",
        "gossip.delay_value=6",
    )
    _validate(*GOSSIP_ASYNC, "rounds=4", "gossip.delay=exponential", "gossip.delay_value=10")


@pytest.mark.parametrize(
    "overrides,field",
    [
        (["participation.clients_per_round=0"], "participation.clients_per_round"),
        (["participation=bernoulli", "participation.probability=constant", "participation.p=0"], "participation.p"),
        (["participation=bernoulli", "participation.floor=0"], "participation.floor"),
        (["participation=markov", "participation.q=0"], "participation.q"),
        (["participation=cyclic", "participation.period=0"], "participation.period"),
    ],
)
def test_participation_that_cannot_happen_is_refused(overrides, field):
    _refused(field, *overrides)


def test_participation_with_nobody_in_any_round_is_refused():
    overrides = [
        "participation=bernoulli",
        "participation.probability=constant",
        "participation.p=1e-9",
        "num_clients=3",
        "rounds=4",
    ]
    message = _refused("participation", *overrides)
    assert "no client takes part in any of the 4 round(s)" in message
    _validate(*overrides[:-1], "participation.p=1")


def test_participation_check_leaves_the_draws_unchanged():
    from sim.participation import build_participation

    cfg = {"name": "markov", "probability": "constant", "p": 0.3, "q": 0.2}
    fresh = build_participation(cfg, 20, 5)
    expected = [fresh.sample(r).tolist() for r in range(1, 6)]
    checked = build_participation(cfg, 20, 5, rounds=50)
    assert [checked.sample(r).tolist() for r in range(1, 6)] == expected


# Class 5: train_classes names its own field.
def test_train_classes_the_data_lack_name_the_field(tmp_path):
    _refused("dataset.train_classes", "dataset.train_classes=[3,12]")
    _refused("dataset.train_classes", "dataset=synthetic", "dataset.num_classes=3", "dataset.train_classes=[3]")
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((30, 2)), y_train=np.arange(30) % 3 * 2)  # labels 0, 2, 4
    ds = {"name": "npz", "path": str(path), "train_classes": [1]}
    with pytest.raises(ConfigError, match=r"dataset\.train_classes=\[1\].*labels are \[0, 2, 4\]"):
        load_federated_data(OmegaConf.create(ds), OmegaConf.create({"name": "iid"}), 3, seed=0)


# Class 2: data files are checked when loaded, naming the file, the array and the row.
def _npz_arrays():
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.normal(size=(30, 4)),
        "y_train": np.arange(30) % 3,
        "x_test": rng.normal(size=(6, 4)),
        "y_test": np.arange(6) % 3,
    }


@pytest.mark.parametrize(
    "array,row,value,expect",
    [
        ("x_train", 3, np.nan, "x_train holds NaN at row 3"),
        ("x_test", 5, np.inf, "x_test holds Inf"),
        ("x_train", 7, 1e300, "x_train holds Inf"),  # beyond float32
        ("y_train", 4, -1, "y_train holds -1 at row 4"),
        ("y_train", 2, 10**9, "y_train holds 1000000000 at row 2"),
        ("y_test", 1, 1.5, "y_test holds 1.5 at row 1"),
        ("y_train", 0, np.nan, "y_train holds nan at row 0"),
    ],
)
def test_bad_values_in_an_npz_are_refused_when_loaded(tmp_path, array, row, value, expect):
    arrays = _npz_arrays()
    arrays[array] = arrays[array].astype(np.float64)
    arrays[array][row] = value
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ConfigError) as info:
        load_federated_data({"name": "npz", "path": str(path)}, {"name": "iid"}, 3, seed=0)
    assert info.value.field == "dataset.path" and str(path) in str(info.value)
    assert re.search(re.escape(expect), str(info.value)), str(info.value)


def test_whole_float_labels_still_load(tmp_path):
    arrays = _npz_arrays()
    arrays["y_train"] = arrays["y_train"].astype(np.float32)
    path = tmp_path / "ok.npz"
    np.savez(path, **arrays)
    data = load_federated_data({"name": "npz", "path": str(path)}, {"name": "iid"}, 3, seed=0)
    assert data.num_classes == 3


def test_build_experiment_still_runs_the_default_config():
    exp = build_experiment(_validate("num_clients=4", "participation.clients_per_round=2", "rounds=1"))
    assert exp.participation is not None
