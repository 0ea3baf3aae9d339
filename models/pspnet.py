"""PSPNet (Zhao et al., CVPR 2017) on a dilated ResNet, registered as "pspnet".

The ResNet runs at output stride 8 (``layer3`` and ``layer4`` dilated, as
torchvision's ``replace_stride_with_dilation=[False, True, True]``). The
pyramid pooling module average-pools the 2048-channel ``layer4`` map to
``bins`` x ``bins`` grids (1, 2, 3, 6), reduces each to ``in / N`` channels
(N = number of bins, the paper's rule: 512 each for ResNet-50/101) with a 1x1
conv-BN-ReLU, upsamples them bilinearly back to the map's size and
concatenates them with the map; a 3x3 conv-BN-ReLU to 512 channels, dropout
and a 1x1 classifier follow, and the logits are upsampled bilinearly to the
input size.

The 1-bin branch (global pooling) has no BatchNorm: its map is 1x1, so its
batch statistics would come from N values per channel and training on a
batch of one image would fail outright; a biased 1x1 conv + ReLU is used
instead, as in our DeepLab ASPP pooling branch (512 parameters fewer than
mmsegmentation's head).

With ``aux=True`` an auxiliary FCN head on ``layer3`` (3x3 conv-BN-ReLU to
256 channels, dropout, 1x1 classifier), as in the paper and mmsegmentation,
adds deep supervision: in training mode the model returns an
:class:`utils.model_output.AuxiliaryOutput` (main logits, auxiliary logits,
``aux_weight``), and :class:`utils.losses.CombinedLoss` adds ``aux_weight``
(0.4) times the configured loss on the auxiliary logits. In evaluation mode
the auxiliary head is not run and the model returns the main logits alone.
Its weights stay in the checkpoint.

Dropout is ``Dropout2d`` (whole channels) with probability ``dropout`` (0.1,
as mmsegmentation's heads).
"""
import math
from typing import List, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from models.common import check_dropout, check_input, conv_bn_relu, init_weights
from models.deeplab import EncoderHeadModel
from models.encoders import check_encoder_name, supported_output_strides
from utils.errors import ConfigError
from utils.model_output import AUX_WEIGHT, AuxiliaryOutput
from utils.registry import MODELS

OUTPUT_STRIDE = 8
BOTTLENECK_CHANNELS = 512
AUX_CHANNELS = 256
AUX_LEVEL = 3  # encoder feature index of ResNet's layer3 (stride 8 when dilated)


class PyramidPooling(nn.Module):
    """Average pooling to each ``bins`` grid, 1x1 reduction, bilinear upsampling; concatenated with the input.

    Args:
        in_ch: channels of the input feature map.
        bins: grid sides of the pooled maps.
        branch_ch: channels of each branch after its 1x1 reduction.
    """

    def __init__(self, in_ch: int, bins: Tuple[int, ...], branch_ch: int) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_ch, branch_ch, kernel_size=1), nn.ReLU(inplace=True)) if b == 1
            else conv_bn_relu(in_ch, branch_ch, kernel_size=1)  # no BatchNorm on 1x1 maps (module docstring)
            for b in self.bins)
        self.out_channels = in_ch + len(self.bins) * branch_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [branch(F.adaptive_avg_pool2d(x, b)) for b, branch in zip(self.bins, self.branches)]
        return torch.cat([x] + [F.interpolate(p, size=size, mode="bilinear", align_corners=False)
                                for p in pooled], dim=1)


class PSPHead(nn.Module):
    """Pyramid pooling on the deepest features, 3x3 conv-BN-ReLU, dropout, 1x1 classifier."""

    def __init__(self, in_ch: int, out_ch: int, bins: Tuple[int, ...], dropout: float) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_ch, bins, in_ch // len(bins))
        self.bottleneck = conv_bn_relu(self.ppm.out_channels, BOTTLENECK_CHANNELS)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(BOTTLENECK_CHANNELS, out_ch, kernel_size=1)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(self.bottleneck(self.ppm(features[-1]))))


