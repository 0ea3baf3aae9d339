"""Size, cost and speed of every registered model configuration worth comparing.

For each configuration (3 input channels, 1 output channel unless its
configuration says otherwise) prints one row of a markdown table:

* params: ``sum(p.numel())`` of the whole module, and the count the paper
  reports (or a reference implementation's, computed in :data:`REFERENCES`)
  where there is one, with the relative difference;
* GFLOPs: one evaluation-mode forward pass at 1 x 3 x S x S counted by
  ``torch.utils.flop_counter.FlopCounterMode``, which counts convolutions
  (transposed ones included) and matrix products only, a multiply-add being
  2 FLOPs; BatchNorm, activations, pooling and interpolation are not counted;
* throughput: images/s of an evaluation-mode forward pass (``no_grad``) and of
  a training-mode forward + backward pass (loss: the mean of every output, deep
  supervision and CGM outputs included; no optimizer step), both at batch B;
  the median of timed runs after one untimed warm-up run;
* peak memory: how much the peak memory grows during one such call (the
  warm-up one) above what was in use just before it (weights, input,
  libraries). On CPU that is the growth of the process's resident set high-water
  mark (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` and with the
  freed heap handed back by ``malloc_trim`` first), so it covers activations,
  gradients, saved tensors and oneDNN workspaces, and includes allocator
  overhead and one-time first-call allocations (kernel caches); on CUDA it is
  ``torch.cuda.max_memory_allocated`` above the bytes allocated before.

Every configuration runs in a fresh Python process, so that one model's
allocator state cannot distort the next one's memory figure and an error (or
a crash) only fills that row with its message.

Timing stops after ``--repeats`` timed runs or as soon as ``--budget`` seconds
of timed runs have passed, whichever comes first, with at least one: heavy
models (UNet 3+ takes about 20 s per forward and 70 s per forward + backward
at batch 4, 256 x 256, on 2 CPU threads) get a single timed run; the notes
column gives the counts and the share of the timed runs' time during which
a runnable task waited for a CPU (Linux PSI): well above 0% means other
processes competed for the cores and the throughput is understated. A full
CPU run with the defaults takes about 12 minutes on 2 cores, 6 of them the two
UNet 3+ rows.

    python bench/models.py [--models unet unet3p ...] [--size 256] [--batch 4] [--repeats 3]
                           [--budget 10] [--threads 2] [--device auto] [--quick]
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models  # noqa: E402,F401 - fills the registry
from utils.model_output import AuxiliaryOutput, ClassGuidedOutput  # noqa: E402
from utils.registry import MODELS  # noqa: E402

logger = logging.getLogger("bench.models")

RESULT_PREFIX = "RESULT "  # marks the worker's JSON line on its stdout
CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")
CPU_PRESSURE = Path("/proc/pressure/cpu")


@dataclass(frozen=True)
class Spec:
    """One benchmarked configuration: a registered model name and its keyword arguments."""

    key: str
    model: str
    kwargs: Dict[str, Any] = field(default_factory=dict)
    paper_params_m: Optional[float] = None
    eval_only: bool = False  # pruned UNet++: only its evaluation forward differs from the full network


# mmsegmentation's pspnet_r50-d8 for 19 classes (Cityscapes), counted by hand from its config (ResNetV1c-50
# backbone, PSPHead(2048 -> 512, pool_scales 1, 2, 3, 6), FCNHead(1024 -> 256) auxiliary head); not imported:
#   backbone: torchvision's ResNet-50 without fc, 23,508,032, with its 7x7 stem (9,408 + BN 128) replaced by
#     the deep stem 3x3 convs 3->32->32->64 (864 + 9,216 + 18,432 + BN 64 + 64 + 128 = 28,768): 23,527,264
#   decode head: 4 x (1x1 2048->512 + BN 1,024) = 4,198,400; 3x3 4096->512 + BN = 18,875,392;
#     1x1 512->19 + bias = 9,747: 23,083,539
#   auxiliary head: 3x3 1024->256 + BN = 2,359,808; 1x1 256->19 + bias = 4,883: 2,364,691
MMSEG_PSPNET_R50_D8_PARAMS = 23_527_264 + 23_083_539 + 2_364_691  # 48,975,494

SPECS = [
    Spec("unet", "unet", {"base_channels": 64, "bilinear": True}),
    Spec("unet-transposed", "unet", {"base_channels": 64, "bilinear": False}, paper_params_m=31.0),
    Spec("unetpp", "unetpp", {}, paper_params_m=9.04),
    *(Spec(f"unetpp-ds-L{level}", "unetpp", {"deep_supervision": True, "prune_level": level}, eval_only=True)
      for level in range(1, 5)),
    Spec("unet3p", "unet3p", {}, paper_params_m=26.97),
    Spec("unet3p-ds-cgm", "unet3p", {"deep_supervision": True, "classification_guided": True}),
    *(Spec(f"unet-{encoder}", "unet", {"encoder": encoder})
      for encoder in ("resnet18", "resnet34", "resnet50", "mobilenet_v3_large", "efficientnet_b0", "vgg16_bn")),
    Spec("deeplabv3", "deeplabv3", {"encoder": "resnet50"}),
    Spec("deeplabv3plus", "deeplabv3plus", {"encoder": "resnet50"}),
    Spec("fcn", "fcn", {"encoder": "resnet50"}),
    Spec("pspnet", "pspnet", {"encoder": "resnet50", "out_channels": 19},
         paper_params_m=MMSEG_PSPNET_R50_D8_PARAMS / 1e6),
]
SPECS_BY_KEY = {spec.key: spec for spec in SPECS}

REFERENCES = [
    "unet-transposed: 31.0M, the count usually quoted for the classic 64-1024 U-Net with transposed "
    "convolutions (Ronneberger et al., 2015, report none themselves)",
    "unetpp: 9.04M, UNet++ at widths 32-512 (Zhou et al., DLMIA 2018)",
    "unet3p: 26.97M, UNet 3+ at widths 64-1024 (Huang et al., ICASSP 2020)",
    "pspnet: 48.98M, mmsegmentation's pspnet_r50-d8 for 19 classes with its auxiliary head, counted from its "
    "config (no paper count): its ResNetV1c deep stem has 19,232 more parameters than torchvision's, and its "
    "global-pooling branch has BatchNorm (+512) where ours has a bias",
]


# ------------------------------------------------------------------ measurements (worker side)


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (a no-op on CPU), so that timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def status_kib(name: str) -> int:
    """A ``VmRSS``/``VmHWM``-style field of /proc/self/status, in KiB."""
    for line in STATUS.read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{STATUS}: no {name} field")


def release_free_heap() -> None:
    """Hand memory freed to glibc's heap back to the OS, so that the resident set holds live memory only."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure may then include some freed memory
        logger.debug("malloc_trim unavailable")


