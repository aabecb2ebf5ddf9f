"""MNIST-1D (Greydanus 2020, "Scaling down deep learning"): a real benchmark generated in code, no download.

Each example is one of ten hand-made 1-D digit templates (12 points) put through the paper's random
transformations: padded with 36-60 zeros, dilated, scaled, translated, correlated noise where the
signal is zero plus i.i.d. noise, sheared, and resampled to 40 points; the whole set is then shuffled,
centred and scaled to unit variance, and its last ``test_fraction`` becomes the test set. With the
default settings (5,000 examples, seed 42) it is the published benchmark: 4,000 training and 1,000
test rows, 10 classes, where logistic regression reaches ~32 % and an MLP ~68 % test accuracy.

The ``mnist1d`` package's ``make_dataset`` does the same, but importing the package imports
``matplotlib.pyplot`` and ``requests`` and it reseeds numpy's and Python's *global* random state.
This module follows its code step for step with a private ``RandomState(seed)`` (the same stream as
``np.random.seed(seed)`` followed by the global functions), so the rows are bit-identical to
``mnist1d.make_dataset`` (checked against mnist1d 0.0.2.post1) without those side effects.
"""

from __future__ import annotations

import numpy as np

from ..validation import integer, optional_integer
from .inputs import InputSpec
from .pool import Pool, carve_splits

DEFAULTS = {
    "num_samples": 5000,
    "test_fraction": 0.2,
    "val_fraction": 0.1,
    "generation_seed": 42,
    "data_seed": None,
    "train_classes": None,
}
NUM_CLASSES = 10
LENGTH = 40  # final_seq_length
MAX_SAMPLES = 10_000_000  # ~1 ms per example to generate: beyond this, hours
# The package's get_dataset_args() apart from num_samples, train_split and seed.
TEMPLATE_LEN, PADDING, SCALE_COEFF, MAX_TRANSLATION = 12, (36, 60), 0.4, 48
CORR_NOISE_SCALE, IID_NOISE_SCALE, SHEAR_SCALE = 0.25, 2e-2, 0.75


def check_config(ds: dict) -> None:
    """Every setting checked before anything is generated (fractions are checked by the caller)."""
    integer("dataset.num_samples", ds.get("num_samples"), NUM_CLASSES, MAX_SAMPLES)
    if ds.get("generation_seed") is not None:
        integer(
            "dataset.generation_seed",
            ds["generation_seed"],
            0,
            2**32 - 1,
            allowed="null (from data_seed or the run seed) or an integer in [0, 2**32 - 1]; 42 is the benchmark",
        )
    optional_integer("dataset.data_seed", ds.get("data_seed"), 0, "the run seed")


def templates() -> np.ndarray:
    """The ten 12-point digit templates, whitened and shifted to start at 0, divided by 6 ([10, 12])."""
    digits = np.asarray(
        [
            [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
            [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
            [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
            [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
            [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
            [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
            [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
            [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
            [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
            [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
        ]
    )
    digits -= digits.mean(1, keepdims=True)
    digits /= digits.std(1, keepdims=True)
    digits -= digits[:, :1]
    return digits / 6.0


def _resample(x: np.ndarray, n: int) -> np.ndarray:
    """Linear interpolation of ``x`` onto ``n`` evenly spaced points (the package's ``interpolate``)."""
    from scipy.interpolate import interp1d

    return interp1d(np.linspace(0, 1, len(x)), x, axis=0, kind="linear")(np.linspace(0, 1, n))


def _transform(template: np.ndarray, rng: np.random.RandomState, eps: float = 1e-8) -> np.ndarray:
    """One random example from one template, drawing from ``rng`` in the package's order."""
    from scipy.ndimage import gaussian_filter

    low, high = PADDING
    pad = low + int(rng.rand() * (high - low + 1))
    x = _resample(np.concatenate([template + eps, np.zeros(pad)]), TEMPLATE_LEN + high)
    x *= 1 + SCALE_COEFF * (rng.rand() - 0.5)
    k = rng.choice(MAX_TRANSLATION)
    x = np.concatenate([x[-k:], x[:-k]])
    mask = x != 0
    x = mask * x + (1 - mask) * gaussian_filter(CORR_NOISE_SCALE * rng.randn(*x.shape), 2)
    x = x + IID_NOISE_SCALE * rng.randn(*x.shape)
    x = x - SHEAR_SCALE * (rng.rand() - 0.5) * np.linspace(-0.5, 0.5, len(x))
    return _resample(x, LENGTH)


def generate(num_samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """All ``(num_samples // 10) * 10`` examples, shuffled and standardized, as ``mnist1d.make_dataset``
    builds them before its train/test cut: ``x [N, 40]`` float64, ``y [N]`` int64."""
    rng = np.random.RandomState(seed)
    shapes = templates()
    per_class = num_samples // NUM_CLASSES
    xs = [_transform(shapes[label], rng) for label in range(NUM_CLASSES) for _ in range(per_class)]
    ys = np.repeat(np.arange(NUM_CLASSES, dtype=np.int64), per_class)
    shuffle = rng.permutation(len(ys))
    x, y = np.stack(xs)[shuffle], ys[shuffle]
    return (x - x.mean()) / x.std(), y


def load_pool(ds: dict, num_clients: int, seed: int) -> Pool:
    """The benchmark's rows; test = the last ``test_fraction`` (as the package cuts), then a stratified
    ``val_fraction`` of the training rows for the server. ``num_clients`` does not change the data."""
    data_seed = seed if ds["data_seed"] is None else int(ds["data_seed"])
    gen_seed = ds["generation_seed"]
    if gen_seed is None:
        from ..seeding import derived_seed

        gen_seed = derived_seed(data_seed, "data", "mnist1d") % 2**32
    x, y = generate(int(ds["num_samples"]), int(gen_seed))
    cut = int(len(y) * (1 - ds["test_fraction"]))
    parts = carve_splits(
        x[:cut].astype(np.float32),
        y[:cut],
        None,
        val_fraction=ds["val_fraction"],
        test_fraction=None,
        rng_key=("data", "mnist1d"),
        seed=data_seed,
    )
    parts["x_test"], parts["y_test"] = x[cut:].astype(np.float32), y[cut:]
    shape = (1, LENGTH)
    return Pool(
        **parts, num_classes=NUM_CLASSES, input_shape=shape, name="mnist1d", inputs=InputSpec(shape, kind="float")
    )
