"""Metrics: confusion matrices and scores from tiny hand-made tensors, ignore_index, batching, errors."""
import json

import pytest
import torch

from utils.constants import IGNORE_INDEX
from utils.metrics import ConfusionMatrix, format_metrics, per_image_scores, scalar_metric_names

I = IGNORE_INDEX

# pixels (target, pred): (0,0) (1,1) (1,2) / (2,2) (2,0) (0,0)
TARGET = torch.tensor([[0, 1, 1], [2, 2, 0]])
PRED = torch.tensor([[0, 1, 2], [2, 0, 0]])
MATRIX = [[2, 0, 0],
          [0, 1, 1],
          [1, 0, 1]]
# per class from MATRIX: TP, ground-truth count, predicted count
IOU = [2 / (2 + 3 - 2), 1 / (2 + 1 - 1), 1 / (2 + 2 - 1)]  # 2/3, 1/2, 1/3
DICE = [2 * 2 / (2 + 3), 2 * 1 / (2 + 1), 2 * 1 / (2 + 2)]  # 4/5, 2/3, 1/2


def test_confusion_matrix_by_hand() -> None:
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    assert cm.mat.tolist() == MATRIX and cm.mat.dtype == torch.int64


def test_scores_by_hand() -> None:
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    r = cm.compute()
    assert r["pixel_accuracy"] == pytest.approx(4 / 6)
    assert list(r["iou_per_class"].values()) == pytest.approx(IOU)
    assert list(r["dice_per_class"].values()) == pytest.approx(DICE)
    assert list(r["iou_per_class"]) == ["class_0", "class_1", "class_2"]
    assert r["miou"] == pytest.approx(sum(IOU) / 3) and r["miou"] == pytest.approx(0.5)
    assert r["mean_dice"] == pytest.approx(sum(DICE) / 3)
    assert r["miou_no_background"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert r["mean_dice_no_background"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert r["num_pixels"] == 6 and r["confusion_matrix"] == MATRIX
    assert "iou_foreground" not in r and "dice_foreground" not in r
    json.dumps(r, allow_nan=False)


def test_batched_update_with_leading_dimension() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.stack([PRED, PRED]), torch.stack([TARGET, TARGET]))
    assert cm.mat.tolist() == [[2 * v for v in row] for row in MATRIX]


def test_ignored_pixels_are_skipped() -> None:
    target = torch.tensor([[0, 1, 1, I], [2, 2, 0, I]])
    pred = torch.tensor([[0, 1, 2, 1], [2, 0, 0, 7]])  # even out-of-range predictions there are not counted
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    assert cm.mat.tolist() == MATRIX and cm.compute()["num_pixels"] == 6


def test_custom_ignore_index() -> None:
    cm = ConfusionMatrix(3, ignore_index=2)
    cm.update(PRED, TARGET)
    assert cm.mat.tolist() == [[2, 0, 0], [0, 1, 1], [0, 0, 0]]


def test_absent_class_is_none_and_left_out_of_means() -> None:
    cm = ConfusionMatrix(3, class_names=["bg", "cat", "dog"])
    cm.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [0, 1]]))
    r = cm.compute()
    # class 0: TP 1, gt 2, pred 1 -> IoU 1/2, Dice 2/3; class 1: TP 2, gt 2, pred 3 -> IoU 2/3, Dice 4/5
    assert r["iou_per_class"] == pytest.approx({"bg": 1 / 2, "cat": 2 / 3, "dog": None})
    assert r["dice_per_class"]["dog"] is None
    assert r["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert r["mean_dice"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert r["miou_no_background"] == pytest.approx(2 / 3)
    assert "nan" not in json.dumps(r, allow_nan=False).lower()


def test_class_predicted_but_absent_from_truth_scores_zero() -> None:
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[2, 1]]), torch.tensor([[1, 1]]))
    r = cm.compute()
    assert r["iou_per_class"]["class_2"] == 0.0 and r["iou_per_class"]["class_0"] is None
    assert r["miou"] == pytest.approx((1 / 2 + 0.0) / 2)


def test_binary_foreground_keys_and_names() -> None:
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([[0, 1, 1, 0]]), torch.tensor([[0, 1, 0, 1]]))
    r = cm.compute()
    # class 1: TP 1, FP 1, FN 1 -> IoU 1/3, Dice 1/2; class 0 the same by symmetry
    assert r["iou_foreground"] == pytest.approx(1 / 3) and r["dice_foreground"] == pytest.approx(1 / 2)
    assert r["miou_no_background"] == r["iou_foreground"]
    assert list(r["dice_per_class"]) == ["background", "foreground"]
    assert set(scalar_metric_names(2)) == {k for k, v in r.items() if isinstance(v, float)}
    assert set(scalar_metric_names(3)) == {"pixel_accuracy", "miou", "mean_dice", "miou_no_background",
                                           "mean_dice_no_background"}


