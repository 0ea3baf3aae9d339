"""Export a trained model for deployment: TorchScript, torch.export (.pt2) or ONNX.

    export_model(model, cfg, "onnx", "checkpoint/demo/model.onnx", checkpoint=path, epoch=12)

Every format takes one normalised image batch, float32 ``(N, in_channels, H, W)``,
and returns the logits ``(N, out_channels, H, W)`` at the input's size, exactly
what the model returns in eval mode. The batch size, height and width stay free:

* ``torchscript``: ``torch.jit.trace`` in eval mode. A trace records the
  operations of one run; the models compute every pad and resize from the
  input's shape, so the graph holds for other sizes too (checked below).
  The shape checks of the models' ``forward`` are left out of the trace:
  too small or wrongly shaped inputs fail inside the network instead.
* ``export``: ``torch.export.export`` with a dynamic batch and height/width
  (``Dim.AUTO``: torch.export derives the valid range), saved with
  ``torch.export.save``. The program checks its input shapes when called:
  torch.export treats a size of 1 as a special case, so the deepest feature
  map must be at least 2 px per side: 33 px at output stride 32 (the
  MobileNet/EfficientNet encoders, ResNets in UNet), 17 or 9 for dilated
  ResNets at output stride 16 or 8, 32 for UNet++ and UNet 3+ (16 for UNet++
  pruned to level 3), ``2**(depth + 1)`` for the plain U-Net. Smaller inputs
  fail with "Guard failed". TorchScript and ONNX files have no such check.
* ``onnx``: ``torch.onnx.export(dynamo=True)`` (the exporter built on
  torch.export, the default of recent torch), opset :data:`ONNX_OPSET`, one
  self-contained file (weights inside, fine below ONNX's 2 GB limit), input
  ``image`` and output ``logits`` with the axes ``batch``, ``height`` and
  ``width`` left free. Needs ``onnx``, ``onnxscript`` and (for the check)
  ``onnxruntime``.

The export runs on the CPU in float32. With ``check=True`` (the default) the
file is loaded back (``torch.jit.load`` / ``torch.export.load`` /
``onnxruntime.InferenceSession``) and its output compared with the eager
model's on random inputs at two sizes and batch sizes (the example, and an odd
size with batch 1), plus the size the validation transforms resize to, if any.
They agree when ``max |exported - eager| <= atol + rtol * max |eager|``; else
:class:`ExportError` names the file and the difference, and nothing is written.

The file is written atomically (temp file beside it, then ``os.replace``) and a
JSON sidecar ``<file>.json`` beside it gives a deployer the plain facts: input
and output layout, channels, classes, sigmoid/threshold or softmax, the
normalisation and resize of the validation transforms, the checkpoint and its
epoch, the format and the check's result.
"""
from __future__ import annotations

import importlib.util
import logging
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from utils.config import Config
from utils.fileio import atomic_path, write_json
from utils.transforms import Normalize, Resize, build_transforms

log = logging.getLogger(__name__)

#: format name -> default file suffix
FORMATS: Dict[str, str] = {"torchscript": ".torchscript.pt", "export": ".pt2", "onnx": ".onnx"}
ONNX_OPSET = 18
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
INPUT_NAME, OUTPUT_NAME = "image", "logits"
DEFAULT_EXAMPLE_SIZE = (128, 128)
EXAMPLE_BATCH = 2  # not 1: torch.export would fix a batch of 1 as a constant

#: how images are scaled to floats before the validation transforms (``data.intensity``, see datasets/io.py)
INTENSITY_MEANINGS = {
    "auto": "8-bit images divided by 255; other bit depths scaled to [0, 1] between their 0.5 and 99.5 percentiles",
    "percentile": "every image scaled to [0, 1] between its 0.5 and 99.5 percentiles",
    "none": "raw pixel values",
}

Runner = Callable[[torch.Tensor], torch.Tensor]


class ExportError(RuntimeError):
    """An export that cannot be done (missing packages) or whose result disagrees with the model."""


