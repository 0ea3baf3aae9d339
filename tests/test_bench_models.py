"""Smoke test of bench/models.py: one tiny configuration end to end, through its worker process."""
from __future__ import annotations

from bench.models import SPECS_BY_KEY, main
from utils.registry import MODELS


def test_unet_row_reports_the_exact_parameter_count(capsys) -> None:
    main(["--models", "unet", "--size", "64", "--batch", "1", "--repeats", "1", "--quick"])
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("| unet |")]
    assert len(rows) == 1, lines
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert not cells[-1].startswith("error"), cells[-1]

    spec = SPECS_BY_KEY["unet"]
    expected = sum(p.numel() for p in MODELS.build(spec.model, **spec.kwargs).parameters())
    assert int(cells[2].replace(",", "")) == expected
    assert cells[3] == f"{expected / 1e6:.2f}"
    gflops, fwd, train, fwd_mib, train_mib = (float(c.replace(",", "")) for c in cells[6:11])
    assert gflops > 0 and fwd > 0 and train > 0
    assert train_mib >= fwd_mib >= 0  # a training step keeps activations the forward pass frees
