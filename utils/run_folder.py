"""The run folder ``<train.checkpoint_dir>/<experiment>/``: never overwritten by accident.

* :func:`check_run_folder` (before anything is built): a folder that already
  holds a trained run (``last.pt`` or ``best.pt``) is refused unless the user
  says ``--resume`` (continue it) or ``--overwrite`` (start again, replacing
  it); a file where the folder should be fails naming ``train.checkpoint_dir``.
* :func:`open_run_folder` (once the start checks have passed): removes the
  old run's files on ``--overwrite``, creates the folder and deletes temp
  files that a killed write left behind.
* :func:`removed_if_failed`: a start that fails leaves no folder it created.
* :func:`most_recent_best`: the ``best.pt`` of the newest run, for a bare ``python test.py``.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Iterator, List, Optional

from utils.errors import CheckpointError, ConfigError, UserError

log = logging.getLogger("train")

#: Files whose presence means a run has trained there.
TRAINED_FILES = ("last.pt", "best.pt")
#: What a run writes (``--overwrite`` removes these; caches such as class_stats.json stay).
RUN_FILES = ("last.pt", "best.pt", "config.yaml", "metrics.json", "train.log", "plan.json")
#: Temp files of the atomic writers (utils/fileio.py): ``.<name>.<random>.tmp[<suffix>]``.
TEMP_PATTERN = ".*.tmp*"


def check_run_folder(run_dir: Path, resume: Optional[str], overwrite: bool, source: str) -> None:
    """Raise a clear error unless a run may start in ``run_dir`` as asked."""
    for folder in (run_dir, *run_dir.parents):
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{source}: train.checkpoint_dir: {folder} is a file, not a folder; move the "
                              "file away or set train.checkpoint_dir to a folder")
    if resume is not None and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: give only one of them")
    trained = [name for name in TRAINED_FILES if (run_dir / name).exists()]
    if trained and resume is None and not overwrite:
        raise UserError(f"{run_dir} already holds a trained run ({', '.join(trained)}); continue it with "
                        "--resume, start again with --overwrite (replaces it), or name a new run with "
                        "--set experiment=NAME")


def open_run_folder(run_dir: Path, overwrite: bool) -> None:
    """Create ``run_dir``; with ``overwrite`` remove the previous run's files; delete leftover temp files."""
    if overwrite and run_dir.is_dir():
        removed = [path for path in _run_files(run_dir) if _remove(path)]
        if removed:
            log.warning("--overwrite: removed the previous run's %s", ", ".join(p.name for p in removed))
    run_dir.mkdir(parents=True, exist_ok=True)
    for path in run_dir.glob(TEMP_PATTERN):
        if path.is_file() and _remove(path):
            log.info("removed %s, left by a write that was killed half-way", path)


def _run_files(run_dir: Path) -> List[Path]:
    files = [run_dir / name for name in RUN_FILES if (run_dir / name).exists()]
    return files + sorted(run_dir.glob("events.out.tfevents.*"))


def _remove(path: Path) -> bool:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    return True


@contextlib.contextmanager
def removed_if_failed(run_dir: Path, enabled: bool = True) -> Iterator[None]:
    """Remove ``run_dir`` if the block fails with a user error, the folder did not exist before it and
    no checkpoint was written (a real bug keeps the folder and its train.log for the traceback)."""
    existed = run_dir.exists()
    try:
        yield
    except UserError:
        trained = any((run_dir / name).exists() for name in TRAINED_FILES)
        if enabled and not existed and run_dir.is_dir() and not trained:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def most_recent_best(checkpoint_dir: Path) -> Path:
    """The newest ``<checkpoint_dir>/*/best.pt`` by modification time (``last.pt`` files are not considered:
    they may be a run cut short); CheckpointError saying what to do when there is none."""
    found = [path for path in Path(checkpoint_dir).glob("*/best.pt") if path.is_file()]
    if not found:
        raise CheckpointError(f"no --config/--checkpoint given and no trained run in {checkpoint_dir}/ (no "
                              f"{Path(checkpoint_dir) / '*' / 'best.pt'}): train first (python train.py --config "
                              "configs/demo.yaml) or pass --config CONFIG / --checkpoint PATH")
    return max(found, key=lambda path: (path.stat().st_mtime, str(path)))
