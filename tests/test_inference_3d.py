"""Sliding window and mirroring TTA over volumes (N, C, Z, Y, X), against hand-built values (nnU-Net's scheme)."""
from __future__ import annotations

import itertools
import math
from typing import List, Optional, Sequence, Tuple, Union

import pytest
import torch
from torch import nn

from utils.config import InferenceConfig
from utils.inference import (flip_combinations, gaussian_importance_map, predict_labels, predict_probabilities,
                             sliding_window_probabilities, tile_origins)


def settings(mode: str = "slide", tile: Optional[Union[int, Tuple[int, ...]]] = (8, 8, 8), overlap: float = 0.5,
             gaussian: bool = True, tile_batch: int = 4, flips: Union[str, Sequence[str]] = (),
             scales: Sequence[float] = (1.0,), stitch_device: str = "auto") -> InferenceConfig:
    return InferenceConfig(mode=mode, tile=tile, overlap=overlap, gaussian=gaussian, tile_batch=tile_batch,
                           flips=flips if isinstance(flips, str) else list(flips), scales=list(scales),
                           stitch_device=stitch_device)


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def direct(model: nn.Module, volume: torch.Tensor) -> torch.Tensor:
    """The reference without utils.inference: sigmoid (1 channel) or softmax of one forward of the whole volume."""
    with torch.no_grad():
        logits = model(volume).float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def pointwise(in_channels: int, out_channels: int) -> nn.Module:
    """A 1x1x1 convolution with fixed weights: each output voxel depends on its input voxel only."""
    conv = nn.Conv3d(in_channels, out_channels, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.linspace(-1.5, 1.2, out_channels * in_channels).view(out_channels, in_channels,
                                                                                       1, 1, 1))
        conv.bias.copy_(torch.linspace(-0.3, 0.4, out_channels))
    return conv.eval()


class Ramp(nn.Module):
    """One-channel logits ``a * x + b * y + c * z + d`` of the position in the model's own input
    (not flip-equivariant); records the spatial size of every input."""

    def __init__(self, a: float, b: float = 0.0, c: float = 0.0, d: float = 0.0) -> None:
        super().__init__()
        self.a, self.b, self.c, self.d = a, b, c, d
        self.sizes: List[Tuple[int, ...]] = []

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(v.shape[2:]))
        z, y, x = (torch.arange(s, dtype=torch.float32) for s in v.shape[2:])
        logits = self.a * x.view(1, 1, -1) + self.b * y.view(1, -1, 1) + self.c * z.view(-1, 1, 1) + self.d
        return logits.expand(v.shape[0], 1, *v.shape[2:]).clone()


# ----------------------------------------------------------------- the Gaussian map


def test_gaussian_map_3d_peaks_at_the_centre_with_sigma_an_eighth_of_each_side() -> None:
    g = gaussian_importance_map((9, 7, 5))
    assert g.shape == (9, 7, 5) and g.dtype == torch.float32
    assert g[4, 3, 2].item() == 1.0 and g.max().item() == 1.0 and g.argmax().item() == (4 * 7 + 3) * 5 + 2
    for axis in range(3):
        assert torch.equal(g, g.flip(axis))
    # (6, 3, 3): 2 voxels from the centre along z (sigma 9/8), 1 along x (sigma 5/8).
    expected = math.exp(-0.5 * (2 / (9 / 8)) ** 2) * math.exp(-0.5 * (1 / (5 / 8)) ** 2)
    assert g[6, 3, 3].item() == pytest.approx(expected, rel=1e-6)
    assert g[4, 1, 2].item() == pytest.approx(math.exp(-0.5 * (2 / (7 / 8)) ** 2), rel=1e-6)
    # The centre slice along z is the 2D map of the other two sides (the z factor is 1 there).
    assert torch.equal(g[4], gaussian_importance_map((7, 5)))
    even = gaussian_importance_map((8, 6, 4))  # centres between voxels: a 2x2x2 plateau of 1
    assert torch.equal(even[3:5, 2:4, 1:3], torch.ones(2, 2, 2)) and even.max().item() == 1.0
    assert gaussian_importance_map((32, 64, 64)).min().item() == pytest.approx(1e-3)  # corners: the floor
    with pytest.raises(ValueError, match="positive sides"):
        gaussian_importance_map((8, 0, 8))


# ----------------------------------------------------------------- tile origins