def default_export_path(folder: Union[str, Path], fmt: str) -> Path:
    """``<folder>/model<suffix>`` for ``fmt``, e.g. ``model.onnx``."""
    check_format(fmt)
    return Path(folder) / f"model{FORMATS[fmt]}"


def check_format(fmt: str) -> None:
    """Raise ValueError for an unknown format, listing the valid ones."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; valid formats: {', '.join(FORMATS)}")


def missing_onnx_packages(check: bool = True) -> List[str]:
    """The packages ONNX export (and, with ``check``, its check) needs but cannot import."""
    needed = ONNX_PACKAGES if check else ONNX_PACKAGES[:2]
    return [name for name in needed if importlib.util.find_spec(name) is None]


def export_model(model: nn.Module, cfg: Config, fmt: str, out_path: Union[str, Path], *,
                 example_size: Optional[Tuple[int, int]] = None, check: bool = True,
                 checkpoint: Optional[Union[str, Path]] = None, epoch: Optional[int] = None,
                 class_names: Optional[Sequence[str]] = None,
                 atol: float = 1e-4, rtol: float = 1e-3) -> Path:
    """Export ``model`` (moved to the CPU, float32, eval mode) to ``out_path`` in ``fmt``; return the path.

    Args:
        model: the model built from ``cfg`` with its trained weights loaded.
        cfg: its config (channels, classes, threshold, validation transforms).
        fmt: ``torchscript``, ``export`` or ``onnx``.
        out_path: the file to write; the sidecar goes to ``<out_path>.json``.
        example_size: (H, W) of the example input the export runs on;
            default :data:`DEFAULT_EXAMPLE_SIZE`. Keep it large enough for
            the deepest feature map to be several pixels per side, or
            torch.export fixes some sizes as constants (the check then fails).
        check: load the file back and compare it with the eager model.
        checkpoint, epoch: where the weights came from, for the sidecar.
        class_names: for the sidecar; default ``cfg.data.class_names``.
        atol, rtol: tolerance of the check (see the module docstring).

    Raises:
        ValueError: unknown ``fmt`` or an example size below 1.
        ExportError: missing ONNX packages, a model that does not return one
            logits tensor, or a check that fails (nothing is written then).
    """
    check_format(fmt)
    out_path = Path(out_path)
    if fmt == "onnx":
        missing = missing_onnx_packages(check)
        if missing:
            raise ExportError(f"{out_path}: ONNX export needs the packages {', '.join(missing)}: "
                              "pip install -r requirements.txt (or pip install onnx onnxscript onnxruntime)")
    val_size, normalize = _val_transform_facts(cfg)
    size = tuple(example_size or DEFAULT_EXAMPLE_SIZE)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"example_size must be (height, width) of positive ints, got {example_size!r}")
    model = model.to("cpu", torch.float32).eval()
    inputs = _check_inputs(cfg.model.in_channels, size, val_size)
    with torch.no_grad():
        expected = [model(x) for x in inputs]
    _check_outputs(out_path, inputs, expected, cfg.model.out_channels)

    if fmt == "torchscript":
        log.info("note: PyTorch deprecates TorchScript in favour of torch.export; "
                 "the export and onnx formats are the maintained ones")
    with atomic_path(out_path) as tmp:
        start = time.perf_counter()
        _EXPORTERS[fmt](model, inputs[0], tmp)
        log.info("exported %s as %s in %.1f s", cfg.model.name, fmt, time.perf_counter() - start)
        result: Dict[str, Any] = {"passed": None, "note": "not checked (check=False)"}
        if check:
            start = time.perf_counter()
            run = _LOADERS[fmt](tmp)
            result = _compare(out_path, fmt, run, inputs, expected, atol, rtol)
            log.info("check passed: max abs difference %.2e on inputs %s (%.1f s)", result["max_abs_diff"],
                     ", ".join("x".join(map(str, s)) for s in result["inputs"]), time.perf_counter() - start)
    sidecar = _sidecar(cfg, fmt, out_path, checkpoint, epoch, class_names, size, val_size, normalize, result)
    write_json(sidecar_path(out_path), sidecar)
    return out_path


def sidecar_path(out_path: Union[str, Path]) -> Path:
    """``model.onnx`` -> ``model.onnx.json``."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".json")