def test_definitions_describe_every_key() -> None:
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))
    r = cm.compute()
    assert set(r["definitions"]) == set(r) - {"definitions"}
    assert "all 2 classes including background (class 0)" in r["definitions"]["miou"]
    assert "dataset-level" in r["definitions"]["mean_dice"]


def test_batch_size_does_not_change_results() -> None:
    gen = torch.Generator().manual_seed(0)
    target = torch.randint(0, 4, (8, 13, 17), generator=gen)
    target[torch.rand(8, 13, 17, generator=gen) < 0.1] = I
    pred = torch.randint(0, 4, (8, 13, 17), generator=gen)
    one_by_one, all_at_once = ConfusionMatrix(4), ConfusionMatrix(4)
    for i in range(8):
        one_by_one.update(pred[i:i + 1], target[i:i + 1])
    all_at_once.update(pred, target)
    assert one_by_one.compute() == all_at_once.compute()
    counted = target != I
    assert all_at_once.compute()["num_pixels"] == int(counted.sum())
    expected_acc = (pred[counted] == target[counted]).double().mean().item()
    assert all_at_once.compute()["pixel_accuracy"] == pytest.approx(expected_acc)


def test_reset_and_reduce_without_process_group() -> None:
    cm = ConfusionMatrix(3)
    cm.update(PRED, TARGET)
    cm.reduce_from_all_processes()  # not distributed: unchanged
    assert cm.mat.tolist() == MATRIX
    cm.reset()
    assert cm.mat.sum().item() == 0
    r = cm.compute()
    assert r["pixel_accuracy"] is None and r["miou"] is None and r["num_pixels"] == 0


@pytest.mark.parametrize("pred, target, message", [
    (torch.tensor([[0, 1]]), torch.tensor([[0, 3]]), r"target contains \[3\], outside the classes 0..2"),
    (torch.tensor([[0, -1]]), torch.tensor([[0, 1]]), r"pred contains \[-1\]"),
    (torch.tensor([[0, 1, 2]]), torch.tensor([[0, 1]]), "same shape"),
    (torch.tensor([[0.0, 1.0]]), torch.tensor([[0, 1]]), "pred must hold integer class indices"),
    (torch.zeros(1, 1, 1, 2, 2, dtype=torch.long), torch.zeros(1, 1, 1, 2, 2, dtype=torch.long), "same shape"),
])
def test_bad_updates_raise(pred: torch.Tensor, target: torch.Tensor, message: str) -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=message):
        cm.update(pred, target)
    assert cm.mat.sum().item() == 0


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        ConfusionMatrix(1)
    with pytest.raises(ValueError, match="class_names must be 3 distinct names"):
        ConfusionMatrix(3, class_names=["a", "b"])


def test_format_metrics_line() -> None:
    binary = {"miou": 0.81234, "mean_dice": 0.89011, "dice_foreground": 0.85123, "iou_foreground": 0.741,
              "pixel_accuracy": 0.96211}
    assert format_metrics(binary) == ("mIoU(incl. bg) 0.8123 | mDice(incl. bg) 0.8901 | Dice(fg) 0.8512 | "
                                      "IoU(fg) 0.7410 | pixel acc 0.9621")
    multi = {"miou": 0.5, "mean_dice": 0.6, "miou_no_background": None, "mean_dice_no_background": 0.25,
             "pixel_accuracy": 1.0}
    assert format_metrics(multi) == ("mIoU(incl. bg) 0.5000 | mDice(incl. bg) 0.6000 | mIoU(no bg) n/a | "
                                     "mDice(no bg) 0.2500 | pixel acc 1.0000")


def test_per_image_scores() -> None:
    scores = per_image_scores(PRED, TARGET, 3, IGNORE_INDEX)
    assert list(scores["dice_per_class"].values()) == pytest.approx(DICE)
    assert scores["miou"] == pytest.approx(0.5) and "definitions" not in scores
    empty = per_image_scores(torch.zeros(2, 2, dtype=torch.long), torch.tensor([[0, 0], [0, I]]), 2)
    assert empty["dice_foreground"] is None and empty["dice_per_class"]["background"] == 1.0
    assert empty["num_pixels"] == 3
    with pytest.raises(ValueError, match=r"one \(H, W\) image"):
        per_image_scores(PRED[None], TARGET[None], 3)


def test_volumes_are_counted_voxel_by_voxel() -> None:
    """(N, Z, Y, X) labels: the same matrix as their voxels laid out as an image."""
    torch.manual_seed(0)
    pred, target = torch.randint(0, 3, (2, 3, 4, 5)), torch.randint(0, 3, (2, 3, 4, 5))
    target[0, 0, 0, :2] = 255
    volume, image = ConfusionMatrix(3), ConfusionMatrix(3)
    volume.update(pred, target)
    image.update(pred.reshape(2, 12, 5), target.reshape(2, 12, 5))
    assert torch.equal(volume.mat, image.mat) and volume.mat.sum() == 2 * 3 * 4 * 5 - 2
