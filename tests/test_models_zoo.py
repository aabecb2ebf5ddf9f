"""The built-in models: shapes on the inputs each is made for, parameters, config checks, and that
the vectorized backend (vmap over clients) trains each one exactly as the sequential reference does."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from zoo_helpers import assert_backends_agree, model_cfg, training_setup

from sim.backends import AutoBackend, VectorizedBackend
from sim.backends.auto_choice import decide
from sim.backends.vmap_check import vmap_report
from sim.data.inputs import InputSpec
from sim.errors import ConfigError
from sim.models import MLP, MODEL_NAMES, LogisticRegression, build_model, validate_model_config
from sim.seeding import derived_seed
from sim.training import TrainConfig

GREY28 = InputSpec((1, 28, 28), "image", mean=(0.13,), std=(0.31,))
RGB32 = InputSpec((3, 32, 32), "image", mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26))
TOKENS = InputSpec((12,), "tokens", vocab_size=20)
TRAIN = TrainConfig(epochs=1, batch_size=3, lr=0.1, momentum=0.9, weight_decay=1e-3)
SIZES = [5, 3, 4]  # uneven clients, partial batches


def test_every_model_has_a_config_file():
    for name in MODEL_NAMES:
        assert OmegaConf.load(f"configs/model/{name}.yaml").name == name


def test_existing_models_keep_their_parameters_and_names():
    """The same init stream as before the zoo grew: MLP built by hand under the "init" seed is identical."""
    model = build_model({"name": "mlp", "hidden": [8]}, (1, 2, 3), 3, seed=4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derived_seed(4, "init"))
        reference = MLP(6, 3, [8])
    assert [n for n, _ in model.named_parameters()] == ["net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"]
    for (_, a), (_, b) in zip(model.named_parameters(), reference.named_parameters(), strict=True):
        assert torch.equal(a, b)
    logreg = build_model({"name": "logreg"}, (6,), 3, seed=0)
    assert isinstance(logreg, LogisticRegression)
    assert [n for n, _ in logreg.named_parameters()] == ["linear.weight", "linear.bias"]


def test_flat_models_take_images_in_natural_shape_and_stored_rows():
    model = build_model({"name": "logreg"}, InputSpec((1, 2, 2), "image"), 2, seed=0)
    with torch.no_grad():
        model.linear.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 1]]))
        model.linear.bias.zero_()
    rows = torch.tensor([[255, 0, 0, 51]], dtype=torch.uint8)  # stored pixels: 1.0 and 0.2 after scaling
    assert torch.allclose(model(rows), torch.tensor([[1.0, 0.2]]))
    assert torch.allclose(model(rows.float().reshape(1, 1, 2, 2) / 255), torch.tensor([[1.0, 0.2]]))


@pytest.mark.parametrize(
    "name,overrides,spec,classes,params",
    [
        ("lenet", {}, GREY28, 10, 61706),
        ("lenet", {}, RGB32, 10, 62006),
        ("lenet", {}, InputSpec((1, 12, 13), "image"), 4, None),  # the smallest LeNet takes
        ("resnet", {"depth": 8}, RGB32, 10, 75290),
        ("resnet", {"depth": 20}, RGB32, 10, 269722),
        ("resnet", {"depth": 8, "groups": 8}, InputSpec((1, 7, 5), "image"), 3, None),
        ("charlstm", {}, InputSpec((80,), "tokens", vocab_size=80), 80, 817872),
        ("charlstm", {"cell": "gru"}, InputSpec((80,), "tokens", vocab_size=80), 80, 620240),
        ("cnn", {}, InputSpec((3, 7, 9), "image"), 5, None),
        ("cnn", {}, InputSpec((1, 2, 3), "image"), 5, None),
    ],
)
def test_output_shape_and_parameter_count(name, overrides, spec, classes, params):
    model = build_model(model_cfg(name, **overrides), spec, classes, seed=0)
    if spec.kind == "tokens":
        rows = torch.randint(0, spec.vocab_size, (3, spec.num_values))
    else:
        rows = torch.randint(0, 256, (3, spec.num_values), dtype=torch.uint8)
    assert model(rows).shape == (3, classes)
    if params is not None:
        assert sum(p.numel() for p in model.parameters()) == params


def test_lenet_pads_small_images_like_mnist():
    assert build_model(model_cfg("lenet"), GREY28, 10, 0).features[0].padding == (2, 2)
    assert build_model(model_cfg("lenet"), RGB32, 10, 0).features[0].padding == (0, 0)
    # 16 channels of 5x5 after the second pooling, for both
    assert build_model(model_cfg("lenet"), GREY28, 10, 0).head[1].in_features == 16 * 5 * 5


@pytest.mark.parametrize(
    "name,overrides,spec,classes",
    [
        ("lenet", {}, GREY28, 10),
        ("lenet", {}, RGB32, 3),
        ("resnet", {"depth": 8, "groups": 2}, InputSpec((3, 8, 8), "image", mean=(0.5,), std=(0.25,)), 4),
        ("charlstm", {"hidden": 8, "cell": "lstm"}, TOKENS, 20),
        ("charlstm", {"hidden": 8, "cell": "gru", "layers": 3}, TOKENS, 20),
        ("cnn", {"channels": [2, 3], "hidden": 5}, InputSpec((3, 7, 9), "image"), 4),
        ("cnn", {"channels": [2, 3], "hidden": 5}, InputSpec((1, 5, 5), "image"), 4),
    ],
)
def test_vectorized_trains_each_model_as_the_sequential_reference(name, overrides, spec, classes):
    assert_backends_agree(training_setup(model_cfg(name, **overrides), spec, classes, SIZES, TRAIN))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_charlstm_cells_have_vmap_batching_rules(cell):
    """torch's nn.LSTM makes vmap loop over clients (a fallback with a warning); the hand-written cells do not."""
    setup = training_setup(model_cfg("charlstm", hidden=4, cell=cell), TOKENS, 20, [2], TRAIN)
    report = vmap_report(setup.model, setup.data.x[:2])
    assert report.blockers == [] and report.slow_ops == []


