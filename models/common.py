"""Pieces every model shares: the one input check, the argument checks, blocks and weight initialisation.

* :func:`check_input`: the models' single input check; a wrong rank, channel
  count or a side below the model's minimum raises :class:`ModelInputError`
  naming what was expected, what came and the fix.
* :func:`check_positive`: constructor arguments that must be at least 1; a bad
  value raises :class:`ConfigError` naming the ``model.<key>`` to change.
* :func:`check_choice`: an option that must be one of a few names (or dims).
* :func:`check_dropout`: a dropout probability in [0, 1).
* :class:`DoubleConv`, :func:`conv_bn_relu`, :func:`pad_to` and
  :func:`init_weights`: building blocks of the U-Net family and the heads.
* :func:`conv_layer`, :func:`transposed_conv_layer`, :func:`max_pool_layer`,
  :func:`dropout_layer`, :func:`norm_layer`, :func:`activation_layer` and :func:`interpolation_mode`:
  the layer for ``dims`` 2 (images) or 3 (volumes), so that one model
  definition serves both (GUIDE.md, "Images and volumes, one design").
"""
from typing import Any, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import ConfigError, ModelInputError


AXES = {2: ("H", "W"), 3: ("Z", "Y", "X")}
DIMS = (2, 3)
NORMS = ("batch", "instance")
ACTIVATIONS = ("relu", "leaky_relu")
#: Negative slope of ``activation: leaky_relu`` (nnU-Net's choice).
LEAKY_SLOPE = 0.01

#: A convolution or pooling stride: one integer for every axis, or one per axis.
Stride = Union[int, Tuple[int, ...]]


def check_input(x: torch.Tensor, in_channels: int, model_name: str, poolings: int = 0,
                depth_key: Optional[str] = None, dims: int = 2,
                minimum: Optional[Sequence[int]] = None) -> None:
    """Raise ModelInputError unless ``x`` is (N, in_channels, *spatial) with each side at least its minimum.

    Args:
        x: the batch given to the model.
        in_channels: channels the model was built for.
        model_name: named in the message.
        poolings: how many 2x poolings the model applies (0: any size from 1 px works).
        depth_key: the config key that sets ``poolings``, offered as a second fix.
        dims: spatial axes: 2 for (N, C, H, W) images, 3 for (N, C, Z, Y, X) volumes.
        minimum: per-axis minimum sides (e.g. the product of per-axis pooling
            strides); replaces ``2**poolings``, and the message names the axis.
    """
    axes = AXES[dims]
    if x.ndim != dims + 2 or x.shape[1] != in_channels:
        raise ModelInputError(f"{model_name} expects input (N, {in_channels}, {', '.join(axes)}), got "
                              f"{tuple(x.shape)}; check model.in_channels against the images")
    sides = tuple(x.shape[2:])
    got = "x".join(map(str, sides))
    if minimum is not None:
        _check_minimum(sides, tuple(minimum), axes, model_name, depth_key)
        return
    least = 2 ** poolings
    if poolings > 0 and min(sides) < least:
        fix = f"resize or pad the images to at least {least} px per side"
        if depth_key is not None:
            fix += f" or lower {depth_key}"
        raise ModelInputError(f"{model_name} needs inputs of at least {'x'.join([str(least)] * dims)} (each of "
                              f"its {poolings} 2x poolings halves the size), got {got}; {fix}")


def _check_minimum(sides: Tuple[int, ...], minimum: Tuple[int, ...], axes: Tuple[str, ...],
                   model_name: str, key: Optional[str]) -> None:
    """ModelInputError naming the first axis shorter than its minimum."""
    for axis, side, least in zip(axes, sides, minimum):
        if side < least:
            fix = f"resize or pad the inputs to at least {least} along {axis}"
            if key is not None:
                fix += f" or lower the {axis} strides in {key}"
            raise ModelInputError(
                f"{model_name} needs inputs of at least {'x'.join(map(str, minimum))} ({'x'.join(axes)}; the "
                f"product of the pooling strides per axis), got {'x'.join(map(str, sides))}: axis {axis} has "
                f"{side} < {least}; {fix}")


def check_positive(model_name: str, **values: int) -> None:
    """Raise ConfigError naming the first argument below 1 as its ``model.<key>``."""
    for name, value in values.items():
        if value < 1:
            raise ConfigError(f"{model_name}: model.{name} must be at least 1, got {value}; "
                              f"set model.{name} to a positive integer")


def check_choice(model_name: str, key: str, value: Any, choices: Sequence[Any]) -> None:
    """Raise ConfigError naming ``model.<key>`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{model_name}: model.{key} must be one of {list(choices)}, got {value!r}; "
                          f"set model.{key} to one of them")


def check_dropout(model_name: str, key: str, value: float) -> None:
    """Raise ConfigError naming ``model.<key>`` unless ``value`` is a probability in [0, 1)."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{model_name}: model.{key} must be a probability in [0, 1), got {value}; "
                          f"set model.{key} to 0 for none, or e.g. 0.1")


