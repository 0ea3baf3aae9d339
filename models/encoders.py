"""torchvision classification backbones as feature-pyramid encoders.

:func:`build_encoder` turns a torchvision classifier into an :class:`Encoder`
whose ``forward`` returns five feature maps, one per downsampling, at strides
``[2, 4, 8, 16, 32]`` (VGG: ``[1, 2, 4, 8, 16]``):

* ResNets (``resnet18/34/50/101``): the stem (conv-BN-ReLU, stride 2), then
  max pooling + ``layer1`` (stride 4), ``layer2``, ``layer3``, ``layer4``;
  channels ``[64, 64, 128, 256, 512]`` (x4 after the stem for ResNet-50/101).
  ``output_stride`` 16 or 8 replaces the strides of ``layer4`` (and
  ``layer3``) by dilation, the usual DeepLab setup, so the last maps stay at
  stride 16 or 8: ``strides`` then reads ``[2, 4, 8, 16, 16]`` or
  ``[2, 4, 8, 8, 8]``. As torchvision's ``replace_stride_with_dilation``, the
  first block of a dilated layer keeps the previous layer's dilation (1 in
  ``layer3``, 2 in ``layer4`` at output stride 8) and the others take the new one.
* MobileNetV3 and EfficientNet: the blocks of torchvision's ``features``,
  whole (including its final 1x1 expansion conv, as torchvision's own
  MobileNetV3 segmentation backbones do), split where the resolution halves.
  They stay at output stride 32.
* VGG-16-BN (``vgg16_bn``, TernausNet style): the five convolution blocks of
  ``features``, each taken before its max pooling (the first block without
  one), so strides ``[1, 2, 4, 8, 16]`` and channels ``[64, 128, 256, 512,
  512]``; the last pooling is dropped with the classifier. Only
  ``features`` is built (not torchvision's 120M-parameter classifier), with
  torchvision's initialisation.

The classifier (pooling + fully connected layers) is dropped.

Pretrained weights are never downloaded: ``pretrained=True`` loads the file
torchvision would download from torch.hub's checkpoint directory
(``$TORCH_HOME/hub/checkpoints``, ``~/.cache/torch/hub/checkpoints`` by
default) and fails with the URL to fetch by hand when it is missing. The
weights are the torchvision ``DEFAULT`` ImageNet ones and expect images
normalised with the ImageNet mean and std.

``in_channels != 3`` replaces the first convolution. With pretrained weights
its kernel is the RGB kernel averaged over the colour axis, repeated for each
input channel and scaled by ``3 / in_channels``, so a grey image copied into
every channel gives the same response as the RGB network on that grey image.
"""
import difflib
import logging
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torchvision
from torch import nn

from models.common import check_positive, init_weights
from utils.errors import ConfigError

logger = logging.getLogger(__name__)

STRIDES = [2, 4, 8, 16, 32]
#: Backbones whose stages downsample differently from :data:`STRIDES`.
NATIVE_STRIDES = {"vgg16_bn": [1, 2, 4, 8, 16]}


