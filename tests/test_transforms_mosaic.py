"""mosaic: four samples around a centre, the extra ones drawn through the transforms before it."""
import pickle

import pytest
import torch
from torchvision import tv_tensors

from datasets.folder import FolderDataset
from tests.fixtures_transforms import block_mask, image_of
from utils.constants import IGNORE_INDEX
from utils.transforms import build_transforms


#: Always a mosaic, samples pasted at their own size: placement is then easy to check by hand.
AS_IS = {"p": 1.0, "resize": False}


class ConstantSamples:
    """A sample source returning constant samples of class 2, 3, 4, ... in turn (image = class + 1)."""

    def __init__(self, size=(30, 40)):
        self.size = size
        self.calls = 0

    def __call__(self):
        self.calls += 1
        mask = tv_tensors.Mask(torch.full(self.size, self.calls + 1))
        return image_of(mask), mask


def mosaic_pipeline(specs, source):
    pipeline = build_transforms(specs)
    pipeline.bind_source(source)
    return pipeline


def test_mosaic_puts_four_samples_in_four_quadrants():
    mask = tv_tensors.Mask(torch.full((30, 40), 1))
    source = ConstantSamples()
    pipeline = mosaic_pipeline([{"name": "mosaic", "size": [40, 60], "center_range": [0.5, 0.5], **AS_IS}], source)
    out_image, out_mask = pipeline(image_of(mask), mask)
    assert out_image.shape == (3, 40, 60) and out_mask.shape == (40, 60) and source.calls == 3
    assert out_mask[:20, :30].eq(1).all() and out_mask[:20, 30:].eq(2).all()
    assert out_mask[20:, :30].eq(3).all() and out_mask[20:, 30:].eq(4).all()
    assert torch.equal(out_image, (out_mask + 1).float().expand_as(out_image))


def test_mosaic_samples_touch_the_centre_and_padding_is_ignore():
    mask = block_mask(10, 8, block=2)
    source = ConstantSamples(size=(10, 8))
    pipeline = mosaic_pipeline([{"name": "mosaic", "size": 40, "center_range": [0.5, 0.5], **AS_IS}], source)
    out_image, out_mask = pipeline(image_of(mask), mask)
    assert torch.equal(out_mask[10:20, 12:20], mask)  # bottom-right corner at the centre (20, 20)
    assert out_mask[10:20, 20:28].eq(2).all() and out_mask[20:30, 12:20].eq(3).all()
    assert out_mask[20:30, 20:28].eq(4).all()
    assert (out_mask == IGNORE_INDEX).sum() == 40 * 40 - 4 * 80
    assert torch.equal(out_image[0] == 0, out_mask == IGNORE_INDEX)


def test_mosaic_crops_large_samples_at_the_far_side():
    mask = block_mask(64, 48)
    source = ConstantSamples(size=(64, 48))
    torch.manual_seed(3)
    out_image, out_mask = mosaic_pipeline([{"name": "mosaic", "size": [32, 32], **AS_IS}], source)(image_of(mask), mask)
    top_left = out_mask[:, 0] == mask[-1, -1]  # rows of the current sample's crop
    cy = int((out_mask[:, 0] != 3).sum())  # the bottom-left sample is class 3
    cx = int((out_mask[0] != 2).sum())  # the top-right sample is class 2
    assert 8 <= cy <= 24 and 8 <= cx <= 24 and top_left.any()
    assert torch.equal(out_mask[:cy, :cx], mask[-cy:, -cx:])
    assert torch.equal(out_image, (out_mask + 1).float().expand_as(out_image))


def test_mosaic_extra_samples_go_through_the_transforms_before_it():
    # normalize with std 0.5 doubles, with std 0.25 quadruples: the extra samples must be
    # doubled before the mosaic (like the current one) and quadrupled once after it.
    mask = tv_tensors.Mask(torch.full((30, 40), 1))
    specs = [
        {"name": "normalize", "mean": [0.0], "std": [0.5]},
        {"name": "mosaic", "size": [40, 60], "center_range": [0.5, 0.5], **AS_IS},
        {"name": "normalize", "mean": [0.0], "std": [0.25]},
    ]
    out_image, out_mask = mosaic_pipeline(specs, ConstantSamples())(image_of(mask), mask)
    assert set(out_mask.unique().tolist()) == {1, 2, 3, 4}
    assert torch.equal(out_image, 8 * (out_mask + 1).float().expand_as(out_image))


def test_mosaic_without_a_source_raises_unless_p_is_zero():
    mask = block_mask()
    with pytest.raises(RuntimeError, match="mosaic.*bind_source"):
        build_transforms([{"name": "mosaic", "size": 32, "p": 1.0}])(image_of(mask), mask)
    out_image, out_mask = build_transforms([{"name": "mosaic", "size": 32, "p": 0.0}])(image_of(mask), mask)
    assert torch.equal(out_mask, mask) and torch.equal(out_image, image_of(mask))


