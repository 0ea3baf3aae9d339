"""DeepLabV3, DeepLabV3+ and FCN over torchvision backbones, registered as
"deeplabv3", "deeplabv3plus" and "fcn".

All three take an encoder from :data:`models.encoders.ENCODERS`, put a head
on its deepest feature map and upsample the logits bilinearly to the input
size, so any input size works.

* DeepLabV3 (Chen et al., 2017): ASPP (a 1x1 conv, one 3x3 atrous conv per
  rate of ``aspp_rates`` (6, 12, 18: the paper's rates at output stride 16;
  it doubles them at 8), image pooling; all 256 channels, concatenated,
  projected by a 1x1 conv to 256 channels, dropout 0.5), then a 3x3
  conv-BN-ReLU and a 1x1 classifier (torchvision's DeepLabHead layout, but
  with our ASPP: see below).
* DeepLabV3+ (Chen et al., 2018): the same ASPP; its output is upsampled to
  the stride-4 features, which are reduced to 48 channels by a 1x1
  conv-BN-ReLU, concatenated, refined by two 3x3 conv-BN-ReLU of 256
  channels and classified by a 1x1 conv.
* FCN: torchvision's FCN head itself (``torchvision.models.segmentation.fcn.
  FCNHead``, as in ``fcn_resnet50``), i.e. FCN-32s style
  with no skip fusion: a 3x3 conv-BN-ReLU to a quarter of the channels,
  dropout 0.1 and a 1x1 classifier on the last feature map. The dilated
  ResNet (output stride 8) supplies the resolution that FCN-8s gets from
  skips.

``output_stride`` (ResNets only) keeps the last feature maps at stride 16 or
8 by dilating ``layer4`` (and ``layer3``); None means the usual choice: 16
for DeepLab, 8 for FCN. MobileNetV3 and EfficientNet encoders stay at
stride 32 (the only value they accept; None selects it).

The ASPP image-pooling branch has no BatchNorm: its map is 1x1, so its
batch statistics would come from N values per channel only, and training
on a batch of one image would fail outright; a biased 1x1 conv + ReLU is
used instead. That is why the ASPP (and so the DeepLabV3 head) is ours and
not torchvision's ``ASPP`` / ``DeepLabHead``, whose pooling branch has that
BatchNorm; torchvision has no DeepLabV3+ decoder.

Every model has ``set_encoder_frozen(frozen)`` (see
:meth:`models.encoders.Encoder.set_frozen`) for warming up the head on a
pretrained backbone.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.fcn import FCNHead as TorchvisionFCNHead

from models.common import check_input, check_positive, conv_bn_relu, init_weights
from models.encoders import build_encoder, check_encoder_name, supported_output_strides
from utils.errors import ConfigError
from utils.registry import MODELS

ASPP_CHANNELS = 256
LOW_LEVEL = 1  # index of the stride-4 encoder features used by DeepLabV3+


class ASPPPooling(nn.Module):
    """Global average pooling -> biased 1x1 conv -> ReLU, broadcast back to the input's size."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.relu(self.conv(F.adaptive_avg_pool2d(x, 1)))
        return pooled.expand(-1, -1, *x.shape[-2:])


# Ours, not torchvision's ASPP/DeepLabHead: their pooling-branch BatchNorm fails on 1-image training batches (+256 params).
class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: parallel 1x1, atrous 3x3 and image-pooling branches, projected.

    Args:
        in_ch: channels of the input feature map.
        rates: dilation rates of the 3x3 branches.
        out_ch: channels of each branch and of the output.
    """

    def __init__(self, in_ch: int, rates: Tuple[int, ...], out_ch: int = ASPP_CHANNELS) -> None:
        super().__init__()
        branches: List[nn.Module] = [conv_bn_relu(in_ch, out_ch, kernel_size=1)]
        branches += [conv_bn_relu(in_ch, out_ch, dilation=rate) for rate in rates]
        branches.append(ASPPPooling(in_ch, out_ch))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(conv_bn_relu(len(branches) * out_ch, out_ch, kernel_size=1),
                                     nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class DeepLabV3Head(nn.Module):
    """ASPP on the deepest features, 3x3 conv-BN-ReLU, 1x1 classifier."""

    def __init__(self, in_ch: int, out_ch: int, rates: Tuple[int, ...]) -> None:
        super().__init__()
        self.aspp = ASPP(in_ch, rates)
        self.conv = conv_bn_relu(ASPP_CHANNELS, ASPP_CHANNELS)
        self.classifier = nn.Conv2d(ASPP_CHANNELS, out_ch, kernel_size=1)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.conv(self.aspp(features[-1])))


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the deepest features, upsampled and fused with the reduced stride-4 features, 3x3 convs."""

    def __init__(self, in_ch: int, low_ch: int, out_ch: int, rates: Tuple[int, ...],
                 low_reduced: int = 48) -> None:
        super().__init__()
        self.aspp = ASPP(in_ch, rates)
        self.reduce = conv_bn_relu(low_ch, low_reduced, kernel_size=1)
        self.fuse = nn.Sequential(conv_bn_relu(ASPP_CHANNELS + low_reduced, ASPP_CHANNELS),
                                  conv_bn_relu(ASPP_CHANNELS, ASPP_CHANNELS))
        self.classifier = nn.Conv2d(ASPP_CHANNELS, out_ch, kernel_size=1)

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        low = self.reduce(features[LOW_LEVEL])
        high = F.interpolate(self.aspp(features[-1]), size=low.shape[-2:], mode="bilinear",
                             align_corners=False)
        return self.classifier(self.fuse(torch.cat([low, high], dim=1)))


