"""Shared by the transform tests: block masks, images that encode them, and the specs every transform test runs."""
import torch
from torchvision import tv_tensors

from utils.transforms import build_transforms

CLASSES = torch.tensor([0, 2, 3, 7])
SEEDS = range(4)


def block_mask(height: int = 64, width: int = 48, block: int = 8, seed: int = 0) -> tv_tensors.Mask:
    """Random class per ``block`` x ``block`` tile, values drawn from CLASSES."""
    generator = torch.Generator().manual_seed(seed)
    tiles = CLASSES[torch.randint(len(CLASSES), (height // block, width // block), generator=generator)]
    return tv_tensors.Mask(tiles.repeat_interleave(block, 0).repeat_interleave(block, 1))


def image_of(mask: torch.Tensor, channels: int = 3) -> tv_tensors.Image:
    """An image whose every channel is ``mask + 1`` (so 0 marks padding)."""
    return tv_tensors.Image((mask + 1).float().expand(channels, -1, -1).clone())


def uniform_interior(mask: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """True where the (2 * radius + 1)^2 neighbourhood holds a single label.

    Pixels near the image border are excluded: bilinear resampling there
    blends in the fill value.
    """
    values = torch.nn.functional.pad(mask[None, None].float(), [radius] * 4, value=-1.0)
    pool = torch.nn.functional.max_pool2d
    kernel = 2 * radius + 1
    return (pool(values, kernel, 1) == -pool(-values, kernel, 1))[0, 0]


def run_seeded(spec: dict, image, mask, seed: int):
    torch.manual_seed(seed)
    return build_transforms([spec])(image, mask)


# Transforms that move pixels without resampling: image equals mask exactly.
EXACT_SPECS = [
    {"name": "hflip", "p": 1.0},
    {"name": "vflip", "p": 1.0},
    {"name": "hflip"},
    {"name": "random_crop", "size": [40, 24]},
    {"name": "random_crop", "size": 72},  # larger than the input: pads
]
# Transforms that resample the image bilinearly: agree inside uniform blocks.
RESAMPLING_SPECS = [
    {"name": "resize", "size": [96, 80]},
    {"name": "resize", "size": 40},
    {"name": "random_resized_crop", "size": 56},
    {"name": "random_resized_crop", "size": [64, 32], "scale": [0.2, 0.6], "ratio": [0.5, 2.0]},
    {"name": "rotate", "degrees": 30},
    {"name": "random_resize", "scale": [48, 96], "ratio_range": [0.8, 1.5]},
    {"name": "random_resize", "scale": [48, 96], "ratio_range": [0.8, 1.5], "keep_ratio": False},
    {"name": "random_scale_crop", "size": [40, 56], "scale": [1.0, 2.0]},
    {"name": "affine", "degrees": 20, "translate": [0.1, 0.2], "scale": [0.8, 1.2], "shear": 10},
    {"name": "elastic", "alpha": 34.0, "sigma": 4.0, "p": 1.0},
]
GEOMETRIC_SPECS = EXACT_SPECS + RESAMPLING_SPECS
PHOTOMETRIC_SPECS = [
    {"name": "color_jitter", "brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.1},
    {"name": "gaussian_blur", "kernel_size": 5, "sigma": [1.0, 2.0], "p": 1.0},
    {"name": "normalize"},
    {"name": "photometric_distortion", "p": 1.0},
    {"name": "gaussian_noise", "p": 1.0},
]
ALL_SPECS = GEOMETRIC_SPECS + PHOTOMETRIC_SPECS


def spec_id(spec: dict) -> str:
    return "-".join(f"{v}" for v in spec.values())
