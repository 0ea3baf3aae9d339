"""Structural losses: "ms_ssim" (multi-scale SSIM of probabilities vs target) and the UNet 3+ "hybrid"
(focal + MS-SSIM + Jaccard)."""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from utils.constants import IGNORE_INDEX
from utils.losses.common import ClassWeights, probs_and_onehot, valid_pixels
from utils.losses.distribution import FocalLoss
from utils.losses.region import JaccardLoss
from utils.registry import LOSSES

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
        valid, labels = valid_pixels(logits, target, self.ignore_index, "ms_ssim", volumes=False)
        probs, onehot = probs_and_onehot(logits, labels)
        keep = valid.unsqueeze(1).to(logits.dtype)
        maps = [(m * keep).flatten(0, 1).unsqueeze(1) for m in (probs, onehot)]  # (N * C, 1, H, W)
        return 1.0 - ms_ssim(*maps, window_size=self.window_size, sigma=self.sigma).mean()


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
        valid_pixels(logits, target, self.focal.ignore_index, "hybrid", volumes=False)  # errors name this loss
        return self.focal(logits, target) + self.ms_ssim(logits, target) + self.jaccard(logits, target)
