"""Turning logits into probabilities and labels: the one place it happens.

Models return raw logits. One output channel means a binary task scored by
``sigmoid`` and a threshold; more channels mean ``softmax`` and ``argmax``.

:func:`predict_probabilities` also runs the configured inference
(``cfg.inference``): a plain forward of the whole image, or a sliding window
of tiles blended with a Gaussian weight (nnU-Net's scheme), either one with
test-time augmentation (flips and scales) averaged on probabilities. Every
step takes any number of spatial axes: images (N, C, H, W) and volumes
(N, C, Z, Y, X) go through the same code.

Sliding window, step by step:

* An image (or volume) smaller than the tile along an axis is padded with the constant 0
  (the mean colour once the image is normalised), split evenly before and
  after, to the tile size; the result is cropped back. Reflection needs the
  padding to be smaller than the image, which a tile much larger than a small
  image breaks, and zeros are what the network sees beyond every image border
  anyway (its own convolutions pad with zeros).
* Tile origins along each axis: every ``stride = max(1, round(t * (1 - overlap)))``
  pixels from 0, plus one last tile flush with the far border; the tiles are
  every combination of the axes' origins (:func:`tile_origins`); no tile
  reaches beyond the (padded) image.
* Tiles, from every image of the batch, go through the model ``tile_batch``
  at a time, on the model's device; the image itself may stay on the CPU.
* Each tile's probabilities are added, times the Gaussian importance map
  (:func:`gaussian_importance_map`, or 1 without ``gaussian``), into a sum
  buffer, and the weights into a weight map; one division at the end.
* The buffers live on the stitch device (:func:`resolve_stitch_device`), so a
  6000x4000 image or a 512x512x400 CT volume needs no more accelerator memory
  than its tiles do.

Test-time augmentation: every scale (the input resized, bilinear for images,
trilinear for volumes) times every flip combination (:func:`flip_combinations`:
none, and with ``[h, v]`` also h, v and both; ``all`` mirrors every spatial
axis, 2^3 = 8 passes for a volume, as nnU-Net does) is one pass; each pass's
probabilities are un-flipped, resized straight to the output size and averaged.
"""
from __future__ import annotations

import itertools
import logging
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from utils.amp import autocast, resolve_amp

log = logging.getLogger(__name__)

FLIP_DIMS: Dict[str, int] = {"h": -1, "v": -2, "z": -3}  # h flips the width, v the height, z the depth
ALL_FLIPS = "all"  # inference.flips: all mirrors every spatial axis of the input
INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}  # resize mode per number of spatial axes
STITCH_CHOICES = ("auto", "cpu", "device")
AUTO_STITCH_FRACTION = 0.5  # auto stitches on the CPU when the buffers need more than this share of free CUDA memory
GAUSSIAN_FLOOR = 1e-3  # the smallest weight of the Gaussian importance map


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid for 1-channel logits, softmax over channels otherwise.

    Shape: (N, C, *spatial) -> (N, C, *spatial), float32.
    """
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=1)


def labels_from_probabilities(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Class indices (N, *spatial) int64 from probabilities (N, C, *spatial)."""
    if probs.shape[1] == 1:
        return (probs[:, 0] > threshold).long()
    return probs.argmax(dim=1)


