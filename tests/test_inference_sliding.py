"""Sliding-window inference, Gaussian blending, TTA and the stitch device, against hand-built values."""
from __future__ import annotations

from types import SimpleNamespace

import math
from dataclasses import replace
from typing import List, Optional, Sequence, Tuple

import pytest
import torch
from torch import nn

from utils.config import InferenceConfig
from utils.inference import (axis_origins, flip_combinations, gaussian_importance_map, predict_probabilities,
                             resolve_stitch_device, sliding_window_probabilities, tile_origins)


def settings(mode: str = "slide", tile: Optional[Tuple[int, int]] = (8, 8), overlap: float = 0.5,
             gaussian: bool = True, tile_batch: int = 4, flips: Sequence[str] = (),
             scales: Sequence[float] = (1.0,), stitch_device: str = "auto") -> InferenceConfig:
    return InferenceConfig(mode=mode, tile=tile, overlap=overlap, gaussian=gaussian, tile_batch=tile_batch,
                           flips=list(flips), scales=list(scales), stitch_device=stitch_device)


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def direct(model: nn.Module, image: torch.Tensor, out_size: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """The reference, computed here without utils.inference: sigmoid (1 channel) or softmax of one forward of
    the whole image, resized bilinearly (align_corners=False) to ``out_size``."""
    with torch.no_grad():
        logits = model(image).float()
    probs = torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
    if out_size is not None:
        probs = torch.nn.functional.interpolate(probs, size=out_size, mode="bilinear", align_corners=False)
    return probs


def pointwise(in_channels: int, out_channels: int) -> nn.Module:
    """A 1x1 convolution with fixed weights: each output pixel depends on its input pixel only."""
    conv = nn.Conv2d(in_channels, out_channels, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.linspace(-1.5, 1.2, out_channels * in_channels).view(out_channels, in_channels, 1, 1))
        conv.bias.copy_(torch.linspace(-0.3, 0.4, out_channels))
    return conv.eval()


class Counter(nn.Module):
    """Logits logit(k / 10) everywhere, k counting the calls: every tile batch gets its own probability."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.full((x.shape[0], 1, *x.shape[-2:]), math.log(self.calls / (10 - self.calls)))


class Ramp(nn.Module):
    """One-channel logits ``a * column + b * row + c`` of the model's own input (not flip-equivariant)."""

    def __init__(self, a: float, b: float = 0.0, c: float = 0.0) -> None:
        super().__init__()
        self.a, self.b, self.c = a, b, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        rows = torch.arange(h, dtype=torch.float32).view(h, 1)
        cols = torch.arange(w, dtype=torch.float32).view(1, w)
        return (self.a * cols + self.b * rows + self.c).expand(x.shape[0], 1, h, w).clone()


class DeepSupervision(nn.Module):
    """Returns [main, auxiliary]; only the first may be used."""

    def __init__(self) -> None:
        super().__init__()
        self.main = pointwise(3, 2)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        main = self.main(x)
        return [main, torch.full_like(main, 50.0)]


# ----------------------------------------------------------------- (c) the Gaussian map


def test_gaussian_map_peaks_at_the_centre_is_symmetric_and_floored() -> None:
    g = gaussian_importance_map((9, 7))
    assert g.shape == (9, 7) and g.dtype == torch.float32
    assert g[4, 3].item() == 1.0 and g.max().item() == 1.0
    assert torch.equal(g, g.flip(0)) and torch.equal(g, g.flip(1))
    # sigma = side / 8 per axis: (4, 0) lies 3 px from the centre column, sigma 7/8.
    assert g[4, 0].item() == pytest.approx(math.exp(-0.5 * (3 / (7 / 8)) ** 2), rel=1e-6)
    assert g[2, 3].item() == pytest.approx(math.exp(-0.5 * (2 / (9 / 8)) ** 2), rel=1e-6)
    assert (g[4, :4].diff() > 0).all() and (g[:5, 3].diff() > 0).all()  # rises towards the centre

    even = gaussian_importance_map((8, 8))  # centre between pixels 3 and 4: a 2x2 plateau of 1
    assert torch.equal(even[3:5, 3:5], torch.ones(2, 2)) and even.max().item() == 1.0
    big = gaussian_importance_map((64, 48), floor=1e-3)
    assert big.min().item() == pytest.approx(1e-3)  # corners: exp(-8)^2 ~ 1e-7 raised to the floor
    assert big[0, 24].item() == pytest.approx(max(1e-3, math.exp(-0.5 * (31.5 / 8) ** 2)), rel=1e-6)


# ----------------------------------------------------------------- (d) tile origins


@pytest.mark.parametrize("size,tile,overlap,expected", [
    (10, 4, 0.5, [0, 2, 4, 6]),            # stride 2, the last one already flush
    (11, 4, 0.5, [0, 2, 4, 6, 7]),         # stride 2, plus one flush with the border
    (11, 5, 0.5, [0, 3, 6]),               # stride round(2.5) = 3: halves round up
    (100, 32, 0.25, [0, 24, 48, 68]),      # stride 24
    (64, 16, 0.0, [0, 16, 32, 48]),        # no overlap: a plain grid
    (10, 5, 0.95, [0, 1, 2, 3, 4, 5]),     # stride never below 1
    (8, 8, 0.5, [0]),                      # exactly one tile
    (5, 8, 0.5, [0]),                      # smaller than the tile: one (padded) tile
])
def test_axis_origins_by_hand(size: int, tile: int, overlap: float, expected: List[int]) -> None:
    assert axis_origins(size, tile, overlap) == expected


def test_tile_origins_cover_every_pixel_and_end_flush() -> None:
    assert tile_origins((6, 11), (4, 5), 0.5) == [(0, 0), (0, 3), (0, 6), (2, 0), (2, 3), (2, 6)]
    for size in (7, 16, 37, 53, 100):
        for tile in (3, 7, 16):
            for overlap in (0.0, 0.3, 0.5, 0.75):
                starts = axis_origins(size, tile, overlap)
                if size < tile:
                    assert starts == [0]
                    continue
                covered = torch.zeros(size, dtype=torch.bool)
                for s in starts:
                    covered[s:s + tile] = True
                assert covered.all(), (size, tile, overlap)
                assert starts[-1] == size - tile and starts == sorted(set(starts))


# ----------------------------------------------------------------- (a) pointwise model: slide == whole


@pytest.mark.parametrize("classes", [1, 3])
@pytest.mark.parametrize("tile,overlap,tile_batch,gaussian", [
    ((16, 16), 0.5, 1, True),
    ((16, 16), 0.5, 3, True),
    ((20, 9), 0.25, 3, True),
    ((11, 24), 0.0, 2, False),
    ((8, 60), 0.75, 5, True),     # wider than the image: padded along the width only
    ((64, 64), 0.5, 1, True),     # larger than the image both ways
])
def test_pointwise_model_slide_equals_whole(classes: int, tile: Tuple[int, int], overlap: float,
                                            tile_batch: int, gaussian: bool) -> None:
    torch.manual_seed(0)
    model = pointwise(3, classes)
    image = torch.randn(2, 3, 37, 53)
    whole = predict_probabilities(model, image)
    slid = predict_probabilities(model, image, settings=settings(tile=tile, overlap=overlap, gaussian=gaussian,
                                                                  tile_batch=tile_batch))
    assert slid.shape == whole.shape == (2, classes, 37, 53) and slid.dtype == torch.float32
    expected = direct(model, image)
    assert torch.allclose(whole, expected, atol=1e-6)
    assert torch.allclose(slid, expected, atol=1e-6)


def test_unet_with_one_tile_the_size_of_the_image_equals_whole() -> None:
    import models  # noqa: F401 - fills the registry
    from utils.registry import MODELS

    torch.manual_seed(0)
    model = MODELS.build("unet", in_channels=3, out_channels=3, base_channels=4, depth=2).eval()
    image = torch.randn(1, 3, 32, 32)
    slid = predict_probabilities(model, image, settings=settings(tile=(32, 32)))
    assert torch.allclose(slid, direct(model, image), atol=1e-6)


def test_list_output_uses_the_main_head() -> None:
    model = DeepSupervision()
    image = torch.randn(1, 3, 19, 23)
    expected = torch.softmax(model.main(image), dim=1)
    slid = predict_probabilities(model, image, settings=settings(tile=(8, 8), flips=["h"]))
    assert torch.allclose(slid, expected, atol=1e-6)
    assert torch.allclose(predict_probabilities(model, image), expected, atol=1e-6)


# ----------------------------------------------------------------- (b) position-dependent models, by hand


def test_counter_model_with_uniform_weights_averages_the_covering_tiles() -> None:
    # W = 10, tile 4, overlap 0.5: tiles start at x = 0, 2, 4, 6 (one row of tiles, H = tile).
    image = torch.zeros(1, 1, 4, 10)
    s = settings(tile=(4, 4), gaussian=False, tile_batch=1)
    row = predict_probabilities(Counter(), image, settings=s)[0, 0, 0]
    # tile_batch 1: tile t gets probability t/10; pixel pairs are covered by tiles {1}, {1,2}, {2,3}, {3,4}, {4}.
    expected = [0.1, 0.1, 0.15, 0.15, 0.25, 0.25, 0.35, 0.35, 0.4, 0.4]
    assert row.tolist() == pytest.approx(expected, abs=1e-6)

    # Two images, tile_batch 3: the 8 tiles (image 0's four, then image 1's) run as [3, 3, 2]
    # and get 0.1 0.1 0.1 | 0.2 0.2 0.2 | 0.3 0.3, so image 0's tiles hold .1 .1 .1 .2, image 1's .2 .2 .3 .3.
    out = predict_probabilities(Counter(), torch.zeros(2, 1, 4, 10), settings=replace(s, tile_batch=3))
    assert out[0, 0, 0].tolist() == pytest.approx([.1, .1, .1, .1, .1, .1, .15, .15, .2, .2], abs=1e-6)
    assert out[1, 0, 0].tolist() == pytest.approx([.2, .2, .2, .2, .25, .25, .3, .3, .3, .3], abs=1e-6)
    assert torch.equal(out[:, :, 0], out[:, :, 3])  # constant down each column


def test_column_ramp_is_blended_with_the_gaussian_weights() -> None:
    # 12 x 12 image, tile 8, overlap 0.5: tiles at (0, 0), (0, 4), (4, 0), (4, 4).
    # Each tile predicts sigmoid(0.25 * column_in_tile - 1); weight exp(-(d/sigma)^2 / 2) per axis,
    # d measured from 3.5, sigma = 8/8 = 1, divided by its peak exp(-0.125)^2 and floored at 1e-3.
    def weight(r: int, c: int) -> float:
        peak = math.exp(-0.5 * 0.25) ** 2
        return max(1e-3, math.exp(-0.5 * (r - 3.5) ** 2) * math.exp(-0.5 * (c - 3.5) ** 2) / peak)

    origins = [(0, 0), (0, 4), (4, 0), (4, 4)]

    def expected(y: int, x: int) -> float:
        num = den = 0.0
        for ty, tx in origins:
            if ty <= y < ty + 8 and tx <= x < tx + 8:
                w = weight(y - ty, x - tx)
                num += w * sigmoid(0.25 * (x - tx) - 1)
                den += w
        return num / den

    out = predict_probabilities(Ramp(0.25, c=-1.0), torch.zeros(1, 3, 12, 12), settings=settings(tile=(8, 8)))
    for y, x in [(5, 5), (2, 6), (6, 2), (7, 4), (10, 1), (1, 10), (4, 7)]:
        assert out[0, 0, y, x].item() == pytest.approx(expected(y, x), rel=1e-5), (y, x)
    # Without the Gaussian, (2, 6) is the plain mean of its two tiles' columns 6 and 2.
    flat = predict_probabilities(Ramp(0.25, c=-1.0), torch.zeros(1, 3, 12, 12),
                                 settings=settings(tile=(8, 8), gaussian=False))
    assert flat[0, 0, 2, 6].item() == pytest.approx((sigmoid(0.5) + sigmoid(-0.5)) / 2, rel=1e-6)


# ----------------------------------------------------------------- (e, f) test-time augmentation


def test_flip_combinations() -> None:
    assert flip_combinations([]) == [()]
    assert flip_combinations(["h"]) == [(), (-1,)]
    assert flip_combinations(["v", "v"]) == [(), (-2,)]
    assert flip_combinations(["h", "v"]) == [(), (-1,), (-2,), (-1, -2)]
    with pytest.raises(ValueError, match="unknown flip 'x'"):
        flip_combinations(["x"])


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_flip_tta_averages_the_unflipped_passes(mode: str) -> None:
    h, w = 5, 7
    a, b, c = 0.4, -0.3, 0.2
    model = Ramp(a, b, c)
    image = torch.zeros(1, 3, h, w)
    tile = (h, w)  # one tile: the window reproduces the ramp of the whole image

    def r(y: int, x: int) -> float:
        return sigmoid(a * x + b * y + c)

    only_h = predict_probabilities(model, image, settings=settings(mode=mode, tile=tile, flips=["h"]))
    both = predict_probabilities(model, image, settings=settings(mode=mode, tile=tile, flips=["h", "v"]))
    for y in range(h):
        for x in range(w):
            # The flipped pass sees column w-1-x where pixel x lies; un-flipped it lands back on x.
            assert only_h[0, 0, y, x].item() == pytest.approx((r(y, x) + r(y, w - 1 - x)) / 2, rel=1e-6)
            four = (r(y, x) + r(y, w - 1 - x) + r(h - 1 - y, x) + r(h - 1 - y, w - 1 - x)) / 4
            assert both[0, 0, y, x].item() == pytest.approx(four, rel=1e-6)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_flips_leave_a_flip_equivariant_model_unchanged(mode: str) -> None:
    torch.manual_seed(1)
    model = pointwise(3, 4)
    image = torch.randn(2, 3, 21, 30)
    tta = predict_probabilities(model, image, settings=settings(mode=mode, tile=(16, 16), flips=["h", "v"]))
    assert torch.allclose(tta, direct(model, image), atol=1e-6)


def test_scale_one_equals_plain() -> None:
    torch.manual_seed(2)
    model = pointwise(3, 3)
    image = torch.randn(1, 3, 17, 26)
    plain = direct(model, image)
    once = predict_probabilities(model, image, settings=settings(mode="whole", scales=[1.0]))
    assert torch.allclose(once, plain, atol=1e-6)
    twice = predict_probabilities(model, image, settings=settings(mode="whole", scales=[1.0, 1.0]))
    assert torch.allclose(twice, plain, atol=1e-6)  # two identical passes averaged
    slid = predict_probabilities(model, image, settings=settings(tile=(8, 8), scales=[1.0]))
    assert torch.allclose(slid, plain, atol=1e-6)


def test_scales_resize_the_probabilities_back_and_average_them() -> None:
    # A constant image stays constant at any scale: a pointwise model gives the plain answer.
    model = pointwise(3, 3)
    image = torch.ones(1, 3, 15, 22) * torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)
    plain = direct(model, image)
    for mode in ("whole", "slide"):
        multi = predict_probabilities(model, image, settings=settings(mode=mode, scales=[0.5, 1.0, 1.5]))
        assert multi.shape == plain.shape and torch.allclose(multi, plain, atol=1e-6)
    # Scale 2 on a column ramp: the 2x-wide prediction is resized back by bilinear (align_corners=False),
    # which puts output column x halfway between columns 2x and 2x+1; the average is over probabilities.
    a = 0.3
    out = predict_probabilities(Ramp(a), torch.zeros(1, 3, 4, 6), settings=settings(mode="whole", scales=[1.0, 2.0]))
    for x in range(6):
        at_two = (sigmoid(a * 2 * x) + sigmoid(a * (2 * x + 1))) / 2
        assert out[0, 0, 1, x].item() == pytest.approx((sigmoid(a * x) + at_two) / 2, rel=1e-6)


