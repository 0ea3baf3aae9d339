"""Segmentation metrics from one confusion matrix per split.

:class:`ConfusionMatrix` accumulates an int64 (C x C) matrix (rows = ground
truth, columns = prediction) with a masked ``bincount`` on the tensors' device,
over every labelled pixel of a split; :meth:`ConfusionMatrix.compute` divides
once at the end, so the figures do not depend on batch size or image order.
Pixels whose target is ``ignore_index`` are not counted.

Per class c, from the matrix: TP = M[c, c], FN = row sum - TP, FP = column sum - TP,
IoU = TP / (TP + FP + FN), Dice = 2 TP / (2 TP + FP + FN). A class absent from
both prediction and ground truth has no defined score: it is reported as
``None`` (JSON ``null``) and left out of every mean.

    cm = ConfusionMatrix(num_classes=2)
    for pred, target in batches:          # int tensors (N, H, W)
        cm.update(pred, target)
    cm.reduce_from_all_processes()        # sums the matrices under DDP
    result = cm.compute()                 # {"miou": 0.81, "dice_foreground": 0.85, ...}
    log.info(format_metrics(result))
"""
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from utils.constants import IGNORE_INDEX

_DATASET_LEVEL = ("dataset-level: one confusion matrix accumulated over every labelled pixel of the split "
                  "(target == ignore_index skipped), divided once")
_ABSENT = "classes absent from both prediction and ground truth are left out of the mean"


def default_class_names(num_classes: int) -> List[str]:
    """["background", "foreground"] for 2 classes, else ["class_0", "class_1", ...]."""
    if num_classes == 2:
        return ["background", "foreground"]
    return [f"class_{i}" for i in range(num_classes)]


def scalar_metric_names(num_classes: int) -> List[str]:
    """The float score keys :meth:`ConfusionMatrix.compute` returns for ``num_classes``.

    These are the values ``train.monitor`` may name (the pixel count
    ``num_pixels`` is a plain int and not a score, so it is not listed).
    """
    names = ["pixel_accuracy", "miou", "mean_dice", "miou_no_background", "mean_dice_no_background"]
    if num_classes == 2:
        names += ["iou_foreground", "dice_foreground"]
    return names


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    """Mean of the defined (non-None) values; None if there are none."""
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def _definitions(num_classes: int) -> Dict[str, str]:
    c = num_classes
    out = {
        "pixel_accuracy": "fraction of labelled pixels whose predicted class equals the ground truth "
                          "(confusion-matrix trace / total); " + _DATASET_LEVEL,
        "miou": f"mean IoU over all {c} classes including background (class 0); {_DATASET_LEVEL}; {_ABSENT}",
        "mean_dice": f"mean Dice over all {c} classes including background (class 0); {_DATASET_LEVEL}; {_ABSENT}",
        "miou_no_background": f"mean IoU over classes 1..{c - 1}, background (class 0) excluded; "
                              f"{_DATASET_LEVEL}; {_ABSENT}",
        "mean_dice_no_background": f"mean Dice over classes 1..{c - 1}, background (class 0) excluded; "
                                   f"{_DATASET_LEVEL}; {_ABSENT}",
        "iou_per_class": "per class: TP / (TP + FP + FN); None when the class is absent from both prediction "
                         "and ground truth; " + _DATASET_LEVEL,
        "dice_per_class": "per class: 2 TP / (2 TP + FP + FN); None when the class is absent from both "
                          "prediction and ground truth; " + _DATASET_LEVEL,
        "num_pixels": "number of labelled pixels counted (target != ignore_index)",
        "confusion_matrix": "pixel counts, rows = ground-truth class, columns = predicted class",
    }
    if num_classes == 2:
        out["iou_foreground"] = "IoU of the foreground (class 1) only, TP / (TP + FP + FN); " + _DATASET_LEVEL
        out["dice_foreground"] = "Dice of the foreground (class 1) only, 2 TP / (2 TP + FP + FN); " + _DATASET_LEVEL
    return out


