"""Image augmentation and stored-row inputs: exact pixels, one draw order, the same on every backend."""

import dataclasses

import pytest
import torch
from torch import nn

from sim.backends import SequentialBackend, TrainingSetup, VectorizedBackend
from sim.data import FederatedData
from sim.data.augment import augment_params, augment_rows
from sim.data.inputs import InputSpec, attach_inputs, input_spec
from sim.errors import ConfigError
from sim.layout import Layout
from sim.training import TrainConfig, batch_schedule, image_shape, local_train


def test_crop_and_flip_move_pixels_as_computed_by_hand():
    # Prepare: one 1x2x3 image with pixels 1..6 and padding 1
    image = torch.arange(1, 7, dtype=torch.uint8).reshape(1, 6)
    # (dy, dx) = (0, 0): the crop's corner is the padded image's corner -> shifted down-right by one
    shifted = augment_rows(image, torch.tensor([[0, 0, 0]]), (1, 2, 3), crop_padding=1)
    assert shifted.dtype == torch.uint8
    assert shifted.reshape(2, 3).tolist() == [[0, 0, 0], [0, 1, 2]]
    # (1, 1) is no shift; (2, 2) shifts up-left; flipping reverses each row
    same = augment_rows(image, torch.tensor([[1, 1, 0]]), (1, 2, 3), crop_padding=1)
    assert same.reshape(2, 3).tolist() == [[1, 2, 3], [4, 5, 6]]
    up_left = augment_rows(image, torch.tensor([[2, 2, 0]]), (1, 2, 3), crop_padding=1)
    assert up_left.reshape(2, 3).tolist() == [[5, 6, 0], [0, 0, 0]]
    flipped = augment_rows(image, torch.tensor([[1, 1, 1]]), (1, 2, 3), crop_padding=1)
    assert flipped.reshape(2, 3).tolist() == [[3, 2, 1], [6, 5, 4]]
    flipped_only = augment_rows(image, torch.tensor([[0, 0, 1]]), (1, 2, 3), crop_padding=0)
    assert flipped_only.reshape(2, 3).tolist() == [[3, 2, 1], [6, 5, 4]]


def test_augmentation_keeps_channels_together_and_leading_dims():
    # Prepare: two channels that differ by 10 everywhere, as a [2, 1, D] batch (vectorized layout)
    base = torch.arange(9, dtype=torch.float32).reshape(3, 3)
    rows = torch.stack([base, base + 10]).reshape(1, 1, 18).expand(2, 1, 18)
    params = torch.tensor([[[2, 0, 1]], [[1, 1, 0]]])
    # Execute
    out = augment_rows(rows, params, (2, 3, 3), crop_padding=1)
    # Assert: same shape; channel 2 is channel 1 + 10 wherever channel 1 is a real pixel
    assert out.shape == rows.shape
    c0, c1 = out[0, 0].reshape(2, 3, 3)
    real = c0 != 0
    assert torch.equal(c1[real], c0[real] + 10)
    assert torch.equal(out[1, 0], rows[1, 0])


def test_params_draw_nothing_without_augmentation_and_are_seeded():
    g = torch.Generator().manual_seed(0)
    assert augment_params(5, 0, False, g) is None
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())
    a = augment_params(100, 4, True, torch.Generator().manual_seed(1))
    b = augment_params(100, 4, True, torch.Generator().manual_seed(1))
    assert a is not None and torch.equal(a, b)
    assert int(a[:, :2].min()) == 0 and int(a[:, :2].max()) == 8 and set(a[:, 2].tolist()) == {0, 1}


