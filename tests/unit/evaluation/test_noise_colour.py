"""The demo's noise and colour statistics against scipy / numpy and closed forms, and the labelled grid."""

import random

import numpy as np
import pytest
import scipy.ndimage
import torch

from zsnr.data.synthetic import render
from zsnr.evaluation.colour import channel_spread, colour_agreement, mean_rgb_offset
from zsnr.evaluation.images import labelled_grid, make_grid
from zsnr.evaluation.noise import median_filter3, median_residual


def test_median_filter_matches_scipy_nearest_borders():
    x = torch.rand(3, 3, 11, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = scipy.ndimage.median_filter(x.numpy(), size=(1, 1, 3, 3), mode="nearest")
    assert torch.equal(median_filter3(x), torch.from_numpy(expected))


def test_median_residual_matches_numpy_on_uint8():
    x = torch.randint(0, 256, (4, 3, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    f = x.double().numpy() / 255
    expected = np.abs(f - scipy.ndimage.median_filter(f, size=(1, 1, 3, 3), mode="nearest")).mean(
        axis=(1, 2, 3)
    )
    assert torch.allclose(median_residual(x), torch.from_numpy(expected), rtol=0, atol=1e-15)
    assert torch.allclose(median_residual(x.double() / 255), median_residual(x), rtol=0, atol=1e-15)


def test_flat_colours_and_solid_shapes_are_clean_and_uniform_noise_is_not():
    flat = torch.full((2, 3, 32, 32), 77, dtype=torch.uint8)
    assert median_residual(flat).tolist() == [0.0, 0.0]
    # the synthetic set's circles, squares and triangles on a background: a median filter keeps them
    shapes = []
    for i in range(200):
        image, _, what = render(random.Random(i), 32)
        if what["shape"] in ("circle", "square", "triangle"):
            shapes.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
    assert median_residual(torch.stack(shapes)).median() < 0.01
    # independent uniform pixels: U is equally likely to be any of the 9 order statistics of its window, whose
    # means are r / 10, so E|U - median| = sum_r |r - 5| / 90 = 2/9 (interior pixels: borders repeat values)
    u = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    interior = (u - median_filter3(u))[..., 1:-1, 1:-1].abs().mean().item()
    assert interior == pytest.approx(2 / 9, abs=0.006)
    assert median_residual(u).median() > 0.2


def test_median_residual_refuses_minus_one_to_one_images():
    with pytest.raises(ValueError, match=r"\(x \+ 1\) / 2"):
        median_residual(torch.full((1, 3, 4, 4), -1.0))


def _solid(rgb, n=2):
    return torch.tensor(rgb, dtype=torch.uint8).view(1, 3, 1, 1).expand(n, 3, 8, 8).contiguous()


def test_mean_rgb_offset_and_agreement_closed_forms():
    red = _solid((220, 20, 20))
    assert torch.allclose(mean_rgb_offset(red), torch.tensor([220, 20, 20]).double() / 127.5 - 1)
    pure, anti = _solid((255, 0, 0)), _solid((0, 255, 255))
    assert colour_agreement(pure, anti) == pytest.approx(-1.0, abs=1e-12)  # opposite sides of grey
    assert colour_agreement(_solid((191, 64, 64)), pure) == pytest.approx(1.0, abs=1e-12)  # same direction
    # half the pixels red on grey: the same direction, half the length
    half = torch.cat([_solid((255, 0, 0), 1), torch.full((1, 3, 8, 8), 127.5).round().to(torch.uint8)])
    assert colour_agreement(half, pure) > 0.999
    with pytest.raises(ValueError, match="no direction"):
        colour_agreement(pure, torch.cat([_solid((255, 255, 255), 1), _solid((0, 0, 0), 1)]))


def test_channel_spread_closed_forms():
    assert channel_spread(_solid((255, 0, 0))) == pytest.approx(2.0, abs=1e-12)  # pure red
    assert channel_spread(_solid((90, 90, 90))) == 0.0  # any neutral grey
    assert channel_spread(_solid((140, 120, 150))) == pytest.approx(30 / 127.5, abs=1e-12)  # a lilac grey
    # a pink and a green image average to (150, 150, 150) - neutral: the tint of the set, not of its images
    assert channel_spread(torch.cat([_solid((200, 100, 150), 1), _solid((100, 200, 150), 1)])) < 1e-15


def test_labelled_grid_enlarges_with_nearest_neighbour_and_leaves_room_for_labels():
    a = torch.randint(0, 256, (3, 3, 5, 6), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    b = torch.randint(0, 256, (2, 3, 5, 6), generator=torch.Generator().manual_seed(4), dtype=torch.uint8)
    grid = labelled_grid(
        {"first": a, "second": b}, columns=3, scale=4, label_width=50, captions={"first": "x"}
    )
    row = make_grid(a.repeat_interleave(4, 2).repeat_interleave(4, 3), columns=3, padding=3, fill=90)
    assert grid.shape == (3, 2 * row.shape[1], 50 + row.shape[2])
    assert torch.equal(grid[:, : row.shape[1], 50:], row)
    assert torch.equal(grid[:, 3:23, 53:77], a[0].repeat_interleave(4, 1).repeat_interleave(4, 2))
    assert (grid[:, :, :50] < 255).any()  # the labels are drawn