class ConfusionMatrix:
    """Pixel confusion matrix of a split (rows = target, columns = prediction) and the scores derived from it.

    Args:
        num_classes: number of classes, at least 2 (binary is 2: background + foreground).
        ignore_index: target value that is not counted.
        class_names: one name per class, used as keys of the per-class dicts;
            default :func:`default_class_names`.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX,
                 class_names: Optional[List[str]] = None) -> None:
        if num_classes < 2:
            raise ValueError(f"ConfusionMatrix: num_classes must be at least 2 (binary = background + foreground), "
                             f"got {num_classes}")
        names = list(class_names) if class_names is not None else default_class_names(num_classes)
        if len(names) != num_classes or len(set(names)) != num_classes:
            raise ValueError(f"ConfusionMatrix: class_names must be {num_classes} distinct names, got {names}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = names
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count one batch: ``pred`` and ``target`` are integer class indices of one shape: (N, H, W) or (H, W),
        or (N, Z, Y, X) for volumes."""
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if pred.shape != target.shape or target.ndim not in (2, 3, 4):
            raise ValueError(f"ConfusionMatrix.update: pred and target must have the same shape (N, H, W), "
                             f"(H, W) or (N, Z, Y, X), got {tuple(pred.shape)} and {tuple(target.shape)}")
        for what, x in (("pred", pred), ("target", target)):
            if x.dtype.is_floating_point or x.dtype.is_complex:
                raise ValueError(f"ConfusionMatrix.update: {what} must hold integer class indices, got {x.dtype}; "
                                 "turn logits into labels first (argmax, or threshold for one channel)")
        target = target.reshape(-1).long()
        pred = pred.to(target.device).reshape(-1).long()
        counted = target != self.ignore_index
        target, pred = target[counted], pred[counted]
        self._check_range(target, "target")
        self._check_range(pred, "pred")
        if self.mat.device != target.device:
            self.mat = self.mat.to(target.device)
        n = self.num_classes
        self.mat += torch.bincount(n * target + pred, minlength=n * n).reshape(n, n)

    def _check_range(self, values: torch.Tensor, what: str) -> None:
        bad = (values < 0) | (values >= self.num_classes)
        if bad.any():
            found = torch.unique(values[bad]).tolist()[:10]
            raise ValueError(f"ConfusionMatrix.update: {what} contains {found}, outside the classes "
                             f"0..{self.num_classes - 1} (ignore_index={self.ignore_index} is skipped); "
                             "check data.num_classes and the dataset's mask mapping")

    def reset(self) -> None:
        """Zero the counts."""
        self.mat.zero_()

    def reduce_from_all_processes(self) -> None:
        """Sum the matrices of all processes (DDP); a no-op without an initialised process group."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        if dist.get_backend() == "nccl" and not self.mat.is_cuda:
            self.mat = self.mat.cuda()
        dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)

    def compute(self) -> Dict[str, Any]:
        """Scores as JSON-ready Python values (floats, None where undefined, dicts, lists); see the module doc."""
        h = self.mat.to("cpu", torch.float64)
        tp, gt, pr = h.diag().tolist(), h.sum(1).tolist(), h.sum(0).tolist()
        total = h.sum().item()
        iou = [t / (g + p - t) if g + p > 0 else None for t, g, p in zip(tp, gt, pr)]
        dice = [2 * t / (g + p) if g + p > 0 else None for t, g, p in zip(tp, gt, pr)]
        result: Dict[str, Any] = {
            "pixel_accuracy": sum(tp) / total if total > 0 else None,
            "miou": _mean(iou),
            "mean_dice": _mean(dice),
            "miou_no_background": _mean(iou[1:]),
            "mean_dice_no_background": _mean(dice[1:]),
        }
        if self.num_classes == 2:
            result["iou_foreground"] = iou[1]
            result["dice_foreground"] = dice[1]
        result["num_pixels"] = int(total)
        result["iou_per_class"] = dict(zip(self.class_names, iou))
        result["dice_per_class"] = dict(zip(self.class_names, dice))
        result["confusion_matrix"] = self.mat.cpu().tolist()
        result["definitions"] = _definitions(self.num_classes)
        return result


def format_metrics(result: Dict[str, Any]) -> str:
    """One log line, e.g. ``mIoU(incl. bg) 0.8123 | mDice(incl. bg) 0.8901 | Dice(fg) 0.8512 | ...``."""
    labels = [("miou", "mIoU(incl. bg)"), ("mean_dice", "mDice(incl. bg)")]
    if "dice_foreground" in result:
        labels += [("dice_foreground", "Dice(fg)"), ("iou_foreground", "IoU(fg)")]
    else:
        labels += [("miou_no_background", "mIoU(no bg)"), ("mean_dice_no_background", "mDice(no bg)")]
    labels.append(("pixel_accuracy", "pixel acc"))
    return " | ".join(f"{label} {'n/a' if result.get(key) is None else format(result[key], '.4f')}"
                      for key, label in labels)


def per_image_scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX, class_names: Optional[List[str]] = None) -> Dict[str, Any]:
    """The :meth:`ConfusionMatrix.compute` scores of one (H, W) image, without definitions and matrix."""
    target = torch.as_tensor(target)
    if target.ndim != 2:
        raise ValueError(f"per_image_scores: expects one (H, W) image, got shape {tuple(target.shape)}")
    cm = ConfusionMatrix(num_classes, ignore_index, class_names)
    cm.update(pred, target)
    scores = cm.compute()
    del scores["definitions"], scores["confusion_matrix"]
    return scores