# ----------------------------------------------------------------- (g) stitch device


def test_stitch_on_cpu_matches_stitch_on_the_device() -> None:
    torch.manual_seed(3)
    model = pointwise(3, 3)
    image = torch.randn(1, 3, 29, 31)
    outs = [predict_probabilities(model, image, settings=settings(tile=(12, 12), flips=["h"], stitch_device=s))
            for s in ("cpu", "device", "auto")]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert torch.allclose(outs[0], direct(model, image), atol=1e-6)  # pointwise: flips and tiles change nothing
    window = sliding_window_probabilities(model, image, 12, overlap=0.5, stitch_device="cpu")
    assert torch.allclose(window, outs[0], atol=1e-6)


def test_auto_stitch_rule() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_stitch_device("cpu", cuda, 1, free_bytes=10 ** 9) == cpu
    assert resolve_stitch_device("device", cuda, 10 ** 12, free_bytes=1) == cuda
    assert resolve_stitch_device("auto", cpu, 10 ** 12) == cpu  # on the CPU the device is the CPU
    assert resolve_stitch_device("device", cpu, 1) == cpu
    # auto: the CPU once the buffers need more than half of the free CUDA memory.
    assert resolve_stitch_device("auto", cuda, 500, free_bytes=1000) == cuda
    assert resolve_stitch_device("auto", cuda, 501, free_bytes=1000) == cpu
    with pytest.raises(ValueError, match="stitch_device"):
        resolve_stitch_device("gpu", cuda, 1)