class TinyConv(nn.Module):
    """A convolution that sees whether inputs come in natural shape, float and normalized."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        assert x.dim() == 4 and x.dtype == torch.float32  # [B, C, H, W], never the stored uint8 rows
        return self.head(torch.relu(self.conv(x)).flatten(1))


def _image_setup(train: TrainConfig, num_clients: int = 5) -> TrainingSetup:
    gen = torch.Generator().manual_seed(0)
    sizes = torch.tensor([9, 4, 13, 1, 7])[:num_clients]
    m = int(sizes.sum())
    x = torch.randint(0, 256, (m, 3 * 6 * 6), generator=gen, dtype=torch.uint8)
    y = torch.randint(0, 5, (m,), generator=gen)
    spec = InputSpec((3, 6, 6), "image", mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    data = FederatedData(
        x=x,
        y=y,
        offsets=torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)]),
        x_val=x[:0],
        y_val=y[:0],
        x_test=x[:4],
        y_test=y[:4],
        num_classes=5,
        input_shape=(3, 6, 6),
        name="tiny-images",
        inputs=spec,
    )
    torch.manual_seed(0)
    model = attach_inputs(TinyConv(), spec)
    return TrainingSetup(model=model, layout=Layout.from_module(model), data=data, train=train, seed=7)


def test_hook_turns_uint8_rows_into_normalized_images():
    setup = _image_setup(TrainConfig())
    spec = input_spec(setup.model)
    assert spec is not None
    rows = setup.data.x[:2]
    expected = (rows.float() / 255).reshape(2, 3, 6, 6)
    expected = (expected - torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).view(3, 1, 1)
    assert torch.allclose(spec.to_model(rows), expected, atol=1e-6)
    # the model gives the same logits for stored rows and for inputs already in natural shape
    assert torch.allclose(setup.model(rows), setup.model(expected), atol=1e-6)


@pytest.mark.parametrize("augment", [(0, False), (2, True), (1, False), (0, True)])
@pytest.mark.parametrize("local_steps", [None, 5])
def test_vectorized_equals_sequential_with_augmentation(augment, local_steps):
    # Prepare: uneven clients, partial batches, momentum
    crop, flip = augment
    train = TrainConfig(
        epochs=2, batch_size=4, lr=0.05, momentum=0.9, local_steps=local_steps, crop_padding=crop, hflip=flip
    )
    setup = _image_setup(train)
    ids = torch.tensor([2, 0, 4, 1, 3])
    start = Layout.from_module(setup.model).flatten(setup.model)
    # Execute
    seq, vec = SequentialBackend(), VectorizedBackend(chunk_size=3)
    seq.setup(setup)
    vec.setup(setup)
    a = seq.train(ids, start, round_=4)
    b = vec.train(ids, start, round_=4)
    # Assert
    assert torch.allclose(a.params, b.params, atol=1e-5)
    assert torch.allclose(a.train_loss, b.train_loss, atol=1e-5)


def test_augmentation_changes_training_and_follows_the_seed():
    plain = _image_setup(TrainConfig(epochs=1, batch_size=4))
    aug = dataclasses.replace(plain, train=TrainConfig(epochs=1, batch_size=4, crop_padding=2, hflip=True))
    start = plain.layout.flatten(plain.model)
    x, y = plain.data.client(0)

    def run(setup, seed):
        return local_train(setup.model, setup.layout, start, x, y, setup.train, torch.Generator().manual_seed(seed))

    # the schedule is drawn first and is the same with or without augmentation
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    pairs = zip(batch_schedule(9, plain.train, g1), batch_schedule(9, aug.train, g2), strict=True)
    assert all(torch.equal(p, q) for p, q in pairs)
    assert not torch.allclose(run(plain, 3).params, run(aug, 3).params)
    assert torch.equal(run(aug, 3).params, run(aug, 3).params)
    assert not torch.equal(run(aug, 3).params, run(aug, 4).params)


def test_augmentation_on_data_that_are_not_images_is_refused():
    model = attach_inputs(nn.Linear(6, 2), InputSpec((6,)))
    with pytest.raises(ConfigError) as err:
        image_shape(model, TrainConfig(crop_padding=4))
    assert err.value.field == "train.crop_padding"
    assert image_shape(model, TrainConfig()) is None


class Dropping(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.fc(self.drop(x))


def test_dropout_follows_the_client_stream_not_the_global_generator():
    # Prepare: a model with dropout (which vmap cannot run: sequential backends train it)
    torch.manual_seed(0)
    model = attach_inputs(Dropping(), InputSpec((6,)))
    layout = Layout.from_module(model)
    start = layout.flatten(model)
    x, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    cfg = TrainConfig(epochs=1, batch_size=5)

    def train(seed: int, global_seed: int):
        torch.manual_seed(global_seed)  # whatever ran before in this process
        return local_train(model, layout, start, x, y, cfg, torch.Generator().manual_seed(seed)).params

    # Execute / Assert: the global generator's state does not matter, the client's stream does,
    # and training leaves the global generator where it was
    assert torch.equal(train(1, 0), train(1, 123))
    assert not torch.equal(train(1, 0), train(2, 0))
    torch.manual_seed(5)
    expected = torch.rand(1)
    torch.manual_seed(5)
    local_train(model, layout, start, x, y, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(torch.rand(1), expected)


def test_the_hook_converts_stored_rows_only():
    # Prepare: features of shape (1, 4), normalized by mean 1 and std 2
    spec = InputSpec((1, 4), mean=(1.0,), std=(2.0,))
    module = nn.Identity()
    rows = torch.tensor([[1.0, 3.0, 5.0, 7.0]])
    # Execute / Assert: a stored row is normalized and reshaped; extra arguments pass along
    (out, extra) = spec(module, (rows, "extra"))
    assert out.shape == (1, 1, 4) and out.flatten().tolist() == [0.0, 1.0, 2.0, 3.0]
    # ... an input already in the natural shape, or of another width, is left alone (None: unchanged)
    assert spec(module, (rows.reshape(1, 1, 4),)) is None
    assert spec(module, (torch.zeros(2, 5),)) is None
    assert spec(module, ()) is None and spec(module, ("text",)) is None
    # ... and one-dimensional features are still normalized (their stored and natural shapes agree)
    flat = InputSpec((4,), mean=(1.0,), std=(2.0,))
    assert flat(module, (rows,))[0].tolist() == [[0.0, 1.0, 2.0, 3.0]]


def test_normalization_needs_one_value_or_one_per_channel():
    with pytest.raises(ValueError, match="2 normalization values for 3 channels"):
        InputSpec((3, 1, 1), "image", mean=(0.0, 0.0), std=(1.0, 1.0))
    assert input_spec(nn.Linear(2, 2)) is None


def test_a_padding_of_one_pixel_is_augmentation_and_flips_alone_draw_only_flips():
    assert TrainConfig(crop_padding=1).augments and TrainConfig(hflip=True).augments
    assert not TrainConfig().augments
    # flips only: exactly the flips a fresh generator gives, shifts all zero (nothing drawn for them)
    drawn = augment_params(50, 0, True, torch.Generator().manual_seed(4))
    assert drawn is not None
    assert drawn[:, :2].abs().sum() == 0
    assert torch.equal(drawn[:, 2], torch.randint(0, 2, (50,), generator=torch.Generator().manual_seed(4)))
    shifts = augment_params(50, 3, False, torch.Generator().manual_seed(4))
    assert shifts is not None and shifts[:, 2].abs().sum() == 0
    assert torch.equal(shifts[:, :2], torch.randint(0, 7, (50, 2), generator=torch.Generator().manual_seed(4)))


def test_a_schedule_of_no_clients_has_no_augmentation_rows():
    from sim.backends.schedule import stacked_schedule

    schedule = stacked_schedule([], [], [], TrainConfig(crop_padding=2), seed=0)
    assert schedule.aug is not None and schedule.aug.shape == (0, 3)
    # a client without rows takes no draws; the next client's rows start where they would have
    schedule = stacked_schedule([0, 3], [0, 1], [1, 1], TrainConfig(epochs=2, batch_size=2, hflip=True), seed=0)
    assert schedule.aug_start is not None and schedule.aug_start.tolist() == [0, 0] and len(schedule.aug) == 6


def test_a_shifted_test_set_of_uint8_images_stays_uint8_pixels():
    from sim.merge import shifted_test

    # Prepare: two 1x2x3 uint8 images
    setup = _image_setup(TrainConfig())
    data = dataclasses.replace(
        setup.data,
        x_test=torch.tensor([[10, 20, 30, 40, 50, 60], [1, 2, 3, 4, 5, 6]], dtype=torch.uint8),
        input_shape=(1, 2, 3),
    )
    # Execute: one pixel to the right, no noise
    shifted = shifted_test(data, noise=0.0, pixels=1)
    # Assert: still stored pixels (the model's input hook scales them), moved by hand
    assert shifted.dtype == torch.uint8
    assert shifted.tolist() == [[0, 10, 20, 0, 40, 50], [0, 1, 2, 0, 4, 5]]
    # noise is in units of the full range: 0.5 of it moves pixels by about 128 levels
    noisy = shifted_test(data, noise=0.5, pixels=0)
    assert noisy.dtype == torch.uint8 and (noisy.float() - data.x_test.float()).abs().max() > 60
