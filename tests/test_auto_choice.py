"""backend=auto's choice: which backend it picks for each model family on a CPU and on a GPU, and why.

The GPU branch is the same function as on the CPU, with the device type and its free memory given
(``decide(setup, "cuda", free_bytes=...)``); the trial gradient it may run is on CPU tensors here.
"""

from __future__ import annotations

import pytest
import torch
from zoo_helpers import model_cfg, training_setup

from sim.backends import AutoBackend
from sim.backends.auto_choice import DEVICE_MEMORY_SHARE, decide, gpu_chunk_size, model_kind
from sim.backends.vectorized import MAX_CHUNK, client_bytes
from sim.data.inputs import InputSpec
from sim.training import TrainConfig

FLAT = InputSpec((6,), "features")
GREY = InputSpec((1, 12, 12), "image")
RGB = InputSpec((3, 6, 6), "image")
TOKENS = InputSpec((5,), "tokens", vocab_size=7)
TRAIN = TrainConfig(epochs=1, batch_size=2, lr=0.1)
SIZES = [3, 2]

ZOO = {
    "mlp": (model_cfg("mlp", hidden=[4]), FLAT),
    "logreg": (model_cfg("logreg"), FLAT),
    "lenet": (model_cfg("lenet"), GREY),
    "resnet": (model_cfg("resnet", depth=8), RGB),
    "charlstm": (model_cfg("charlstm", hidden=4, layers=1), TOKENS),
}


def setup_of(name: str):
    cfg, spec = ZOO[name]
    return training_setup(cfg, spec, 7, SIZES, TRAIN)


@pytest.mark.parametrize(
    "name,backend,reason",
    [
        ("mlp", "vectorized", "vectorized: the MLP is a chain of Linear layers and activations"),
        ("logreg", "vectorized", "vectorized: the LogisticRegression is a chain of Linear layers"),
        ("lenet", "sequential", "sequential: the LeNet5 is a convolutional net, and on a CPU one client at a time"),
        ("resnet", "sequential", "sequential: the CifarResNet is a convolutional net, and on a CPU"),
        ("charlstm", "sequential", "sequential: the CharRNN is a recurrent net, and on a CPU"),
    ],
)
def test_on_a_cpu_auto_picks_the_backend_the_benchmark_shows_faster(name, backend, reason):
    choice = decide(setup_of(name), "cpu")
    assert choice.backend == backend and choice.reason.startswith(reason), choice.reason
    assert choice.chunk_size is None  # on a CPU the vectorized backend sizes its chunks from free RAM itself


@pytest.mark.parametrize("name", ["lenet", "resnet", "charlstm"])
def test_on_a_gpu_vmap_serves_conv_and_recurrent_nets_with_chunks_from_free_memory(name):
    setup = setup_of(name)
    free = 10 * 2**30
    choice = decide(setup, "cuda", free_bytes=free)
    expected = min(MAX_CHUNK, free // DEVICE_MEMORY_SHARE // client_bytes(setup))
    assert choice.backend == "vectorized" and choice.chunk_size == expected
    assert f"a trial vmapped gradient ran) on cuda, {expected} clients per pass" in choice.reason


def test_a_user_chunk_size_wins_over_the_free_memory():
    assert decide(setup_of("lenet"), "cuda", free_bytes=2**30, chunk_size=7).chunk_size is None  # the backend's 7


def test_gpu_chunks_are_a_quarter_of_free_memory_over_one_client_between_1_and_max():
    assert gpu_chunk_size(4000, 100) == 10  # 4000 // 4 // 100
    assert gpu_chunk_size(4000, 101) == 9  # rounded down: the chunk must fit
    assert gpu_chunk_size(10, 10**9) == 1  # a client larger than the memory still trains alone
    assert gpu_chunk_size(2**50, 1) == MAX_CHUNK
    assert gpu_chunk_size(0, 0) == 1


def test_batchnorm_goes_to_sequential_on_every_device():
    setup = training_setup(model_cfg("resnet", depth=8, norm="batch"), RGB, 3, SIZES, TRAIN)
    for device in ("cpu", "cuda"):
        choice = decide(setup, device, free_bytes=2**30)
        assert choice.backend == "sequential" and "BatchNorm" in choice.reason and "'blocks.0.norm1'" in choice.reason


def test_the_kinds_of_models():
    kinds = [model_kind(setup_of(n).model) for n in ZOO]
    assert kinds == ["other", "other", "convolutional", "convolutional", "recurrent"]
    assert model_kind(torch.nn.Sequential(torch.nn.Conv1d(2, 2, 1), torch.nn.GRU(2, 2))) == "recurrent"
    assert model_kind(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LSTMCell(2, 2))) == "recurrent"


def _custom(target: str, spec: InputSpec = TOKENS):
    return training_setup(model_cfg("custom", target=target, kwargs={}), spec, 7, SIZES, TRAIN)


def test_a_model_that_writes_its_buffers_goes_to_sequential_before_any_trial():
    choice = decide(_custom("custom_models.RunningMean", FLAT), "cuda", free_bytes=2**30)
    assert choice.reason == (
        "sequential: the RunningMean's forward pass writes into buffer(s) mean in place, which vmap cannot do"
    )


def test_a_custom_model_vmap_cannot_batch_goes_to_sequential_on_a_gpu_too():
    """torch's nn.LSTM has no batching rule: vmap would loop over clients, slower than the reference."""
    choice = decide(_custom("custom_models.TorchLSTM"), "cuda", free_bytes=2**30)
    assert choice.backend == "sequential" and "no vmap batching rule for aten::mkldnn_rnn_layer" in choice.reason


def test_a_custom_model_of_another_kind_is_tried_with_vmap():
    """Embedding + Linear is neither a dense chain nor conv/recurrent: the trial gradient decides (it runs)."""
    choice = decide(_custom("custom_models.TokenBag"), "cpu")
    assert choice.backend == "vectorized" and "a trial vmapped gradient ran" in choice.reason


def test_auto_backend_trains_with_its_choice_and_keeps_the_reason(caplog):
    setup = setup_of("lenet")
    with caplog.at_level("INFO", logger="sim"):
        auto = AutoBackend()
        auto.setup(setup)
    assert auto.chosen is auto._sequential and auto.reason == decide(setup, "cpu").reason
    assert f"backend=auto: {auto.reason}" in caplog.text
    batch = auto.train(torch.arange(2), setup.layout.flatten(setup.model), round_=0)
    assert batch.params.shape == (2, setup.layout.size) and torch.isfinite(batch.params).all()
