"""Smoke test of bench/sliding3d.py: a tiny volume end to end, every line printed.

Only the structure is checked (every label, the tile count, a number in each
place, the printed numbers being the returned ones), never a timing's value.
"""
from __future__ import annotations

import re

import torch

from bench.sliding3d import main

NUMBER = r"([0-9]+\.[0-9]{3})"  # every timing is printed with 3 decimals


def test_bench_sliding3d_prints_every_line(capsys) -> None:
    threads = torch.get_num_threads()
    figures = main(["--size", "8", "24", "24", "--tile", "8", "16", "16", "--base-channels", "2", "--depth", "2",
                    "--device", "cpu", "--repeats", "1", "--threads", str(threads), "--mirror"])
    assert torch.get_num_threads() == threads  # restored
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert set(figures) == {"raw", "slide", "ratio", "window_alone", "mirror"}

    # Header: the settings, and the tiles the window cuts (z at 0; y and x at 0, 8).
    assert lines[0].startswith("unet 3D (base_channels 2, depth 2, instance norm), 2 classes, amp off, on cpu, ")
    assert ("volume 1 x 1 x 8 x 24 x 24, tile 8 x 16 x 16, overlap 0.5: 4 tiles in 2 passes of <= 2; "
            "fastest of 1") in lines[0]

    def line(pattern: str) -> re.Match:
        found = re.search(pattern, out, flags=re.M)
        assert found is not None, (pattern, out)
        return found

    raw = line(rf"^raw forward of the same tiles: +{NUMBER} s$")
    slide = line(rf"^sliding window \(volume on cpu\): +{NUMBER} s$")
    ratio = line(rf"^ratio sliding / raw: {NUMBER}  \(target <= 1\.2\)$")
    alone = line(rf"^the window without the model \(replayed logits\): {NUMBER} s = ([0-9]+\.[0-9])% of raw$")
    mirror = line(rf"^sliding window \+ mirroring over z, y, x \(8 passes\): {NUMBER} s = ([0-9]+\.[0-9]{{2}}) x "
                  r"the plain window$")
    for found, key in ((raw, "raw"), (slide, "slide"), (ratio, "ratio"), (alone, "window_alone"),
                       (mirror, "mirror")):
        assert float(found.group(1)) == round(figures[key], 3)  # what is printed is what main returns
    assert len(lines) == 6
