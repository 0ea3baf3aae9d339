"""``preview_grid``: the augmentation preview sheet, each sample beside its mask overlay.

(The command line, ``train.py --preview-augmentations``, is tested with train.py.)
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from datasets.folder import FolderDataset
from utils.errors import ConfigError, DataError
from utils.transforms import build_transforms, preview_grid
from utils.visualize import default_palette, overlay

PAD = 4  # utils.visualize.make_grid's default padding
PALETTE = default_palette(2)
#: Image value of class 0, class 1 and padding (IGNORE_INDEX): the mask can be read back from the image.
LEVELS = {0: 64, 1: 128, 255: 0}


class CodedSamples:
    """Block masks of classes 0/1 whose image encodes the class (0.25 and 0.5 grey), through ``transforms``."""

    def __init__(self, transforms, count: int = 3, size: int = 24) -> None:
        self.transforms, self.count, self.size = transforms, count, size

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        generator = torch.Generator().manual_seed(index)
        blocks = torch.randint(0, 2, (self.size // 4, self.size // 4), generator=generator)
        mask = tv_tensors.Mask(blocks.repeat_interleave(4, 0).repeat_interleave(4, 1))
        image = tv_tensors.Image(((mask + 1) / 4).float().expand(3, -1, -1).clone())
        return self.transforms(image, mask)


def tiles(sheet: np.ndarray, tile: int, count: int, columns: int) -> list:
    """The ``count`` tiles of a sheet of ``tile`` x ``tile`` tiles, row by row."""
    out = []
    for i in range(count):
        row, col = divmod(i, columns)
        y, x = PAD + row * (tile + PAD), PAD + col * (tile + PAD)
        out.append(sheet[y:y + tile, x:x + tile])
    return out


def sheet_size(tile: int, pairs: int, pairs_per_row: int = 4) -> tuple:
    """(height, width) of the sheet: each sample is an image tile and an overlay tile."""
    columns = 2 * min(pairs, pairs_per_row)
    rows = -(-2 * pairs // columns)
    return rows * (tile + PAD) + PAD, columns * (tile + PAD) + PAD


@pytest.mark.parametrize("pairs, per_row", [(1, 4), (3, 4), (5, 4), (5, 2)])
def test_grid_shape_wraps_rows(pairs, per_row):
    dataset = CodedSamples(build_transforms([{"name": "random_crop", "size": 20}]))
    torch.manual_seed(0)
    sheet = preview_grid(dataset, pairs, PALETTE, per_row=per_row)
    assert sheet.dtype == np.uint8 and sheet.shape == (*sheet_size(20, pairs, per_row), 3)


def test_each_overlay_is_its_image_with_the_mask_it_came_with():
    # Exact geometry (flips, a padded crop): the image still encodes the mask pixel by pixel,
    # so each overlay tile must be the overlay of its image tile with the decoded mask.
    specs = [{"name": "hflip"}, {"name": "vflip"}, {"name": "random_crop", "size": 30}]
    dataset = CodedSamples(build_transforms(specs))
    torch.manual_seed(1)
    sheet = preview_grid(dataset, 6, PALETTE)  # more samples than the dataset holds: they repeat
    pieces = tiles(sheet, 30, 12, columns=8)
    for image, shown in zip(pieces[0::2], pieces[1::2]):
        decoded = np.full(image.shape[:2], -1)
        for value, level in LEVELS.items():
            decoded[image[..., 0] == level] = value
        assert (decoded >= 0).all()
        assert (decoded == 255).any() and (decoded == 1).any()  # padding and foreground both shown
        assert np.array_equal(shown, overlay(image, decoded, PALETTE))


def test_sheet_is_reproducible_under_a_seed():
    dataset = CodedSamples(build_transforms([{"name": "random_crop", "size": 16}, {"name": "hflip"}]))
    sheets = []
    for _ in range(2):
        torch.manual_seed(3)
        sheets.append(preview_grid(dataset, 5, PALETTE))
    assert np.array_equal(*sheets)


def test_mosaic_draws_from_the_dataset(binary_folder: Path):
    specs = [{"name": "random_crop", "size": 24}, {"name": "mosaic", "size": 48, "p": 1.0}, {"name": "normalize"}]
    dataset = FolderDataset(root=str(binary_folder), split="train", num_classes=2, mask_mapping="binary",
                            transforms=build_transforms(specs))
    torch.manual_seed(0)
    assert preview_grid(dataset, 2, PALETTE).shape == (*sheet_size(48, 2), 3)


def test_a_broken_image_is_named(binary_folder: Path):
    (binary_folder / "images" / "img_004.png").write_text("not an image\n")
    dataset = FolderDataset(root=str(binary_folder), split="all", num_classes=2, mask_mapping="binary",
                            transforms=build_transforms([{"name": "resize", "size": 16}]))
    with pytest.raises(DataError, match="img_004.png"):
        preview_grid(dataset, 12, PALETTE)


def test_bad_requests_raise():
    dataset = CodedSamples(build_transforms([]))
    with pytest.raises(ConfigError, match="at least 1, got 0"):
        preview_grid(dataset, 0, PALETTE)
    with pytest.raises(DataError, match="no samples"):
        preview_grid(CodedSamples(build_transforms([]), count=0), 2, PALETTE)