# --------------------------------------------------------------------------- inputs and outputs


def _val_transform_facts(cfg: Config) -> Tuple[Optional[Tuple[int, int]], Optional[Dict[str, List[float]]]]:
    """(resize (H, W) or None, {"mean", "std"} or None) of the validation transforms."""
    size, normalize = None, None
    for transform in build_transforms(cfg.transforms.val).transforms:
        if isinstance(transform, Resize) and size is None:
            size = tuple(int(s) for s in transform.size)
        elif isinstance(transform, Normalize) and normalize is None:
            normalize = {"mean": list(transform.mean), "std": list(transform.std)}
    return size, normalize


def _check_inputs(channels: int, size: Tuple[int, int], val_size: Optional[Tuple[int, int]]) -> List[torch.Tensor]:
    """Random normalised batches: the example (batch 2), an odd other size (batch 1), the val size (batch 1)."""
    h, w = size
    shapes = [(EXAMPLE_BATCH, channels, h, w), (1, channels, (h * 3 // 4) | 1, (w * 5 // 4) | 1)]
    if val_size is not None and tuple(val_size) != (h, w):
        shapes.append((1, channels, *val_size))
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(shape, generator=generator) for shape in shapes]


def _check_outputs(out_path: Path, inputs: List[torch.Tensor], outputs: List[Any], out_channels: int) -> None:
    """ExportError unless the eager model returns one (N, out_channels, H, W) tensor per input."""
    for x, y in zip(inputs, outputs):
        expected = (x.shape[0], out_channels, *x.shape[-2:])
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != expected:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ExportError(f"{out_path}: the model must return one logits tensor {expected} in eval mode "
                              f"for input {tuple(x.shape)}, got {got}; only such models can be exported")


def _compare(out_path: Path, fmt: str, run: Runner, inputs: List[torch.Tensor], expected: List[torch.Tensor],
             atol: float, rtol: float) -> Dict[str, Any]:
    """Run the exported model on ``inputs``; ExportError when an output differs from ``expected``."""
    worst = 0.0
    for x, ref in zip(inputs, expected):
        try:
            got = run(x)
        except Exception as exc:
            raise ExportError(f"{out_path}: the exported {fmt} model fails on input {tuple(x.shape)} "
                              f"(the example was {tuple(inputs[0].shape)}): {type(exc).__name__}: {exc}; "
                              "nothing was written") from exc
        if tuple(got.shape) != tuple(ref.shape):
            raise ExportError(f"{out_path}: the exported {fmt} model returns shape {tuple(got.shape)} for input "
                              f"{tuple(x.shape)}, the PyTorch model {tuple(ref.shape)}; nothing was written")
        diff = (got - ref).abs().max().item()
        scale = ref.abs().max().item()
        tolerance = atol + rtol * scale
        if not diff <= tolerance:  # also catches NaN
            raise ExportError(f"{out_path}: the exported {fmt} model disagrees with the PyTorch model on input "
                              f"{tuple(x.shape)}: max abs difference {diff:.3g} > tolerance {tolerance:.3g} "
                              f"(atol {atol:g} + rtol {rtol:g} x max |logit| {scale:.3g}); nothing was written")
        worst = max(worst, diff)
    return {"passed": True, "max_abs_diff": worst, "atol": atol, "rtol": rtol,
            "rule": "max|exported - eager| <= atol + rtol * max|eager|, per input",
            "inputs": [list(x.shape) for x in inputs]}


# --------------------------------------------------------------------------- exporters and loaders


@contextmanager
def _quiet_torchscript() -> Iterator[None]:
    """Hide the trace's warnings (the check covers them) and torch's per-call deprecation notices."""
    with warnings.catch_warnings():
        # The models' input checks become constants in a trace; the check at other sizes covers that.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # recent torch warns that TorchScript is deprecated on every call; said once in export_model's log
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


@contextmanager
def _quiet_onnx_loggers() -> Iterator[None]:
    """The ONNX exporter's optimiser logs every pass at INFO; keep its warnings only."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with _quiet_torchscript(), torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))


def _dynamic_shapes() -> Tuple[Dict[int, Any]]:
    """torch.export dynamic shapes: a named batch from 1 up, height and width derived by torch.export."""
    dim = torch.export.Dim
    return ({0: dim("batch", min=1), 2: dim.AUTO, 3: dim.AUTO},)


def _export_program(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_shapes())
    torch.export.save(program, str(path))


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with _quiet_onnx_loggers():
        torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=ONNX_OPSET,
                          external_data=False, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes=({0: "batch", 2: "height", 3: "width"},), verbose=False)


def _load_torchscript(path: Path) -> Runner:
    with _quiet_torchscript():
        module = torch.jit.load(str(path), map_location="cpu")

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)
    return run


def _load_program(path: Path) -> Runner:
    module = torch.export.load(str(path)).module()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)
    return run


def _load_onnx(path: Path) -> Runner:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
    return run


_EXPORTERS: Dict[str, Callable[[nn.Module, torch.Tensor, Path], None]] = {
    "torchscript": _export_torchscript, "export": _export_program, "onnx": _export_onnx}
_LOADERS: Dict[str, Callable[[Path], Runner]] = {
    "torchscript": _load_torchscript, "export": _load_program, "onnx": _load_onnx}

_HOW_TO_LOAD = {
    "torchscript": "torch.jit.load(path)",
    "export": "torch.export.load(path).module()",
    "onnx": "onnxruntime.InferenceSession(path)",
}


# --------------------------------------------------------------------------- sidecar


def _sidecar(cfg: Config, fmt: str, out_path: Path, checkpoint: Optional[Union[str, Path]], epoch: Optional[int],
             class_names: Optional[Sequence[str]], size: Tuple[int, int], val_size: Optional[Tuple[int, int]],
             normalize: Optional[Dict[str, List[float]]], check: Dict[str, Any]) -> Dict[str, Any]:
    """The plain facts a deployer needs, as a JSON-ready dict."""
    sigmoid = cfg.binary_sigmoid
    intensity = cfg.data.options.get("intensity", "auto")
    names = class_names if class_names is not None else cfg.data.class_names
    versions = {"torch": torch.__version__}
    if fmt == "onnx":
        versions["opset"] = ONNX_OPSET
    return {
        "format": fmt,
        "file": out_path.name,
        "load": _HOW_TO_LOAD[fmt],
        "exported_with": versions,
        "experiment": cfg.experiment,
        "model": {"name": cfg.model.name, **cfg.model.options},
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "checkpoint_epoch": epoch,
        "in_channels": cfg.model.in_channels,
        "out_channels": cfg.model.out_channels,
        "num_classes": cfg.data.num_classes,
        "class_names": None if names is None else list(names),
        "input": {"name": INPUT_NAME, "shape": ["batch", cfg.model.in_channels, "height", "width"],
                  "dtype": "float32", "example_size": list(size)},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", cfg.model.out_channels, "height", "width"],
                   "dtype": "float32", "meaning": "raw logits"},
        "activation": "sigmoid" if sigmoid else "softmax",
        "threshold": cfg.model.threshold if sigmoid else None,
        "prediction": (f"sigmoid(logits) > {cfg.model.threshold:g} is class 1" if sigmoid
                       else "argmax over the channels of softmax(logits)"),
        "preprocessing": {
            "intensity": intensity,
            "intensity_meaning": INTENSITY_MEANINGS.get(intensity),
            "normalize": normalize,
            "resize": None if val_size is None else list(val_size),
            "val_transforms": [dict(t) for t in cfg.transforms.val],
        },
        "check": check,
    }
