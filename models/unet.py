"""U-Net (Ronneberger et al., 2015) for semantic segmentation, registered as "unet".

Widths: the encoder levels have ``base_channels * 2**i`` channels for
``i = 0 .. depth`` (64, 128, 256, 512, 1024 for the classic ``base_channels=64,
depth=4``). Each decoder step upsamples by 2, pads the result to the skip
connection's size, concatenates and applies a :class:`DoubleConv`.

``upsample`` chooses the decoder's upsampling. "bilinear" (the default)
follows the common lightweight variant: the upsampling has no weights and
keeps the channel count, so the bottleneck is *halved* (to
``base_channels * 2**(depth - 1)``, the same as the deepest skip) and each
decoder step outputs half its skip's width (the last one outputs
``base_channels``). That is about 17.3M parameters for the classic widths
instead of 31.0M with "transposed", where a ``ConvTranspose2d`` halves the
channels on the way up and the widths mirror the encoder exactly. "nearest"
has the widths of "bilinear" with nearest-neighbour interpolation. For
``dims=3`` the linear mode is trilinear ("trilinear", or "bilinear" as
before). ``bilinear`` is the older spelling, kept for existing configs:
``bilinear=True`` is "bilinear", ``bilinear=False`` "transposed"; given
together with a different ``upsample`` it raises ConfigError.

``dropout`` adds channel dropout (``Dropout2d``/``Dropout3d``) between the two
convolutions of every :class:`DoubleConv` (decoder blocks included with a
backbone); 0 (the default) adds no layer.

Any input size at least ``2**depth`` per side works: pooling floors odd
sizes, and the decoder pads back up to each skip's size, so the logits always
have the input's height and width.

Volumes (plain encoder): ``dims=3`` builds the same network from 3D layers
(3x3x3 convolutions, ``BatchNorm3d``/``InstanceNorm3d``, 3D max pooling,
trilinear upsampling or ``ConvTranspose3d``) and takes (N, C, Z, Y, X).
``norm`` ("batch" or affine "instance") and ``activation`` ("relu" or
"leaky_relu", slope 0.01) follow nnU-Net's choices for volumes.

``strides`` sets the pooling per level and per axis, e.g.
``[[1, 2, 2], [2, 2, 2], [2, 2, 2]]`` for an anisotropic volume whose z
spacing is coarse: level 1 pools y and x only. Each level's pooling is a max
pool whose kernel equals its stride (an axis with stride 1 is left alone,
no weights are added, so a default model keeps its parameters); the matching
decoder step upsamples by the same factors (bilinear/trilinear scale factors,
or a transposed convolution of that kernel and stride). Inputs then need at
least the product of the strides along each axis; a shorter axis raises
ModelInputError naming it. An entry may be one integer for all axes; the
default (None) is 2 on every axis at every level.

``deep_supervision=True`` adds a 1x1 head to the decoder levels 1 .. depth-2;
in training mode the model returns ``[main, level 1, level 2, ...]`` (full,
1/2, 1/4 ... resolution; the lowest-resolution decoder level is left out as
in nnU-Net), in eval mode the main logits alone. :class:`CombinedLoss`
resizes 2D lower-resolution outputs to the target.

``encoder="resnet34"`` (any name of :data:`models.encoders.ENCODERS`) swaps the
plain encoder for a torchvision backbone (ResUNet, Mobile-UNet, Eff-UNet): its
five feature maps at strides 2..32 feed five :class:`DecoderBlock` steps of
widths ``decoder_channels`` (the last one without a skip, upsampling to the
input size) and a 1x1 head. Such a model takes any input size (each step
interpolates to its skip's size) and can load ImageNet weights from the local
torch.hub cache (``pretrained=True``); ``base_channels``, ``depth`` and
``upsample`` (``bilinear``) then do not apply. With a ResNet-34 encoder that is 24.4M
parameters (21.3M of them the encoder). ``encoder="vgg16_bn"`` (TernausNet
style) takes its five VGG blocks, before each max pooling, as the skips: strides
1 to 16, so the last decoder step keeps the input size.
"""
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from models.common import (ACTIVATIONS, AXES, DIMS, NORMS, DoubleConv, Stride, check_choice, check_dropout,
                           check_input, check_positive, conv_layer, init_weights, interpolation_mode, max_pool_layer,
                           pad_to, transposed_conv_layer)
