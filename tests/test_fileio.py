"""Atomic writes: the written file's permissions follow the umask; a failed write changes nothing."""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch

from utils.checkpoint import save_checkpoint
from utils.fileio import atomic_open, atomic_path, write_json

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under a given umask, restored afterwards."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _expected(umask: int) -> int:
    return {0o022: 0o644, 0o002: 0o664}[umask]


def _temp_files(folder: Path) -> list:
    return sorted(p.name for p in folder.glob(".*.tmp*"))


def test_atomic_open_follows_the_umask(tmp_path: Path, umask: int) -> None:
    for mode, data in (("w", "text\n"), ("wb", b"\x00bytes")):
        target = tmp_path / f"out_{mode}.txt"
        with atomic_open(target, mode) as fh:
            fh.write(data)
        assert _mode(target) == _expected(umask), oct(_mode(target))
    write_json(tmp_path / "summary.json", {"a": 1})
    assert _mode(tmp_path / "summary.json") == _expected(umask)
    assert _temp_files(tmp_path) == []


def test_atomic_open_matches_a_plain_open(tmp_path: Path, umask: int) -> None:
    """The same mode as a file the process creates with a plain open()."""
    (tmp_path / "plain.txt").write_text("x")
    with atomic_open(tmp_path / "atomic.txt") as fh:
        fh.write("x")
    assert _mode(tmp_path / "atomic.txt") == _mode(tmp_path / "plain.txt")


def test_atomic_open_replacing_an_existing_file(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "config.yaml"
    target.write_text("old\n")
    os.chmod(target, 0o600)
    with atomic_open(target) as fh:
        fh.write("new\n")
    assert target.read_text() == "new\n"
    assert _mode(target) == _expected(umask)


def test_atomic_path_follows_the_umask(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "mask.png"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".png"
        tmp.write_bytes(b"png")
    assert target.read_bytes() == b"png"
    assert _mode(target) == _expected(umask), oct(_mode(target))

    # A writer that deletes and re-creates its file gets the same mode.
    target = tmp_path / "volume.nii.gz"
    with atomic_path(target) as tmp:
        tmp.unlink()
        tmp.write_bytes(b"vol")
    assert _mode(target) == _expected(umask)
    assert _temp_files(tmp_path) == []


def test_save_checkpoint_follows_the_umask(tmp_path: Path, umask: int) -> None:
    path = save_checkpoint({"epoch": 1, "model": {"w": torch.zeros(2)}}, tmp_path / "run" / "last.pt")
    assert _mode(Path(path)) == _expected(umask), oct(_mode(Path(path)))
    assert _temp_files(path.parent) == []


@pytest.mark.parametrize("mode", ["w", "wb"])
def test_failed_atomic_open_keeps_the_old_file(tmp_path: Path, mode: str) -> None:
    target = tmp_path / "metrics.json"
    old = b'{"epoch": 1}\n\x00\xff'
    target.write_bytes(old)
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_open(target, mode) as fh:
            fh.write("partial" if mode == "w" else b"partial")
            fh.flush()
            raise RuntimeError("boom")
    assert target.read_bytes() == old
    assert _temp_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_failed_atomic_path_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "per_image.csv"
    old = b"image,dice\na,0.5\n"
    target.write_bytes(old)
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["per_image.csv"]