def test_auto_stitch_queries_free_cuda_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    # Free = driver free 1000 + cached-but-unused (reserved 300 - allocated 100) = 1200; half is 600.
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 8000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 300)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 100)
    cuda = torch.device("cuda", 0)
    assert resolve_stitch_device("auto", cuda, 600) == cuda
    assert resolve_stitch_device("auto", cuda, 601) == torch.device("cpu")


# ----------------------------------------------------------------- (h) output size, plain path, errors


@pytest.mark.parametrize("out_size", [(13, 29), (50, 3), (20, 24)])
def test_out_size_is_restored_exactly(out_size: Tuple[int, int]) -> None:
    model = pointwise(3, 3)
    image = torch.ones(2, 3, 20, 24)
    expected = direct(model, image)[:, :, :1, :1]  # a constant image: the same probabilities everywhere
    for s in (settings(tile=(8, 16)), settings(mode="whole", flips=["h"], scales=[0.75, 1.0])):
        out = predict_probabilities(model, image, out_size=out_size, settings=s)
        assert out.shape == (2, 3, *out_size) and out.dtype == torch.float32
        assert torch.allclose(out, expected.expand_as(out), atol=1e-6)


@pytest.mark.parametrize("classes", [1, 2])
def test_whole_without_tta_is_the_plain_forward(classes: int) -> None:
    torch.manual_seed(4)
    model = pointwise(3, classes)
    image = torch.randn(1, 3, 9, 11)
    for s in (None, settings(mode="whole", tile=None)):
        assert torch.allclose(predict_probabilities(model, image, settings=s), direct(model, image), atol=1e-6)
        resized = predict_probabilities(model, image, out_size=(12, 5), settings=s)
        assert resized.shape == (1, classes, 12, 5)
        assert torch.allclose(resized, direct(model, image, out_size=(12, 5)), atol=1e-6)


