"""Pixel-wise (distribution) losses: "bce", "ce" and "focal", each a mean over the labelled pixels.

Each compares the predicted class distribution of every pixel (sigmoid or
softmax of the logits) with its label; ignored pixels are left out. "bce"
and "ce" can weight pixels by the U-Net border weight map
(:mod:`utils.losses.border`): ``border_w0``, ``border_sigma``,
``border_class_balance``; the mean is then weighted by the map.
"""
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from utils.constants import IGNORE_INDEX
from utils.losses.border import border_weights
from utils.losses.common import (ClassWeights, check_class_weights, class_weight_tensor, masked_mean, target_like,
                                 valid_pixels)
from utils.registry import LOSSES


@LOSSES.register("bce")
class BCELoss(nn.Module):
    """Binary cross-entropy on logits, averaged over labelled pixels.

    With one channel the target (0 or 1) is the probability of class 1. With
    C > 1 channels each channel is an independent sigmoid against the one-hot
    target, and the mean runs over labelled pixels and channels.

    With ``border_w0`` > 0 (or ``border_class_balance``) each pixel's terms
    are weighted by the U-Net weight map of its target
    (:mod:`utils.losses.border`) and the mean divides by the summed weights.

    Args:
        pos_weight: weight of the positive term, > 0 (e.g. #negatives /
            #positives for a rare foreground); None means 1.
        ignore_index: target value excluded from the loss.
        border_w0: weight of the U-Net border term, >= 0 (the paper: 10); 0 = off.
        border_sigma: width of the border term in pixels, > 0 (the paper: 5).
        border_class_balance: also weight each pixel by its class's balancing
            weight in its mask (each class present weighs the same).

    Shape:
        logits (N, C, H, W) float; target (N, H, W) int64 with values in
        {0, .., max(C, 2) - 1} or ``ignore_index``; output: scalar.
    """

    def __init__(self, pos_weight: Optional[float] = None, ignore_index: int = IGNORE_INDEX,
                 border_w0: float = 0.0, border_sigma: float = 5.0, border_class_balance: bool = False) -> None:
        super().__init__()
        if pos_weight is not None and not (pos_weight > 0 and math.isfinite(pos_weight)):
            raise ValueError(f"bce: pos_weight must be a positive number, got {pos_weight}")
        self.pos_weight = pos_weight
        self.ignore_index = ignore_index
        self.border_weights = border_weights("bce", border_w0, border_sigma, border_class_balance, ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid, labels = valid_pixels(logits, target, self.ignore_index, "bce")
        probs_target = target_like(logits, labels)
        pos_weight = None if self.pos_weight is None else logits.new_tensor(self.pos_weight)
        per_pixel = F.binary_cross_entropy_with_logits(logits, probs_target, pos_weight=pos_weight,
                                                       reduction="none")
        mask = valid.unsqueeze(1).expand_as(per_pixel)
        if self.border_weights is None:
            return masked_mean(per_pixel, mask, valid.sum() * logits.shape[1])
        weights = self.border_weights(target).to(per_pixel.dtype)
        return masked_mean(per_pixel * weights.unsqueeze(1), mask, weights.sum() * logits.shape[1])


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
        border_w0, border_sigma, border_class_balance: the U-Net border
            weight map, as in "bce"; it multiplies the class weights.

    Shape:
        logits (N, C, H, W) float with C >= 2; target (N, H, W) int64 with
        values in {0, .., C - 1} or ``ignore_index``; output: scalar.
    """

    def __init__(self, class_weights: ClassWeights = None, ignore_index: int = IGNORE_INDEX,
                 label_smoothing: float = 0.0, border_w0: float = 0.0, border_sigma: float = 5.0,
                 border_class_balance: bool = False) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"ce: label_smoothing must lie in [0, 1), got {label_smoothing}")
        self.class_weights = check_class_weights("ce", class_weights)
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.border_weights = border_weights("ce", border_w0, border_sigma, border_class_balance, ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == 1:
            raise ValueError("ce: needs at least 2 output channels (softmax), got 1; use the 'bce' loss for a "
                             "one-channel sigmoid output, or set model.out_channels: 2")
        valid, labels = valid_pixels(logits, target, self.ignore_index, "ce")
        weight = None if self.class_weights is None else class_weight_tensor(self.class_weights, logits, "ce")
        per_pixel = F.cross_entropy(logits, labels, weight=weight, reduction="none",
                                    label_smoothing=self.label_smoothing)
        pixel_weights = valid.to(logits.dtype) if weight is None else torch.where(valid, weight[labels], 0.0)
        if self.border_weights is not None:
            border = self.border_weights(target).to(per_pixel.dtype)
            per_pixel, pixel_weights = per_pixel * border, pixel_weights * border
        return masked_mean(per_pixel, valid, pixel_weights.sum())


# Not torchvision.ops.sigmoid_focal_loss: same values, but NaN gradients for gamma < 1 at saturated logits (tested).
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
        self.class_weights = check_class_weights("focal", class_weights)
        self.ignore_index = ignore_index

    def _weights(self, logits: torch.Tensor) -> Optional[torch.Tensor]:
        """One weight per class, or None."""
        if self.alpha is not None:
            if logits.shape[1] > 1:
                raise ValueError(f"focal: alpha weighs the positives of a 1-channel (sigmoid) output; for "
                                 f"{logits.shape[1]}-channel softmax logits give class_weights (one per class)")
            return logits.new_tensor([1.0 - self.alpha, self.alpha])
        if self.class_weights is not None:
            return class_weight_tensor(self.class_weights, logits, "focal")
        return None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid, labels = valid_pixels(logits, target, self.ignore_index, "focal")
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
        return masked_mean(per_pixel, valid, valid.sum())