def cpu_peak_growth(step: Callable[[], None]) -> Optional[int]:
    """Bytes by which the resident set's high-water mark rises above the current RSS while ``step`` runs.

    None (after running ``step``) where /proc/self/clear_refs cannot reset the mark (not Linux).
    """
    release_free_heap()
    try:
        CLEAR_REFS.write_text("5")  # 5: reset the high-water mark to the current RSS
    except OSError:
        step()
        return None
    before = status_kib("VmRSS")
    step()
    return (status_kib("VmHWM") - before) * 1024


def peak_growth(step: Callable[[], None], device: torch.device) -> Optional[int]:
    """Peak memory ``step`` uses above what was in use before it: RSS on CPU, allocated bytes on CUDA."""
    if device.type != "cuda":
        return cpu_peak_growth(step)
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def cpu_wait_us() -> Optional[int]:
    """Microseconds during which some runnable task waited for a CPU (Linux PSI "some" total), or None."""
    try:
        first_line = CPU_PRESSURE.read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(first_line.rsplit("total=", 1)[1])


def timed_runs(step: Callable[[], None], device: torch.device, repeats: int,
               budget: float) -> Tuple[List[float], Optional[float]]:
    """Seconds of each run of ``step`` (``repeats`` runs, fewer once ``budget`` seconds are spent, at least
    one) and the share of that time during which some runnable task waited for a CPU (None without PSI)."""
    times: List[float] = []
    waited_before = cpu_wait_us()
    while not times or (len(times) < repeats and sum(times) < budget):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    waited_after = cpu_wait_us()
    if waited_before is None or waited_after is None:
        return times, None
    return times, (waited_after - waited_before) / 1e6 / sum(times)


def forward_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """An evaluation forward pass without autograd."""
    def step() -> None:
        with torch.no_grad():
            model(x)
    return step


