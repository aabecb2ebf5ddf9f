"""Feature skew: clients whose inputs differ in p(x), not only in their labels.

Label-skew partitions (Dirichlet, shards) change which classes a client sees; a client's digit "3"
still looks like everyone's. Personalization rules such as FedBN (Li et al. 2021) target the other
kind of heterogeneity, where each client's inputs are transformed (another scanner, another camera),
so the data sets here can also be made feature-skewed, in the style of Rotated MNIST (IFCA, Ghosh et
al. 2020): clients are dealt into ``G`` groups by a seeded permutation (balanced: group sizes differ by
at most one) and every training row of a client in group ``g`` gets that group's transform.

- ``rotate``: images are rotated counter-clockwise by ``g * 360 / G`` degrees about their centre
  (bilinear, black outside; multiples of 90 on square images are exact pixel permutations). A 1-D
  signal ``(C, L)`` (MNIST-1D) is rotated circularly: shifted right by ``round(g * L / G)`` positions.
- ``intensity``: image pixels are blended toward white by ``t_g = g / (2 G)``:
  ``x' = (1 - t_g) x + t_g * white`` (white is 1.0 for float images, 255 for uint8 ones).

Group 0 is left unchanged. The transform belongs to the client: it is applied to the client's rows
before anything else splits them, so a local test split carved from them is transformed alike. The
server's validation and test sets are not any client's and keep the untransformed inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from ..seeding import numpy_rng
from ..validation import choice, is_int
from .inputs import InputSpec

FEATURE_SKEWS = ("none", "rotate", "intensity")
#: keys every partition option has (configs/partition/*.yaml declare them too)
FEATURE_SKEW_DEFAULTS: dict[str, Any] = {"feature_skew": "none", "feature_skew_groups": 4}


def check_feature_skew(part: dict) -> None:
    """The data-free checks of ``partition.feature_skew`` and ``partition.feature_skew_groups``."""
    choice("partition.feature_skew", part.get("feature_skew", "none"), FEATURE_SKEWS)
    groups = part.get("feature_skew_groups", FEATURE_SKEW_DEFAULTS["feature_skew_groups"])
    if groups is not None and not (is_int(groups) and groups >= 1):
        raise ConfigError(
            "partition.feature_skew_groups",
            groups,
            "null (one group per client) or an integer >= 1",
            "Clients are dealt into this many groups and group g gets the g-th transform (group 0 none).",
        )


def client_groups(num_clients: int, groups: int | None, seed: int) -> np.ndarray:
    """``[N]`` int64 group of each client: a seeded permutation dealt round-robin into ``groups`` groups."""
    g = num_clients if groups is None else int(groups)
    order = numpy_rng(seed, "feature_skew").permutation(num_clients)
    out = np.empty(num_clients, dtype=np.int64)
    out[order] = np.arange(num_clients) % g
    return out


def _white(rows: np.ndarray) -> float:
    return 255.0 if rows.dtype == np.uint8 else 1.0


def _as_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float results back to the storage dtype (uint8 pixels rounded and clipped)."""
    if dtype == np.uint8:
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return values.astype(dtype)


