"""Segmentation losses, registered in ``utils.registry.LOSSES``, and their weighted sum.

Every loss is an ``nn.Module`` called as ``loss(logits, target)``:

* ``logits``: float (N, C, H, W) raw model output; C == 1 means binary sigmoid,
  C > 1 softmax over the channels (the losses apply sigmoid/softmax themselves);
* ``target``: int64 (N, H, W) class indices; pixels equal to ``ignore_index``
  (``IGNORE_INDEX`` = 255 by default) are left out of every sum and mean, and a
  batch with no labelled pixel gives a loss of 0 (with a zero gradient, no NaN).

Registered names: "bce" (:class:`BCELoss`), "ce" (:class:`CrossEntropyLoss`),
"dice" (:class:`DiceLoss`). Use them one at a time::

    from utils.registry import LOSSES
    dice = LOSSES.build("dice", smooth=1.0)
    value = dice(logits, target)

or, as a config's ``loss:`` list does, as a weighted sum that also reports each
unweighted term for logging::

    criterion = build_loss([{"name": "bce", "weight": 1.0},
                            {"name": "dice", "weight": 0.5, "smooth": 1.0}])
    total, parts = criterion(logits, target)   # parts == {"bce": 0.41, "dice": 0.73}
"""
import math
from typing import Any, Dict, List, Literal, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from utils.constants import IGNORE_INDEX
from utils.registry import LOSSES


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


# --------------------------------------------------------------------------- #
# Losses
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
        if logits.shape[1] == 1:
            probs_target = labels.unsqueeze(1).to(logits.dtype)
        else:
            probs_target = torch.zeros_like(logits).scatter_(1, labels.unsqueeze(1), 1.0)
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

    def __init__(self, class_weights: Optional[Union[List[float], Literal["inverse", "median_frequency"]]] = None,
                 ignore_index: int = IGNORE_INDEX, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if isinstance(class_weights, str):
            raise ValueError(
                f"ce: class_weights={class_weights!r} must be resolved to one number per class before the loss "
                "is built; train.py does this from the training masks (resolve_class_weights), elsewhere use "
                "utils.class_stats.class_weights(utils.class_stats.class_pixel_counts(dataset), method)")
        if class_weights is not None and (not class_weights or any(w < 0 for w in class_weights)):
            raise ValueError(f"ce: class_weights must be a non-empty list of weights >= 0, got {class_weights}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"ce: label_smoothing must lie in [0, 1), got {label_smoothing}")
        self.class_weights = class_weights
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = logits.shape[1]
        if num_classes == 1:
            raise ValueError("ce: needs at least 2 output channels (softmax), got 1; use the 'bce' loss for a "
                             "one-channel sigmoid output, or set model.out_channels: 2")
        valid, labels = _valid_pixels(logits, target, self.ignore_index, "ce")
        weight = None
        if self.class_weights is not None:
            if len(self.class_weights) != num_classes:
                raise ValueError(f"ce: class_weights has {len(self.class_weights)} entries but the logits have "
                                 f"{num_classes} channels; give one weight per class")
            weight = logits.new_tensor(self.class_weights)
        per_pixel = F.cross_entropy(logits, labels, weight=weight, reduction="none",
                                    label_smoothing=self.label_smoothing)
        pixel_weights = valid.to(logits.dtype) if weight is None else torch.where(valid, weight[labels], 0.0)
        return _masked_mean(per_pixel, valid, pixel_weights.sum())


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
        if not smooth >= 0:
            raise ValueError(f"dice: smooth must be >= 0, got {smooth}")
        self.smooth = smooth
        self.include_background = include_background
        self.ignore_index = ignore_index
        self.log_loss = log_loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid, labels = _valid_pixels(logits, target, self.ignore_index, "dice")
        keep = valid.unsqueeze(1).to(logits.dtype)
        if logits.shape[1] == 1:
            probs = torch.sigmoid(logits)
            onehot = labels.unsqueeze(1).to(logits.dtype)
        else:
            probs = logits.softmax(dim=1)
            onehot = torch.zeros_like(probs).scatter_(1, labels.unsqueeze(1), 1.0)
            if not self.include_background:
                probs, onehot = probs[:, 1:], onehot[:, 1:]
        probs, onehot = probs * keep, onehot * keep
        dims = (0, 2, 3)
        intersection = (probs * onehot).sum(dims)
        true_count = onehot.sum(dims)
        cardinality = probs.sum(dims) + true_count
        eps = torch.finfo(logits.dtype).eps
        dice = (2.0 * intersection + self.smooth) / (cardinality + self.smooth).clamp_min(eps)
        per_class = -torch.log(dice.clamp_min(eps)) if self.log_loss else 1.0 - dice
        present = true_count > 0
        return _masked_mean(per_class, present, present.sum())


# --------------------------------------------------------------------------- #
# Weighted sum
# --------------------------------------------------------------------------- #
class CombinedLoss(nn.Module):
    """Weighted sum of named losses; also reports each unweighted term.

    Args:
        terms: ``(name, weight, loss_module)`` triples; weights must be >= 0.
            A repeated name gets a suffix in the reported parts (dice, dice_1).

    Shape:
        logits (N, C, H, W), target (N, H, W) -> ``(total, parts)``: a scalar
        tensor to backpropagate and a dict name -> float of the detached,
        unweighted terms.
    """

    def __init__(self, terms: List[Tuple[str, float, nn.Module]]) -> None:
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

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float]]:
        values = [loss(logits, target) for loss in self.losses]
        total = sum(w * v for w, v in zip(self.weights, values))
        detached = torch.stack([v.detach().float() for v in values]).tolist()  # one device sync for all
        return total, dict(zip(self.names, detached))

    def extra_repr(self) -> str:
        return ", ".join(f"{n}*{w:g}" for n, w in zip(self.names, self.weights))


def build_loss(specs: List[Dict[str, Any]]) -> CombinedLoss:
    """A :class:`CombinedLoss` from specs ``{"name": ..., "weight": 1.0, **kwargs}``.

    ``name`` is a name registered in ``LOSSES`` (unknown names raise KeyError
    listing the valid ones); the other keys are the loss class's arguments.
    """
    if not specs:
        raise ValueError("build_loss: needs at least one loss spec, e.g. [{'name': 'bce'}]")
    terms: List[Tuple[str, float, nn.Module]] = []
    for i, spec in enumerate(specs):
        if not isinstance(spec, dict) or "name" not in spec:
            raise ValueError(f"build_loss: spec {i} must be a dict with a 'name' key, got {spec!r}")
        kwargs = {k: v for k, v in spec.items() if k not in ("name", "weight")}
        terms.append((spec["name"], float(spec.get("weight", 1.0)), LOSSES.build(spec["name"], **kwargs)))
    return CombinedLoss(terms)