def labels_from_logits(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Class indices (N, *spatial) int64 from logits without building probabilities.

    For one channel, ``sigmoid(x) > t`` is ``x > log(t / (1 - t))``; softmax
    is monotonic, so ``argmax`` of the logits is the argmax of the softmax.
    """
    if logits.shape[1] == 1:
        return (logits[:, 0] > math.log(threshold / (1.0 - threshold))).long()
    return logits.argmax(dim=1)


# ----------------------------------------------------------------- sliding-window building blocks


def gaussian_importance_map(tile: Sequence[int], sigma_scale: float = 1.0 / 8,
                            floor: float = GAUSSIAN_FLOOR, device: Optional[torch.device] = None,
                            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Weight (*tile) of a tile's pixels or voxels: a Gaussian centred on the tile, max 1.

    Any number of axes, e.g. (h, w) or (z, y, x). ``sigma = sigma_scale * side``
    per axis (nnU-Net's 1/8), the centre at ``(side - 1) / 2`` (between the two
    middle pixels of an even side), divided by its maximum so the centre is 1,
    and raised to at least ``floor`` so that border pixels that only one tile
    covers still count.
    """
    if not len(tile) or min(tile) < 1 or sigma_scale <= 0 or not 0 < floor <= 1:
        raise ValueError(f"gaussian_importance_map: needs positive sides, sigma_scale > 0 and floor in (0, 1], "
                         f"got {tuple(tile)}, {sigma_scale}, {floor}")
    weight: Optional[torch.Tensor] = None
    for side in tile:  # the outer product of one Gaussian per axis
        coords = torch.arange(side, dtype=torch.float64) - (side - 1) / 2
        axis = torch.exp(-0.5 * (coords / (sigma_scale * side)) ** 2)
        weight = axis if weight is None else weight[..., None] * axis
    assert weight is not None
    weight = (weight / weight.max()).clamp_min(floor)
    return weight.to(device=device, dtype=dtype)


def axis_origins(size: int, tile: int, overlap: float) -> List[int]:
    """Start offsets of the tiles along one axis of ``size`` pixels (``size >= tile``, else ``[0]``).

    Every ``stride = max(1, round(tile * (1 - overlap)))`` pixels from 0 (half
    rounded up), then one last tile flush with the border.
    """
    if tile < 1 or not 0 <= overlap < 1:
        raise ValueError(f"tile origins: needs tile >= 1 and overlap in [0, 1), got {tile}, {overlap}")
    if size <= tile:
        return [0]
    stride = max(1, int(math.floor(tile * (1 - overlap) + 0.5)))
    return list(range(0, size - tile, stride)) + [size - tile]


def tile_origins(shape: Sequence[int], tile: Sequence[int], overlap: float) -> List[Tuple[int, ...]]:
    """First corner of every tile covering an image (H, W) or volume (Z, Y, X), the last axis fastest.

    ``(top, left)`` pairs row by row for an image, ``(z, y, x)`` for a volume;
    each axis's starts from :func:`axis_origins`.
    """
    if len(shape) != len(tile):
        raise ValueError(f"tile origins: the tile {tuple(tile)} needs one side per axis of {tuple(shape)}")
    return list(itertools.product(*(axis_origins(size, side, overlap) for size, side in zip(shape, tile))))


def flip_combinations(flips: Union[str, Sequence[str]], spatial_dims: int = 2) -> List[Tuple[int, ...]]:
    """The dims each TTA pass flips: ``()`` first, then every non-empty subset of ``flips``.

    ``[]`` -> ``[()]``; ``[h]`` -> ``[(), (-1,)]``; ``[h, v]`` -> ``[(), (-1,), (-2,), (-1, -2)]``.
    ``all`` names every one of the ``spatial_dims`` axes (``[h, v]`` for an
    image, ``[h, v, z]`` for a volume: 8 passes); ``z`` needs a volume.
    """
    if flips == ALL_FLIPS:
        flips = list(FLIP_DIMS)[:spatial_dims]
    names: List[str] = []
    for name in flips:
        if name not in FLIP_DIMS:
            raise ValueError(f"inference.flips: unknown flip {name!r}; use 'h' (width), 'v' (height), "
                             f"'z' (depth, volumes only) or all")
        if -FLIP_DIMS[name] > spatial_dims:
            raise ValueError(f"inference.flips: {name!r} flips spatial axis {FLIP_DIMS[name]}, which an input "
                             f"with {spatial_dims} spatial axes lacks")
        if name not in names:
            names.append(name)
    combos: List[Tuple[int, ...]] = []
    for k in range(len(names) + 1):
        combos += [tuple(FLIP_DIMS[n] for n in subset) for subset in itertools.combinations(names, k)]
    return combos


def free_device_memory(device: torch.device) -> int:
    """Bytes a new CUDA allocation can use: the driver's free memory plus PyTorch's cached, unused blocks."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def resolve_stitch_device(choice: str, device: torch.device, nbytes: int, free_bytes: Optional[int] = None,
                          fraction: float = AUTO_STITCH_FRACTION) -> torch.device:
    """Where the probability buffers (``nbytes`` in all) are summed, for ``inference.stitch_device``.

    ``cpu``: the CPU. ``device``: ``device``, the one the model runs on.
    ``auto``: the CPU when ``device`` is CUDA and ``nbytes`` exceeds
    ``fraction`` of its free memory (``free_bytes``, queried with
    :func:`free_device_memory` when not given), else ``device``.
    """
    if choice not in STITCH_CHOICES:
        raise ValueError(f"inference.stitch_device must be one of {', '.join(STITCH_CHOICES)}, got {choice!r}")
    cpu = torch.device("cpu")
    if choice == "cpu":
        return cpu
    if choice == "device" or device.type != "cuda":
        return device
    if free_bytes is None:
        free_bytes = free_device_memory(device)
    chosen = cpu if nbytes > fraction * free_bytes else device
    log.debug("stitch_device auto: %.1f MiB of buffers, %.1f MiB free on %s -> %s",
              nbytes / 2 ** 20, free_bytes / 2 ** 20, device, chosen)
    return chosen


def model_device(model: torch.nn.Module, default: torch.device) -> torch.device:
    """The device of the model's first parameter (or buffer); ``default`` for a model with neither."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return default


def _forward_probabilities(model: torch.nn.Module, x: torch.Tensor, device: torch.device,
                           amp: str) -> torch.Tensor:
    """float32 probabilities of one forward pass of ``x`` on ``device``; the main output of a list."""
    with autocast(device, amp):
        logits = model(x.to(device, non_blocking=True))
    if isinstance(logits, (list, tuple)):
        logits = logits[0]
    return probabilities(logits)


StitchFor = Callable[[int], torch.device]  # number of classes -> stitch device


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``x`` (N, C, *spatial) resized to ``size``: bilinear for images, trilinear for volumes (align_corners=False)."""
    if x.dim() - 2 not in INTERPOLATION:
        raise ValueError(f"resize: no interpolation for {x.dim() - 2} spatial axes (shape {tuple(x.shape)})")
    return F.interpolate(x, size=tuple(size), mode=INTERPOLATION[x.dim() - 2], align_corners=False)


def _slide(model: torch.nn.Module, image: torch.Tensor, tile: Tuple[int, ...], overlap: float,
           gaussian: bool, tile_batch: int, amp: str, device: torch.device, stitch_for: StitchFor) -> torch.Tensor:
    """Sliding-window probabilities (N, K, *spatial) float32 on ``stitch_for(K)``; see the module docstring.

    ``tile`` has one side per spatial axis of ``image`` (N, C, *spatial).
    """
    n, shape = image.shape[0], tuple(image.shape[2:])
    padded = tuple(max(size, side) for size, side in zip(shape, tile))
    before = tuple((p - size) // 2 for p, size in zip(padded, shape))
    if padded != shape:
        pads: List[int] = []
        for size, p, b in reversed(list(zip(shape, padded, before))):  # F.pad lists the last axis first
            pads += [b, p - size - b]
        image = F.pad(image, pads, mode="constant", value=0.0)
    windows = [tuple(slice(o, o + side) for o, side in zip(origin, tile))
               for origin in tile_origins(padded, tile, overlap)]
    jobs = [(i, window) for i in range(n) for window in windows]
    total: Optional[torch.Tensor] = None
    weight: Optional[torch.Tensor] = None  # on the device the tiles are predicted on
    for start in range(0, len(jobs), tile_batch):
        chunk = jobs[start:start + tile_batch]
        crops = torch.stack([image[(i, slice(None), *window)] for i, window in chunk])
        probs = _forward_probabilities(model, crops, device, amp)
        if tuple(probs.shape[2:]) != tile:
            probs = resize(probs, tile)
        if total is None:
            total = torch.zeros(n, probs.shape[1], *padded, device=stitch_for(probs.shape[1]))
            weight = gaussian_importance_map(tile, device=probs.device) if gaussian else None
        if weight is not None:
            probs.mul_(weight)  # one multiply per tile batch, before any copy to the stitch device
        probs = probs.to(total.device)
        for p, (i, window) in zip(probs, chunk):
            total[(i, slice(None), *window)].add_(p)
    assert total is not None  # at least one tile per image
    coverage = torch.zeros(padded, device=total.device)
    tile_weight = weight.to(total.device) if weight is not None else 1.0
    for window in windows:
        coverage[window].add_(tile_weight)
    total.div_(coverage)
    if padded != shape:
        total = total[(slice(None), slice(None), *(slice(b, b + size) for b, size in zip(before, shape)))]
        total = total.contiguous()
    return total


def as_tile(tile: Union[int, Sequence[int]], spatial_dims: int) -> Tuple[int, ...]:
    """One tile side per spatial axis: an int is that side on every axis; a list must have ``spatial_dims``."""
    sides = (int(tile),) * spatial_dims if isinstance(tile, int) else tuple(int(t) for t in tile)
    if len(sides) != spatial_dims:
        raise ValueError(f"inference.tile: {list(sides)} has {len(sides)} sides but the input has {spatial_dims} "
                         f"spatial axes; give one side or {spatial_dims}")
    return sides


def is_plain(settings: Any) -> bool:
    """True when ``settings`` asks for one forward of the whole image (no window, no TTA)."""
    return settings is None or (settings.mode == "whole" and not settings.flips and list(settings.scales) == [1.0])


def _scaled_size(shape: Sequence[int], scale: float) -> Tuple[int, ...]:
    return tuple(max(1, int(math.floor(size * scale + 0.5))) for size in shape)


@torch.inference_mode()
def sliding_window_probabilities(model: torch.nn.Module, image: torch.Tensor, tile: Union[int, Sequence[int]],
                                 overlap: float = 0.5, gaussian: bool = True, tile_batch: int = 4,
                                 amp: str = "off", stitch_device: str = "auto") -> torch.Tensor:
    """Sliding-window probabilities of a batch, without TTA, on the stitch device.

    Shape: image (N, C_in, *spatial), anywhere -> (N, K, *spatial) float32;
    ``tile`` one side, or one per spatial axis. Tiles run on the model's
    device, ``tile_batch`` at a time.
    """
    if tile_batch < 1:
        raise ValueError(f"inference.tile_batch must be at least 1, got {tile_batch}")
    sides = as_tile(tile, image.dim() - 2)
    device = model_device(model, image.device)
    amp = resolve_amp(amp, device, warn=False)
    voxels = image.shape[0] * math.prod(max(size, side) for size, side in zip(image.shape[2:], sides))

    def stitch_for(channels: int) -> torch.device:
        return resolve_stitch_device(stitch_device, device, 4 * channels * voxels)
    return _slide(model, image, sides, overlap, gaussian, tile_batch, amp, device, stitch_for)


def _memory_format(x: torch.Tensor, channels_last: bool) -> torch.memory_format:
    """channels_last for images, channels_last_3d for volumes, when asked; contiguous otherwise."""
    if channels_last and x.dim() in (4, 5):
        return torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return torch.contiguous_format


@torch.inference_mode()
def predict_labels(model: torch.nn.Module, images: torch.Tensor, settings: Any, threshold: float = 0.5,
                   amp: str = "off", channels_last: bool = False, out_size: Optional[Sequence[int]] = None,
                   device: Optional[torch.device] = None) -> torch.Tensor:
    """Class indices (N, *spatial) int64: the one prediction path of validation and test.py.

    ``images`` (N, C, H, W) or (N, C, Z, Y, X) may lie on the CPU: a
    whole-image pass moves them to ``device`` (default: the model's), a
    sliding window sends only its tiles there. With ``out_size`` the
    probabilities are resized (bilinear, trilinear) before the labels are
    taken. A plain pass at the input size takes the labels from the logits
    (no softmax map is built); otherwise :func:`predict_probabilities` runs.
    """
    device = device if device is not None else model_device(model, images.device)
    if is_plain(settings) and out_size is None:
        x = images.to(device, non_blocking=True, memory_format=_memory_format(images, channels_last))
        with autocast(device, resolve_amp(amp, device, warn=False)):
            logits = model(x)
        if isinstance(logits, (list, tuple)):
            logits = logits[0]
        return labels_from_logits(logits.float(), threshold)
    if settings is None or settings.mode != "slide":
        images = images.to(device, non_blocking=True)
    probs = predict_probabilities(model, images, out_size=out_size, amp=amp, settings=settings)
    return labels_from_probabilities(probs, threshold)


def _stitch_chooser(choice: str, device: torch.device, pixels: int) -> StitchFor:
    """The stitch device for maps of ``pixels`` pixels (voxels) per channel, decided once, on the first call."""
    resolved: List[torch.device] = []

    def stitch_for(channels: int) -> torch.device:
        if not resolved:
            resolved.append(resolve_stitch_device(choice, device, 4 * channels * pixels))
        return resolved[0]
    return stitch_for


def _one_pass(model: torch.nn.Module, image: torch.Tensor, scale: float, dims: Tuple[int, ...],
              final: Tuple[int, ...], settings: Any, amp: str, device: torch.device,
              stitch_for: StitchFor) -> torch.Tensor:
    """Probabilities of ``image`` scaled by ``scale`` and flipped along ``dims``, mapped back to ``final``."""
    x = image
    if scale != 1.0:
        x = resize(x, _scaled_size(image.shape[2:], scale))
    if dims:
        x = x.flip(dims)
    if settings.mode == "slide":
        probs = _slide(model, x, as_tile(settings.tile, x.dim() - 2), settings.overlap, settings.gaussian,
                       settings.tile_batch, amp, device, stitch_for)
    else:
        probs = _forward_probabilities(model, x, device, amp)
        probs = probs.to(stitch_for(probs.shape[1]))
    if dims:
        probs = probs.flip(dims)
    if tuple(probs.shape[2:]) != final:
        probs = resize(probs, final)
    return probs


@torch.inference_mode()
def predict_probabilities(model: torch.nn.Module, image: torch.Tensor,
                          out_size: Optional[Sequence[int]] = None,
                          amp: str = "off", settings: Any = None) -> torch.Tensor:
    """Probabilities for a batch, resized (bilinear, trilinear) to ``out_size`` if given.

    Shape: image (N, C_in, *spatial) -> (N, C, *out_size) float32 on image's
    device; spatial is (H, W) for images, (Z, Y, X) for volumes, and
    ``out_size`` has as many entries. A volume (C, Z, Y, X) on the CPU goes in
    as ``image[None]``: in ``slide`` mode only its tiles reach the model's
    device, and the map is summed on the CPU when ``stitch_device`` (auto)
    says the device lacks the memory.

    ``settings`` is ``cfg.inference`` or any object with its attributes
    (``mode``, ``tile``, ``overlap``, ``gaussian``, ``tile_batch``, ``flips``,
    ``scales``, ``stitch_device``). ``None``, or ``whole`` without TTA, is one
    forward of ``image`` where it lies. Otherwise the model runs on its own
    device: in ``whole`` mode the image is moved there, in ``slide`` mode only
    its tiles are, and the passes are summed on the stitch device. No autograd
    graph is kept (inference mode): one would hold every tile's activations.
    """
    spatial = tuple(image.shape[2:])
    final = tuple(int(s) for s in out_size) if out_size is not None else spatial
    if len(final) != len(spatial):
        raise ValueError(f"out_size {list(final)} needs one size per spatial axis of the input {tuple(image.shape)}")
    if is_plain(settings):
        probs = _forward_probabilities(model, image, image.device, resolve_amp(amp, image.device, warn=False))
        if out_size is not None and tuple(probs.shape[2:]) != final:
            probs = resize(probs, final)
        return probs

    # The settings were validated with the config (utils/config.py, _check_inference).
    tile = as_tile(settings.tile, len(spatial)) if settings.mode == "slide" else (1,) * len(spatial)
    scales = [float(s) for s in settings.scales]
    passes = [(scale, dims) for scale in scales for dims in flip_combinations(settings.flips, len(spatial))]

    home = image.device
    device = model_device(model, home)
    amp = resolve_amp(amp, device, warn=False)
    if settings.mode != "slide":
        image = image.to(device)
    # auto decides once, for the largest buffers: a pass's map at its scale, the pass resized, their sum.
    largest = _scaled_size(spatial, max(scales))
    pixels = math.prod(max(size, side) for size, side in zip(largest, tile)) + 2 * math.prod(final)
    stitch_for = _stitch_chooser(settings.stitch_device, device, image.shape[0] * pixels)

    def one_pass(scale: float, dims: Tuple[int, ...]) -> torch.Tensor:
        return _one_pass(model, image, scale, dims, final, settings, amp, device, stitch_for)

    total = one_pass(*passes[0])
    for scale, dims in passes[1:]:
        total.add_(one_pass(scale, dims))
    if len(passes) > 1:
        total.div_(len(passes))
    return total.to(home)