class Encoder(nn.Module):
    """A backbone split into stages; ``forward`` returns each stage's output, shallowest first.

    Args:
        stages: modules applied in sequence; stage ``i`` yields the map at ``strides[i]``.
        out_channels: channels of each stage's output.
        strides: total downsampling factor of each stage's output.

    While frozen (:meth:`set_frozen`) the parameters get no gradients and the
    BatchNorm layers stay in eval mode (fixed running statistics) even when
    the model around the encoder is put in training mode.
    """

    def __init__(self, stages: List[nn.Module], out_channels: List[int], strides: List[int]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.out_channels = list(out_channels)
        self.strides = list(strides)
        self.frozen = False
        self._train_requested = True

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features

    def train(self, mode: bool = True) -> "Encoder":
        """Follow the requested mode, except that a frozen encoder stays in eval mode."""
        self._train_requested = mode
        return super().train(mode and not self.frozen)

    def set_frozen(self, frozen: bool) -> None:
        """Stop (or resume) gradient updates and BatchNorm statistics updates of the whole encoder."""
        self.frozen = frozen
        self.requires_grad_(not frozen)
        self.train(self._train_requested)


# ------------------------------------------------------------- pretrained weights


def weights_path(name: str) -> Tuple[Path, str]:
    """Where torch.hub keeps ``name``'s default ImageNet weights, and the URL they come from."""
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name, url


def local_weights(name: str) -> Tuple[Path, str]:
    """Path and URL of ``name``'s ImageNet weights; RuntimeError with the fix when the file is missing."""
    path, url = weights_path(name)
    if not path.is_file():
        raise RuntimeError(
            f"pretrained weights for {name} not found at {path}; this machine cannot download them: "
            f"download {url} on a connected machine and copy it there (or set TORCH_HOME to the "
            "directory holding hub/checkpoints/), or set model.pretrained: false")
    return path, url


def load_weights(model: nn.Module, name: str, path: Path, url: str) -> None:
    """Load the checkpoint at ``path`` into torchvision's ``name`` model; errors name the file and the fix.

    Entries under :data:`UNBUILT` prefixes (parts of the network never built here) are skipped.
    """
    fix = f"delete it and copy {url} there again"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or not a checkpoint at all
        raise RuntimeError(f"{path}: cannot be read as a checkpoint ({exc}); {fix}") from exc
    skipped = UNBUILT.get(name, ())
    if skipped and isinstance(state, dict):
        state = {key: value for key, value in state.items() if not key.startswith(skipped)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of other shapes
        details = "; ".join(line.strip() for line in str(exc).splitlines()[1:3])
        raise RuntimeError(f"{path}: not a {name} checkpoint ({details}); {fix}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            f"{path}: not a {name} checkpoint ({len(result.missing_keys)} entries missing, e.g. "
            f"{result.missing_keys[:3]}; {len(result.unexpected_keys)} unexpected, e.g. "
            f"{result.unexpected_keys[:3]}); {fix}")
    logger.info("loaded pretrained %s weights from %s", name, path)


# ------------------------------------------------------------- first convolution


def _first_conv(model: nn.Module) -> Tuple[nn.Module, str, nn.Conv2d]:
    """The first Conv2d of ``model`` with its parent module and attribute name."""
    for qualified, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent, _, attr = qualified.rpartition(".")
            return model.get_submodule(parent), attr, module
    raise ValueError(f"{type(model).__name__} has no Conv2d to adapt")


def adapt_input_channels(model: nn.Module, in_channels: int, from_pretrained: bool) -> None:
    """Replace the first convolution of ``model`` by one taking ``in_channels`` channels.

    With ``from_pretrained`` the new kernel is the old one's mean over its
    input channels, repeated ``in_channels`` times and scaled by
    ``old_in / in_channels``; otherwise it is Kaiming-initialised like
    torchvision's own convolutions.
    """
    parent, attr, old = _first_conv(model)
    if old.in_channels == in_channels:
        return
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    old.dilation, old.groups, old.bias is not None)
    with torch.no_grad():
        if from_pretrained:
            mean = old.weight.mean(dim=1, keepdim=True)
            new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * (old.in_channels / in_channels))
            if old.bias is not None:
                new.bias.copy_(old.bias)
        else:
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            if new.bias is not None:
                nn.init.zeros_(new.bias)
    setattr(parent, attr, new)


# ------------------------------------------------------------- splitting backbones into stages


def _out_channels(stage: nn.Module) -> int:
    """Channels a stage outputs: those of its last convolution."""
    return [m for m in stage.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def _dilate(layer: nn.Sequential, dilation: int, first_dilation: int) -> None:
    """Turn a ResNet layer's strided convolutions into stride-1 ones and dilate its kernels: by
    ``first_dilation`` in its first block, by ``dilation`` in the others (torchvision's
    ``replace_stride_with_dilation``)."""
    for index, block in enumerate(layer):
        rate = first_dilation if index == 0 else dilation
        for m in block.modules():
            if isinstance(m, nn.Conv2d):
                m.stride = (1, 1)
                if m.kernel_size[0] > 1:
                    m.dilation = (rate, rate)
                    m.padding = (m.kernel_size[0] // 2 * rate, m.kernel_size[1] // 2 * rate)


def _resnet_stages(model: nn.Module) -> List[nn.Module]:
    """Stem (conv-BN-ReLU), max pooling + layer1, layer2, layer3, layer4."""
    return [
        nn.Sequential(model.conv1, model.bn1, model.relu),
        nn.Sequential(model.maxpool, model.layer1),
        model.layer2, model.layer3, model.layer4,
    ]


def _block_stride(block: nn.Module) -> int:
    """Downsampling of a MobileNet/EfficientNet block: the product of its convolutions' strides.

    Valid because these blocks are plain chains (their shortcuts are identities,
    present only in stride-1 blocks).
    """
    stride = 1
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            stride *= m.stride[0]
    return stride


def _feature_stages(model: nn.Module) -> List[nn.Module]:
    """torchvision's ``features`` blocks grouped into stages that end where the next block downsamples."""
    groups: List[List[nn.Module]] = []
    for block in model.features:
        if _block_stride(block) > 1 or not groups:
            groups.append([])
        groups[-1].append(block)
    return [nn.Sequential(*blocks) for blocks in groups]


def _vgg_stages(model: nn.Module) -> List[nn.Module]:
    """VGG ``features`` cut before each max pooling: block 1, then pooling + block for blocks 2 to 5."""
    groups: List[List[nn.Module]] = [[]]
    for layer in model.features:
        if isinstance(layer, nn.MaxPool2d):
            groups.append([])
        groups[-1].append(layer)
    return [nn.Sequential(*blocks) for blocks in groups[:-1]]  # the last group is the final pooling alone


def _vgg16_bn() -> nn.Module:
    """torchvision's VGG-16-BN ``features`` (under that name, for its checkpoint's keys) without the classifier,
    initialised as torchvision does (Kaiming-normal fan-out convolutions, zero biases, unit BatchNorm)."""
    holder = nn.Module()
    holder.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=True)
    init_weights(holder)
    return holder


#: Constructors of backbones that torchvision's ``get_model`` would build with parts we drop.
_CONSTRUCTORS: Dict[str, Callable[[], nn.Module]] = {"vgg16_bn": _vgg16_bn}
#: Checkpoint entries of parts never built, skipped when loading pretrained weights.
UNBUILT: Dict[str, Tuple[str, ...]] = {"vgg16_bn": ("classifier.",)}

_SPLITTERS: Dict[str, Callable[[nn.Module], List[nn.Module]]] = {
    **{name: _resnet_stages for name in ("resnet18", "resnet34", "resnet50", "resnet101")},
    **{name: _feature_stages for name in ("mobilenet_v3_large", "mobilenet_v3_small",
                                          "efficientnet_b0", "efficientnet_b1",
                                          "efficientnet_b2", "efficientnet_b3")},
    "vgg16_bn": _vgg_stages,
}
ENCODERS = sorted(_SPLITTERS)


def native_strides(name: str) -> List[int]:
    """Strides of ``name``'s five feature maps without dilation."""
    return list(NATIVE_STRIDES.get(name, STRIDES))


def supported_output_strides(name: str) -> Tuple[int, ...]:
    """Output strides ``name`` can run at: 8, 16 and 32 for ResNets, its native last stride for the others."""
    return (8, 16, 32) if _SPLITTERS[name] is _resnet_stages else (native_strides(name)[-1],)


def check_encoder_name(name: str) -> None:
    """Raise ConfigError for an unsupported name, listing the valid ones and the closest match."""
    if name in _SPLITTERS:
        return
    message = f"unknown encoder {name!r}; valid encoders: {', '.join(ENCODERS)}"
    close = difflib.get_close_matches(str(name), ENCODERS, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    raise ConfigError(message)


# torchvision's MobileNetV3 uses BatchNorm momentum 0.01 (TensorFlow's 0.99 decay), tuned for long
# ImageNet runs. For segmentation, fine-tuned or trained from scratch for a few thousand steps, its
# running statistics then trail the weights far behind: on the demo a MobileNetV3 UNet's training
# loss fell from 0.50 to 0.08 over 4 epochs while its validation Dice dropped from 0.47 to 0.14.
# Every encoder therefore uses PyTorch's default 0.1, like the rest of the framework.
BN_MOMENTUM = 0.1


def set_batchnorm_momentum(model: nn.Module, momentum: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def build_encoder(name: str, in_channels: int = 3, pretrained: bool = False,
                  output_stride: Optional[int] = None) -> Encoder:
    """The torchvision backbone ``name`` as an :class:`Encoder` (see the module docstring).

    Args:
        name: one of :data:`ENCODERS`.
        in_channels: image channels; the first convolution is replaced when not 3.
        pretrained: load the ImageNet weights from the local torch.hub cache
            (RuntimeError naming the path and URL when the file is missing).
        output_stride: stride of the last feature map; 8 and 16 (dilated) for ResNets only;
            None: the backbone's own (32, or 16 for VGG).
    """
    check_encoder_name(name)
    check_positive(f"encoder {name}", in_channels=in_channels)
    native = native_strides(name)
    output_stride = native[-1] if output_stride is None else output_stride
    if output_stride not in supported_output_strides(name):
        raise ConfigError(f"encoder {name} supports output_stride {supported_output_strides(name)}, "
                          f"got {output_stride}; dilated output strides 8 and 16 need a ResNet encoder")
    weights = local_weights(name) if pretrained else None  # fail before the costly construction
    construct = _CONSTRUCTORS.get(name)
    model = construct() if construct is not None else torchvision.models.get_model(name, weights=None)
    if weights is not None:
        load_weights(model, name, *weights)
    adapt_input_channels(model, in_channels, from_pretrained=pretrained)
    set_batchnorm_momentum(model, BN_MOMENTUM)
    stages = _SPLITTERS[name](model)
    strides = [min(stride, output_stride) for stride in native]
    for stage, stride in zip(stages, native):
        if stride > output_stride:  # keep the resolution, widen the receptive field instead (ResNets only)
            _dilate(stage, stride // output_stride, max(1, stride // 2 // output_stride))
    return Encoder(stages, [_out_channels(s) for s in stages], strides)