def train_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """Forward + backward of the mean of every output (deep supervision, CGM and auxiliary logits); gradients
    then dropped."""
    def step() -> None:
        outputs = model(x)
        extra: List[torch.Tensor] = []
        if isinstance(outputs, ClassGuidedOutput):
            outputs, extra = outputs.logits, [outputs.cls_logits]
        elif isinstance(outputs, AuxiliaryOutput):
            outputs, extra = outputs.logits, [outputs.aux_logits]
        outputs = outputs if isinstance(outputs, list) else [outputs]
        loss = sum(out.float().mean() for out in outputs + extra)
        loss.backward()
        model.zero_grad(set_to_none=True)
    return step


def forward_gflops(model: nn.Module, x: torch.Tensor) -> float:
    """FLOPs (a multiply-add = 2) of one evaluation forward pass on ``x``, in billions."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 1e9


def params_used_in_eval(model: nn.Module, x: torch.Tensor) -> int:
    """Parameters the evaluation forward pass reaches (those that get a gradient from its output)."""
    model.eval()
    model(x).float().mean().backward()
    used = sum(p.numel() for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    return used


def measure(spec: Spec, size: int, batch: int, repeats: int, budget: float,
            device: torch.device) -> Dict[str, Any]:
    """Every figure of one row; memory comes from the warm-up runs, so call it in a fresh process."""
    torch.manual_seed(0)
    model = MODELS.build(spec.model, **spec.kwargs).to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    result: Dict[str, Any] = {"params": sum(p.numel() for p in model.parameters())}

    model.eval()
    step = forward_step(model, x)
    result["fwd_peak"] = peak_growth(step, device)  # also the warm-up
    result["fwd_times"], result["fwd_cpu_wait"] = timed_runs(step, device, repeats, budget)
    if not spec.eval_only:
        model.train()
        step = train_step(model, x)
        result["train_peak"] = peak_growth(step, device)
        result["train_times"], result["train_cpu_wait"] = timed_runs(step, device, repeats, budget)
    result["gflops"] = forward_gflops(model, x[:1])
    if spec.eval_only:
        result["used_params"] = params_used_in_eval(model, x[:1])
    return result


def worker(args: argparse.Namespace) -> None:
    """Measure ``args.worker`` and print its figures (or its error) as one JSON line."""
    torch.set_num_threads(args.threads)
    try:
        result = measure(SPECS_BY_KEY[args.worker], args.size, args.batch, args.repeats, args.budget,
                         torch.device(args.device))
    except Exception as exc:  # reported in the model's row; the other rows still run
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ------------------------------------------------------------------ driver and table


def run_in_subprocess(key: str, args: argparse.Namespace, device: str) -> Dict[str, Any]:
    """The worker's result for ``key`` from a fresh interpreter; a crash or timeout becomes an error entry."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", key, "--size", str(args.size),
               "--batch", str(args.batch), "--repeats", str(args.repeats), "--budget", str(args.budget),
               "--threads", str(args.threads), "--device", device]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s (raise --timeout)"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    stderr = done.stderr.strip().splitlines()
    return {"error": f"worker exited with status {done.returncode}: {stderr[-1] if stderr else 'no output'}"}


def describe(spec: Spec) -> str:
    """The registry call that builds ``spec``, as inline code."""
    arguments = ", ".join(f"{name}={value!r}" for name, value in spec.kwargs.items())
    return f"`{spec.model}({arguments})`"


def throughput(times: Optional[List[float]], batch: int) -> str:
    """Images/s of the median run, or a dash when not measured."""
    return f"{batch / statistics.median(times):.2f}" if times else "—"


def mebibytes(value: Optional[int]) -> str:
    """Bytes as MiB, or n/a when unknown."""
    return "n/a" if value is None else f"{value / 2 ** 20:,.0f}"


def reference_cells(spec: Spec, params: int) -> List[str]:
    """The paper's count (M) and the relative difference of ours, or dashes."""
    if spec.paper_params_m is None:
        return ["—", "—"]
    delta = (params / 1e6 - spec.paper_params_m) / spec.paper_params_m
    return [f"{spec.paper_params_m:.2f}", f"{delta:+.2%}"]


def timing_note(result: Dict[str, Any], kind: str) -> str:
    """How many timed runs a measurement got, and the CPU wait share during them when known."""
    wait = result.get(f"{kind}_cpu_wait")
    runs = len(result[f"{kind}_times"])
    return f"{runs} run{'s' if runs > 1 else ''}" + ("" if wait is None else f", CPU wait {wait:.0%}")


