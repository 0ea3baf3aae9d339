"""U-Net border weight maps: hand-computed weights, the weighted bce / ce, gradients, the cache, config keys."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from tests.conftest import minimal_config
from utils.config import config_from_dict
from utils.constants import IGNORE_INDEX
from utils.errors import ConfigError
from utils.losses import BCELoss, CrossEntropyLoss, build_loss
from utils.losses.border import BorderWeights, border_weight_map, two_nearest_distances

I = IGNORE_INDEX


def two_squares() -> np.ndarray:
    """5 x 11: two 3 x 3 squares of class 1 at columns 1-3 and 5-7, a 1-pixel gap (column 4) between them."""
    mask = np.zeros((5, 11), dtype=np.int64)
    mask[1:4, 1:4] = 1
    mask[1:4, 5:8] = 1
    return mask


def unet_term(d1: float, d2: float, w0: float = 10.0, sigma: float = 5.0) -> float:
    return w0 * math.exp(-((d1 + d2) ** 2) / (2 * sigma ** 2))


def test_two_squares_hand_computed():
    weights = border_weight_map(two_squares(), w0=10.0, sigma=5.0)
    # gap pixel (2, 4): one pixel from each square
    assert weights[2, 4] == pytest.approx(1 + unet_term(1, 1), rel=1e-6)
    # far corner (0, 10): nearest pixels (1, 7) at sqrt(1 + 9) and (1, 3) at sqrt(1 + 49)
    assert weights[0, 10] == pytest.approx(1 + unet_term(math.sqrt(10), math.sqrt(50)), rel=1e-6)
    # inside the left square at (2, 1): d1 = 0, d2 = 4 (to (2, 5))
    assert weights[2, 1] == pytest.approx(1 + unet_term(0, 4), rel=1e-6)
    assert weights.dtype == np.float32 and weights.shape == (5, 11)
    assert weights[2, 4] == weights.max()  # highest on the separating line


def test_distances_of_two_squares():
    d1, d2 = two_nearest_distances(two_squares())
    assert (d1[2, 4], d2[2, 4]) == (1.0, 1.0)
    assert d1[0, 10] == pytest.approx(math.sqrt(10)) and d2[0, 10] == pytest.approx(math.sqrt(50))


def test_fewer_than_two_objects_have_no_border_term():
    one = np.zeros((6, 6), dtype=np.int64)
    one[1:3, 1:3] = 1
    d1, d2 = two_nearest_distances(one)
    assert np.isinf(d2).all() and d1[1, 1] == 0 and d1[5, 5] == pytest.approx(math.sqrt(9 + 9))
    assert np.array_equal(border_weight_map(one), np.ones((6, 6), np.float32))
    assert np.array_equal(border_weight_map(np.zeros((4, 4), np.int64)), np.ones((4, 4), np.float32))


def test_objects_are_components_per_class_and_ignore_gets_zero():
    # Two touching squares of different classes are two objects; IGNORE pixels weigh 0 and are no object.
    mask = np.zeros((4, 8), dtype=np.int64)
    mask[1:3, 1:4] = 1
    mask[1:3, 4:7] = 2
    mask[0, 0] = I
    weights = border_weight_map(mask, w0=10.0, sigma=5.0)
    assert weights[0, 0] == 0.0
    # (1, 3) is in the class 1 square, one pixel from the class 2 one
    assert weights[1, 3] == pytest.approx(1 + unet_term(0, 1), rel=1e-6)
    merged = border_weight_map(np.where(mask == 2, 1, mask), w0=10.0, sigma=5.0)
    assert merged[1, 3] == 1.0  # one class: one object, no border term


def test_class_balance_weighs_each_class_present_the_same():
    mask = two_squares()
    mask[0, 0] = I
    weights = border_weight_map(mask, w0=0.0, class_balance=True)
    n_fg, n_bg = 18, 5 * 11 - 18 - 1
    assert weights[2, 2] == pytest.approx(54 / (2 * n_fg)) and weights[0, 5] == pytest.approx(54 / (2 * n_bg))
    assert weights[0, 0] == 0 and weights[mask == 1].sum() == pytest.approx(weights[mask == 0].sum())
    with_border = border_weight_map(mask, w0=10.0, sigma=5.0, class_balance=True)
    assert with_border[2, 4] == pytest.approx(54 / (2 * n_bg) + unet_term(1, 1), rel=1e-6)


def test_windowed_distances_match_full_ones_where_the_term_matters():
    blobs = ndimage.gaussian_filter(np.random.default_rng(0).random((96, 96)), 3) > 0.52
    mask = blobs.astype(np.int64)
    assert ndimage.label(mask)[1] > 10
    d1, d2 = two_nearest_distances(mask)  # no window: exact everywhere
    exact = 1 + 10.0 * np.exp(-((d1 + d2) ** 2) / (2 * 5.0 ** 2))
    assert np.abs(border_weight_map(mask) - exact).max() < 10.0 * 1e-6 + 1e-6


def test_volumes_use_the_same_rule():
    volume = np.zeros((3, 5, 11), dtype=np.int64)
    volume[1] = two_squares()
    weights = border_weight_map(volume)
    assert weights.shape == (3, 5, 11)
    assert weights[1, 2, 4] == pytest.approx(1 + unet_term(1, 1), rel=1e-6)
    # one slice away from the gap: distance sqrt(2) to each square
    assert weights[0, 2, 4] == pytest.approx(1 + unet_term(math.sqrt(2), math.sqrt(2)), rel=1e-6)


# ---------------------------------------------------------- the losses


def bce_pos(x: float) -> float:
    return math.log(1.0 + math.exp(-x))


def bce_neg(x: float) -> float:
    return math.log(1.0 + math.exp(x))


#: 1 x 5 target [1, 0, 1, 0, 0] with w0 = 10, sigma = 1: objects at columns 0 and 2.
ROW = [1, 0, 1, 0, 0]
ROW_WEIGHTS = [1 + 10 * math.exp(-4 / 2),  # d1 = 0, d2 = 2
               1 + 10 * math.exp(-4 / 2),  # d1 = d2 = 1
               1 + 10 * math.exp(-4 / 2),  # d1 = 0, d2 = 2
               1 + 10 * math.exp(-16 / 2),  # d1 = 1, d2 = 3
               1 + 10 * math.exp(-36 / 2)]  # d1 = 2, d2 = 4
LOGITS = [0.0, 1.0, -2.0, 3.0, 0.5]


def test_border_weights_of_the_row():
    weights = border_weight_map(np.array([ROW]), w0=10.0, sigma=1.0)
    assert np.allclose(weights[0], ROW_WEIGHTS, rtol=1e-6)


def test_bce_with_border_weights_is_the_weighted_mean():
    logits = torch.tensor(LOGITS)[None, None, None].requires_grad_()
    target = torch.tensor([[ROW]])
    terms = [bce_pos(x) if y else bce_neg(x) for x, y in zip(LOGITS, ROW)]
    expected = sum(w * t for w, t in zip(ROW_WEIGHTS, terms)) / sum(ROW_WEIGHTS)
    loss = BCELoss(border_w0=10.0, border_sigma=1.0)(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    # d loss / d x_i = w_i (sigmoid(x_i) - y_i) / sum(w)
    sig = torch.sigmoid(torch.tensor(LOGITS))
    expected_grad = torch.tensor(ROW_WEIGHTS) * (sig - torch.tensor(ROW, dtype=torch.float32)) / sum(ROW_WEIGHTS)
    assert torch.allclose(logits.grad[0, 0, 0], expected_grad, atol=1e-6)


def test_ce_with_border_and_class_weights_is_the_weighted_mean():
    # Two channels with logits (0, x): the softmax CE of a pixel equals the BCE of logit x.
    logits = torch.stack([torch.zeros(5), torch.tensor(LOGITS)])[None, :, None].requires_grad_()
    target = torch.tensor([[ROW[:4] + [I]]])
    class_weights = [1.0, 2.0]
    terms = [bce_pos(x) if y else bce_neg(x) for x, y in zip(LOGITS, ROW)][:4]
    # the ignored last pixel is background for the objects, so the weights of the first four stay
    pixel = [class_weights[y] * w for y, w in zip(ROW[:4], ROW_WEIGHTS[:4])]
    expected = sum(p * t for p, t in zip(pixel, terms)) / sum(pixel)
    loss = CrossEntropyLoss(class_weights=class_weights, border_w0=10.0, border_sigma=1.0)(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[..., :4].abs().sum() > 0
    assert logits.grad[..., 4].eq(0).all()


def test_off_by_default_and_zero_w0_without_balance_changes_nothing():
    logits = torch.randn(2, 1, 6, 7, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 2, (2, 6, 7), generator=torch.Generator().manual_seed(1))
    assert BCELoss().border_weights is None and CrossEntropyLoss().border_weights is None
    assert BCELoss(border_w0=0.0).border_weights is None
    assert torch.equal(BCELoss(border_w0=0.0)(logits, target), BCELoss()(logits, target))


def test_cache_computes_each_mask_once_and_stays_bounded():
    weights = BorderWeights(w0=10.0, sigma=5.0, cache_bytes=2 * 5 * 11 * 4)  # two float32 5 x 11 maps
    mask = torch.from_numpy(two_squares())
    first = weights.map(mask)
    assert weights.map(mask.clone()) is first and weights.computed == 1
    batch = weights(torch.stack([mask, mask]))
    assert batch.shape == (2, 5, 11) and weights.computed == 1
    others = [mask.roll(1, 0), mask.roll(1, 1)]
    for other in others:
        weights.map(other)
    assert weights.computed == 3
    assert weights.map(others[1]) is not None and weights.computed == 3  # still cached
    assert weights.map(mask) is not first and weights.computed == 4  # evicted: computed again


def test_the_loss_reuses_its_cache_across_calls():
    loss = BCELoss(border_w0=10.0)
    target = torch.from_numpy(two_squares())[None]
    logits = torch.zeros(1, 1, 5, 11)
    loss(logits, target)
    loss(logits + 1, target)
    assert loss.border_weights.computed == 1


def test_config_keys_are_typed_and_checked(binary_folder):
    raw = minimal_config(binary_folder, loss=[{"name": "bce", "border_w0": 10, "border_sigma": 5}])
    cfg = config_from_dict(raw)
    criterion = build_loss(cfg.loss)
    assert criterion.losses[0].border_weights.w0 == 10.0 and criterion.losses[0].border_weights.sigma == 5.0
    raw["loss"][0]["border_w0"] = "ten"
    with pytest.raises(ConfigError, match=r"loss\[0\]\.border_w0"):
        config_from_dict(raw)
    balanced = build_loss([{"name": "ce", "border_class_balance": True}]).losses[0].border_weights
    assert balanced.w0 == 0.0 and balanced.class_balance
    with pytest.raises(ConfigError, match="border_sigma must be a number > 0"):
        build_loss([{"name": "bce", "border_w0": 10.0, "border_sigma": 0.0}])
    with pytest.raises(ConfigError, match="border_w0 must be a number >= 0"):
        CrossEntropyLoss(border_w0=-1.0)
