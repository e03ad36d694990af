"""TTA on segmentation maps: every view, inverted, puts a pixel-wise model's output back on the original pixels.

A 1x1 convolution is equivariant to any permutation or resampling of pixels, so `invert(model(apply(x)))` must give
`model(x)`: exactly for the eight symmetries (integer weights and inputs: no rounding at all), and for scale views
up to the resampling of the image (exact where the map is constant or linear)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from {{ cookiecutter.package_name }}.modeling import tta

D4 = tta.list_tta_views()
SCALES = ["scale_0.5", "scale_2.0"]


def pixel_model(c_in: int = 3, c_out: int = 2) -> nn.Module:
    """A 1x1 convolution with small integer weights: its outputs on integer inputs are exact in float32."""
    conv = nn.Conv2d(c_in, c_out, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(c_out * c_in, dtype=torch.float32).view(c_out, c_in, 1, 1) - 2)
        conv.bias.copy_(torch.arange(c_out, dtype=torch.float32))
    return conv.eval()


def integer_image(h: int, w: int, n: int = 2, c: int = 3) -> torch.Tensor:
    # every pixel distinct and integer-valued: any misplaced pixel shows, and the 1x1 conv stays exact
    return torch.arange(n * c * h * w, dtype=torch.float32).view(n, c, h, w) % 97


def smooth_image(h: int, w: int, n: int = 2, c: int = 3) -> torch.Tensor:
    """Linear in x and y: bilinear resampling reproduces it exactly away from the border."""
    yy = torch.linspace(0, 1, h).view(1, 1, h, 1)
    xx = torch.linspace(0, 1, w).view(1, 1, 1, w)
    k = torch.arange(1, c + 1, dtype=torch.float32).view(1, c, 1, 1)
    return (k * yy + (c + 1 - k) * xx).expand(n, c, h, w).contiguous()


@pytest.mark.parametrize("name", D4)
@pytest.mark.parametrize("hw", [(8, 12), (10, 10)])
def test_d4_views_invert_a_pixelwise_model_exactly(name, hw):
    """Non-square inputs too: rot90 / transpose / transverse swap H and W, and invert swaps them back."""
    view, model, x = tta.get_view(name), pixel_model(), integer_image(*hw)
    with torch.no_grad():
        seen = model(view.apply(x))
        assert torch.equal(view.invert(seen, hw), model(x))
        assert torch.equal(view.invert(seen), model(x))  # D4 views need no size


@pytest.mark.parametrize("name", D4)
def test_d4_views_round_trip_a_mask_batch(name):
    """A (N, C, H, W) uint8 mask, H != W: apply then invert is the identity, and the view really moves pixels."""
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(3, 4, 6, 10, generator=g) > 0.5).to(torch.uint8)
    view = tta.get_view(name)
    moved = view.apply(mask)
    assert moved.dtype == torch.uint8
    assert moved.shape[-2:] == ((10, 6) if name in ("rot90", "rot270", "transpose", "transverse") else (6, 10))
    assert torch.equal(view.invert(moved, (6, 10)), mask)
    assert name == "identity" or not torch.equal(moved, mask) or moved.shape != mask.shape


@pytest.mark.parametrize("name", SCALES)
def test_scale_views_invert_a_pixelwise_model(name):
    """On a linear image the resampling is exact except in a border of 1 (scale 2) or 2 (scale 0.5) pixels."""
    view, model, x = tta.get_view(name), pixel_model(), smooth_image(32, 48)
    with torch.no_grad():
        back = view.invert(model(view.apply(x)), (32, 48))
        want = model(x)
    assert back.shape == want.shape
    torch.testing.assert_close(back[..., 2:-2, 2:-2], want[..., 2:-2, 2:-2], atol=1e-4, rtol=0)
    # everywhere, the error stays small compared with the output's range
    assert (back - want).abs().max() < 0.1 * (want.max() - want.min())


@pytest.mark.parametrize("name", SCALES)
def test_scale_views_keep_a_constant_map_and_the_size(name):
    view = tta.get_view(name)
    const = torch.full((2, 3, 20, 28), 0.25)
    out = view.invert(view.apply(const), (20, 28))
    torch.testing.assert_close(out, const)
    odd = torch.rand(1, 2, 21, 30)
    assert view.invert(view.apply(odd), (21, 30)).shape == odd.shape


@pytest.mark.parametrize("k", [2, 3, 4])
def test_shrinking_back_by_an_integer_factor_undoes_a_nearest_upscale_exactly(k):
    """The map a model returns on an upscaled input is brought back by k x k block means: a nearest-neighbour upscale
    of any map comes back (to float rounding of the mean of k * k equal values), and every pixel of a block counts
    (bilinear without antialias reads 1 or 2 pixels of each block and aliases a detailed map)."""
    g = torch.Generator().manual_seed(k)
    y = torch.rand(2, 3, 7, 5, generator=g)
    up = F.interpolate(y, scale_factor=k, mode="nearest")
    view = tta.get_view(f"scale_{k}.0")
    torch.testing.assert_close(view.invert(up, (7, 5)), y, atol=1e-6, rtol=0)
    torch.testing.assert_close(view.invert(up), y, atol=1e-6, rtol=0)  # without the size: the factor undone
    detailed = torch.rand(2, 3, 7 * k, 5 * k, generator=g)
    torch.testing.assert_close(view.invert(detailed, (7, 5)), F.avg_pool2d(detailed, k))


def test_merging_inverted_views_of_a_pixelwise_model_gives_its_output():
    """What predict does per batch: every D4 view through the model, inverted, merged on probabilities."""
    model, x = pixel_model(), integer_image(6, 10)
    with torch.no_grad():
        want = torch.sigmoid(model(x) / 50)
        probs = [tta.get_view(v).invert(torch.sigmoid(model(tta.get_view(v).apply(x)) / 50), (6, 10)) for v in D4]
    for how in tta.MERGES:
        torch.testing.assert_close(tta.merge(probs, how), want)
