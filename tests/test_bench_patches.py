"""Smoke test of bench/patches.py: tiny images end to end, every line printed with the returned figures.

Only the structure is checked (timings depend on the machine and its load), never a value or an order.
"""
from __future__ import annotations

import re

from bench.patches import main


def test_bench_patches_prints_loader_model_and_ratio(capsys) -> None:
    figures = main(["--images", "2", "--size", "96", "--patch", "32", "--batch", "4", "--batches", "2",
                    "--steps", "1", "--threads", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert set(figures) == {"loader", "model", "ratio"}
    assert lines[0] == "2 images of 96 px, 32 px patches, batch 4, 1 threads, 0 loader workers, model unet"
    loader = re.fullmatch(r"patch loader: +([0-9]+\.[0-9]) samples/s", lines[1])
    model = re.fullmatch(r"model train: +([0-9]+\.[0-9]) samples/s", lines[2])
    ratio = re.fullmatch(r"ratio loader / model: ([0-9]+\.[0-9]{2})  \(target >= 2\)", lines[3])
    assert loader and model and ratio, lines
    assert float(loader.group(1)) == round(figures["loader"], 1)
    assert float(ratio.group(1)) == round(figures["ratio"], 2)
