"""The project's one error family for what a user can cause and fix.

Raise a :class:`UserError` subclass where the problem is found, with a message
that names the file or key, says what is wrong and how to fix it. Each entry
point (train.py, test.py, the data check, the augmentation preview) turns it
into one ``ERROR`` line and exit status 2 in one place, :func:`utils.cli.guarded`;
any other exception is a bug and keeps its traceback. ``--debug`` shows the
traceback of user errors too.

They subclass ``ValueError`` so that library callers catching ``ValueError``
for bad input keep working.
"""
from __future__ import annotations


class UserError(ValueError):
    """A mistake the user can fix: bad data, a bad path, an incompatible checkpoint, a full disk."""


class ConfigError(UserError):
    """A config or command-line problem; the message names the source, the key and the fix."""


class DataError(UserError):
    """A problem with the data on disk: missing, unpaired, unreadable or invalid files."""


class CheckpointError(UserError):
    """A checkpoint that is missing, unreadable, or does not fit the model the config asks for."""


class DiskError(UserError):
    """A file could not be written (disk full, no permission); what was there before is kept."""


class ModelInputError(UserError):
    """An input the model cannot take (channels, rank, or a side below its minimum size)."""


class TrainingDiverged(UserError):
    """The loss or the weights became NaN or Inf; the last good checkpoint is kept."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line.

    An error raised in a DataLoader worker comes back to the main process as
    ``Caught DataError in DataLoader worker process 0. Original Traceback ...``;
    the original message (the last part, after ``module.DataError: ``) is what
    the user needs, so that is what is kept.
    """
    text = str(exc)
    if "Original Traceback" in text:
        name = f"{type(exc).__module__}.{type(exc).__qualname__}: "
        at = text.rfind(name)
        if at >= 0:
            text = text[at + len(name):]
    return " ".join(text.split())