def test_tile_origins_3d_by_hand() -> None:
    # z: 5 voxels, tile 4, stride 2 -> 0, 1 (flush); y: 11, tile 5, stride round(2.5) = 3 -> 0, 3, 6; x: one tile.
    assert tile_origins((5, 11, 6), (4, 5, 6), 0.5) == [(0, 0, 0), (0, 3, 0), (0, 6, 0),
                                                        (1, 0, 0), (1, 3, 0), (1, 6, 0)]
    with pytest.raises(ValueError, match="one side per axis"):
        tile_origins((5, 11, 6), (4, 5), 0.5)


@pytest.mark.parametrize("shape,tile,overlap", [
    ((13, 21, 18), (8, 8, 8), 0.5),
    ((9, 30, 17), (4, 7, 16), 0.25),
    ((16, 16, 16), (8, 8, 8), 0.0),
    ((7, 12, 40), (3, 12, 9), 0.75),
])
def test_tile_origins_3d_cover_every_voxel_with_the_last_tile_flush(shape: Tuple[int, int, int],
                                                                      tile: Tuple[int, int, int],
                                                                      overlap: float) -> None:
    origins = tile_origins(shape, tile, overlap)
    covered = torch.zeros(shape, dtype=torch.int64)
    for z, y, x in origins:
        assert all(0 <= o <= s - t for o, s, t in zip((z, y, x), shape, tile))  # never beyond the volume
        covered[z:z + tile[0], y:y + tile[1], x:x + tile[2]] += 1
    assert (covered > 0).all()
    for axis in range(3):
        starts = sorted({o[axis] for o in origins})
        assert starts[0] == 0 and starts[-1] == shape[axis] - tile[axis]  # the last tile flush with the border
    assert len(origins) == len(set(origins)) == math.prod(len({o[a] for o in origins}) for a in range(3))


# ----------------------------------------------------------------- pointwise model: slide == whole


@pytest.mark.parametrize("classes", [1, 3])
@pytest.mark.parametrize("tile,overlap,tile_batch,gaussian", [
    ((8, 8, 8), 0.5, 4, True),        # 13 x 21 x 18 is no multiple of the tile on any axis
    ((6, 10, 7), 0.25, 3, True),
    ((5, 9, 11), 0.0, 2, False),
    ((4, 40, 8), 0.5, 5, True),       # taller than the volume: padded along y only
    ((32, 32, 32), 0.5, 1, True),     # larger than the volume on every axis: one padded tile
])
def test_pointwise_model_slide_equals_whole_volume(classes: int, tile: Tuple[int, int, int], overlap: float,
                                                   tile_batch: int, gaussian: bool) -> None:
    torch.manual_seed(0)
    model = pointwise(2, classes)
    volume = torch.randn(2, 2, 13, 21, 18)
    slid = predict_probabilities(model, volume, settings=settings(tile=tile, overlap=overlap, gaussian=gaussian,
                                                                   tile_batch=tile_batch))
    assert slid.shape == (2, classes, 13, 21, 18) and slid.dtype == torch.float32
    assert torch.allclose(slid, direct(model, volume), atol=1e-6)


def test_one_int_tile_is_that_side_on_every_axis() -> None:
    torch.manual_seed(1)
    model = Ramp(0.1, 0.2, 0.3)
    volume = torch.zeros(1, 1, 10, 12, 9)
    window = sliding_window_probabilities(model, volume, 6, overlap=0.5)
    assert set(model.sizes) == {(6, 6, 6)}
    assert torch.equal(window, predict_probabilities(Ramp(0.1, 0.2, 0.3), volume, settings=settings(tile=6)))
    with pytest.raises(ValueError, match="inference.tile"):
        predict_probabilities(model, volume, settings=settings(tile=(6, 6)))


def test_unet_3d_with_one_tile_the_size_of_the_volume_equals_whole() -> None:
    from models.unet import UNet

    torch.manual_seed(0)
    model = UNet(in_channels=1, out_channels=2, base_channels=4, depth=2, dims=3, norm="instance").eval()
    volume = torch.randn(1, 1, 8, 16, 16)
    slid = predict_probabilities(model, volume, settings=settings(tile=(8, 16, 16)))
    assert torch.allclose(slid, direct(model, volume), atol=1e-6)