from models.encoders import STRIDES, build_encoder
from utils.errors import ConfigError
from utils.registry import MODELS

DECODER_CHANNELS = (256, 128, 64, 32, 16)

#: ``model.upsample`` choices of the plain UNet ("bilinear" means trilinear for ``dims=3``).
UPSAMPLE_MODES = ("bilinear", "trilinear", "nearest", "transposed")


class Down(nn.Module):
    """Max pooling (kernel = stride; 2 halves every side, flooring odd sizes) followed by a DoubleConv.

    Args:
        in_ch, out_ch: channels in and out.
        stride: the pooling stride, one integer or one per axis.
        dims, norm, activation, dropout: see :class:`models.common.DoubleConv`.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: Stride = 2, dims: int = 2,
                 norm: str = "batch", activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        self.block = nn.Sequential(max_pool_layer(dims)(stride), DoubleConv(
            in_ch, out_ch, dims=dims, norm=norm, activation=activation, dropout=dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class Up(nn.Module):
    """Upsample by ``stride``, pad/crop to the skip's size, concatenate [skip, x], DoubleConv.

    Args:
        in_ch: channels of the deeper feature map ``x``.
        skip_ch: channels of the skip connection.
        out_ch: channels out.
        mode: "bilinear" / "trilinear" or "nearest": weight-free interpolation
            (keeps ``in_ch`` channels); "transposed": a transposed convolution of
            kernel and stride ``stride`` to ``in_ch // 2`` channels.
        stride: the upsampling factor, one integer or one per axis (the
            matching Down's pooling stride).
        dims, norm, activation, dropout: see :class:`models.common.DoubleConv`.
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, mode: str, stride: Stride = 2,
                 dims: int = 2, norm: str = "batch", activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        self.out_channels = out_ch
        options = dict(dims=dims, norm=norm, activation=activation, dropout=dropout)
        if mode != "transposed":
            scale = stride if isinstance(stride, int) else tuple(float(s) for s in stride)
            corners = None if mode == "nearest" else False  # nearest takes no align_corners
            self.up: nn.Module = nn.Upsample(scale_factor=scale, mode=mode, align_corners=corners)
            self.conv = DoubleConv(in_ch + skip_ch, out_ch, mid_ch=(in_ch + skip_ch) // 2, **options)
        else:
            self.up = transposed_conv_layer(dims)(in_ch, in_ch // 2, kernel_size=stride, stride=stride)
            self.conv = DoubleConv(in_ch // 2 + skip_ch, out_ch, **options)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = pad_to(self.up(x), skip.shape[2:])  # odd sizes upstream; see pad_to
        return self.conv(torch.cat([skip, x], dim=1))


class OutConv(nn.Module):
    """1x1 (1x1x1 for ``dims=3``) convolution mapping features to per-class logits."""

    def __init__(self, in_ch: int, out_ch: int, dims: int = 2) -> None:
        super().__init__()
        self.conv = conv_layer(dims)(in_ch, out_ch, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def parse_strides(strides: Optional[Sequence[Union[int, Sequence[int]]]], depth: int,
                  dims: int) -> List[Stride]:
    """Per-level pooling strides: 2 everywhere for None, else ``strides`` checked (ConfigError naming model.strides).

    Each entry is one integer >= 1 (every axis) or a list of ``dims`` of them;
    isotropic entries stay integers so that a default model's layers are unchanged.
    """
    if strides is None:
        return [2] * depth
    fix = (f"give model.strides one entry per level (model.depth={depth}), each an integer >= 1 or a list "
           f"of {dims} of them ({', '.join(AXES[dims])})")
    if isinstance(strides, (str, int)) or len(strides) != depth:
        raise ConfigError(f"UNet: model.strides must list {depth} levels, got {strides!r}; {fix}")
    parsed: List[Stride] = []
    for entry in strides:
        values = [entry] if isinstance(entry, int) else list(entry) if isinstance(entry, (list, tuple)) else []
        if len(values) not in (1, dims) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                                  for v in values):
            raise ConfigError(f"UNet: model.strides entry {entry!r} is not valid; {fix}")
        parsed.append(values[0] if len(values) == 1 else tuple(values))
    return parsed


def per_axis(stride: Stride, dims: int) -> Tuple[int, ...]:
    """``stride`` as one integer per axis."""
    return (stride,) * dims if isinstance(stride, int) else tuple(stride)


def resolve_upsample(bilinear: Optional[bool], upsample: Optional[str], dims: int) -> str:
    """The plain decoder's upsampling mode ("bilinear"/"trilinear", "nearest" or "transposed") from
    ``model.upsample`` and its older spelling ``model.bilinear``; ConfigError when they disagree."""
    if upsample is None:
        return "transposed" if bilinear is False else interpolation_mode(dims)
    check_choice("UNet", "upsample", upsample, UPSAMPLE_MODES)
    if upsample == "trilinear" and dims == 2:
        raise ConfigError("UNet: model.upsample: trilinear is for volumes (model.dims: 3); "
                          "set model.upsample: bilinear for images")
    linear = upsample in ("bilinear", "trilinear")
    if bilinear is not None and ("linear" if bilinear else "transposed") != ("linear" if linear else upsample):
        raise ConfigError(f"UNet: model.bilinear={bilinear} contradicts model.upsample={upsample!r}; "
                          "remove model.bilinear (model.upsample replaces it)")
    return interpolation_mode(dims) if linear else upsample


class DecoderBlock(nn.Module):
    """Bilinear upsampling to ``size``, concatenation [skip, x] when there is a skip, DoubleConv.

    Args:
        in_ch: channels of the deeper feature map ``x``.
        skip_ch: channels of the skip connection (0 for none).
        out_ch: channels out.
        dropout: channel dropout inside the DoubleConv (0: none).
    """

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = DoubleConv(in_ch + skip_ch, out_ch, dropout=dropout)

    def forward(self, x: torch.Tensor, size: Tuple[int, int],
                skip: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([skip, x], dim=1)
        return self.conv(x)


@MODELS.register("unet")
class UNet(nn.Module):
    """U-Net encoder-decoder returning raw logits of shape (N, out_channels, H, W) (or (N, out_channels, Z, Y, X)).

    Args:
        in_channels: image channels (3 for RGB, 1 for grayscale).
        out_channels: 1 for binary sigmoid output, otherwise the number of
            classes (softmax over channels).
        base_channels: width of the first level; level ``i`` has
            ``base_channels * 2**i`` channels (plain encoder only).
        depth: number of downsamplings; inputs need at least ``2**depth``
            pixels per side with the default strides (plain encoder only).
        bilinear: older spelling of ``upsample``: True is "bilinear", False
            "transposed" (plain encoder only).
        encoder: a torchvision backbone from :data:`models.encoders.ENCODERS`
            (e.g. "resnet34", "mobilenet_v3_large", "efficientnet_b0", "vgg16_bn")
            instead of the plain U-Net encoder; None keeps the plain one.
        pretrained: load the encoder's ImageNet weights from the local
            torch.hub cache (never downloaded; needs ``encoder``).
        decoder_channels: widths of the five decoder steps, deepest first
            (needs ``encoder``).
        dims: 2 for images (N, C, H, W), 3 for volumes (N, C, Z, Y, X) (plain encoder only).
        norm: "batch" or "instance" (affine) normalisation (plain encoder only).
        activation: "relu" or "leaky_relu" (slope 0.01) (plain encoder only).
        strides: per-level pooling strides, ``depth`` entries of one integer or
            ``dims`` integers (z, y, x); None pools 2x on every axis (plain encoder only).
        deep_supervision: in training mode return ``[main, 1/2, 1/4, ...]``
            logits from the decoder levels (see the module docstring; plain encoder only).
        upsample: "bilinear" (default; trilinear for volumes), "trilinear"
            (volumes), "nearest" or "transposed" (see the module docstring; plain encoder only).
        dropout: channel dropout probability between the two convolutions of
            every DoubleConv; 0 adds no dropout layer.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base_channels: int = 64,
                 depth: int = 4, bilinear: Optional[bool] = None, encoder: Optional[str] = None,
                 pretrained: bool = False,
                 decoder_channels: Tuple[int, ...] = DECODER_CHANNELS, dims: int = 2, norm: str = "batch",
                 activation: str = "relu", strides: Optional[Sequence[Union[int, Sequence[int]]]] = None,
                 deep_supervision: bool = False, upsample: Optional[str] = None, dropout: float = 0.0) -> None:
        super().__init__()
        check_positive("UNet", in_channels=in_channels, out_channels=out_channels,
                       base_channels=base_channels, depth=depth)
        check_choice("UNet", "dims", dims, DIMS)
        check_choice("UNet", "norm", norm, NORMS)
        check_choice("UNet", "activation", activation, ACTIVATIONS)
        check_dropout("UNet", "dropout", dropout)
        self.in_channels = in_channels
        self.depth = depth
        self.dims = dims
        self.deep_supervision = bool(deep_supervision)
        self.strides = parse_strides(strides, depth, dims)
        self.upsample = resolve_upsample(bilinear, upsample, dims)
        if encoder is None:
            if pretrained or tuple(decoder_channels) != DECODER_CHANNELS:
                raise ConfigError("UNet: model.pretrained and model.decoder_channels need a backbone; "
                                  "set model.encoder (e.g. resnet34) or remove them")
            self.encoder = None
            self._build_plain(in_channels, out_channels, base_channels,
                              dict(dims=dims, norm=norm, activation=activation, dropout=dropout))
        else:
            self._check_backbone_options(encoder, base_channels, decoder_channels,
                                         (dims, norm, activation, strides, self.deep_supervision))
            self.encoder = build_encoder(encoder, in_channels, pretrained)
            self._build_backbone_decoder(self.encoder.out_channels, out_channels, decoder_channels, dropout)

    def _check_backbone_options(self, encoder: str, base_channels: int, decoder_channels: Tuple[int, ...],
                                plain_options: Tuple) -> None:
        """ConfigError for plain-encoder options given with a backbone, or bad decoder_channels."""
        if (base_channels, self.depth, self.upsample) != (64, 4, interpolation_mode(self.dims)):
            raise ConfigError(f"UNet: model.base_channels, model.depth and model.upsample (model.bilinear) "
                              f"describe the plain encoder and do not apply with encoder={encoder!r}; remove "
                              "them (use model.decoder_channels to size the decoder)")
        if plain_options != (2, "batch", "relu", None, False):
            raise ConfigError(f"UNet: model.dims, model.norm, model.activation, model.strides and "
                              f"model.deep_supervision describe the plain encoder and do not apply with "
                              f"encoder={encoder!r}; remove them or remove model.encoder")
        if len(decoder_channels) != len(STRIDES) or min(decoder_channels) < 1:
            raise ConfigError(f"UNet: model.decoder_channels needs {len(STRIDES)} positive widths (one per "
                              f"encoder stage, deepest first), got {list(decoder_channels)}")

    def _build_plain(self, in_channels: int, out_channels: int, base_channels: int, options: dict) -> None:
        """The classic U-Net: DoubleConv levels with max pooling, Up blocks, a 1x1 head (and deep-supervision heads)."""
        depth, dims = self.depth, self.dims
        widths = [base_channels * 2 ** i for i in range(depth + 1)]
        if self.upsample != "transposed":
            widths[depth] //= 2
        self.inc = DoubleConv(in_channels, widths[0], **options)
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1], self.strides[i], **options)
                                   for i in range(depth))
        self.ups = nn.ModuleList(self._decoder(widths, self.upsample, self.strides, options))
        self.outc = OutConv(widths[0], out_channels, dims)
        if self.deep_supervision:  # heads on decoder levels 1 .. depth-2 (level k: 1/2**k resolution)
            self.ds_heads = nn.ModuleList(OutConv(self.ups[depth - 1 - k].out_channels, out_channels, dims)
                                          for k in range(1, depth - 1))
        self.min_size = tuple(math.prod(per_axis(s, dims)[axis] for s in self.strides) for axis in range(dims))
        init_weights(self)

    def _build_backbone_decoder(self, encoder_channels: List[int], out_channels: int,
                                decoder_channels: Tuple[int, ...], dropout: float) -> None:
        """DecoderBlocks over the backbone's features (deepest first, the last without skip), a 1x1 head."""
        skips = encoder_channels[-2::-1] + [0]
        ins = [encoder_channels[-1]] + list(decoder_channels[:-1])
        self.blocks = nn.ModuleList(DecoderBlock(i, s, o, dropout) for i, s, o in zip(ins, skips, decoder_channels))
        self.head = OutConv(decoder_channels[-1], out_channels)
        init_weights(self.blocks)
        init_weights(self.head)

    @staticmethod
    def _decoder(widths: List[int], mode: str, strides: List[Stride], options: dict) -> List[Up]:
        """Up blocks from the bottleneck to the first level, each undoing its level's pooling stride."""
        ups, channels = [], widths[-1]
        for level in reversed(range(len(widths) - 1)):
            out = widths[level - 1] if mode != "transposed" and level > 0 else widths[level]
            ups.append(Up(channels, widths[level], out, mode, strides[level], **options))
            channels = out
        return ups

    def set_encoder_frozen(self, frozen: bool) -> None:
        """Freeze (or unfreeze) the backbone: no gradients, BatchNorm statistics fixed (eval mode)."""
        if self.encoder is None:
            raise ConfigError("UNet without model.encoder has no pretrained backbone to freeze; "
                              "set model.encoder or remove train.freeze_encoder_epochs")
        self.encoder.set_frozen(frozen)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        if self.encoder is not None:
            check_input(x, self.in_channels, "UNet")
            return self._decode(self.encoder(x), x.shape[-2:])
        if all(s == 2 for s in self.strides):
            check_input(x, self.in_channels, "UNet", poolings=self.depth, depth_key="model.depth", dims=self.dims)
        else:
            check_input(x, self.in_channels, "UNet", depth_key="model.strides", dims=self.dims,
                        minimum=self.min_size)
        x = self.inc(x)
        skips = [x]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        side_outputs = []
        for i, up in enumerate(self.ups):
            x = up(x, skips.pop())
            level = self.depth - 1 - i
            if self.deep_supervision and self.training and 0 < level < self.depth - 1:
                side_outputs.append(self.ds_heads[level - 1](x))
        main = self.outc(x)
        if self.deep_supervision and self.training:
            return [main] + side_outputs[::-1]
        return main

    def _decode(self, features: List[torch.Tensor], size: Tuple[int, int]) -> torch.Tensor:
        """Backbone decoder: from the deepest features up through each skip, the last step to ``size``."""
        *skips, x = features
        for block in self.blocks:
            skip = skips.pop() if skips else None
            x = block(x, skip.shape[-2:] if skip is not None else size, skip)
        return self.head(x)