def test_mosaic_without_a_mask_returns_none():
    image = tv_tensors.Image(torch.ones(3, 30, 40))
    pipeline = mosaic_pipeline([{"name": "mosaic", "size": [40, 60], "p": 1.0}], ConstantSamples())
    out_image, out_mask = pipeline(image, None)
    assert out_mask is None and out_image.shape == (3, 40, 60)


def test_mosaic_from_a_dataset(binary_folder):
    specs = [{"name": "random_crop", "size": 24}, {"name": "mosaic", "size": 40, "p": 1.0}, {"name": "normalize"}]
    dataset = FolderDataset(root=str(binary_folder), split="train", num_classes=2, mask_mapping="binary",
                            transforms=build_transforms(specs))
    torch.manual_seed(0)
    image, mask = dataset[0]
    assert image.shape == (3, 40, 40) and mask.shape == (40, 40)
    assert set(mask.unique().tolist()) <= {0, 1, IGNORE_INDEX}
    # The source is the dataset's bound method: the pipeline survives pickling (DataLoader workers).
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy[1][0].shape == (3, 40, 40)


# ---------------------------------------------------------- mmsegmentation's RandomMosaic


def test_mosaic_defaults_are_mmsegmentations():
    # RandomMosaic(prob=0.5, img_scale=(32, 32), center_ratio_range=(0.5, 1.5), pad_val=0, seg_pad_val=255):
    # the canvas is 2 * img_scale, the centre range (0.5, 1.5) of img_scale is (0.25, 0.75) of the canvas.
    mosaic = build_transforms([{"name": "mosaic", "size": 64}]).transforms[0]
    assert mosaic.size == [64, 64] and mosaic.p == 0.5 and mosaic.center_range == (0.25, 0.75)
    assert mosaic.resize is True and mosaic.pad_val == 0.0 and mosaic.seg_pad_val == IGNORE_INDEX == 255


def test_mosaic_resizes_each_sample_keeping_its_ratio_to_half_the_canvas():
    # 40 x 40 canvas, centre (20, 20): a sample must fit 20 x 20. The current 10 x 8 sample is enlarged by
    # min(20/10, 20/8) = 2 to 20 x 16; the 30 x 40 extra samples are shrunk by min(20/30, 20/40) = 0.5 to 15 x 20.
    mask = block_mask(10, 8, block=2)
    source = ConstantSamples(size=(30, 40))
    pipeline = mosaic_pipeline([{"name": "mosaic", "size": 40, "center_range": [0.5, 0.5], "p": 1.0}], source)
    out_image, out_mask = pipeline(image_of(mask), mask)
    assert out_image.shape == (3, 40, 40) and out_mask.shape == (40, 40)
    assert torch.equal(out_mask[0:20, 4:20], mask.repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert out_mask[5:20, 20:40].eq(2).all() and out_mask[20:35, 0:20].eq(3).all()
    assert out_mask[20:35, 20:40].eq(4).all()
    assert (out_mask == IGNORE_INDEX).sum() == 40 * 40 - 20 * 16 - 3 * 15 * 20
    assert out_mask[:20, :4].eq(IGNORE_INDEX).all() and out_mask[:5, 20:].eq(IGNORE_INDEX).all()
    assert out_mask[35:].eq(IGNORE_INDEX).all()


def test_mosaic_canvas_has_the_requested_size_and_the_pad_values():
    mask = block_mask(24, 16, block=4)
    pad_val = 114 / 255
    spec = {"name": "mosaic", "size": [41, 63], "p": 1.0, "pad_val": pad_val, "seg_pad_val": IGNORE_INDEX}
    for seed in range(3):
        torch.manual_seed(seed)
        out_image, out_mask = mosaic_pipeline([spec], ConstantSamples(size=(30, 40)))(image_of(mask), mask)
        assert out_image.shape == (3, 41, 63) and out_mask.shape == (41, 63)
        uncovered = out_mask == IGNORE_INDEX
        assert uncovered.any() and (~uncovered).any()
        assert torch.equal(out_image == torch.tensor(pad_val, dtype=out_image.dtype), uncovered.expand_as(out_image))


def test_mosaic_probability_is_measured_over_many_draws():
    mask = tv_tensors.Mask(torch.zeros(4, 4, dtype=torch.int64))
    source = ConstantSamples(size=(4, 4))
    pipeline = mosaic_pipeline([{"name": "mosaic", "size": 8, "resize": False}], source)  # default p 0.5
    torch.manual_seed(0)
    made = sum(pipeline(image_of(mask), mask)[0].shape[-1] == 8 for _ in range(2000))
    assert abs(made / 2000 - 0.5) <= 0.05 and source.calls == 3 * made
