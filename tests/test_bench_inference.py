"""Smoke test of bench/inference.py: a tiny image end to end, every line and row printed.

The figures are timings: their values depend on the machine and its load, so
only the structure is checked (every label, the tile count, a number in each
place, the printed numbers being the returned ones), never a value or an order.
"""
from __future__ import annotations

import re

import torch

from bench.inference import main

NUMBER = r"([0-9]+\.[0-9]{3})"  # every timing is printed with 3 decimals
MODES = ("whole", "slide", "whole + flip h", "slide + flip h")  # on the CPU: no "stitched on cpu" row


def test_bench_inference_prints_every_line_and_row(capsys) -> None:
    threads = torch.get_num_threads()
    figures = main(["--size", "24", "40", "--tile", "16", "16", "--base-channels", "4", "--classes", "3",
                    "--device", "cpu", "--repeats", "1", "--threads", str(threads)])
    assert torch.get_num_threads() == threads  # restored
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert set(figures) == {"raw", "ratio", "window_alone", *MODES}

    # Header: the settings, and the tiles the window cuts (rows at 0, 8; columns at 0, 8, 16, 24).
    assert lines[0].startswith("unet (base_channels 4), 3 classes, amp off, on cpu, ")
    assert "batch 1 x 3 x 24 x 40, tile 16 x 16, overlap 0.5: 8 tiles in 2 passes of <= 4; fastest of 1" in lines[0]

    def line(pattern: str) -> re.Match:
        found = re.search(pattern, out, flags=re.M)
        assert found is not None, (pattern, out)
        return found

    raw = line(rf"^raw forward of the same tiles: +{NUMBER} s$")
    slide = line(rf"^sliding window \(image on cpu\): +{NUMBER} s$")
    ratio = line(rf"^ratio sliding / raw: {NUMBER}  \(target <= 1\.2\)$")
    alone = line(rf"^the window without the model \(replayed logits\): {NUMBER} s = ([0-9]+\.[0-9])% of raw$")
    # What is printed is what main returns, rounded as printed.
    assert float(raw.group(1)) == round(figures["raw"], 3)
    assert float(slide.group(1)) == round(figures["slide"], 3)
    assert float(ratio.group(1)) == round(figures["ratio"], 3)
    assert float(alone.group(1)) == round(figures["window_alone"], 3)

    # The table: its header, then one row per mode, in order, each with two numbers.
    table = lines.index("| mode | s / call | img/s |")
    assert lines[table + 1] == "|---|---:|---:|"
    rows = lines[table + 2:]
    assert [row.split(" | ")[0].lstrip("| ") for row in rows] == list(MODES), rows
    for mode, row in zip(MODES, rows):
        found = re.fullmatch(rf"\| {re.escape(mode)} \| {NUMBER} \| ([0-9]+\.[0-9]{{3}}) \|", row)
        assert found is not None, (mode, row)
        assert float(found.group(1)) == round(figures[mode], 3)