def rotate_images(rows: np.ndarray, shape: tuple[int, ...], degrees: float) -> np.ndarray:
    """Stored image rows ``[M, C*H*W]`` rotated counter-clockwise by ``degrees`` about the image centre.

    Output pixel ``(r, c)`` takes the bilinear interpolation of the input at the point that the
    rotation carries onto it; points outside the image count as black (0). Multiples of 90 degrees on a
    square image are taken with ``np.rot90`` (an exact permutation, no rounding).
    """
    c, h, w = (int(d) for d in shape)
    images = rows.reshape(len(rows), c, h, w)
    quarter = degrees / 90.0
    if h == w and quarter == int(quarter):
        return np.ascontiguousarray(np.rot90(images, int(quarter) % 4, axes=(2, 3))).reshape(rows.shape)
    theta = np.deg2rad(degrees)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    r, col = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    x, y = col - cx, cy - r  # y points up, so positive angles turn counter-clockwise on screen
    src_col = cx + x * np.cos(theta) + y * np.sin(theta)
    src_row = cy - (-x * np.sin(theta) + y * np.cos(theta))
    r0, c0 = np.floor(src_row), np.floor(src_col)
    flat = images.reshape(len(rows), c, h * w).astype(np.float64)
    out = np.zeros_like(flat)
    for dr, dc in ((0, 0), (0, 1), (1, 0), (1, 1)):
        rr, cc = r0 + dr, c0 + dc
        weight = (1.0 - np.abs(src_row - rr)) * (1.0 - np.abs(src_col - cc))
        inside = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w) & (weight > 0)
        index = (np.where(inside, rr, 0) * w + np.where(inside, cc, 0)).astype(np.int64).ravel()
        out += flat[:, :, index] * np.where(inside, weight, 0.0).ravel()
    return _as_dtype(out, rows.dtype).reshape(rows.shape)


def shift_signals(rows: np.ndarray, shape: tuple[int, ...], positions: int) -> np.ndarray:
    """Stored 1-D signal rows ``[M, C*L]`` shifted circularly right by ``positions`` along ``L``."""
    ch, length = (int(d) for d in shape)
    return np.roll(rows.reshape(len(rows), ch, length), positions, axis=2).reshape(rows.shape)


def blend_toward_white(rows: np.ndarray, t: float) -> np.ndarray:
    """``(1 - t) x + t * white``: lower contrast, brighter background."""
    if t == 0:
        return rows.copy()
    return _as_dtype((1.0 - t) * rows.astype(np.float64) + t * _white(rows), rows.dtype)


def _transform(kind: str, spec: InputSpec) -> str:
    """Which transform applies to these inputs: ``image`` or ``signal``; ConfigError when none does."""
    if spec.kind == "image" and len(spec.shape) == 3:
        return "image"
    if kind == "rotate" and spec.kind == "float" and len(spec.shape) == 2:
        return "signal"
    allowed = "images [C, H, W] or 1-D signals [C, L]" if kind == "rotate" else "images [C, H, W]"
    raise ConfigError(
        "partition.feature_skew",
        kind,
        f"none for this data set ({kind} needs {allowed})",
        f"Its inputs are {spec.kind} of shape {tuple(spec.shape)}.",
    )


def transform_client_rows(rows: np.ndarray, spec: InputSpec, kind: str, group: int, groups: int) -> np.ndarray:
    """One client's stored rows with its group's transform (group 0: unchanged)."""
    how = _transform(kind, spec)
    if group == 0 or kind == "none":
        return rows
    if kind == "intensity":
        return blend_toward_white(rows, group / (2.0 * groups))
    if how == "image":
        return rotate_images(rows, spec.shape, group * 360.0 / groups)
    return shift_signals(rows, spec.shape, int(round(group * int(spec.shape[1]) / groups)))


def apply_feature_skew(x: np.ndarray, offsets: np.ndarray, spec: InputSpec, part: dict, seed: int) -> np.ndarray:
    """Every client's training rows ``x[offsets[k]:offsets[k+1]]`` with its group's transform.

    ``feature_skew: none`` returns ``x`` itself (no copy, every number unchanged).
    """
    kind = part.get("feature_skew", "none")
    if kind == "none":
        return x
    _transform(kind, spec)  # refuse unsuitable inputs even with a single group
    num_clients = len(offsets) - 1
    groups_cfg = part.get("feature_skew_groups", FEATURE_SKEW_DEFAULTS["feature_skew_groups"])
    groups = num_clients if groups_cfg is None else int(groups_cfg)
    group = client_groups(num_clients, groups_cfg, seed)
    out = x.copy()
    for k in range(num_clients):
        lo, hi = int(offsets[k]), int(offsets[k + 1])
        if hi > lo and group[k] != 0:
            out[lo:hi] = transform_client_rows(x[lo:hi], spec, kind, int(group[k]), groups)
    return out
