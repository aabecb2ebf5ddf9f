"""Image augmentation in training: random crop with zero padding and horizontal flip.

The usual CIFAR recipe (``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``), applied to stored
rows before they become model inputs, so the padding is black pixels as with torchvision's PIL
pipeline. The random choices are drawn per client and round from the client's own training
generator, right after its batch schedule (:func:`augment_params`), one ``(dy, dx, flip)`` per row
in the order the schedule visits rows. Every backend draws them with that one function and applies
them with :func:`augment_rows`, which is plain tensor indexing over any number of leading
dimensions, so the sequential reference, the vectorized backend (all clients of a step at once)
and Ray actors see the same pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def augments(crop_padding: int, hflip: bool) -> bool:
    return crop_padding > 0 or hflip


def augment_params(num_rows: int, crop_padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor | None:
    """``[num_rows, 3]`` int64 ``(dy, dx, flip)`` per scheduled row, or None without augmentation.

    Offsets are in ``0..2 * crop_padding`` (the crop's corner in the padded image; ``padding`` is
    the unshifted crop). Shifts are drawn before flips and only what is switched on is drawn, so a
    run without augmentation consumes nothing from the generator.
    """
    if not augments(crop_padding, hflip):
        return None
    params = torch.zeros((num_rows, 3), dtype=torch.long)
    if crop_padding > 0:
        params[:, :2] = torch.randint(0, 2 * crop_padding + 1, (num_rows, 2), generator=generator)
    if hflip:
        params[:, 2] = torch.randint(0, 2, (num_rows,), generator=generator)
    return params


def augment_rows(rows: torch.Tensor, params: torch.Tensor, shape: Sequence[int], crop_padding: int) -> torch.Tensor:
    """Crop and flip stored image rows ``[..., C*H*W]`` by ``params [..., 3]``; same shape and dtype."""
    c, h, w = (int(d) for d in shape)
    lead = rows.shape[:-1]
    images = rows.reshape(-1, c, h, w)
    p = params.reshape(-1, 3)
    n, device = len(images), rows.device  # index tensors built where the rows are (a GPU: no host tensor)
    if crop_padding > 0:
        padded = F.pad(images, (crop_padding,) * 4)
        ys = p[:, 0:1] + torch.arange(h, device=device)  # [n, H] rows of the padded image to keep
        xs = p[:, 1:2] + torch.arange(w, device=device)  # [n, W]
        picked = padded[torch.arange(n, device=device).view(n, 1, 1), :, ys.view(n, h, 1), xs.view(n, 1, w)]
        images = picked.permute(0, 3, 1, 2)
    flip = p[:, 2].view(n, 1, 1, 1).bool()
    images = torch.where(flip, images.flip(-1), images)
    return images.reshape(*lead, c * h * w)
