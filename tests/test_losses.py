"""Losses: values against hand-computed numbers, ignore_index, weights, the combined loss and its builder."""
import math
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from utils.constants import IGNORE_INDEX
from utils.losses import BCELoss, CombinedLoss, CrossEntropyLoss, DiceLoss, build_loss, presence_bce
from utils.model_output import ClassGuidedOutput
from utils.registry import LOSSES

I = IGNORE_INDEX


def bce_pos(x: float) -> float:
    """-log(sigmoid(x)): the loss of logit x when the target is 1."""
    return math.log(1.0 + math.exp(-x))


def bce_neg(x: float) -> float:
    """-log(1 - sigmoid(x)): the loss of logit x when the target is 0."""
    return math.log(1.0 + math.exp(x))


def grid(values: list) -> torch.Tensor:
    """(1, 1, H, W) float logits from a nested list."""
    return torch.tensor(values, dtype=torch.float32)[None, None]


def close(value: torch.Tensor, expected: float) -> bool:
    return abs(value.item() - expected) < 1e-5


# --------------------------------------------------------------------- bce


def test_bce_one_channel_hand_computed() -> None:
    logits = grid([[0.0, 1.0], [-2.0, 3.0]])
    target = torch.tensor([[[1, 0], [I, 1]]])
    expected = (bce_pos(0.0) + bce_neg(1.0) + bce_pos(3.0)) / 3  # ignored pixel left out
    assert close(BCELoss()(logits, target), expected)
    assert close(BCELoss()(logits, target), (math.log(2) + math.log(1 + math.e) + math.log(1 + math.exp(-3))) / 3)


def test_bce_pos_weight_scales_positive_terms() -> None:
    logits = grid([[0.0, 1.0], [-2.0, 3.0]])
    target = torch.tensor([[[1, 0], [I, 1]]])
    expected = (3 * bce_pos(0.0) + bce_neg(1.0) + 3 * bce_pos(3.0)) / 3
    assert close(BCELoss(pos_weight=3.0)(logits, target), expected)


def test_bce_multichannel_is_one_hot_per_channel_mean() -> None:
    logits = torch.tensor([[[[2.0, -1.0]], [[0.5, 0.0]], [[-1.0, 4.0]]]])  # (1, 3, 1, 2)
    target = torch.tensor([[[2, 0]]])
    # pixel 0 (class 2): channels 0, 1 negative, channel 2 positive; pixel 1 (class 0)
    expected = (bce_neg(2.0) + bce_neg(0.5) + bce_pos(-1.0) + bce_pos(-1.0) + bce_neg(0.0) + bce_neg(4.0)) / 6
    assert close(BCELoss()(logits, target), expected)


@pytest.mark.parametrize("channels, bad", [(1, 2), (3, 3), (3, -1)])
def test_bce_rejects_labels_outside_the_classes(channels: int, bad: int) -> None:
    target = torch.tensor([[[0, bad]]])
    with pytest.raises(ValueError, match=rf"bce: target contains \[{bad}\], outside the classes"):
        BCELoss()(torch.zeros(1, channels, 1, 2), target)


def test_bce_bad_pos_weight() -> None:
    with pytest.raises(ValueError, match="pos_weight must be a positive number"):
        BCELoss(pos_weight=0.0)


# --------------------------------------------------------------------- ce


def test_ce_hand_computed_with_class_weights() -> None:
    logits = torch.tensor([[[[1.0, 0.0, 0.0]], [[0.0, 2.0, 0.0]], [[0.0, 0.0, 0.0]]]])  # (1, 3, 1, 3)
    target = torch.tensor([[[0, 2, I]]])

    def nll(column: list, cls: int) -> float:
        return -column[cls] + math.log(sum(math.exp(v) for v in column))

    l0, l1 = nll([1.0, 0.0, 0.0], 0), nll([0.0, 2.0, 0.0], 2)
    assert close(CrossEntropyLoss()(logits, target), (l0 + l1) / 2)
    weighted = CrossEntropyLoss(class_weights=[1.0, 5.0, 0.5])(logits, target)
    assert close(weighted, (1.0 * l0 + 0.5 * l1) / (1.0 + 0.5))