def test_tiles_are_blended_along_z_with_the_gaussian_weights_by_hand() -> None:
    # 6 x 2 x 2 volume, tile 4 x 2 x 2, overlap 0.5: tiles at z = 0 and 2. Logit = z inside the tile.
    # The y, x factors are equal at both voxels of a 2-side, so the weight is the z factor over its peak:
    # sigma 4/8, centre 1.5, w(c) = exp(-0.5 * ((c - 1.5) / 0.5) ** 2 + 0.5), at least 1e-3.
    out = predict_probabilities(Ramp(0.0, c=1.0), torch.zeros(1, 1, 6, 2, 2), settings=settings(tile=(4, 2, 2)))

    def w(c: int) -> float:
        return max(1e-3, math.exp(-0.5 * ((c - 1.5) / 0.5) ** 2 + 0.5))

    for z in range(6):
        inside = [z - t for t in (0, 2) if 0 <= z - t < 4]  # the voxel's z in each covering tile
        expected = sum(w(c) * sigmoid(c) for c in inside) / sum(w(c) for c in inside)
        assert out[0, 0, z].flatten().tolist() == pytest.approx([expected] * 4, rel=1e-6), z


# ----------------------------------------------------------------- mirroring


def test_flip_combinations_over_volumes() -> None:
    every = [(), (-1,), (-2,), (-3,), (-1, -2), (-1, -3), (-2, -3), (-1, -2, -3)]
    assert flip_combinations(["h", "v", "z"], 3) == every
    assert flip_combinations("all", 3) == every
    assert flip_combinations("all") == flip_combinations(["h", "v"]) == [(), (-1,), (-2,), (-1, -2)]
    assert flip_combinations(["z"], 3) == [(), (-3,)]
    with pytest.raises(ValueError, match="'z'.* 2 spatial axes"):
        flip_combinations(["z"], 2)


@pytest.mark.parametrize("mode,flips", [("whole", "all"), ("slide", "all"), ("slide", ["z", "h"])])
def test_mirroring_leaves_a_mirror_equivariant_model_unchanged(mode: str, flips: Union[str, List[str]]) -> None:
    torch.manual_seed(2)
    model = pointwise(2, 3)
    volume = torch.randn(1, 2, 11, 14, 9)
    plain = predict_probabilities(model, volume, settings=settings(mode=mode, tile=(8, 8, 8)))
    mirrored = predict_probabilities(model, volume, settings=settings(mode=mode, tile=(8, 8, 8), flips=flips))
    assert torch.allclose(mirrored, plain, atol=1e-6) and torch.allclose(plain, direct(model, volume), atol=1e-6)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_mirroring_averages_the_eight_unflipped_passes_by_hand(mode: str) -> None:
    zs, ys, xs = 3, 4, 5
    a, b, c, d = 0.4, -0.3, 0.25, 0.1
    model = Ramp(a, b, c, d)
    out = predict_probabilities(model, torch.zeros(1, 1, zs, ys, xs),
                                settings=settings(mode=mode, tile=(zs, ys, xs), flips="all"))
    assert len(model.sizes) == 8  # one tile per pass, 2^3 passes
    for z, y, x in itertools.product(range(zs), range(ys), range(xs)):
        # A pass flipped along an axis sees the voxel at the mirrored coordinate; un-flipped, it lands back here.
        passes = [sigmoid(a * px + b * py + c * pz + d)
                  for pz in (z, zs - 1 - z) for py in (y, ys - 1 - y) for px in (x, xs - 1 - x)]
        assert out[0, 0, z, y, x].item() == pytest.approx(sum(passes) / 8, rel=1e-6), (z, y, x)


def test_slide_with_mirroring_runs_every_tile_in_every_pass() -> None:
    model = Ramp(0.1)
    volume = torch.zeros(1, 1, 12, 10, 10)
    predict_probabilities(model, volume, settings=settings(tile=(8, 8, 8), tile_batch=3, flips="all"))
    # z: 0, 4; y, x: 0, 2 -> 8 tiles, in batches of 3, 3, 2, for each of the 8 passes.
    assert len(model.sizes) == 8 * 3 and set(model.sizes) == {(8, 8, 8)}


# ----------------------------------------------------------------- scales, output size, labels, stitching