class AuxHead(nn.Module):
    """FCN head on ``layer3``: 3x3 conv-BN-ReLU to 256 channels, dropout, 1x1 classifier."""

    def __init__(self, in_ch: int, out_ch: int, dropout: float) -> None:
        super().__init__()
        self.block = nn.Sequential(conv_bn_relu(in_ch, AUX_CHANNELS), nn.Dropout2d(dropout),
                                   nn.Conv2d(AUX_CHANNELS, out_ch, kernel_size=1))

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        return self.block(features[AUX_LEVEL])


def _check_options(encoder: str, bins: Tuple[int, ...], dropout: float, aux_weight: float) -> Tuple[int, ...]:
    """``bins`` as a tuple; ConfigError naming the model key for a non-ResNet encoder or a bad value."""
    if OUTPUT_STRIDE not in supported_output_strides(encoder):
        raise ConfigError(f"PSPNet: model.encoder must be a ResNet (resnet18, resnet34, resnet50, resnet101) to "
                          f"run dilated at output stride {OUTPUT_STRIDE}, got {encoder!r}; the paper uses "
                          "resnet50 or resnet101")
    if not bins or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in bins):
        raise ConfigError(f"PSPNet: model.bins needs at least one positive grid side, got {list(bins)}; "
                          "the paper uses [1, 2, 3, 6]")
    check_dropout("PSPNet", "dropout", dropout)
    if not (aux_weight >= 0 and math.isfinite(aux_weight)):
        raise ConfigError(f"PSPNet: model.aux_weight must be a finite number >= 0, got {aux_weight}; "
                          f"the paper uses {AUX_WEIGHT}")
    return tuple(bins)


@MODELS.register("pspnet")
class PSPNet(EncoderHeadModel):
    """PSPNet: a dilated ResNet (output stride 8) with a pyramid pooling head, logits at the input size.

    Args:
        in_channels: image channels.
        out_channels: 1 for binary sigmoid output, otherwise the number of classes.
        encoder: a ResNet from :data:`models.encoders.ENCODERS` (the paper: resnet50 or resnet101).
        pretrained: load the backbone's ImageNet weights from the local torch.hub cache.
        aux: add the auxiliary FCN head on ``layer3`` (training mode only; see the module docstring).
        bins: grid sides of the pyramid pooling branches.
        dropout: channel dropout before the classifiers of both heads.
        aux_weight: weight of the auxiliary head's loss (with ``aux``).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, encoder: str = "resnet50",
                 pretrained: bool = False, aux: bool = True, bins: Tuple[int, ...] = (1, 2, 3, 6),
                 dropout: float = 0.1, aux_weight: float = AUX_WEIGHT) -> None:
        check_encoder_name(encoder)
        bins = _check_options(encoder, bins, dropout, aux_weight)
        super().__init__("PSPNet", in_channels, out_channels, encoder, pretrained, OUTPUT_STRIDE, OUTPUT_STRIDE)
        channels = self.encoder.out_channels
        self.set_head(PSPHead(channels[-1], out_channels, bins, dropout))
        self.aux_weight = float(aux_weight)
        self.aux_head = AuxHead(channels[AUX_LEVEL], out_channels, dropout) if aux else None
        if self.aux_head is not None:
            init_weights(self.aux_head)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, AuxiliaryOutput]:
        check_input(x, self.in_channels, self.model_name)
        features = self.encoder(x)
        size = x.shape[-2:]
        logits = F.interpolate(self.head(features), size=size, mode="bilinear", align_corners=False)
        if self.aux_head is None or not self.training:
            return logits
        aux = F.interpolate(self.aux_head(features), size=size, mode="bilinear", align_corners=False)
        return AuxiliaryOutput(logits, aux, self.aux_weight)
