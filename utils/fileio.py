"""Atomic file writes: a temp file in the target folder, then ``os.replace``.

A crash or Ctrl-C mid-write leaves either the old file or the new one, never
a truncated file. The written file gets the permissions of any other new file
(``0o666 & ~umask``), not the 0600 that ``tempfile.mkstemp`` gives its temp file,
so results on a shared server stay readable by the group as the umask allows.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Union

from utils.errors import DiskError


def _umask() -> int:
    """The process umask, read per call (tests and launchers may change it)."""
    # /proc (Linux >= 4.7) reads it without changing it; os.umask get-and-restore is the
    # fallback, briefly setting the strict 0o077 so other threads' files are never looser.
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o077)
    os.umask(old)
    return old


def _file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: ``0o666 & ~umask``."""
    return 0o666 & ~_umask()


@contextmanager
def atomic_open(path: Union[str, Path], mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            os.chmod(tmp, _file_mode())  # mkstemp makes 0600
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """A temp file name beside ``path`` for writers that take a file name, not a handle.

    The temp name keeps ``path``'s suffix (some writers check it). On success
    the file is flushed to disk and replaces ``path``; on an exception it is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode())  # after the writer, which may have re-created the file
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_failure(path: Union[str, Path], exc: OSError) -> DiskError:
    """The DiskError for a write of ``path`` that failed with ``exc``: what happened and the fix."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what, fix = "the disk is full", "free some space or write to another disk"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what, fix = "no permission to write there", "choose a writable folder"
    elif exc.errno in (errno.ENOTDIR, errno.EEXIST):
        what, fix = "a file stands where a folder is needed", "remove that file or choose another folder"
    else:
        what, fix = "the write failed", "check the disk and the folder"
    return DiskError(f"cannot write {path}: {what} ({exc.strerror or exc}); {fix}. "
                     "No partial file was left, and the file there before, if any, is unchanged")


def write_text(path: Union[str, Path], text: str) -> Path:
    """Write ``text`` atomically; a failed write raises DiskError."""
    try:
        with atomic_open(path, "w") as fh:
            fh.write(text)
    except OSError as exc:
        raise write_failure(path, exc) from exc
    return Path(path)


def write_json(path: Union[str, Path], obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")
