"""UNet 3+ (Huang et al., ICASSP 2020) for semantic segmentation, registered as "unet3p".

Encoder: five levels ``X_En^1 .. X_En^5`` of widths ``base_channels * [1, 2, 4,
8, 16]`` (64-128-256-512-1024 in the paper), two 3x3 conv + BN + ReLU each,
2x2 max pooling in between.

Full-scale skip connections: each decoder stage ``X_De^i`` (``i = 4 .. 1``)
gathers five maps brought to its scale: the shallower encoder maps
``X_En^1 .. X_En^{i-1}`` by non-overlapping max pooling (factor ``2**(i-k)``),
the same-scale ``X_En^i`` as it is, and the deeper decoder maps
``X_De^{i+1} .. X_De^4`` plus ``X_En^5`` by bilinear upsampling. Each goes
through a 3x3 conv to ``base_channels`` (64) channels + BN + ReLU; the five are
concatenated (320 channels) and fused by a 3x3 conv 320 -> 320 + BN + ReLU.

Outputs (raw logits, the input's height and width): a 3x3 conv head on
``X_De^1`` is the main output. ``deep_supervision=True`` adds 3x3 conv heads on
``X_De^2``, ``X_De^3``, ``X_De^4`` and ``X_En^5``, bilinearly upsampled to the
input size; training mode then returns the list ``[X_De^1, X_De^2, X_De^3,
X_De^4, X_En^5]`` (main first), evaluation mode the main tensor only.

Classification-guided module (``classification_guided=True``): ``X_En^5`` ->
dropout(0.5) -> 1x1 conv to 2 -> global max pool gives two "organ absent /
present" logits ``(N, 2)``. In training mode the model returns them with the
segmentation logits in a :class:`utils.model_output.ClassGuidedOutput`;
:class:`utils.losses.CombinedLoss` trains them with BCE-with-logits against
one-hot "any foreground pixel" image labels (its "cls" term; the paper's
sigmoid + argmax decision is ``argmax`` of these logits). In evaluation
mode the decision masks the segmentation: the paper multiplies the
probabilities by 0/1, which on logits means, for images judged absent,
replacing the logits by constants whose probabilities are background
everywhere: ``-MASKED_LOGIT`` for a single sigmoid channel, and ``0`` for class
0 (background) / ``-MASKED_LOGIT`` for every other class with softmax
(foreground probability below 1e-13, the loss stays finite). Images judged
present keep their logits. In training mode the segmentation logits are never
masked: a hard decision has no gradient, and masking would silence the
segmentation loss for every image the still-learning classifier calls empty.

Parameters for the paper's setting (3 -> 1 channel, widths 64..1024):
26,965,249 without extras, matching the 26.97M the paper reports for UNet 3+;
deep supervision adds 17,860 (four side heads) and the CGM 2,050.
"""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from models.common import DoubleConv, check_input, check_positive, conv_bn_relu, init_weights
from utils.model_output import ClassGuidedOutput, SegmentationLogits
from utils.registry import MODELS

LEVELS = 5  # encoder levels X_En^1 .. X_En^5
MASKED_LOGIT = 30.0  # magnitude of the foreground logits forced by the CGM


def upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``x`` bilinearly resized to ``size`` (returned as is when it already has that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def mask_absent(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Logits of images with ``present[n] == False`` replaced by pure-background constants.

    Shape:
        logits: (N, C, H, W); C == 1 is sigmoid, C > 1 softmax with class 0 the background.
        present: (N,) bool.
    """
    background = torch.full_like(logits, -MASKED_LOGIT)
    if logits.shape[1] > 1:
        background[:, 0] = 0.0
    return torch.where(present.view(-1, 1, 1, 1), logits, background)


class FullScaleStage(nn.Module):
    """Decoder stage at encoder level ``level``: five sources resized to its scale, 3x3 conv each, concat, fuse.

    Args:
        level: 0-based level of the stage (0 = full resolution, i.e. X_De^1).
        source_channels: channels of the sources, ordered shallow to deep:
            encoder levels ``0 .. level``, then the deeper decoder stages, then
            the deepest encoder map.
        cat_channels: channels each source is convolved to.
    """

    def __init__(self, level: int, source_channels: Sequence[int], cat_channels: int) -> None:
        super().__init__()
        self.level = level
        self.branches = nn.ModuleList(conv_bn_relu(c, cat_channels) for c in source_channels)
        fused = cat_channels * len(source_channels)
        self.fuse = conv_bn_relu(fused, fused)

    def rescale(self, k: int, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        """Source ``k`` at this stage's scale: max-pooled if shallower, upsampled if deeper."""
        if k < self.level:
            return F.max_pool2d(x, kernel_size=2 ** (self.level - k))
        if k == self.level:
            return x
        # always a deeper, smaller map: no size test, which traced/exported graphs could not keep
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)

    def forward(self, sources: List[torch.Tensor]) -> torch.Tensor:
        size = sources[self.level].shape[-2:]
        maps = [branch(self.rescale(k, x, size)) for k, (branch, x) in enumerate(zip(self.branches, sources))]
        return self.fuse(torch.cat(maps, dim=1))


@MODELS.register("unet3p")
class UNet3Plus(nn.Module):
    """UNet 3+ with full-scale skip connections, returning raw logits (N, out_channels, H, W).

    Args:
        in_channels: image channels (3 for RGB, 1 for grayscale).
        out_channels: 1 for binary sigmoid output, otherwise the number of
            classes (softmax over channels, class 0 the background).
        base_channels: width of level 1 and of each full-scale skip branch;
            level ``i`` has ``base_channels * 2**(i-1)`` channels, every decoder
            stage ``5 * base_channels``.
        deep_supervision: side heads on X_De^2..4 and X_En^5; training mode
            then returns the list ``[main, X_De^2, X_De^3, X_De^4, X_En^5]``
            of full-size logits, evaluation mode the main tensor only.
        classification_guided: the classification-guided module; training mode
            then returns a :class:`utils.model_output.ClassGuidedOutput` (the
            segmentation logits above and the (N, 2) class logits), and in
            evaluation mode images it judges empty get background-only logits
            (see the module docstring).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base_channels: int = 64,
                 deep_supervision: bool = False, classification_guided: bool = False) -> None:
        super().__init__()
        check_positive("UNet3Plus", in_channels=in_channels, out_channels=out_channels,
                       base_channels=base_channels)
        self.in_channels = in_channels
        self.deep_supervision = deep_supervision
        widths = [base_channels * 2 ** i for i in range(LEVELS)]
        stage_width = LEVELS * base_channels
        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList(
            DoubleConv(widths[i - 1] if i else in_channels, widths[i]) for i in range(LEVELS))
        # decoder[l] is X_De^{l+1}; its sources: encoder 0..l, decoder l+1..3, encoder 4
        self.decoder = nn.ModuleList(
            FullScaleStage(level, widths[:level + 1] + [stage_width] * (LEVELS - 2 - level) + widths[-1:],
                           base_channels)
            for level in range(LEVELS - 1))
        head_inputs = ([stage_width] * (LEVELS - 1) + widths[-1:]) if deep_supervision else [stage_width]
        self.heads = nn.ModuleList(nn.Conv2d(c, out_channels, kernel_size=3, padding=1) for c in head_inputs)
        self.classifier: Optional[nn.Module] = None
        if classification_guided:
            self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(widths[-1], 2, kernel_size=1),
                                            nn.AdaptiveMaxPool2d(1), nn.Flatten())
        init_weights(self)

    def features(self, x: torch.Tensor) -> List[torch.Tensor]:
        """``[X_De^1, X_De^2, X_De^3, X_De^4, X_En^5]``: the maps the heads read."""
        encoded = [self.encoder[0](x)]
        for block in self.encoder[1:]:
            encoded.append(block(self.pool(encoded[-1])))
        deeper = encoded[-1:]
        for level in reversed(range(LEVELS - 1)):
            deeper.insert(0, self.decoder[level](encoded[:level + 1] + deeper))
        return deeper

    def forward(self, x: torch.Tensor) -> Union[SegmentationLogits, ClassGuidedOutput]:
        """Logits (N, out_channels, H, W). In training: the deep-supervision list (main first) instead when
        it is on, and, with the CGM, a :class:`ClassGuidedOutput` holding those and the class logits."""
        check_input(x, self.in_channels, "UNet3Plus", poolings=LEVELS - 1)
        maps = self.features(x)
        if not self.training:
            logits = upsample_to(self.heads[0](maps[0]), x.shape[-2:])
            if self.classifier is not None:
                present = self.classifier(maps[-1]).argmax(dim=1) == 1
                logits = mask_absent(logits, present)
            return logits
        outputs = [upsample_to(head(m), x.shape[-2:]) for head, m in zip(self.heads, maps)]
        logits = outputs if self.deep_supervision else outputs[0]
        if self.classifier is None:
            return logits
        return ClassGuidedOutput(logits, self.classifier(maps[-1]))