def test_window_stitches_tiles_with_gaussian_weights_by_hand() -> None:
    # A 3-class pointwise model on a 1 x 6 image, tile 1 x 4, overlap 0.5: tiles at x = 0 and 2.
    # Each pixel's probabilities are the softmax of its own logits, whatever tile predicts them, so the
    # blend of the two tiles over x = 2, 3 must give them back whatever the weights; the weights are
    # checked through a model whose logits depend on the position inside the tile (see Ramp below).
    torch.manual_seed(6)
    model = pointwise(3, 3)
    image = torch.randn(1, 3, 1, 6)
    out = predict_probabilities(model, image, settings=settings(tile=(1, 4), tile_batch=1))
    with torch.no_grad():
        logits = model(image)
    for x in range(6):
        assert out[0, :, 0, x].tolist() == pytest.approx(torch.softmax(logits[0, :, 0, x], 0).tolist(), abs=1e-6)
    # Ramp(1): logit = column inside the tile. Tile weights along the width (sigma 4/8, centre 1.5),
    # over their peak exp(-0.5): w(c) = exp(-0.5 * ((c - 1.5) / 0.5) ** 2 + 0.5), at least 1e-3.
    ramp = predict_probabilities(Ramp(1.0), torch.zeros(1, 3, 1, 6), settings=settings(tile=(1, 4)))[0, 0, 0]

    def w(c: int) -> float:
        return max(1e-3, math.exp(-0.5 * ((c - 1.5) / 0.5) ** 2 + 0.5))

    expected = []
    for x in range(6):
        covering = [x - t for t in (0, 2) if 0 <= x - t < 4]  # the pixel's column in each covering tile
        expected.append(sum(w(c) * sigmoid(c) for c in covering) / sum(w(c) for c in covering))
    assert ramp.tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("inference, key", [
    ({"mode": "slide"}, "inference.tile"),
    ({"mode": "slide", "tile": [0, 8]}, "inference.tile"),
    ({"flips": ["d"]}, "inference.flips"),
    ({"mode": "tiles"}, "inference.mode"),
    ({"scales": [0.0, 1.0]}, "inference.scales"),
    ({"tile_batch": 0}, "inference.tile_batch"),
    ({"overlap": 1.0}, "inference.overlap"),
])
def test_bad_settings_fail_once_in_the_config_naming_the_key(inference: dict, key: str) -> None:
    """Inference settings are checked in one place, the config; predict_probabilities trusts them."""
    from tests.conftest import minimal_config
    from utils.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict(minimal_config("unused", inference=inference), check_paths=False)