def test_ce_matches_torch_semantics() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = I
    weights = [0.2, 1.0, 3.0, 0.7]
    for smoothing in (0.0, 0.1):
        ours = CrossEntropyLoss(class_weights=weights, label_smoothing=smoothing)(logits, target)
        ref = F.cross_entropy(logits, target, weight=torch.tensor(weights), ignore_index=I,
                              label_smoothing=smoothing)
        assert torch.allclose(ours, ref, atol=1e-6)


def test_ce_needs_two_channels() -> None:
    with pytest.raises(ValueError, match="use the 'bce' loss.*out_channels: 2"):
        CrossEntropyLoss()(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_ce_class_weights_length_must_match_channels() -> None:
    loss = CrossEntropyLoss(class_weights=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="class_weights has 3 entries but the logits have 2 channels"):
        loss(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_ce_bad_arguments() -> None:
    with pytest.raises(ValueError, match="label_smoothing"):
        CrossEntropyLoss(label_smoothing=1.0)
    with pytest.raises(ValueError, match="class_weights"):
        CrossEntropyLoss(class_weights=[1.0, -1.0])


def test_binary_sigmoid_bce_equals_two_channel_ce() -> None:
    torch.manual_seed(0)
    z = torch.randn(2, 1, 4, 5)
    target = torch.randint(0, 2, (2, 4, 5))
    target[1, 0] = I
    two = torch.cat([torch.zeros_like(z), z], dim=1)  # softmax([0, z])[1] == sigmoid(z)
    assert torch.allclose(BCELoss()(z, target), CrossEntropyLoss()(two, target), atol=1e-6)


# --------------------------------------------------------------------- dice


def test_dice_binary_hand_computed() -> None:
    logits = grid([[0.0, 0.0], [0.0, 0.0]])  # every probability 0.5
    # intersection 0.5 + 0.5 = 1, sum p = 2, sum t = 2 -> (2 + 1) / (4 + 1)
    assert close(DiceLoss(smooth=1.0)(logits, torch.tensor([[[1, 0], [0, 1]]])), 1 - 3 / 5)
    # ignored pixel left out: sum p = 1.5 -> (2 + 1) / (3.5 + 1)
    target = torch.tensor([[[1, 0], [I, 1]]])
    assert close(DiceLoss(smooth=1.0)(logits, target), 1 - 3 / 4.5)
    assert close(DiceLoss(smooth=1.0, log_loss=True)(logits, target), -math.log(3 / 4.5))


def test_dice_multiclass_hand_computed_absent_class_left_out() -> None:
    logits = torch.zeros(1, 3, 1, 3)  # every probability 1/3
    target = torch.tensor([[[0, 1, 1]]])  # class 2 absent from the target
    dice0 = (2 * (1 / 3)) / (1 + 1)  # intersection 1/3, sum p 1, sum t 1
    dice1 = (2 * (2 / 3)) / (1 + 2)  # intersection 2/3, sum p 1, sum t 2
    with_bg = DiceLoss(smooth=0.0, include_background=True)(logits, target)
    assert close(with_bg, 1 - (dice0 + dice1) / 2)
    assert close(DiceLoss(smooth=0.0)(logits, target), 1 - dice1)  # default: background excluded


def test_dice_no_class_present_gives_zero() -> None:
    logits = torch.randn(1, 1, 3, 3, requires_grad=True)
    loss = DiceLoss()(logits, torch.zeros(1, 3, 3, dtype=torch.long))  # no foreground at all
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize("channels", [1, 3])
def test_dice_perfect_and_totally_wrong(channels: int) -> None:
    target = torch.tensor([[[0, 1, 1, 0], [1, 1, 0, 0]]])
    if channels == 3:
        target[0, 0, 0] = 2
        onehot = F.one_hot(target, 3).permute(0, 3, 1, 2).float()
    else:
        onehot = target[:, None].float()
    perfect = (onehot * 2 - 1) * 50
    loss = DiceLoss(smooth=1e-6, include_background=True)
    assert loss(perfect, target).item() < 1e-4
    assert loss(-perfect, target).item() > 0.999


def test_dice_one_channel_equals_two_channel_without_background() -> None:
    torch.manual_seed(0)
    z = torch.randn(2, 1, 6, 5)
    target = torch.randint(0, 2, (2, 6, 5))
    target[0, 0] = I
    two = torch.cat([torch.zeros_like(z), z], dim=1)
    assert torch.allclose(DiceLoss()(z, target), DiceLoss(include_background=False)(two, target), atol=1e-6)


def test_dice_bad_smooth() -> None:
    with pytest.raises(ValueError, match="smooth must be >= 0"):
        DiceLoss(smooth=-1.0)


# --------------------------------------------------------------------- ignore_index, all losses

LOSS_CASES = [
    ("bce-1ch", lambda: BCELoss(), 1),
    ("bce-3ch", lambda: BCELoss(pos_weight=2.0), 3),
    ("ce", lambda: CrossEntropyLoss(class_weights=[1.0, 2.0, 0.5], label_smoothing=0.1), 3),
    ("dice-1ch", lambda: DiceLoss(), 1),
    ("dice-3ch", lambda: DiceLoss(include_background=True, log_loss=True), 3),
]


@pytest.mark.parametrize("label, factory, channels", LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_ignored_pixels_do_not_matter(label: str, factory: Callable, channels: int) -> None:
    torch.manual_seed(0)
    target = torch.randint(0, max(channels, 2), (2, 4, 4))
    ignored = torch.zeros_like(target, dtype=torch.bool)
    ignored[:, 1:3, 2:] = True
    target[ignored] = I
    logits = torch.randn(2, channels, 4, 4, requires_grad=True)
    loss = factory()(logits, target)
    loss.backward()
    assert torch.equal(logits.grad.permute(0, 2, 3, 1)[ignored], torch.zeros(int(ignored.sum()), channels))
    changed = logits.detach().clone()
    changed.permute(0, 2, 3, 1)[ignored] = 100.0
    assert torch.allclose(factory()(changed, target), loss.detach())


@pytest.mark.parametrize("label, factory, channels", LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_all_ignored_batch_gives_zero_without_nan(label: str, factory: Callable, channels: int) -> None:
    logits = torch.randn(2, channels, 3, 3, requires_grad=True)
    loss = factory()(logits, torch.full((2, 3, 3), I))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"dice: expected logits \(N, C, H, W\) and target \(N, H, W\)"):
        DiceLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer class indices"):
        BCELoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4))


# --------------------------------------------------------------------- combined loss and builder


def test_combined_loss_is_weighted_sum_with_parts() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(2, 1, 5, 5), torch.randint(0, 2, (2, 5, 5))
    bce, dice = BCELoss()(logits, target).item(), DiceLoss()(logits, target).item()
    combined = CombinedLoss([("bce", 2.0, BCELoss()), ("dice", 0.5, DiceLoss()), ("dice", 1.0, DiceLoss(smooth=0.0))])
    total, loss_terms = combined(logits, target)
    dice0 = DiceLoss(smooth=0.0)(logits, target).item()
    assert list(loss_terms) == ["bce", "dice", "dice_1"]
    assert loss_terms["bce"] == pytest.approx(bce) and loss_terms["dice"] == pytest.approx(dice)
    assert loss_terms["dice_1"] == pytest.approx(dice0)
    assert all(isinstance(v, float) for v in loss_terms.values())
    assert total.item() == pytest.approx(2.0 * bce + 0.5 * dice + dice0)


def test_build_loss_from_specs() -> None:
    specs = [{"name": "bce", "weight": 2.0, "pos_weight": 3.0}, {"name": "dice", "smooth": 0.5}]
    criterion = build_loss(specs)
    assert specs[0] == {"name": "bce", "weight": 2.0, "pos_weight": 3.0}  # not mutated
    assert criterion.names == ["bce", "dice"] and criterion.weights == [2.0, 1.0]
    assert isinstance(criterion.losses[0], BCELoss) and criterion.losses[0].pos_weight == 3.0
    assert isinstance(criterion.losses[1], DiceLoss) and criterion.losses[1].smooth == 0.5
    logits = torch.zeros(1, 1, 2, 2, requires_grad=True)
    total, loss_terms = criterion(logits, torch.tensor([[[1, 0], [0, 1]]]))
    total.backward()
    assert total.item() == pytest.approx(2.0 * (2 * 3 * math.log(2) + 2 * math.log(2)) / 4 + (1 - 2.5 / 4.5))
    assert logits.grad is not None


def test_build_loss_errors() -> None:
    with pytest.raises(ValueError, match="at least one loss"):
        build_loss([])
    with pytest.raises(KeyError, match=r"unknown loss 'dise'.*bce, ce, dice.*did you mean 'dice'"):
        build_loss([{"name": "dise"}])
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        build_loss([{"name": "bce", "weight": -1.0}])
    with pytest.raises(ValueError, match="'name' key"):
        build_loss([{"weight": 1.0}])


def test_registry_names() -> None:
    assert {"bce", "ce", "dice"} <= set(LOSSES.names())


# --------------------------------------------------------------------- model outputs: precision, CGM


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_combined_loss_casts_low_precision_outputs_to_float32(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    low = (torch.randn(2, 1, 6, 6) * 3).to(dtype).requires_grad_()
    target = torch.randint(0, 2, (2, 6, 6))
    criterion = build_loss([{"name": "bce"}, {"name": "dice"}])
    total, loss_terms = criterion(low, target)
    reference, _ = criterion(low.detach().float(), target)
    assert total.dtype == torch.float32 and total.item() == reference.item()
    total.backward()
    assert low.grad is not None and low.grad.dtype == dtype
    ds_total, _ = criterion([low, low[..., :3, :3]], target)  # each list entry is cast (and resized)
    assert ds_total.dtype == torch.float32


def test_presence_bce_hand_computed_with_ignored_pixels() -> None:
    # image 0: a foreground pixel -> present; image 1: background and ignored pixels only -> absent
    target = torch.tensor([[[0, 1], [0, 0]], [[0, I], [I, 0]]])
    cls_logits = torch.tensor([[0.5, 2.0], [-1.0, 3.0]])  # [absent, present]
    expected = (bce_neg(0.5) + bce_pos(2.0) + bce_pos(-1.0) + bce_neg(3.0)) / 4
    assert close(presence_bce(cls_logits, target), expected)
    with pytest.raises(ValueError, match=r"cls: expected class logits \(N, 2\) for a target of 2 images, got \(2, 3\)"):
        presence_bce(torch.zeros(2, 3), target)


@pytest.mark.parametrize("deep_supervision", [False, True])
def test_combined_loss_adds_the_cls_term_for_class_guided_outputs(deep_supervision: bool) -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 4, 4)
    seg = [logits, torch.randn(2, 1, 2, 2)] if deep_supervision else logits
    target = torch.tensor([[[0, 1, 0, 0]] * 4, [[0, 0, 0, I]] * 4])
    cls_logits = torch.tensor([[0.5, 2.0], [-1.0, 3.0]], dtype=torch.bfloat16, requires_grad=True)
    criterion = build_loss([{"name": "bce"}])
    seg_total, seg_terms = criterion(seg, target)
    total, loss_terms = criterion(ClassGuidedOutput(seg, cls_logits), target)
    cls = (bce_neg(0.5) + bce_pos(2.0) + bce_pos(-1.0) + bce_neg(3.0)) / 4
    assert list(loss_terms) == list(seg_terms) + ["cls"]
    assert loss_terms["cls"] == pytest.approx(cls, abs=1e-5)
    assert total.item() == pytest.approx(seg_total.item() + cls, abs=1e-5)
    total.backward()
    assert cls_logits.grad is not None and cls_logits.grad.abs().sum() > 0


def test_class_guided_output_float_casts_every_tensor() -> None:
    half = ClassGuidedOutput([torch.ones(1, 1, 2, 2, dtype=torch.float16)] * 2, torch.zeros(1, 2, dtype=torch.bfloat16))
    out = half.float()
    assert [o.dtype for o in out.logits] == [torch.float32] * 2 and out.cls_logits.dtype == torch.float32


def test_combined_loss_rejects_other_outputs() -> None:
    with pytest.raises(TypeError, match="expected a logits tensor, a list of them, a ClassGuidedOutput or an AuxiliaryOutput, got dict"):
        build_loss([{"name": "bce"}])({"out": torch.zeros(1, 1, 2, 2)}, torch.zeros(1, 2, 2, dtype=torch.long))
