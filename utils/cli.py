"""The command-line start-up every entry point shares.

* :func:`add_config_arguments`: ``--config``, ``--set KEY=VALUE ...`` (repeatable:
  every group applies, in order) and ``--debug``;
* :func:`setup_logging`: log lines to stderr and, once the run folder exists, to a file;
* :func:`guarded`: the one place where a :class:`~utils.errors.UserError` becomes one
  ``ERROR`` line and exit status 2 (the traceback only with ``--debug``); a real
  bug keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import logging.handlers
import sys
from pathlib import Path
from typing import Callable, List

from utils.errors import UserError, one_line

#: Exit status of a user's mistake (bad config, data, path, checkpoint, full disk).
EXIT_USER_ERROR = 2
#: Exit status after Ctrl-C (128 + SIGINT), as a shell reports it.
EXIT_INTERRUPTED = 130

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_OURS = "_segkit_handler"  # marks the handlers setup_logging installed, so a second call replaces only them


def add_config_arguments(parser: argparse.ArgumentParser, config_required: bool = True) -> None:
    """``--config``, repeatable ``--set`` and ``--debug`` on ``parser``."""
    parser.add_argument("--config", required=config_required, help="experiment YAML, e.g. configs/demo.yaml")
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override config keys, e.g. --set train.epochs=3 data.root=/data/x; may be "
                             "given several times, applied in order (a repeated key keeps its last value)")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of errors in the config, data or checkpoints too")


def setup_logging(level: int = logging.INFO, buffer: bool = False) -> None:
    """Log lines to stderr. With ``buffer``, records are also kept in memory until
    :func:`log_to_file` names the file they belong in (the run folder is created
    only once the start checks pass, so its log still holds the start)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _OURS, False)]:  # from an earlier call
        root.removeHandler(handler)
        handler.close()
    handlers: List[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if buffer:
        handlers.append(logging.handlers.MemoryHandler(capacity=100_000, flushLevel=logging.CRITICAL + 1))
    for handler in handlers:  # other handlers (pytest's log capture) are left in place
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        setattr(handler, _OURS, True)
        root.addHandler(handler)
    root.setLevel(level)


def log_to_file(log_file: Path) -> None:
    """Append every further log record to ``log_file``, after the records buffered so far."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    setattr(handler, _OURS, True)
    root = logging.getLogger()
    for buffered in [h for h in root.handlers if isinstance(h, logging.handlers.MemoryHandler)]:
        buffered.setTarget(handler)
        buffered.flush()
        root.removeHandler(buffered)
        buffered.close()
    root.addHandler(handler)


def guarded(body: Callable[[], int], log: logging.Logger, debug: bool = False) -> int:
    """Run an entry point's ``body``; a user's mistake becomes one ERROR line and exit status 2."""
    try:
        return body()
    except UserError as exc:
        if debug:
            log.exception("%s", one_line(exc))
        else:
            log.error("%s", one_line(exc))
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        log.error("interrupted")
        return EXIT_INTERRUPTED

