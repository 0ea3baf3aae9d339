"""Pieces every model shares: the one input check, the argument checks, blocks and weight initialisation.

* :func:`check_input`: the models' single input check; a wrong rank, channel
  count or a side below the model's minimum raises :class:`ModelInputError`
  naming what was expected, what came and the fix.
* :func:`check_positive`: constructor arguments that must be at least 1; a bad
  value raises :class:`ConfigError` naming the ``model.<key>`` to change.
* :class:`DoubleConv`, :func:`conv_bn_relu`, :func:`pad_to` and
  :func:`init_weights`: building blocks of the U-Net family and the heads.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from utils.errors import ConfigError, ModelInputError


def check_input(x: torch.Tensor, in_channels: int, model_name: str, poolings: int = 0,
                depth_key: Optional[str] = None) -> None:
    """Raise ModelInputError unless ``x`` is (N, in_channels, H, W) with both sides at least ``2**poolings``.

    Args:
        x: the batch given to the model.
        in_channels: channels the model was built for.
        model_name: named in the message.
        poolings: how many 2x poolings the model applies (0: any size from 1 px works).
        depth_key: the config key that sets ``poolings``, offered as a second fix.
    """
    if x.ndim != 4 or x.shape[1] != in_channels:
        raise ModelInputError(f"{model_name} expects input (N, {in_channels}, H, W), got {tuple(x.shape)}; "
                              "check model.in_channels against the images")
    minimum = 2 ** poolings
    h, w = x.shape[-2:]
    if poolings > 0 and (h < minimum or w < minimum):
        fix = f"resize or pad the images to at least {minimum} px per side"
        if depth_key is not None:
            fix += f" or lower {depth_key}"
        raise ModelInputError(f"{model_name} needs inputs of at least {minimum}x{minimum} (each of its {poolings} "
                              f"2x poolings halves the size), got {h}x{w}; {fix}")


def check_positive(model_name: str, **values: int) -> None:
    """Raise ConfigError naming the first argument below 1 as its ``model.<key>``."""
    for name, value in values.items():
        if value < 1:
            raise ConfigError(f"{model_name}: model.{name} must be at least 1, got {value}; "
                              f"set model.{name} to a positive integer")


class DoubleConv(nn.Module):
    """(3x3 conv -> BatchNorm -> ReLU) twice; the spatial size is kept."""

    def __init__(self, in_ch: int, out_ch: int, mid_ch: Optional[int] = None) -> None:
        super().__init__()
        mid_ch = mid_ch or out_ch
        self.block = nn.Sequential(
            nn.Conv2d(in_ch, mid_ch, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(mid_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid_ch, out_ch, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


def conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int = 3, dilation: int = 1) -> nn.Sequential:
    """Conv (no bias, "same" padding, optionally dilated) -> BatchNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2 * dilation,
                  dilation=dilation, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def pad_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Zero-pad (or crop, where the difference is negative) the last two dims of ``x`` to ``size``, centred.

    Pads even when the sizes already match, so that a graph traced or exported at
    one input size stays valid at every other size.
    """
    dy = size[0] - x.shape[-2]
    dx = size[1] - x.shape[-1]
    return F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convolutions (ReLU gain), unit BatchNorm, zero biases, throughout ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