def notes(spec: Spec, result: Dict[str, Any]) -> str:
    """Timed-run counts, CPU wait and, for pruned UNet++, the parameters its evaluation forward uses."""
    forward = "fwd: " + timing_note(result, "fwd")
    if spec.eval_only:
        return (f"{forward}; eval fast mode, {result['used_params'] / 1e6:.2f}M params used "
                "(training runs the full network)")
    return f"{forward}; fwd+bwd: {timing_note(result, 'train')}"


def table_row(spec: Spec, result: Dict[str, Any], batch: int) -> List[str]:
    """The cells of ``spec``'s row; an error fills the figures with dashes and the notes with its message."""
    if "error" in result:
        message = " ".join(str(result["error"]).split()).replace("|", "\\|")[:300]
        return [spec.key, describe(spec)] + ["—"] * 9 + [f"error: {message}"]
    params = result["params"]
    return [spec.key, describe(spec), f"{params:,}", f"{params / 1e6:.2f}", *reference_cells(spec, params),
            f"{result['gflops']:.1f}", throughput(result["fwd_times"], batch),
            throughput(result.get("train_times"), batch), mebibytes(result["fwd_peak"]),
            mebibytes(result["train_peak"]) if "train_peak" in result else "—", notes(spec, result)]


def render_table(rows: List[List[str]], args: argparse.Namespace) -> str:
    """The markdown table: a header naming the input size and batch, then one line per row."""
    s, b = args.size, args.batch
    header = ["model", "configuration", "params", "params (M)", "paper (M)", "Δ vs paper",
              f"GFLOPs fwd 1×3×{s}×{s}", f"fwd img/s (b{b})", f"fwd+bwd img/s (b{b})",
              f"peak fwd MiB (b{b})", f"peak fwd+bwd MiB (b{b})", "notes"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def method_notes(args: argparse.Namespace, device: str, seconds: float) -> str:
    """Markdown bullets stating how every column was measured."""
    memory = ("growth of the process's resident-set high-water mark (VmHWM) during the warm-up call, "
              "fresh process per model" if device == "cpu" else
              "torch.cuda.max_memory_allocated above the bytes allocated before the warm-up call")
    lines = [
        f"torch {torch.__version__}, device {device}, {args.threads} CPU threads, input {args.batch}×3×"
        f"{args.size}×{args.size}, 1 output channel (unless the configuration sets out_channels); median of "
        f"up to {args.repeats} timed runs (fewer once {args.budget:g} s are spent) after one warm-up run.",
        "GFLOPs: torch.utils.flop_counter.FlopCounterMode, eval forward of one image; a multiply-add "
        "counts 2 FLOPs; convolutions and matrix products only.",
        f"Peak memory: {memory}; fwd+bwd includes gradients and saved activations.",
        "fwd+bwd: training mode, loss = mean of every output (deep supervision, CGM and auxiliary heads included), "
        "no optimizer step.",
        "CPU wait (notes): share of the timed runs' wall time during which some runnable task waited for a "
        "CPU (Linux PSI /proc/pressure/cpu); well above 0% means other processes competed for the cores "
        "(or --threads exceeds them) and the throughput is understated.",
        "Paper counts: " + "; ".join(REFERENCES) + ".",
        f"Whole run: {seconds / 60:.1f} min.",
    ]
    return "\n".join(f"- {line}" for line in lines)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=list(SPECS_BY_KEY), default=list(SPECS_BY_KEY),
                   metavar="KEY", help=f"configurations to run (default all): {', '.join(SPECS_BY_KEY)}")
    p.add_argument("--size", type=int, default=256, help="input height and width")
    p.add_argument("--batch", type=int, default=4, help="batch size of the timed and memory runs")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (at most)")
    p.add_argument("--budget", type=float, default=10.0,
                   help="seconds of timed runs after which a measurement stops early (at least one run)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--quick", action="store_true", help="one timed run per measurement")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before a model's process is stopped")
    p.add_argument("--worker", choices=list(SPECS_BY_KEY), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.size, args.batch, args.repeats, args.threads) < 1:
        p.error("--size, --batch, --repeats and --threads must be at least 1")
    if args.quick:
        args.repeats = 1
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    rows, run_start = [], time.perf_counter()
    for key in args.models:
        start = time.perf_counter()
        result = run_in_subprocess(key, args, device)
        logger.info("%s: %.0f s%s", key, time.perf_counter() - start, " (error)" if "error" in result else "")
        rows.append(table_row(SPECS_BY_KEY[key], result, args.batch))
    print(render_table(rows, args))
    print()
    print(method_notes(args, device, time.perf_counter() - run_start))


if __name__ == "__main__":
    main()
