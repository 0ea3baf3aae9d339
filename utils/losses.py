"""Segmentation losses, registered in ``utils.registry.LOSSES``, and their weighted sum.

Every loss is an ``nn.Module`` called as ``loss(logits, target)``:

* ``logits``: float (N, C, H, W) raw model output; C == 1 means binary sigmoid,
  C > 1 softmax over the channels (the losses apply sigmoid/softmax themselves);
* ``target``: int64 (N, H, W) class indices; pixels equal to ``ignore_index``
  (``IGNORE_INDEX`` = 255 by default) are left out of every sum and mean, and a
  batch with no labelled pixel gives a loss of 0 (with a zero gradient, no NaN).

Registered names:

* pixel-wise: "bce" (:class:`BCELoss`), "ce" (:class:`CrossEntropyLoss`),
  "focal" (:class:`FocalLoss`);
* region (soft overlap per class): "dice" (:class:`DiceLoss`), "jaccard"
  (:class:`JaccardLoss`), "tversky" (:class:`TverskyLoss`), "focal_tversky"
  (:class:`FocalTverskyLoss`), "lovasz" (:class:`LovaszLoss`);
* structural: "ms_ssim" (:class:`MSSSIMLoss`);
* the UNet 3+ hybrid focal + MS-SSIM + IoU: "hybrid" (:class:`HybridLoss`).

Use them one at a time::

    from utils.registry import LOSSES
    dice = LOSSES.build("dice", smooth=1.0)
    value = dice(logits, target)

or, as a config's ``loss:`` list does, as a weighted sum that also reports each
unweighted term for logging::

    criterion = build_loss([{"name": "bce", "weight": 1.0},
                            {"name": "dice", "weight": 0.5, "smooth": 1.0}])
    total, parts = criterion(logits, target)   # parts == {"bce": 0.41, "dice": 0.73}

A deep-supervision model returns a list of logits (main output first); the
same criterion then weights the outputs (``deep_supervision_weights``, equal by
default) and also reports each output's combined loss as ``ds_0``, ``ds_1``, ...
"""
import math
from typing import Any, Dict, List, Literal, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from utils.constants import IGNORE_INDEX
from utils.errors import ConfigError
from utils.registry import LOSSES

#: What a config may give as ``class_weights``: numbers, or a method that
#: train.py resolves from the training masks before the loss is built.
ClassWeights = Optional[Union[List[float], Literal["inverse", "median_frequency"]]]


