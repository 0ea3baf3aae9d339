"""Smoke test of bench/augment3d.py: tiny shapes end to end, every line printed with the returned figures.

Only the structure is checked (timings depend on the machine and its load), never a value or an order.
"""
from __future__ import annotations

import re

from bench.augment3d import PIPELINE, main
from tests.test_transforms_nnunet import default_pipeline


def test_bench_pipeline_is_the_documented_default() -> None:
    assert PIPELINE == default_pipeline()


def test_bench_augment3d_prints_speeds_and_one_row_per_transform(capsys) -> None:
    figures = main(["--volume", "1", "6", "8", "8", "--image", "3", "16", "16", "--samples", "2", "--calls", "1",
                    "--repeats", "1", "--threads", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert set(figures) == {"3d", "2d"}
    assert lines[0] == "nnU-Net default augmentations, 1 threads, 2 samples per shape"
    volume = re.fullmatch(r"3D \(1, 6, 8, 8\) +([0-9]+\.[0-9]) samples/s", lines[1])
    image = re.fullmatch(r"2D \(3, 16, 16\) +([0-9]+\.[0-9]) samples/s", lines[2])
    assert volume and image, lines
    assert float(volume.group(1)) == round(figures["3d"], 1) and float(image.group(1)) == round(figures["2d"], 1)
    assert re.fullmatch(r"transform, forced to act +3D ms +2D ms", lines[3])
    rows = lines[4:]
    assert len(rows) == len(PIPELINE)
    for row, spec in zip(rows, PIPELINE):
        assert re.fullmatch(re.escape(spec["name"]) + r"\(.*\) +[0-9]+\.[0-9]{2} +[0-9]+\.[0-9]{2}", row), row