def test_scales_resize_volumes_trilinearly_and_average() -> None:
    model = pointwise(2, 3)
    volume = torch.ones(1, 2, 7, 9, 12) * torch.tensor([0.5, -1.0]).view(1, 2, 1, 1, 1)
    plain = direct(model, volume)
    for mode in ("whole", "slide"):
        multi = predict_probabilities(model, volume, settings=settings(mode=mode, tile=(4, 4, 4),
                                                                        scales=[0.5, 1.0, 1.5]))
        assert multi.shape == plain.shape and torch.allclose(multi, plain, atol=1e-6)
    # Scale 2 on an x ramp: resized back trilinearly (align_corners=False), output x lies halfway between 2x
    # and 2x + 1 of the doubled prediction.
    a = 0.3
    out = predict_probabilities(Ramp(a), torch.zeros(1, 1, 2, 3, 6), settings=settings(mode="whole",
                                                                                        scales=[1.0, 2.0]))
    for x in range(6):
        at_two = (sigmoid(a * 2 * x) + sigmoid(a * (2 * x + 1))) / 2
        assert out[0, 0, 1, 2, x].item() == pytest.approx((sigmoid(a * x) + at_two) / 2, rel=1e-6)


def test_out_size_of_three_entries_and_labels_of_volumes() -> None:
    torch.manual_seed(3)
    model = pointwise(2, 3)
    constant = torch.ones(2, 2, 6, 8, 10)
    out = predict_probabilities(model, constant, out_size=(9, 5, 13), settings=settings(tile=(4, 4, 4)))
    assert out.shape == (2, 3, 9, 5, 13)
    assert torch.allclose(out, direct(model, constant)[:, :, :1, :1, :1].expand_as(out), atol=1e-6)
    with pytest.raises(ValueError, match="out_size"):
        predict_probabilities(model, constant, out_size=(9, 5), settings=settings(tile=(4, 4, 4)))

    volume = torch.randn(2, 2, 6, 8, 10)
    expected = direct(model, volume).argmax(1)
    for s in (None, settings(tile=(4, 4, 4), flips="all")):
        labels = predict_labels(model, volume, s)
        assert labels.shape == (2, 6, 8, 10) and labels.dtype == torch.int64 and torch.equal(labels, expected)


def test_a_volume_on_the_cpu_stitched_anywhere_gives_the_same_map() -> None:
    torch.manual_seed(4)
    model = pointwise(1, 2)
    volume = torch.randn(1, 15, 17, 19)  # (C, Z, Y, X), as test.py holds a case
    outs = [predict_probabilities(model, volume[None], settings=settings(tile=(8, 8, 8), flips=["z"],
                                                                          stitch_device=s))[0]
            for s in ("cpu", "device", "auto")]
    assert outs[0].shape == (2, 15, 17, 19) and outs[0].device.type == "cpu" and outs[0].dtype == torch.float32
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    assert torch.allclose(outs[0], direct(model, volume[None])[0], atol=1e-6)


# ----------------------------------------------------------------- config


@pytest.mark.parametrize("model,inference,key", [
    ({}, {"mode": "slide", "tile": [8, 8, 8]}, "inference.tile"),              # 3 sizes, 2D model
    ({"dims": 3}, {"mode": "slide", "tile": [8, 8]}, "inference.tile"),        # 2 sizes, 3D model
    ({"dims": 3}, {"tile": [8, 8, 8, 8]}, "inference.tile"),
    ({"dims": 3}, {"mode": "slide", "tile": [8, 0, 8]}, "inference.tile"),
    ({}, {"flips": ["z"]}, "inference.flips"),                                 # no depth in a 2D model
    ({"dims": 3}, {"flips": "every"}, "inference.flips"),
])
def test_config_rejects_settings_that_do_not_fit_the_model(model: dict, inference: dict, key: str) -> None:
    from tests.conftest import minimal_config
    from utils.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict(minimal_config("unused", model=model, inference=inference), check_paths=False)


def test_config_accepts_volume_settings() -> None:
    from tests.conftest import minimal_config
    from utils.config import config_from_dict

    def inference(model: dict, **section) -> InferenceConfig:
        return config_from_dict(minimal_config("unused", model=model, inference=section), check_paths=False).inference

    volume = inference({"dims": 3}, mode="slide", tile=[32, 64, 64], flips="all")
    assert volume.tile == (32, 64, 64) and volume.flips == "all"
    assert inference({"dims": 3}, mode="slide", tile=48, flips=["h", "v", "z"]).tile == (48, 48, 48)
    assert inference({}, mode="slide", tile=48, flips="all").tile == (48, 48)  # 2D as before
