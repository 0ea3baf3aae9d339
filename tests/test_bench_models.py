"""Smoke test of bench/models.py: one tiny configuration end to end, through its worker process.

Counts are checked against independent values (parameters, convolution FLOPs);
timings and memory depend on the machine, its load and the allocator, so their
cells are only checked to be printed as numbers.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from bench.models import SPECS_BY_KEY, main
from utils.registry import MODELS


def conv_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of the convolutions of one forward pass on ``x``, counted with hooks: each output element of a
    Conv2d takes (in_channels / groups) * kh * kw multiply-adds of 2 FLOPs (bias, norms, activations,
    pooling and interpolation not counted)."""
    total = 0

    def count(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        total += 2 * output.numel() * module.weight[0].numel()

    other = [type(m).__name__ for m in model.modules() if isinstance(m, (nn.Linear, nn.ConvTranspose2d, nn.Conv3d))]
    assert not other, f"the hand count covers Conv2d only, the model also has {other}"
    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    return total


def test_unet_row_reports_the_exact_counts(capsys) -> None:
    main(["--models", "unet", "--size", "64", "--batch", "1", "--repeats", "1", "--quick"])
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("| unet |")]
    assert len(rows) == 1, lines
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert len(cells) == 12 and not cells[-1].startswith("error"), cells

    spec = SPECS_BY_KEY["unet"]
    model = MODELS.build(spec.model, **spec.kwargs)
    expected = sum(p.numel() for p in model.parameters())
    assert int(cells[2].replace(",", "")) == expected
    assert cells[3] == f"{expected / 1e6:.2f}"
    assert cells[4:6] == ["—", "—"]  # no paper count for this configuration
    assert cells[6] == f"{conv_flops(model, torch.zeros(1, 3, 64, 64)) / 1e9:.1f}"
    # Throughputs (images/s) and peak memory (MiB, or n/a where /proc/self/clear_refs is unavailable): numbers.
    for cell in cells[7:9]:
        assert re.fullmatch(r"[0-9]+\.[0-9]{2}", cell), cells
    for cell in cells[9:11]:
        assert re.fullmatch(r"-?[0-9][0-9,]*|n/a", cell), cells
    assert re.fullmatch(r"fwd: 1 run(, CPU wait [0-9]+%)?; fwd\+bwd: 1 run(, CPU wait [0-9]+%)?", cells[11]), cells
