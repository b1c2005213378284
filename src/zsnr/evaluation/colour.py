"""Does a model follow a prompt's colour? The direction of an image set's mean colour away from grey.

The zero-SNR fix is about brightness; a prompt that names a mid-brightness colour ("a red background",
"a green circle on a gray background") tests the rest of the conditioning. An image set's mean RGB offset from
mid-grey, compared by cosine with the same offset of the training images with that caption, is 1 when the
samples lean the data's way, 0 when they are colourless, negative when they lean the other way.
"""

from __future__ import annotations

import torch

__all__ = ["colour_agreement", "mean_rgb_offset"]


def mean_rgb_offset(images: torch.Tensor) -> torch.Tensor:
    """uint8 images [N, 3, H, W] -> float64 [3]: the mean R, G, B over all images and pixels, in [-1, 1]
    units, minus mid-grey (127.5, i.e. 0)."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(
            f"mean_rgb_offset takes uint8 RGB images [N, 3, H, W], got {images.dtype} {tuple(images.shape)}"
        )
    return (images.double() / 127.5 - 1.0).mean(dim=(0, 2, 3))


def channel_spread(images: torch.Tensor) -> float:
    """The tint of a uint8 image set: its largest mean channel minus its smallest ([-1, 1] units; 0 for a
    neutral grey on average, 2 for pure red). For sets whose captions ask for grey, where colour_agreement
    has no direction to compare."""
    offset = mean_rgb_offset(images)
    return float(offset.max() - offset.min())


def colour_agreement(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Cosine between the mean RGB offsets from grey of `samples` and `reference` (uint8 image sets)."""
    a, b = mean_rgb_offset(samples), mean_rgb_offset(reference)
    if b.norm() == 0:
        raise ValueError("the reference images average to exactly mid-grey: their colour has no direction")
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))
