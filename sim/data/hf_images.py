"""Decoding an image column of a Hugging Face data set once, into flat uint8 rows.

Images are stored as decoded uint8 pixels ``[N, C * H * W]`` (channels first when flattened), so
CIFAR-10's 50,000 training images take 150 MB and never exist as floats; the model's input hook
scales and normalizes each batch on the fly. The column is read in Arrow batches of encoded bytes
(or file paths, as ``imagefolder`` stores them) and each image is decoded by PIL straight into its
row of the preallocated array, so peak memory is the array plus one batch of encoded images.
Grayscale images give ``C = 1`` and every other mode (RGBA, palette, CMYK, ...) is converted to RGB;
one color image among grayscale ones makes the whole column RGB.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from ..errors import ConfigError
from .hf_columns import IMAGE_FIX

#: PIL modes with one channel of meaning (LA: gray plus alpha, which is dropped)
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
BATCH_ROWS = 1024


class _NeedsColor(Exception):
    """A color image turned up after grayscale ones: decode the column again as RGB."""


def _open(cell: dict, column: str, split: str, row: int):
    from PIL import Image, UnidentifiedImageError

    data, path = cell.get("bytes"), cell.get("path")
    try:
        if data is not None:
            return Image.open(io.BytesIO(data))
        if path:
            return Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise ConfigError(
            "dataset.features",
            column,
            "a column of images that PIL can read",
            f"Row {row} of split {split} is not a readable image: {err}",
        ) from None
    raise ConfigError("dataset.features", column, "a column of images", f"Row {row} of split {split} has no image.")


def _batches(dataset, column: str):
    """Cells ``{"bytes", "path"}`` of the column, a batch at a time, without decoding anything."""
    import pyarrow as pa

    for table in dataset.select_columns([column]).with_format("arrow").iter(batch_size=BATCH_ROWS):
        cells = table.column(0)
        if not pa.types.is_struct(cells.type):
            raise ConfigError(
                "dataset.features",
                column,
                "a column of images",
                f"Its Arrow type is {cells.type}, not image bytes. {IMAGE_FIX}",
            )
        yield cells.to_pylist()


def _size_error(column: str, split: str, size: tuple[int, int], sizes: dict[tuple[int, int], int]) -> ConfigError:
    seen = ", ".join(f"{w}x{h} ({n} images)" for (w, h), n in sorted(sizes.items(), key=lambda kv: -kv[1])[:6])
    return ConfigError(
        "dataset.features",
        column,
        "images that all have one size",
        f"The first training image is {size[0]}x{size[1]} (width x height); split {split} holds: {seen}. "
        "Resize them to one size "
        "first (e.g. dataset.map with PIL's resize, then save_to_disk).",
    )


def _decode(dataset, rows: np.ndarray | None, column: str, split: str, size: tuple[int, int], mode: str) -> np.ndarray:
    width, height = size
    channels = 1 if mode == "L" else 3
    out = np.empty((len(dataset), channels * height * width), dtype=np.uint8)
    sizes: dict[tuple[int, int], int] = {}
    row = 0
    for cells in _batches(dataset, column):
        for cell in cells:
            image = _open(cell or {}, column, split, row if rows is None else int(rows[row]))
            sizes[image.size] = sizes.get(image.size, 0) + 1
            if image.size != size:
                row += 1
                continue  # counted; reported once the whole split has been seen
            if mode == "L" and image.mode not in GRAY_MODES:
                raise _NeedsColor
            pixels = np.asarray(image.convert(mode) if image.mode != mode else image, dtype=np.uint8)
            out[row] = (pixels if channels == 1 else pixels.transpose(2, 0, 1)).reshape(-1)
            row += 1
    if sizes and set(sizes) != {size}:
        raise _size_error(column, split, size, sizes)
    return out


def first_image(dataset, column: str, split: str) -> tuple[tuple[int, int], str]:
    """``((width, height), PIL mode)`` of the first image, which sets the size every image must have."""
    for cells in _batches(dataset, column):
        if cells:
            image = _open(cells[0] or {}, column, split, 0)
            return image.size, image.mode
    raise ConfigError("dataset.split", split, "a split with at least one row", f"Split {split} is empty.")


def decode_image_splits(
    parts: list[tuple[str, Any, np.ndarray | None]], column: str
) -> tuple[list[np.ndarray], tuple[int, int, int]]:
    """Each part's images as ``[N, C*H*W]`` uint8 and the common ``(C, H, W)``.

    ``parts`` are ``(split name, Dataset, row numbers in the split for messages or None)``. Every
    image must have the size of the first image of the first part; the channel count is 1 when
    every image is grayscale and 3 otherwise.
    """
    size, first_mode = first_image(parts[0][1], column, parts[0][0])
    mode = "L" if first_mode in GRAY_MODES else "RGB"
    while True:
        try:
            arrays = [_decode(dataset, rows, column, split, size, mode) for split, dataset, rows in parts]
            break
        except _NeedsColor:
            mode = "RGB"
    channels = 1 if mode == "L" else 3
    return arrays, (channels, size[1], size[0])


def channel_stats(x: np.ndarray, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 rows scaled to [0, 1], exact and without a float copy.

    A 256-bin histogram per channel (accumulated over row chunks) gives the sums of values and
    of squares exactly. A channel with no spread gets std 1, so normalizing never divides by 0.
    """
    if len(x) == 0:
        return (0.0,) * channels, (1.0,) * channels
    counts = np.zeros((channels, 256), dtype=np.int64)
    per_channel = x.shape[1] // channels
    for lo in range(0, len(x), 4096):
        chunk = x[lo : lo + 4096].reshape(-1, channels, per_channel)
        for c in range(channels):
            counts[c] += np.bincount(chunk[:, c, :].ravel(), minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum(axis=1)
    mean = counts @ values / total
    var = np.maximum(counts @ values**2 / total - mean**2, 0.0)
    std = np.where(var > 0, np.sqrt(var), 1.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