@pytest.mark.slow
def test_vectorized_trains_resnet20_as_the_sequential_reference():
    spec = InputSpec((3, 8, 8), "image", mean=(0.5,), std=(0.25,))
    assert_backends_agree(training_setup(model_cfg("resnet", depth=20), spec, 4, [3, 2], TRAIN))


def test_batchnorm_resnet_goes_to_the_sequential_backend():
    spec = InputSpec((3, 6, 6), "image")
    setup = training_setup(model_cfg("resnet", depth=8, norm="batch"), spec, 3, [4, 3], TRAIN)
    auto = AutoBackend()
    auto.setup(setup)
    assert auto.chosen is auto._sequential
    assert "BatchNorm" in auto.reason and "'blocks.0.norm1'" in auto.reason
    batch = auto.train(torch.arange(2), setup.layout.flatten(setup.model), round_=0)
    assert torch.isfinite(batch.params).all()
    running_mean = setup.layout.spec("norm.running_mean").slice
    assert not torch.equal(batch.params[0, running_mean], torch.zeros(16))  # statistics were trained too
    with pytest.raises(ConfigError, match="BatchNorm"):
        VectorizedBackend().setup(setup)


def test_groupnorm_resnet_goes_to_sequential_on_a_cpu_and_vmap_serves_it_on_a_gpu():
    setup = training_setup(model_cfg("resnet", depth=8), InputSpec((3, 6, 6), "image"), 3, [4, 3], TRAIN)
    auto = AutoBackend()
    auto.setup(setup)  # on this CPU: vmap is slower for conv nets (tests/test_auto_choice.py)
    assert auto.chosen is auto._sequential and auto.reason.startswith("sequential")
    assert decide(setup, "cuda", free_bytes=2**30).backend == "vectorized"


@pytest.mark.parametrize(
    "name,key,value",
    [
        ("resnet", "depth", "abc"),
        ("resnet", "depth", 7),
        ("resnet", "depth", 21),
        ("resnet", "depth", 20.0),
        ("resnet", "norm", "layer"),
        ("resnet", "groups", 3),
        ("resnet", "groups", 0),
        ("resnet", "groups", "inf"),
        ("charlstm", "embed_dim", 0),
        ("charlstm", "embed_dim", "abc"),
        ("charlstm", "hidden", 2.5),
        ("charlstm", "layers", 0),
        ("charlstm", "cell", "rnn"),
        ("cnn", "channels", [16]),
        ("cnn", "hidden", "abc"),
        ("mlp", "hidden", []),
    ],
)
def test_every_model_key_is_checked(name, key, value):
    with pytest.raises(ConfigError) as info:
        validate_model_config(model_cfg(name, **{key: value}))
    assert info.value.field == f"model.{key}"


def test_a_typo_in_the_model_name_gets_a_suggestion():
    with pytest.raises(ConfigError, match="Did you mean lenet"):
        validate_model_config({"name": "lenett"})


@pytest.mark.parametrize(
    "name,spec,says",
    [
        ("lenet", InputSpec((1, 8, 8), "image"), "at least 12x12"),
        ("resnet", InputSpec((64,)), "images shaped"),
        ("cnn", TOKENS, "images shaped"),
        ("charlstm", GREY28, "token ids"),
        ("charlstm", InputSpec((12,)), "token ids"),
        ("mlp", TOKENS, "token ids"),
    ],
)
def test_a_model_for_other_inputs_is_refused_by_name(name, spec, says):
    with pytest.raises(ConfigError, match=says) as info:
        build_model(model_cfg(name), spec, 10, seed=0)
    assert info.value.field == "model.name"