# --------------------------------------------------------------------------- #
# Shared input handling
# --------------------------------------------------------------------------- #
def _valid_pixels(logits: torch.Tensor, target: torch.Tensor, ignore_index: int,
                  loss_name: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """Check shapes and label values; return (mask of labelled pixels, target with ignored pixels set to 0).

    Label values must lie in ``[0, num_classes)`` where ``num_classes`` is C,
    or 2 for a one-channel (sigmoid) output.
    """
    if logits.ndim != 4 or target.ndim != 3 or logits.shape[:1] + logits.shape[2:] != target.shape:
        raise ValueError(f"{loss_name}: expected logits (N, C, H, W) and target (N, H, W), "
                         f"got {tuple(logits.shape)} and {tuple(target.shape)}")
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"{loss_name}: target must hold integer class indices, got dtype {target.dtype}")
    num_classes = max(logits.shape[1], 2)
    valid = target != ignore_index
    bad = valid & ((target < 0) | (target >= num_classes))
    if bad.any():
        values = sorted(torch.unique(target[bad]).tolist())
        raise ValueError(
            f"{loss_name}: target contains {values}, outside the classes 0..{num_classes - 1} of "
            f"{logits.shape[1]}-channel logits (ignore_index={ignore_index}); check data.num_classes, "
            "model.out_channels and the dataset's mask mapping"
        )
    return valid, torch.where(valid, target, 0).long()


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` where ``mask`` is set, over ``denominator`` (0 when that is 0)."""
    total = torch.where(mask, values, 0.0).sum()
    return total / denominator.to(values.dtype).clamp_min(torch.finfo(values.dtype).tiny)


def _target_like(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The target as probabilities of logits' shape: 0/1 for C == 1, one-hot for C > 1."""
    if logits.shape[1] == 1:
        return labels.unsqueeze(1).to(logits.dtype)
    return torch.zeros_like(logits).scatter_(1, labels.unsqueeze(1), 1.0)


def _probs_and_onehot(logits: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(probabilities, target) of logits' shape: sigmoid and 0/1 for C == 1, softmax and one-hot otherwise."""
    probs = torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(dim=1)
    return probs, _target_like(logits, labels)


def _check_class_weights(loss_name: str, class_weights: ClassWeights) -> Optional[List[float]]:
    """Reject unresolved ("inverse", ...) or negative class weights; return them as floats."""
    if isinstance(class_weights, str):
        raise ValueError(
            f"{loss_name}: class_weights={class_weights!r} must be resolved to one number per class before the "
            "loss is built; train.py does this from the training masks (resolve_class_weights), elsewhere use "
            "utils.class_stats.class_weights(utils.class_stats.class_pixel_counts(dataset), method)")
    if class_weights is None:
        return None
    if not class_weights or any(not (w >= 0 and math.isfinite(w)) for w in class_weights):
        raise ValueError(f"{loss_name}: class_weights must be a non-empty list of weights >= 0, got {class_weights}")
    return [float(w) for w in class_weights]


def _class_weight_tensor(class_weights: List[float], logits: torch.Tensor, loss_name: str) -> torch.Tensor:
    """``class_weights`` as a tensor after checking there is one per class (2 for a sigmoid output)."""
    channels = logits.shape[1]
    if len(class_weights) != max(channels, 2):
        have = (f"the logits have {channels} channels" if channels > 1
                else "a 1-channel (sigmoid) output has 2 classes (background, foreground)")
        raise ValueError(f"{loss_name}: class_weights has {len(class_weights)} entries but {have}; "
                         "give one weight per class")
    return logits.new_tensor(class_weights)


def _check_smooth(loss_name: str, smooth: float) -> None:
    if not (smooth >= 0 and math.isfinite(smooth)):
        raise ValueError(f"{loss_name}: smooth must be >= 0, got {smooth}")


# --------------------------------------------------------------------------- #
# Pixel-wise losses
# --------------------------------------------------------------------------- #
@LOSSES.register("bce")
class BCELoss(nn.Module):
    """Binary cross-entropy on logits, averaged over labelled pixels.

    With one channel the target (0 or 1) is the probability of class 1. With
    C > 1 channels each channel is an independent sigmoid against the one-hot
    target, and the mean runs over labelled pixels and channels.

    Args:
        pos_weight: weight of the positive term, > 0 (e.g. #negatives /
            #positives for a rare foreground); None means 1.
        ignore_index: target value excluded from the loss.

    Shape:
        logits (N, C, H, W) float; target (N, H, W) int64 with values in
        {0, .., max(C, 2) - 1} or ``ignore_index``; output: scalar.
    """

    def __init__(self, pos_weight: Optional[float] = None, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if pos_weight is not None and not (pos_weight > 0 and math.isfinite(pos_weight)):
            raise ValueError(f"bce: pos_weight must be a positive number, got {pos_weight}")
        self.pos_weight = pos_weight
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid, labels = _valid_pixels(logits, target, self.ignore_index, "bce")
        probs_target = _target_like(logits, labels)
        pos_weight = None if self.pos_weight is None else logits.new_tensor(self.pos_weight)
        per_pixel = F.binary_cross_entropy_with_logits(logits, probs_target, pos_weight=pos_weight,
                                                       reduction="none")
        mask = valid.unsqueeze(1).expand_as(per_pixel)
        return _masked_mean(per_pixel, mask, valid.sum() * logits.shape[1])


@LOSSES.register("ce")
class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy, as ``F.cross_entropy`` with ``weight`` and ``ignore_index`` (weighted mean).

    The mean divides by the summed class weights of the labelled pixels, as
    torch does; a batch with no labelled pixel gives 0 instead of NaN.

    Args:
        class_weights: one weight per class (length C), or None for equal weights.
            A config may also say "inverse" or "median_frequency": train.py
            replaces that by numbers computed from the training masks
            (``utils.class_stats``) before the loss is built; the loss itself
            only takes numbers.
        ignore_index: target value excluded from the loss.
        label_smoothing: in [0, 1); mixes the one-hot target with a uniform one.

    Shape:
        logits (N, C, H, W) float with C >= 2; target (N, H, W) int64 with
        values in {0, .., C - 1} or ``ignore_index``; output: scalar.
    """

    def __init__(self, class_weights: ClassWeights = None, ignore_index: int = IGNORE_INDEX,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"ce: label_smoothing must lie in [0, 1), got {label_smoothing}")
        self.class_weights = _check_class_weights("ce", class_weights)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == 1:
            raise ValueError("ce: needs at least 2 output channels (softmax), got 1; use the 'bce' loss for a "
                             "one-channel sigmoid output, or set model.out_channels: 2")
        valid, labels = _valid_pixels(logits, target, self.ignore_index, "ce")
        weight = None if self.class_weights is None else _class_weight_tensor(self.class_weights, logits, "ce")
        per_pixel = F.cross_entropy(logits, labels, weight=weight, reduction="none",
                                    label_smoothing=self.label_smoothing)
        pixel_weights = valid.to(logits.dtype) if weight is None else torch.where(valid, weight[labels], 0.0)
        return _masked_mean(per_pixel, valid, pixel_weights.sum())


@LOSSES.register("focal")
class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017), ``-w_t (1 - p_t)^gamma log(p_t)``, averaged over labelled pixels.

    ``p_t`` is the predicted probability of the pixel's true class: sigmoid for
    one channel (``p`` for class 1, ``1 - p`` for class 0), softmax for C > 1.
    ``gamma`` down-weights pixels that are already well classified; with
    ``gamma = 0`` and no weights the loss equals "bce" (C == 1) or "ce" (C > 1).

    The per-pixel weight ``w_t`` (1 without weights) is a plain factor and the
    sum is divided by the number of labelled pixels, as in the paper and in
    ``torchvision.ops.sigmoid_focal_loss``; note that "ce" divides by the summed
    weights instead.

    Args:
        gamma: focusing exponent, >= 0.
        alpha: one-channel (sigmoid) output only: weight of the positive
            (class 1) pixels in [0, 1], negatives get ``1 - alpha`` (the paper
            uses 0.25 with gamma 2); None means no weighting. Same as
            ``class_weights=[1 - alpha, alpha]``. For a softmax output use
            ``class_weights``.
        class_weights: one weight per class (length C, or 2 for a sigmoid
            output), or "inverse" / "median_frequency", which train.py resolves
            from the training masks (see "ce"). Not together with ``alpha``.
        ignore_index: target value excluded from the loss.

    Shape:
        logits (N, C, H, W) float; target (N, H, W) int64 with values in
        {0, .., max(C, 2) - 1} or ``ignore_index``; output: scalar.
    """

    def __init__(self, gamma: float = 2.0, alpha: Optional[float] = None, class_weights: ClassWeights = None,
                 ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if not (gamma >= 0 and math.isfinite(gamma)):
            raise ValueError(f"focal: gamma must be a finite number >= 0, got {gamma}")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise ValueError(f"focal: alpha must lie in [0, 1] (the weight of the positives), got {alpha}")
        if alpha is not None and class_weights is not None:
            raise ValueError("focal: give alpha (sigmoid output: weight of the positives) or class_weights, "
                             "not both")
        self.gamma = gamma
        self.alpha = alpha
        self.class_weights = _check_class_weights("focal", class_weights)
        self.ignore_index = ignore_index

    def _weights(self, logits: torch.Tensor) -> Optional[torch.Tensor]:
        """One weight per class, or None."""
        if self.alpha is not None:
            if logits.shape[1] > 1:
                raise ValueError(f"focal: alpha weighs the positives of a 1-channel (sigmoid) output; for "
                                 f"{logits.shape[1]}-channel softmax logits give class_weights (one per class)")
            return logits.new_tensor([1.0 - self.alpha, self.alpha])
        if self.class_weights is not None:
            return _class_weight_tensor(self.class_weights, logits, "focal")
        return None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid, labels = _valid_pixels(logits, target, self.ignore_index, "focal")
        if logits.shape[1] == 1:
            signs = labels.to(logits.dtype) * 2.0 - 1.0
            log_pt = F.logsigmoid(logits[:, 0] * signs)
        else:
            log_pt = logits.log_softmax(dim=1).gather(1, labels.unsqueeze(1))[:, 0]
        # 1 - p_t, accurate near p_t = 1 and kept off 0 so (.)^gamma has a finite slope for gamma < 1
        miss = (-torch.expm1(log_pt)).clamp_min(torch.finfo(logits.dtype).tiny)
        per_pixel = -(miss ** self.gamma) * log_pt
        weights = self._weights(logits)
        if weights is not None:
            per_pixel = per_pixel * weights[labels]
        return _masked_mean(per_pixel, valid, valid.sum())


# --------------------------------------------------------------------------- #
# Region losses: soft true/false positives per class over the whole batch
# --------------------------------------------------------------------------- #
class _SoftCounts(NamedTuple):
    """Per-class soft counts over the labelled pixels of a batch, each of shape (K,)."""

    tp: torch.Tensor  # sum of p * t
    fp: torch.Tensor  # sum of p * (1 - t)
    fn: torch.Tensor  # sum of (1 - p) * t
    present: torch.Tensor  # bool: the class has labelled pixels in the target


def _soft_counts(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, include_background: bool,
                 loss_name: str) -> _SoftCounts:
    """Soft TP/FP/FN per kept class: the foreground for C == 1; all or 1..C-1 classes for C > 1."""
    valid, labels = _valid_pixels(logits, target, ignore_index, loss_name)
    probs, onehot = _probs_and_onehot(logits, labels)
    if logits.shape[1] > 1 and not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    keep = valid.unsqueeze(1).to(logits.dtype)
    probs, onehot = probs * keep, onehot * keep
    dims = (0, 2, 3)
    tp = (probs * onehot).sum(dims)
    return _SoftCounts(tp=tp, fp=probs.sum(dims) - tp, fn=onehot.sum(dims) - tp, present=onehot.sum(dims) > 0)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` with the denominator kept off 0 (absent classes with smooth = 0)."""
    return numerator / denominator.clamp_min(torch.finfo(denominator.dtype).eps)


def _mean_over_present(per_class: torch.Tensor, counts: _SoftCounts) -> torch.Tensor:
    """Mean of ``per_class`` over the classes present in the target (0 when none is)."""
    return _masked_mean(per_class, counts.present, counts.present.sum())


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
        _check_smooth("dice", smooth)
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
        _check_smooth("jaccard", smooth)
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
    _check_smooth(loss_name, smooth)
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


# --------------------------------------------------------------------------- #
# Lovász
# --------------------------------------------------------------------------- #
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
        return _masked_mean(per_class, chosen, chosen.sum())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid, labels = _valid_pixels(logits, target, self.ignore_index, "lovasz")
        scores = logits.movedim(1, -1)  # (N, H, W, C)
        if not self.per_image:
            return self._flat(scores[valid], labels[valid])
        per_image = torch.stack([self._flat(s[v], lab[v]) for s, v, lab in zip(scores, valid, labels)])
        labelled = valid.flatten(1).any(dim=1)
        return _masked_mean(per_image, labelled, labelled.sum())


# --------------------------------------------------------------------------- #
# MS-SSIM
# --------------------------------------------------------------------------- #
#: Scale weights of Wang et al. 2003, finest scale first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: Floor of the contrast-structure and SSIM terms before their fractional powers.
_SSIM_FLOOR = 1e-4


def _gaussian_window(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """A normalised 1-D Gaussian of ``size`` taps."""
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2.0
    window = torch.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return window / window.sum()


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filtering of (B, 1, H, W) maps."""
    k = window.numel()
    return F.conv2d(F.conv2d(x, window.view(1, 1, k, 1)), window.view(1, 1, 1, k))


