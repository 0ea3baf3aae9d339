"""Region losses from soft per-class counts over the whole batch: "dice", "jaccard", "tversky",
"focal_tversky", and "lovasz" (the Lovász extension of the Jaccard loss)."""
import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from utils.constants import IGNORE_INDEX
from utils.losses.common import check_smooth, masked_mean, probs_and_onehot, valid_pixels
from utils.registry import LOSSES


class _SoftCounts(NamedTuple):
    """Per-class soft counts over the labelled pixels of a batch, each of shape (K,)."""

    tp: torch.Tensor  # sum of p * t
    fp: torch.Tensor  # sum of p * (1 - t)
    fn: torch.Tensor  # sum of (1 - p) * t
    present: torch.Tensor  # bool: the class has labelled pixels in the target


def _soft_counts(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, include_background: bool,
                 loss_name: str) -> _SoftCounts:
    """Soft TP/FP/FN per kept class: the foreground for C == 1; all or 1..C-1 classes for C > 1."""
    valid, labels = valid_pixels(logits, target, ignore_index, loss_name)
    probs, onehot = probs_and_onehot(logits, labels)
    if logits.shape[1] > 1 and not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    keep = valid.unsqueeze(1).to(logits.dtype)
    probs, onehot = probs * keep, onehot * keep
    dims = (0, *range(2, logits.ndim))  # the batch and every spatial axis
    tp = (probs * onehot).sum(dims)
    return _SoftCounts(tp=tp, fp=probs.sum(dims) - tp, fn=onehot.sum(dims) - tp, present=onehot.sum(dims) > 0)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` with the denominator kept off 0 (absent classes with smooth = 0)."""
    return numerator / denominator.clamp_min(torch.finfo(denominator.dtype).eps)


def _mean_over_present(per_class: torch.Tensor, counts: _SoftCounts) -> torch.Tensor:
    """Mean of ``per_class`` over the classes present in the target (0 when none is)."""
    return masked_mean(per_class, counts.present, counts.present.sum())


@LOSSES.register("dice")
class DiceLoss(nn.Module):
    """Soft Dice loss, ``1 - Dice`` (or ``-log Dice``) on probabilities, per class over the whole batch.

    For each class k, with p the probability and t the one-hot target summed
    over every labelled pixel of the batch (N, H, W together):
    ``Dice_k = (2 * sum(p * t) + smooth) / (sum(p) + sum(t) + smooth)``.
    One channel: sigmoid, and only the foreground (class 1) Dice is used.
    C > 1 channels: softmax; the loss averages the classes kept (all, or 1..C-1
    without background).

    Classes with no labelled pixel in the batch's target are left out of the
    mean (their Dice would only measure false positives, which the softmax
    already penalises through the present classes and which a companion
    bce/ce term covers); a batch where no kept class is present gives 0.

    Args:
        smooth: >= 0, added to numerator and denominator (keeps small classes stable).
        include_background: also average class 0 when C > 1. Default False:
            background usually dominates the pixels, its Dice is near 1 from the
            start and would only dilute the signal of the structures being
            segmented; it also makes a 2-channel softmax model get the same
            loss as a 1-channel sigmoid one. Ignored when C == 1.
        ignore_index: target value excluded from the loss.
        log_loss: use ``-log(Dice)`` instead of ``1 - Dice``.

    Shape:
        logits (N, C, H, W) float; target (N, H, W) int64 with values in
        {0, .., max(C, 2) - 1} or ``ignore_index``; output: scalar.
    """

    def __init__(self, smooth: float = 1.0, include_background: bool = False, ignore_index: int = IGNORE_INDEX,
                 log_loss: bool = False) -> None:
        super().__init__()
        check_smooth("dice", smooth)
        self.smooth = smooth
        self.include_background = include_background
        self.ignore_index = ignore_index
        self.log_loss = log_loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = _soft_counts(logits, target, self.ignore_index, self.include_background, "dice")
        dice = _ratio(2.0 * c.tp + self.smooth, 2.0 * c.tp + c.fp + c.fn + self.smooth)
        eps = torch.finfo(logits.dtype).eps
        per_class = -torch.log(dice.clamp_min(eps)) if self.log_loss else 1.0 - dice
        return _mean_over_present(per_class, c)


@LOSSES.register("jaccard")
class JaccardLoss(nn.Module):
    """Soft Jaccard (IoU) loss, ``1 - IoU`` on probabilities, per class over the whole batch.

    ``IoU_k = (TP + smooth) / (TP + FP + FN + smooth)``, i.e.
    ``sum(p * t) / (sum(p) + sum(t) - sum(p * t))`` with smoothing.

    Soft counts per class over every labelled pixel of the batch, with p the
    probability and t the one-hot target: ``TP = sum(p * t)``,
    ``FP = sum(p * (1 - t))``, ``FN = sum((1 - p) * t)``. Classes kept, absent
    classes and the all-absent case are as for "dice": one channel scores the
    foreground only; C > 1 averages all classes or 1..C-1, leaving out those
    with no labelled pixel in the target (none present: 0).
    Args:
        smooth: >= 0, added to numerator and denominator.
        include_background: also average class 0 when C > 1 (default False,
            as for "dice"). Ignored when C == 1.
        ignore_index: target value excluded from the loss.

    Shape:
        logits (N, C, H, W) float; target (N, H, W) int64 with values in
        {0, .., max(C, 2) - 1} or ``ignore_index``; output: scalar.
    """

    def __init__(self, smooth: float = 1.0, include_background: bool = False,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        check_smooth("jaccard", smooth)
        self.smooth = smooth
        self.include_background = include_background
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = _soft_counts(logits, target, self.ignore_index, self.include_background, "jaccard")
        iou = _ratio(c.tp + self.smooth, c.tp + c.fp + c.fn + self.smooth)
        return _mean_over_present(1.0 - iou, c)


def _tversky_index(c: _SoftCounts, alpha: float, beta: float, smooth: float) -> torch.Tensor:
    """``(TP + smooth) / (TP + alpha * FP + beta * FN + smooth)`` per class."""
    return _ratio(c.tp + smooth, c.tp + alpha * c.fp + beta * c.fn + smooth)


def _check_tversky(loss_name: str, alpha: float, beta: float, smooth: float) -> None:
    check_smooth(loss_name, smooth)
    for key, value in (("alpha", alpha), ("beta", beta)):
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{loss_name}: {key} must be a finite number >= 0, got {value}")


@LOSSES.register("tversky")
class TverskyLoss(nn.Module):
    """Tversky loss (Salehi et al. 2017), ``1 - TI``, per class over the whole batch.

    ``TI_k = (TP + smooth) / (TP + alpha * FP + beta * FN + smooth)``: ``alpha``
    weighs the false positives, ``beta`` the false negatives.
    ``alpha = beta = 0.5`` is the Dice loss, ``alpha = beta = 1`` the Jaccard
    loss; ``beta > alpha`` favours recall (small structures).

    Soft counts per class over every labelled pixel of the batch, with p the
    probability and t the one-hot target: ``TP = sum(p * t)``,
    ``FP = sum(p * (1 - t))``, ``FN = sum((1 - p) * t)``. Classes kept, absent
    classes and the all-absent case are as for "dice": one channel scores the
    foreground only; C > 1 averages all classes or 1..C-1, leaving out those
    with no labelled pixel in the target (none present: 0).
    Args:
        alpha: >= 0, weight of the false positives (FP).
        beta: >= 0, weight of the false negatives (FN).
        smooth: >= 0, added to numerator and denominator.
        include_background: also average class 0 when C > 1 (default False,
            as for "dice"). Ignored when C == 1.
        ignore_index: target value excluded from the loss.

    Shape:
        logits (N, C, H, W) float; target (N, H, W) int64 with values in
        {0, .., max(C, 2) - 1} or ``ignore_index``; output: scalar.
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.5, smooth: float = 1.0,
                 include_background: bool = False, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        _check_tversky("tversky", alpha, beta, smooth)
        self.alpha = alpha
        self.beta = beta
        self.smooth = smooth
        self.include_background = include_background
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = _soft_counts(logits, target, self.ignore_index, self.include_background, "tversky")
        return _mean_over_present(1.0 - _tversky_index(c, self.alpha, self.beta, self.smooth), c)


@LOSSES.register("focal_tversky")
class FocalTverskyLoss(nn.Module):
    """Focal Tversky loss (Abraham & Khan 2019), ``(1 - TI)^gamma``, per class over the whole batch.

    ``TI_k = (TP + smooth) / (TP + alpha * FP + beta * FN + smooth)`` with the
    same meaning of ``alpha`` (FP) and ``beta`` (FN) as "tversky". The defaults
    are the paper's: 0.7 on the false negatives, 0.3 on the false positives
    (the paper writes its index with alpha on FN; here the names follow
    "tversky", so its alpha = 0.7 is ``beta`` = 0.7). ``gamma`` is the exponent
    applied to ``1 - TI``: the paper's ``1/gamma`` with its gamma = 4/3, so
    0.75; below 1 it raises the loss of classes that are already fairly good
    less than those that are poor, i.e. focuses on the hard classes and
    small structures.

    Soft counts per class over every labelled pixel of the batch, with p the
    probability and t the one-hot target: ``TP = sum(p * t)``,
    ``FP = sum(p * (1 - t))``, ``FN = sum((1 - p) * t)``. Classes kept, absent
    classes and the all-absent case are as for "dice": one channel scores the
    foreground only; C > 1 averages all classes or 1..C-1, leaving out those
    with no labelled pixel in the target (none present: 0).
    Args:
        alpha: >= 0, weight of the false positives (FP). Default 0.3.
        beta: >= 0, weight of the false negatives (FN). Default 0.7.
        gamma: > 0, exponent on ``1 - TI`` (1 gives the Tversky loss).
        smooth: >= 0, added to numerator and denominator.
        include_background: also average class 0 when C > 1 (default False,
            as for "dice"). Ignored when C == 1.
        ignore_index: target value excluded from the loss.

    Shape:
        logits (N, C, H, W) float; target (N, H, W) int64 with values in
        {0, .., max(C, 2) - 1} or ``ignore_index``; output: scalar.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75, smooth: float = 1.0,
                 include_background: bool = False, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        _check_tversky("focal_tversky", alpha, beta, smooth)
        if not (gamma > 0 and math.isfinite(gamma)):
            raise ValueError(f"focal_tversky: gamma must be a finite number > 0, got {gamma}")
        self.alpha = alpha
        self.beta = beta
        self.gamma = gamma
        self.smooth = smooth
        self.include_background = include_background
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        c = _soft_counts(logits, target, self.ignore_index, self.include_background, "focal_tversky")
        # kept off 0 so that (.)^gamma has a finite slope at a perfect prediction when gamma < 1
        miss = (1.0 - _tversky_index(c, self.alpha, self.beta, self.smooth)).clamp_min(
            torch.finfo(logits.dtype).tiny)
        return _mean_over_present(miss ** self.gamma, c)


def _lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Increments of the Jaccard loss along sorted pixels (Berman et al. 2018, Alg. 1), over the last dim.

    Entry i is ``Delta_J({1..i}) - Delta_J({1..i-1})`` where the first i pixels
    are mispredicted and ``Delta_J(M) = |M| / |positives ∪ M|``.
    """
    positives = fg_sorted.sum(-1, keepdim=True)
    intersection = positives - fg_sorted.cumsum(-1)
    union = positives + (1.0 - fg_sorted).cumsum(-1)  # >= 1 everywhere
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], dim=-1)


def _lovasz_extension(errors: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """Lovász extension of the Jaccard loss at ``errors`` (K, P) >= 0 with 0/1 ground truth ``fg``; shape (K,)."""
    errors_sorted, order = errors.sort(dim=-1, descending=True)
    return (errors_sorted * _lovasz_grad(fg.gather(-1, order))).sum(-1)


@LOSSES.register("lovasz")
class LovaszLoss(nn.Module):
    """Lovász loss (Berman et al. 2018): a convex surrogate that directly optimises the Jaccard index (IoU).

    C > 1 (Lovász-softmax): for each class k the errors ``|t_k - p_k|`` of the
    softmax probabilities, sorted in decreasing order, are weighted by the
    increments of the Jaccard loss; the loss averages the classes chosen by
    ``classes``. C == 1 (Lovász hinge): the hinge errors ``max(0, 1 - s * x)``
    of the logits x with signs s = +1 (class 1) / -1 (class 0), weighted the
    same way for the foreground.

    The pixels are those of the whole batch together, or each image on its
    own with ``per_image`` (then the mean runs over the images that have a
    labelled pixel).

    Args:
        classes: C > 1 only: "present" averages the classes present in the
            target (of the batch, or of each image), "all" every class.
        per_image: compute the loss per image and average, instead of over the
            batch's pixels at once.
        ignore_index: target value excluded from the loss.

    Shape:
        logits (N, C, H, W) float; target (N, H, W) int64 with values in
        {0, .., max(C, 2) - 1} or ``ignore_index``; output: scalar.
    """

    def __init__(self, classes: Literal["present", "all"] = "present", per_image: bool = False,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if classes not in ("present", "all"):
            raise ValueError(f"lovasz: classes must be 'present' or 'all', got {classes!r}")
        self.classes = classes
        self.per_image = per_image
        self.ignore_index = ignore_index

    def _flat(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of labelled pixels ``scores`` (P, C) logits with ``labels`` (P,)."""
        if scores.shape[1] == 1:
            signs = labels.to(scores.dtype) * 2.0 - 1.0
            errors = (1.0 - scores[:, 0] * signs).relu()
            return _lovasz_extension(errors[None], labels[None].to(scores.dtype))[0]
        probs = scores.softmax(dim=1).T
        fg = F.one_hot(labels, scores.shape[1]).T.to(scores.dtype)
        per_class = _lovasz_extension((fg - probs).abs(), fg)
        chosen = fg.sum(1) > 0 if self.classes == "present" else torch.ones_like(per_class, dtype=torch.bool)
        return masked_mean(per_class, chosen, chosen.sum())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid, labels = valid_pixels(logits, target, self.ignore_index, "lovasz")
        scores = logits.movedim(1, -1)  # (N, H, W, C)
        if not self.per_image:
            return self._flat(scores[valid], labels[valid])
        per_image = torch.stack([self._flat(s[v], lab[v]) for s, v, lab in zip(scores, valid, labels)])
        labelled = valid.flatten(1).any(dim=1)
        return masked_mean(per_image, labelled, labelled.sum())