def conv_layer(dims: int) -> Type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[dims]


def transposed_conv_layer(dims: int) -> Type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[dims]


def max_pool_layer(dims: int) -> Type[nn.Module]:
    """``nn.MaxPool2d`` or ``nn.MaxPool3d``."""
    return {2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims]


def dropout_layer(dims: int) -> Type[nn.Module]:
    """``nn.Dropout2d`` or ``nn.Dropout3d``: whole channels are dropped."""
    return {2: nn.Dropout2d, 3: nn.Dropout3d}[dims]


def interpolation_mode(dims: int) -> str:
    """The linear interpolation mode of ``F.interpolate`` for ``dims`` axes: "bilinear" or "trilinear"."""
    return {2: "bilinear", 3: "trilinear"}[dims]


def norm_layer(kind: str, dims: int, channels: int) -> nn.Module:
    """BatchNorm ("batch") or affine InstanceNorm ("instance", as nnU-Net) over ``channels``."""
    if kind == "batch":
        return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims](channels)
    if kind == "instance":
        return {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims](channels, affine=True)
    raise ValueError(f"norm must be one of {list(NORMS)}, got {kind!r}")


def activation_layer(kind: str) -> nn.Module:
    """In-place ReLU ("relu") or LeakyReLU of slope :data:`LEAKY_SLOPE` ("leaky_relu")."""
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "leaky_relu":
        return nn.LeakyReLU(LEAKY_SLOPE, inplace=True)
    raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {kind!r}")


def check_conv_stride(stride: Stride, dims: int) -> None:
    """Raise ValueError unless ``stride`` is 1 or 2, as one integer or one per axis."""
    values = (stride,) if isinstance(stride, int) else tuple(stride) if isinstance(stride, (list, tuple)) else ()
    if len(values) not in (1, dims) or not all(type(v) is int and v in (1, 2) for v in values):
        raise ValueError(f"DoubleConv: stride must be 1 or 2, as one integer or one per axis "
                         f"({', '.join(AXES[dims])}), got {stride!r}; downsample by more with pooling")


class DoubleConv(nn.Module):
    """(3x3 conv -> norm -> activation) twice; the spatial size is kept unless ``stride`` is 2.

    Args:
        in_ch, out_ch: channels in and out.
        mid_ch: channels between the two convolutions (default ``out_ch``).
        dims: 2 (3x3 convolutions) or 3 (3x3x3).
        norm: "batch" or "instance" (affine); see :func:`norm_layer`.
        activation: "relu" or "leaky_relu"; see :func:`activation_layer`.
        dropout: probability of the channel dropout (``Dropout2d``/``Dropout3d``)
            between the two convolutions; 0 adds no layer. It holds no weights
            and sits outside ``block``, so the state dict is the same either way.
        stride: stride of the first convolution, 1 or 2 (halving each side,
            rounding up), one integer or one per axis; ValueError otherwise.
    """

    def __init__(self, in_ch: int, out_ch: int, mid_ch: Optional[int] = None, dims: int = 2,
                 norm: str = "batch", activation: str = "relu", dropout: float = 0.0,
                 stride: Stride = 1) -> None:
        super().__init__()
        check_conv_stride(stride, dims)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"DoubleConv: dropout must be a probability in [0, 1), got {dropout}")
        mid_ch = mid_ch or out_ch
        conv = conv_layer(dims)
        self.block = nn.Sequential(
            conv(in_ch, mid_ch, kernel_size=3, stride=stride, padding=1, bias=False),
            norm_layer(norm, dims, mid_ch),
            activation_layer(activation),
            conv(mid_ch, out_ch, kernel_size=3, padding=1, bias=False),
            norm_layer(norm, dims, out_ch),
            activation_layer(activation),
        )
        self.dropout = dropout_layer(dims)(dropout) if dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dropout is None:
            return self.block(x)
        return self.block[3:](self.dropout(self.block[:3](x)))


def conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int = 3, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias, "same" padding, optionally dilated) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2 * dilation,
                  dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def pad_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Zero-pad (or crop, where the difference is negative) the last ``len(size)`` dims of ``x`` to ``size``, centred.

    Pads even when the sizes already match, so that a graph traced or exported at
    one input size stays valid at every other size.
    """
    pads = []
    for axis in range(1, len(size) + 1):  # F.pad lists the last axis first
        d = size[-axis] - x.shape[-axis]
        pads += [d // 2, d - d // 2]
    return F.pad(x, pads)


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions (ReLU gain), unit BatchNorm/affine InstanceNorm, zero biases, throughout ``module``.

    Covers the 2D and 3D layers of :func:`conv_layer`, :func:`transposed_conv_layer` and :func:`norm_layer`.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) or (
                isinstance(m, (nn.InstanceNorm2d, nn.InstanceNorm3d)) and m.affine):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