# ----------------------------------------------------------------- test.py


class ShapeRecorder(nn.Module):
    """A pointwise model that records the spatial size of every input it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = pointwise(3, 3)
        self.sizes: List[Tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        return self.conv(x)


def test_test_py_predict_runs_the_configured_sliding_window() -> None:
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("seg_test_script_sliding", Path(__file__).parents[1] / "test.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    torch.manual_seed(5)
    image = torch.randn(3, 18, 22)
    model = ShapeRecorder()
    cpu = torch.device("cpu")
    def cfg(inference):  # what predict reads of a config
        return SimpleNamespace(inference=inference, model=SimpleNamespace(threshold=0.5),
                               train=SimpleNamespace(amp="off"))

    whole = script.predict(model, image, lambda img, mask: (img, mask), cfg(None), cpu)
    assert model.sizes == [(18, 22)]
    model.sizes.clear()
    slid = script.predict(model, image, lambda img, mask: (img, mask),
                          cfg(settings(tile=(8, 8), tile_batch=4, flips=["h"])), cpu)
    assert set(model.sizes) == {(8, 8)} and len(model.sizes) == 2 * 5  # 4 x 5 tiles, 2 flips, batches of 4
    expected = direct(model.conv, image[None])[0].argmax(0).numpy()  # 3 classes: the argmax of the softmax
    assert whole.shape == slid.shape == (18, 22)
    assert (whole == expected).all() and (slid == expected).all()
