"""UNet++ (Zhou et al., 2018; TMI 2019) for semantic segmentation, registered as "unetpp".

The encoder is the plain U-Net column ``X^{i,0}`` (``i = 0..4``, widths
``base_channels * [1, 2, 4, 8, 16]``, 32-64-128-256-512 in the paper). The
skip pathways are nested and dense: every decoder node

    X^{i,j} = DoubleConv(concat[X^{i,0}, ..., X^{i,j-1}, Up(X^{i+1,j-1})]),  j = 1 .. 4 - i

sees all earlier nodes of its own level and the upsampled node below it, so
``X^{0,1}``, ``X^{0,2}``, ``X^{0,3}`` and ``X^{0,4}`` are the outputs of U-Nets
of depth 1, 2, 3 and 4 that share their encoder. Each block is VGG-style: two
3x3 convolutions with BatchNorm and ReLU (:class:`models.common.DoubleConv`).

Outputs (raw logits, the input's height and width):

- ``deep_supervision=False``: one 1x1 head on ``X^{0,4}``; a single tensor in
  both modes.
- ``deep_supervision=True``: 1x1 heads on ``X^{0,4}``, ``X^{0,3}``,
  ``X^{0,2}`` and ``X^{0,1}``. Training mode returns the four logits in that
  order (``outputs[0]`` is always the main, deepest one); evaluation mode
  returns a single tensor: the head on ``X^{0,prune_level}`` (the paper's
  "fast mode"; ``prune_level=4`` is the full network).
- ``prune_level=L < 4`` (needs deep supervision, which is what trains the
  shallower heads): in evaluation mode only the nodes with ``i + j <= L`` are
  computed, so the deeper encoder levels and nodes are skipped altogether.
  Training always runs and trains the whole network.

``bilinear=True`` upsamples with weight-free bilinear interpolation straight to
the skip's size; ``bilinear=False`` uses a 2x2 stride-2 ``ConvTranspose2d``
per node (halving the width, as in the authors' Keras code) and pads/crops to
the skip's size. With the paper's widths (3 -> 1 channel) that is 9,159,681
parameters (bilinear) or 9,045,825 (transposed) against the 9.04M the paper
reports; deep supervision adds three 33-parameter heads.
"""
from typing import List, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from models.common import DoubleConv, check_input, check_positive, init_weights, pad_to
from utils.errors import ConfigError
from utils.registry import MODELS

LEVELS = 5  # encoder levels X^{0,0} .. X^{4,0}


class UpTo(nn.Module):
    """Upsample x2 to an exact size: bilinear (weight-free) or 2x2 stride-2 ConvTranspose2d then pad/crop."""

    def __init__(self, in_ch: int, out_ch: int, bilinear: bool) -> None:
        super().__init__()
        self.up = None if bilinear else nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)
        self.out_channels = in_ch if bilinear else out_ch

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if self.up is None:
            return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return pad_to(self.up(x), size)


class NestedNode(nn.Module):
    """Decoder node X^{i,j}: DoubleConv over [X^{i,0}, ..., X^{i,j-1}, Up(X^{i+1,j-1})].

    Args:
        width: channels of level ``i`` (in and out of the node).
        below_width: channels of level ``i + 1``.
        j: the node's column, i.e. how many same-level maps it concatenates.
        bilinear: upsampling kind (see :class:`UpTo`).
    """

    def __init__(self, width: int, below_width: int, j: int, bilinear: bool) -> None:
        super().__init__()
        self.up = UpTo(below_width, width, bilinear)
        self.conv = DoubleConv(j * width + self.up.out_channels, width)

    def forward(self, same_level: List[torch.Tensor], below: torch.Tensor) -> torch.Tensor:
        up = self.up(below, same_level[0].shape[-2:])
        return self.conv(torch.cat([*same_level, up], dim=1))


@MODELS.register("unetpp")
class UNetPlusPlus(nn.Module):
    """UNet++ with nested dense skip pathways, returning raw logits (N, out_channels, H, W).

    Args:
        in_channels: image channels (3 for RGB, 1 for grayscale).
        out_channels: 1 for binary sigmoid output, otherwise the number of
            classes (softmax over channels).
        base_channels: width of level 0; level ``i`` has ``base_channels * 2**i``
            channels (32 gives the paper's 32-64-128-256-512).
        deep_supervision: heads on ``X^{0,1..4}``; training mode then returns
            the list ``[X^{0,4}, X^{0,3}, X^{0,2}, X^{0,1}]`` of logits (main
            first), evaluation mode the single head ``X^{0,prune_level}``.
        prune_level: depth ``L`` in 1..4 of the sub-network used in evaluation
            mode (nodes ``i + j <= L`` only; faster). Below 4 it needs
            ``deep_supervision=True``; ignored in training mode.
        bilinear: weight-free bilinear upsampling instead of transposed convolutions.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, base_channels: int = 32,
                 deep_supervision: bool = False, prune_level: int = 4, bilinear: bool = True) -> None:
        super().__init__()
        check_positive("UNetPlusPlus", in_channels=in_channels, out_channels=out_channels,
                       base_channels=base_channels)
        deepest = LEVELS - 1
        if not 1 <= prune_level <= deepest:
            raise ConfigError(f"UNetPlusPlus: model.prune_level must be in 1..{deepest}, got {prune_level}")
        if prune_level < deepest and not deep_supervision:
            raise ConfigError(f"UNetPlusPlus: prune_level={prune_level} needs deep_supervision=True (only deep "
                             f"supervision trains the head on X^{{0,{prune_level}}}); set "
                             f"model.deep_supervision: true or model.prune_level: {deepest}")
        self.in_channels = in_channels
        self.deep_supervision = deep_supervision
        self.prune_level = prune_level
        widths = [base_channels * 2 ** i for i in range(LEVELS)]
        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList(
            DoubleConv(widths[i - 1] if i else in_channels, widths[i]) for i in range(LEVELS))
        # nodes[i][j - 1] is X^{i,j}
        self.nodes = nn.ModuleList(
            nn.ModuleList(NestedNode(widths[i], widths[i + 1], j, bilinear) for j in range(1, LEVELS - i))
            for i in range(deepest))
        # heads[k] reads X^{0, 4 - k}: the main head first
        n_heads = deepest if deep_supervision else 1
        self.heads = nn.ModuleList(nn.Conv2d(widths[0], out_channels, kernel_size=1) for _ in range(n_heads))
        init_weights(self)

    def grid(self, x: torch.Tensor, depth: int) -> List[List[torch.Tensor]]:
        """All nodes with ``i + j <= depth``: ``grid[i][j]`` is X^{i,j}."""
        rows = [[self.encoder[0](x)]]
        for i in range(1, depth + 1):
            rows.append([self.encoder[i](self.pool(rows[-1][0]))])
        for j in range(1, depth + 1):
            for i in range(depth + 1 - j):
                rows[i].append(self.nodes[i][j - 1](rows[i], rows[i + 1][j - 1]))
        return rows

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        """Logits (N, out_channels, H, W); a list of them, main first, in training with deep supervision."""
        check_input(x, self.in_channels, "UNetPlusPlus", poolings=LEVELS - 1)
        deepest = LEVELS - 1
        depth = deepest if self.training else self.prune_level
        top = self.grid(x, depth)[0]
        if self.training and self.deep_supervision:
            return [head(top[deepest - k]) for k, head in enumerate(self.heads)]
        return self.heads[deepest - depth](top[depth])
