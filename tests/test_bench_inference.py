"""Smoke test of bench/inference.py: a tiny image end to end, every figure printed and positive."""
from __future__ import annotations

import re

import torch

from bench.inference import main


def test_bench_inference_prints_its_figures(capsys) -> None:
    threads = torch.get_num_threads()
    figures = main(["--size", "24", "40", "--tile", "16", "16", "--base-channels", "4", "--classes", "3",
                    "--device", "cpu", "--repeats", "1", "--threads", str(threads)])
    assert torch.get_num_threads() == threads  # restored
    out = capsys.readouterr().out
    assert "raw forward of the same tiles:" in out and "sliding window (image on cpu):" in out
    assert "8 tiles in 2 passes of <= 4" in out  # tile rows at 0, 8; columns at 0, 8, 16, 24
    ratio = re.search(r"ratio sliding / raw: ([0-9.]+)", out)
    assert ratio is not None and float(ratio.group(1)) > 0
    assert float(ratio.group(1)) == round(figures["ratio"], 3)
    alone = re.search(r"the window without the model \(replayed logits\): ([0-9.]+) s = ([0-9.]+)% of raw", out)
    assert alone is not None and float(alone.group(1)) > 0
    for mode in ("whole", "slide", "whole + flip h", "slide + flip h"):
        row = re.search(rf"^\| {re.escape(mode)} \| ([0-9.]+) \| ([0-9.]+) \|$", out, flags=re.M)
        assert row is not None, (mode, out)
        assert float(row.group(1)) > 0 and float(row.group(2)) > 0