def _ssim_and_cs(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean SSIM and mean contrast-structure term of (B, 1, H, W) maps in [0, 1]; each of shape (B,)."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2  # (K * L)^2 with dynamic range L = 1
    b = x.shape[0]
    mu_x, mu_y, xx, yy, xy = _blur(torch.cat([x, y, x * x, y * y, x * y]), window).split(b)
    var_x, var_y, cov = xx - mu_x ** 2, yy - mu_y ** 2, xy - mu_x * mu_y
    cs = (2.0 * cov + c2) / (var_x + var_y + c2)
    luminance = (2.0 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    return (luminance * cs).mean((1, 2, 3)), cs.mean((1, 2, 3))


def ms_ssim_scales(height: int, width: int, window_size: int) -> int:
    """How many of the 5 scales fit: scale j (halved j times) must still be at least ``window_size`` wide."""
    side = min(height, width)
    return max(1, sum(1 for j in range(len(MS_SSIM_WEIGHTS)) if side // 2 ** j >= window_size))


def ms_ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """MS-SSIM (Wang et al. 2003) of (B, 1, H, W) maps in [0, 1]; shape (B,). See :class:`MSSSIMLoss`."""
    side = min(x.shape[-2:])
    largest_odd = side if side % 2 else side - 1  # a window that still fits inputs smaller than window_size
    window = _gaussian_window(min(window_size, largest_odd), sigma, x)
    scales = ms_ssim_scales(x.shape[-2], x.shape[-1], window.numel())
    weights = x.new_tensor(MS_SSIM_WEIGHTS[:scales])
    weights = weights / weights.sum()
    factors = []
    for j in range(scales):
        if j > 0:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        ssim, cs = _ssim_and_cs(x, y, window)
        factors.append(ssim if j == scales - 1 else cs)
    return torch.stack(factors, dim=1).clamp_min(_SSIM_FLOOR).pow(weights).prod(dim=1)


@LOSSES.register("ms_ssim")
class MSSSIMLoss(nn.Module):
    """Multi-scale SSIM loss (Wang et al. 2003), ``1 - MS-SSIM`` of probabilities vs one-hot target.

    Each (image, channel) pair is scored on its own and the loss averages
    them: for C > 1 every softmax channel against its one-hot target (the
    background included), for C == 1 the sigmoid probability against the 0/1
    target. Per scale the maps are filtered with a Gaussian window (no
    padding), constants ``C1 = 0.01^2``, ``C2 = 0.03^2`` (dynamic range 1);
    ``MS-SSIM = SSIM_M^w_M * prod_{j<M} cs_j^w_j`` with 2x2 average pooling
    between scales and the standard weights (0.0448, 0.2856, 0.3001, 0.2363,
    0.1333).

    Small inputs: 5 scales need a side of at least ``16 * window_size`` (176
    for 11). Fewer scales are used when the input is smaller, as many as keep
    the coarsest scale at least ``window_size`` wide (64x64: 3 scales, 32x32:
    2, 11..21: 1), with the first weights renormalised to sum to 1; a side
    below ``window_size`` uses one scale and a window cut to the largest odd
    size that fits.

    Approximations: ignored pixels are set to 0 in both the prediction and
    the target (the windows need a full grid), so they count as agreeing
    background; an all-ignored batch thus gives 0. Contrast-structure (and
    final SSIM) values below 1e-4, i.e. anti-correlated maps, are raised to
    1e-4 before the fractional powers, which keeps the gradients finite.

    Args:
        window_size: side of the Gaussian window, odd, >= 1.
        sigma: > 0, standard deviation of the Gaussian window in pixels.
        ignore_index: target value excluded from the loss (see above).

    Shape:
        logits (N, C, H, W) float; target (N, H, W) int64 with values in
        {0, .., max(C, 2) - 1} or ``ignore_index``; output: scalar.
    """

    def __init__(self, window_size: int = 11, sigma: float = 1.5, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if window_size < 1 or window_size % 2 == 0:
            raise ValueError(f"ms_ssim: window_size must be an odd number >= 1, got {window_size}")
        if not (sigma > 0 and math.isfinite(sigma)):
            raise ValueError(f"ms_ssim: sigma must be a positive number, got {sigma}")
        self.window_size = window_size
        self.sigma = sigma
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid, labels = _valid_pixels(logits, target, self.ignore_index, "ms_ssim")
        probs, onehot = _probs_and_onehot(logits, labels)
        keep = valid.unsqueeze(1).to(logits.dtype)
        maps = [(m * keep).flatten(0, 1).unsqueeze(1) for m in (probs, onehot)]  # (N * C, 1, H, W)
        return 1.0 - ms_ssim(*maps, window_size=self.window_size, sigma=self.sigma).mean()


# --------------------------------------------------------------------------- #
# UNet 3+ hybrid
# --------------------------------------------------------------------------- #
@LOSSES.register("hybrid")
class HybridLoss(nn.Module):
    """The UNet 3+ hybrid loss (Huang et al. 2020): focal + MS-SSIM + Jaccard (IoU), each with weight 1.

    Pixel level (focal), patch level (MS-SSIM) and map level (IoU) terms; see
    "focal", "ms_ssim" and "jaccard" for each. To weight the terms differently,
    list them as three entries of the config's ``loss:`` instead.

    Args:
        gamma: focal exponent, >= 0.
        alpha: focal weight of the positives, one-channel output only.
        class_weights: focal class weights (numbers, "inverse" or "median_frequency").
        smooth: Jaccard smoothing, >= 0.
        include_background: Jaccard also averages class 0 when C > 1.
        ignore_index: target value excluded from the loss.

    Shape:
        logits (N, C, H, W) float; target (N, H, W) int64 with values in
        {0, .., max(C, 2) - 1} or ``ignore_index``; output: scalar.
    """

    def __init__(self, gamma: float = 2.0, alpha: Optional[float] = None, class_weights: ClassWeights = None,
                 smooth: float = 1.0, include_background: bool = False, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        self.focal = FocalLoss(gamma=gamma, alpha=alpha, class_weights=class_weights, ignore_index=ignore_index)
        self.ms_ssim = MSSSIMLoss(ignore_index=ignore_index)
        self.jaccard = JaccardLoss(smooth=smooth, include_background=include_background,
                                   ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _valid_pixels(logits, target, self.focal.ignore_index, "hybrid")  # errors name this loss
        return self.focal(logits, target) + self.ms_ssim(logits, target) + self.jaccard(logits, target)


# --------------------------------------------------------------------------- #
# Weighted sum, with deep supervision
# --------------------------------------------------------------------------- #
def _resize_to(logits: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) logits to ``size`` when they differ; anything else passes through."""
    if logits.ndim == 4 and tuple(logits.shape[-2:]) != tuple(size):
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits


def _normalised_ds_weights(weights: Optional[List[float]]) -> Optional[List[float]]:
    """Deep-supervision weights scaled to sum to 1, after checking them."""
    if weights is None:
        return None
    if not weights or any(not (w >= 0 and math.isfinite(w)) for w in weights) or sum(weights) <= 0:
        raise ValueError(f"deep_supervision_weights must be a non-empty list of finite weights >= 0 with a "
                         f"positive sum, got {weights}")
    return [float(w) / sum(weights) for w in weights]


class CombinedLoss(nn.Module):
    """Weighted sum of named losses, over one output or a deep-supervision list; also reports each term.

    One logits tensor: ``total = sum_i weight_i * loss_i(logits, target)``.

    A list or tuple of K logits tensors (deep supervision, main output first):
    each output is resized bilinearly to the target's size if it differs, and
    ``total = sum_k w_k * combined_k`` where ``combined_k`` is the weighted sum
    above for output k and ``w`` the ``deep_supervision_weights`` scaled to
    sum to 1 (None: 1/K each).

    Args:
        terms: ``(name, weight, loss_module)`` triples; weights must be >= 0.
            A repeated name gets a suffix in the reported parts (dice, dice_1).
        deep_supervision_weights: one weight >= 0 per output (main first),
            normalised to sum to 1; None weights the outputs equally. A list
            of outputs whose length differs raises ValueError.

    Shape:
        logits (N, C, H, W) or a list of such tensors (any H, W for the list),
        target (N, H, W) -> ``(total, parts)``: a scalar tensor to
        backpropagate and a dict name -> float of detached values: each
        unweighted term (of the main output for a list) and, for a list only,
        ``ds_k``: the weighted sum of the terms on output k (before ``w_k``),
        so that ``total == sum_k w_k * parts["ds_k"]``.
    """

    def __init__(self, terms: List[Tuple[str, float, nn.Module]],
                 deep_supervision_weights: Optional[List[float]] = None) -> None:
        super().__init__()
        if not terms:
            raise ValueError("CombinedLoss needs at least one (name, weight, loss) term")
        self.names: List[str] = []
        for name, weight, _ in terms:
            if not (weight >= 0 and math.isfinite(weight)):
                raise ValueError(f"loss {name!r}: weight must be a finite number >= 0, got {weight}")
            unique, i = name, 0
            while unique in self.names:
                i += 1
                unique = f"{name}_{i}"
            self.names.append(unique)
        self.weights = [float(weight) for _, weight, _ in terms]
        self.losses = nn.ModuleList(module for _, _, module in terms)
        self.deep_supervision_weights = _normalised_ds_weights(deep_supervision_weights)

    def _output_weights(self, count: int) -> List[float]:
        if count == 0:
            raise ValueError("CombinedLoss: got an empty list of outputs")
        if self.deep_supervision_weights is None:
            return [1.0 / count] * count
        if len(self.deep_supervision_weights) != count:
            raise ConfigError(
                f"train.deep_supervision_weights has {len(self.deep_supervision_weights)} entries but the model returned "
                f"{count} outputs; give one weight per output (main first), or leave "
                "train.deep_supervision_weights unset for equal weights")
        return self.deep_supervision_weights

    def _terms(self, logits: torch.Tensor, target: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """(unweighted values, weighted sum) of the terms on one output."""
        values = [loss(logits, target) for loss in self.losses]
        return values, sum(w * v for w, v in zip(self.weights, values))

    def forward(self, logits: Union[torch.Tensor, Sequence[torch.Tensor]],
                target: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        if isinstance(logits, torch.Tensor):
            values, total = self._terms(logits, target)
            names, reported = self.names, values
        else:
            weights = self._output_weights(len(logits))
            outputs = [self._terms(_resize_to(out, target.shape[-2:]), target) for out in logits]
            combined = [summed for _, summed in outputs]
            total = sum(w * c for w, c in zip(weights, combined))
            names = self.names + [f"ds_{k}" for k in range(len(outputs))]
            reported = outputs[0][0] + combined
        detached = torch.stack([v.detach().float() for v in reported]).tolist()  # one device sync for all
        return total, dict(zip(names, detached))

    def extra_repr(self) -> str:
        text = ", ".join(f"{n}*{w:g}" for n, w in zip(self.names, self.weights))
        if self.deep_supervision_weights is not None:
            text += ", deep_supervision_weights=[" + ", ".join(f"{w:.4g}" for w in self.deep_supervision_weights) + "]"
        return text


def build_loss(specs: List[Dict[str, Any]],
               deep_supervision_weights: Optional[List[float]] = None) -> CombinedLoss:
    """A :class:`CombinedLoss` from specs ``{"name": ..., "weight": 1.0, **kwargs}``.

    ``name`` is a name registered in ``LOSSES`` (unknown names raise KeyError
    listing the valid ones); the other keys are the loss class's arguments.
    ``deep_supervision_weights`` (e.g. ``train.deep_supervision_weights``)
    weights a model's list of outputs; see :class:`CombinedLoss`.
    """
    if not specs:
        raise ValueError("build_loss: needs at least one loss spec, e.g. [{'name': 'bce'}]")
    terms: List[Tuple[str, float, nn.Module]] = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"build_loss: spec {i} must be a dict with a 'name' key, got {spec!r}")
        kwargs = {k: v for k, v in spec.items() if k not in ("name", "weight")}
        terms.append((spec["name"], float(spec.get("weight", 1.0)), LOSSES.build(spec["name"], **kwargs)))
    return CombinedLoss(terms, deep_supervision_weights)