class FCNHead(TorchvisionFCNHead):
    """torchvision's FCN head (3x3 conv-BN-ReLU to a quarter of the channels, dropout 0.1, 1x1 classifier),
    on the deepest features."""

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        return super().forward(features[-1])


class EncoderHeadModel(nn.Module):
    """A backbone encoder and a head on its features; the head's logits are upsampled to the input size."""

    def __init__(self, model_name: str, in_channels: int, out_channels: int, encoder: str,
                 pretrained: bool, output_stride: Optional[int], default_stride: int) -> None:
        super().__init__()
        check_positive(model_name, in_channels=in_channels, out_channels=out_channels)
        check_encoder_name(encoder)
        if output_stride is None:
            supported = supported_output_strides(encoder)
            output_stride = default_stride if default_stride in supported else max(supported)
        self.model_name = model_name
        self.in_channels = in_channels
        self.encoder = build_encoder(encoder, in_channels, pretrained, output_stride)

    def set_head(self, head: nn.Module) -> None:
        """Attach the (Kaiming-initialised) head; subclasses call it once in their constructor."""
        init_weights(head)
        self.head = head

    def set_encoder_frozen(self, frozen: bool) -> None:
        """Freeze (or unfreeze) the backbone: no gradients, BatchNorm statistics fixed (eval mode)."""
        self.encoder.set_frozen(frozen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.model_name)
        logits = self.head(self.encoder(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _check_rates(model_name: str, rates: Tuple[int, ...]) -> Tuple[int, ...]:
    """``rates`` as a tuple; ConfigError when empty or not positive."""
    if not rates or min(rates) < 1:
        raise ConfigError(f"{model_name}: model.aspp_rates needs at least one positive dilation rate, "
                          f"got {list(rates)} (the paper uses [6, 12, 18] at output stride 16, "
                          "[12, 24, 36] at 8)")
    return tuple(rates)


@MODELS.register("deeplabv3")
class DeepLabV3(EncoderHeadModel):
    """DeepLabV3: a (dilated) backbone with an ASPP head, logits upsampled to the input size.

    Args:
        in_channels: image channels.
        out_channels: 1 for binary sigmoid output, otherwise the number of classes.
        encoder: backbone name from :data:`models.encoders.ENCODERS`.
        pretrained: load the backbone's ImageNet weights from the local torch.hub cache.
        output_stride: stride of the features ASPP sees: 8, 16 or 32 for ResNets,
            32 for the others; None picks 16 (ResNets) or 32.
        aspp_rates: dilation rates of the three atrous ASPP branches.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, encoder: str = "resnet50",
                 pretrained: bool = False, output_stride: Optional[int] = None,
                 aspp_rates: Tuple[int, ...] = (6, 12, 18)) -> None:
        rates = _check_rates("DeepLabV3", aspp_rates)
        super().__init__("DeepLabV3", in_channels, out_channels, encoder, pretrained, output_stride, 16)
        self.set_head(DeepLabV3Head(self.encoder.out_channels[-1], out_channels, rates))


@MODELS.register("deeplabv3plus")
class DeepLabV3Plus(EncoderHeadModel):
    """DeepLabV3+: DeepLabV3's ASPP plus a decoder fusing the stride-4 features, logits at the input size.

    Args:
        in_channels: image channels.
        out_channels: 1 for binary sigmoid output, otherwise the number of classes.
        encoder: backbone name from :data:`models.encoders.ENCODERS`.
        pretrained: load the backbone's ImageNet weights from the local torch.hub cache.
        output_stride: stride of the features ASPP sees: 8, 16 or 32 for ResNets,
            32 for the others; None picks 16 (ResNets) or 32.
        aspp_rates: dilation rates of the three atrous ASPP branches.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, encoder: str = "resnet50",
                 pretrained: bool = False, output_stride: Optional[int] = None,
                 aspp_rates: Tuple[int, ...] = (6, 12, 18)) -> None:
        rates = _check_rates("DeepLabV3Plus", aspp_rates)
        super().__init__("DeepLabV3Plus", in_channels, out_channels, encoder, pretrained,
                         output_stride, 16)
        channels = self.encoder.out_channels
        self.set_head(DeepLabV3PlusHead(channels[-1], channels[LOW_LEVEL], out_channels, rates))


@MODELS.register("fcn")
class FCN(EncoderHeadModel):
    """FCN: a (dilated) backbone with torchvision's FCN head, logits upsampled to the input size.

    Args:
        in_channels: image channels.
        out_channels: 1 for binary sigmoid output, otherwise the number of classes.
        encoder: backbone name from :data:`models.encoders.ENCODERS`.
        pretrained: load the backbone's ImageNet weights from the local torch.hub cache.
        output_stride: stride of the features the head sees: 8, 16 or 32 for
            ResNets, 32 for the others; None picks 8 (ResNets) or 32.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, encoder: str = "resnet50",
                 pretrained: bool = False, output_stride: Optional[int] = None) -> None:
        super().__init__("FCN", in_channels, out_channels, encoder, pretrained, output_stride, 8)
        self.set_head(FCNHead(self.encoder.out_channels[-1], out_channels))
