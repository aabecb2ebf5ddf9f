"""``model=custom``: a user's model class runs like a built-in, and every bad target is a clear ConfigError."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from zoo_helpers import assert_backends_agree, model_cfg, tiny_data, training_setup

from sim.backends import AutoBackend
from sim.backends.auto_choice import decide
from sim.backends.vmap_check import vmap_blockers
from sim.data.inputs import InputSpec, input_spec
from sim.errors import ConfigError
from sim.models import build_model, check_model_output, validate_model_config
from sim.training import TrainConfig

TESTS = Path(__file__).parent
IMAGES = InputSpec((2, 4, 3), "image", mean=(0.5, 0.4), std=(0.2, 0.3))
TRAIN = TrainConfig(epochs=2, batch_size=2, lr=0.1, momentum=0.5)


@pytest.fixture(autouse=True)
def _importable(monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))  # custom_models is importable, as a user's module in the cwd is


def custom(target: str, **kwargs):
    return model_cfg("custom", target=target, kwargs=kwargs)


def test_a_model_class_is_told_the_shape_and_classes_and_gets_its_kwargs():
    model = build_model(custom("custom_models.TinyNet", width=5), IMAGES, 3, seed=0)
    assert type(model).__name__ == "TinyNet"
    assert model.conv.in_channels == 2 and model.conv.out_channels == 5 and model.fc.out_features == 3
    assert input_spec(model) == IMAGES
    rows = torch.randint(0, 256, (4, IMAGES.num_values), dtype=torch.uint8)
    assert model(rows).shape == (4, 3)
    check_model_output(model, rows, 3, "model.target")


def test_the_same_seed_gives_the_same_custom_model():
    a, b, c = (build_model(custom("custom_models.TinyNet"), IMAGES, 3, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.fc.weight, b.fc.weight) and not torch.equal(a.fc.weight, c.fc.weight)


def test_a_factory_gets_only_what_it_names():
    model = build_model(custom("custom_models.make_linear", features=24), IMAGES, 4, seed=0)
    assert model[1].in_features == 24 and model[1].out_features == 4


def test_the_default_target_is_a_working_example():
    cfg = model_cfg("custom")
    validate_model_config(cfg)
    model = build_model(cfg, IMAGES, 3, seed=0)
    check_model_output(model, torch.zeros(2, IMAGES.num_values, dtype=torch.uint8), 3, "model.target")


def test_a_custom_model_trains_alike_on_both_backends_and_auto_picks_by_its_kind():
    setup = training_setup(custom("custom_models.TinyNet"), IMAGES, 3, [5, 2, 4], TRAIN)
    assert_backends_agree(setup)
    auto = AutoBackend()
    auto.setup(setup)
    assert auto.chosen is auto._sequential and "convolutional" in auto.reason  # a conv net on a CPU
    assert decide(setup, "cuda", free_bytes=2**30).backend == "vectorized"  # vmap serves it


@pytest.mark.parametrize(
    "target,blocker",
    [("custom_models.RunningMean", "buffer(s) mean"), ("custom_models.WithDropout", "random operation")],
)
def test_auto_sends_what_vmap_cannot_run_to_the_sequential_backend(target, blocker):
    setup = training_setup(custom(target), IMAGES, 3, [3, 2], TRAIN)
    reasons = vmap_blockers(setup.model, setup.data.x[:2])
    assert len(reasons) == 1 and blocker in reasons[0]
    auto = AutoBackend()
    auto.setup(setup)
    assert auto.chosen is auto._sequential and blocker in auto.reason
    before = setup.layout.flatten(setup.model)
    assert torch.equal(before, setup.layout.flatten(setup.model))  # the checks left the model as built


@pytest.mark.parametrize(
    "target,says",
    [
        ("custom_models_missing.Net", "Importing module 'custom_models_missing' failed: ModuleNotFoundError"),
        ("custom_models.Missing", "has no attribute 'Missing'"),
        ("custom_models.NOT_CALLABLE", "It is a int, which cannot be called"),
        ("Net", "separated by dots"),
    ],
)
def test_a_target_that_does_not_import_is_refused_at_validation(target, says):
    with pytest.raises(ConfigError, match=says) as info:
        validate_model_config(custom(target))
    assert info.value.field == "model.target" and info.value.value == target


@pytest.mark.parametrize(
    "target,says",
    [
        ("custom_models.raises", r"raised ValueError: no model for 3 classes today"),
        ("custom_models.not_a_module", "returned a builtins.dict, not a torch.nn.Module"),
        ("custom_models.takes_everything", "raised KeyError: 'in_features'"),
    ],
)
def test_a_target_that_does_not_build_a_module_is_refused(target, says):
    with pytest.raises(ConfigError, match=says) as info:
        build_model(custom(target), IMAGES, 3, seed=0)
    assert info.value.field == "model.target"
    assert "input_shape=(2, 4, 3), num_classes=3" in str(info.value) or "takes_everything()" in str(info.value)


@pytest.mark.parametrize(
    "target,says",
    [
        ("custom_models.WrongOutput", r"returned shape \[2, 4\]"),
        ("custom_models.BrokenForward", "forward pass on 2 example\\(s\\) raised RuntimeError"),
    ],
)
def test_a_model_with_the_wrong_output_is_refused_on_stored_rows(target, says):
    model = build_model(custom(target), IMAGES, 3, seed=0)
    rows = tiny_data(IMAGES, 3, [4]).x
    with pytest.raises(ConfigError, match=says) as info:
        check_model_output(model, rows, 3, "model.target")
    assert info.value.field == "model.target"
    assert "[2, 3]" in str(info.value)


def test_kwargs_must_be_a_mapping_and_cannot_override_what_the_data_says():
    with pytest.raises(ConfigError, match="from the data set itself") as info:
        validate_model_config(custom("custom_models.TinyNet", num_classes=5))
    assert info.value.field == "model.kwargs"
    cfg = model_cfg("custom", target="custom_models.TinyNet")
    cfg.kwargs = [1, 2]
    with pytest.raises(ConfigError) as info:
        validate_model_config(cfg)
    assert info.value.field == "model.kwargs"


def test_auto_avoids_vmap_where_it_would_loop_over_clients(caplog):
    spec = InputSpec((5,), "tokens", vocab_size=7)
    setup = training_setup(custom("custom_models.TorchLSTM"), spec, 7, [3, 2], TRAIN)
    with caplog.at_level("INFO", logger="sim"):
        auto = AutoBackend()
        auto.setup(setup)
    assert auto.chosen is auto._sequential and "recurrent" in caplog.text  # on a CPU by its kind
    # on a GPU by the trial: vmap would run it, with the right numbers, but one client at a time
    assert "no vmap batching rule for aten::mkldnn_rnn_layer" in decide(setup, "cuda", free_bytes=2**30).reason


def test_token_models_are_told_the_vocabulary(tmp_path, monkeypatch):
    (tmp_path / "user_rnn.py").write_text(
        "from torch import nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, vocab_size, num_classes):\n"
        "        super().__init__()\n"
        "        self.embed = nn.Embedding(vocab_size, 4)\n"
        "        self.fc = nn.Linear(4, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.embed(x).mean(1))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = InputSpec((6,), "tokens", vocab_size=11)
    model = build_model(custom("user_rnn.Net"), spec, 11, seed=0)
    assert model.embed.num_embeddings == 11
    rows = tiny_data(spec, 11, [3]).x
    check_model_output(model, rows, 11, "model.target")
    assert_backends_agree(training_setup(custom("user_rnn.Net"), spec, 11, [3, 4], TRAIN))
