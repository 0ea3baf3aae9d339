"""U-Net (Ronneberger et al., 2015) for semantic segmentation, registered as "unet".

Widths: the encoder levels have ``base_channels * 2**i`` channels for
``i = 0 .. depth`` (64, 128, 256, 512, 1024 for the classic ``base_channels=64,
depth=4``). Each decoder step upsamples by 2, pads the result to the skip
connection's size, concatenates and applies a :class:`DoubleConv`.

``bilinear=True`` (the default) follows the common lightweight variant: the
upsampling has no weights and keeps the channel count, so the bottleneck is
*halved* (to ``base_channels * 2**(depth - 1)``, the same as the deepest skip)
and each decoder step outputs half its skip's width (the last one outputs
``base_channels``). That is about 17.3M parameters for the classic widths
instead of 31.0M with ``bilinear=False``, where a ``ConvTranspose2d`` halves
the channels on the way up and the widths mirror the encoder exactly.

Any input size at least ``2**depth`` per side works: pooling floors odd
sizes, and the decoder pads back up to each skip's size, so the logits always
have the input's height and width.

``encoder="resnet34"`` (any name of :data:`models.encoders.ENCODERS`) swaps the
plain encoder for a torchvision backbone (ResUNet, Mobile-UNet, Eff-UNet): its
five feature maps at strides 2..32 feed five :class:`DecoderBlock` steps of
widths ``decoder_channels`` (the last one without a skip, upsampling to the
input size) and a 1x1 head. Such a model takes any input size (each step
interpolates to its skip's size) and can load ImageNet weights from the local
torch.hub cache (``pretrained=True``); ``base_channels``, ``depth`` and
``bilinear`` then do not apply. With a ResNet-34 encoder that is 24.4M
parameters (21.3M of them the encoder).
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from models.common import DoubleConv, check_input, check_positive, init_weights, pad_to
from models.encoders import STRIDES, build_encoder
from utils.errors import ConfigError
from utils.registry import MODELS

DECODER_CHANNELS = (256, 128, 64, 32, 16)


class Down(nn.Module):
    """2x2 max pooling (halves H and W, flooring odd sizes) followed by a DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_ch, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Up(nn.Module):
    """Upsample x2, pad/crop to the skip's size, concatenate [skip, x], DoubleConv.

    Args:
        in_ch: channels of the deeper feature map ``x``.
        skip_ch: channels of the skip connection.
        out_ch: channels out.
        bilinear: weight-free bilinear upsampling (keeps ``in_ch`` channels);
            otherwise a 2x2 stride-2 ``ConvTranspose2d`` to ``in_ch // 2`` channels.
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, bilinear: bool) -> None:
        super().__init__()
        if bilinear:
            self.up: nn.Module = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            self.conv = DoubleConv(in_ch + skip_ch, out_ch, mid_ch=(in_ch + skip_ch) // 2)
        else:
            self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_ch // 2 + skip_ch, out_ch)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = pad_to(self.up(x), skip.shape[-2:])  # odd sizes upstream; see pad_to
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Module):
    """1x1 convolution mapping features to per-class logits."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class DecoderBlock(nn.Module):
    """Bilinear upsampling to ``size``, concatenation [skip, x] when there is a skip, DoubleConv.

    Args:
        in_ch: channels of the deeper feature map ``x``.
        skip_ch: channels of the skip connection (0 for none).
        out_ch: channels out.
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = DoubleConv(in_ch + skip_ch, out_ch)

    def forward(self, x: torch.Tensor, size: Tuple[int, int],
                skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


@MODELS.register("unet")
class UNet(nn.Module):
    """U-Net encoder-decoder returning raw logits of shape (N, out_channels, H, W).

    Args:
        in_channels: image channels (3 for RGB, 1 for grayscale).
        out_channels: 1 for binary sigmoid output, otherwise the number of
            classes (softmax over channels).
        base_channels: width of the first level; level ``i`` has
            ``base_channels * 2**i`` channels (plain encoder only).
        depth: number of 2x downsamplings; inputs need at least ``2**depth``
            pixels per side (plain encoder only).
        bilinear: bilinear upsampling with a halved bottleneck (lighter) instead
            of transposed convolutions (see the module docstring; plain encoder only).
        encoder: a torchvision backbone from :data:`models.encoders.ENCODERS`
            (e.g. "resnet34", "mobilenet_v3_large", "efficientnet_b0") instead
            of the plain U-Net encoder; None keeps the plain one.
        pretrained: load the encoder's ImageNet weights from the local
            torch.hub cache (never downloaded; needs ``encoder``).
        decoder_channels: widths of the five decoder steps, deepest first
            (needs ``encoder``).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base_channels: int = 64,
                 depth: int = 4, bilinear: bool = True, encoder: Optional[str] = None,
                 pretrained: bool = False,
                 decoder_channels: Tuple[int, ...] = DECODER_CHANNELS) -> None:
        super().__init__()
        check_positive("UNet", in_channels=in_channels, out_channels=out_channels,
                       base_channels=base_channels, depth=depth)
        self.in_channels = in_channels
        self.depth = depth
        if encoder is None:
            if pretrained or tuple(decoder_channels) != DECODER_CHANNELS:
                raise ConfigError("UNet: model.pretrained and model.decoder_channels need a backbone; "
                                  "set model.encoder (e.g. resnet34) or remove them")
            self.encoder = None
            self._build_plain(in_channels, out_channels, base_channels, depth, bilinear)
        else:
            if (base_channels, depth, bilinear) != (64, 4, True):
                raise ConfigError(f"UNet: model.base_channels, model.depth and model.bilinear describe the "
                                  f"plain encoder and do not apply with encoder={encoder!r}; remove them "
                                  "(use model.decoder_channels to size the decoder)")
            if len(decoder_channels) != len(STRIDES) or min(decoder_channels) < 1:
                raise ConfigError(f"UNet: model.decoder_channels needs {len(STRIDES)} positive widths (one per "
                                  f"encoder stage, deepest first), got {list(decoder_channels)}")
            self.encoder = build_encoder(encoder, in_channels, pretrained)
            self._build_backbone_decoder(self.encoder.out_channels, out_channels, decoder_channels)

    def _build_plain(self, in_channels: int, out_channels: int, base_channels: int,
                     depth: int, bilinear: bool) -> None:
        """The classic U-Net: DoubleConv levels with max pooling, Up blocks, a 1x1 head."""
        widths = [base_channels * 2 ** i for i in range(depth + 1)]
        if bilinear:
            widths[depth] //= 2
        self.inc = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(self._decoder(widths, bilinear))
        self.outc = OutConv(widths[0], out_channels)
        init_weights(self)

    def _build_backbone_decoder(self, encoder_channels: List[int], out_channels: int,
                                decoder_channels: Tuple[int, ...]) -> None:
        """DecoderBlocks over the backbone's features (deepest first, the last without skip), a 1x1 head."""
        skips = encoder_channels[-2::-1] + [0]
        ins = [encoder_channels[-1]] + list(decoder_channels[:-1])
        self.blocks = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(ins, skips, decoder_channels))
        self.head = OutConv(decoder_channels[-1], out_channels)
        init_weights(self.blocks)
        init_weights(self.head)

    @staticmethod
    def _decoder(widths: List[int], bilinear: bool) -> List[Up]:
        """Up blocks from the bottleneck to the first level."""
        ups, channels = [], widths[-1]
        for level in reversed(range(len(widths) - 1)):
            out = widths[level - 1] if bilinear and level > 0 else widths[level]
            ups.append(Up(channels, widths[level], out, bilinear))
            channels = out
        return ups

    def set_encoder_frozen(self, frozen: bool) -> None:
        """Freeze (or unfreeze) the backbone: no gradients, BatchNorm statistics fixed (eval mode)."""
        if self.encoder is None:
            raise ConfigError("UNet without model.encoder has no pretrained backbone to freeze; "
                              "set model.encoder or remove train.freeze_encoder_epochs")
        self.encoder.set_frozen(frozen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.encoder is not None:
            check_input(x, self.in_channels, "UNet")
            return self._decode(self.encoder(x), x.shape[-2:])
        check_input(x, self.in_channels, "UNet", poolings=self.depth, depth_key="model.depth")
        x = self.inc(x)
        skips = [x]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)

    def _decode(self, features: List[torch.Tensor], size: Tuple[int, int]) -> torch.Tensor:
        """Backbone decoder: from the deepest features up through each skip, the last step to ``size``."""
        *skips, x = features
        for block in self.blocks:
            skip = skips.pop() if skips else None
            x = block(x, skip.shape[-2:] if skip is not None else size, skip)
        return self.head(x)
