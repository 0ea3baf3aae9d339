"""Run an entry script (train.py, test.py) with faults injected at chosen events, for end-to-end tests.

    python tests/entry_faults.py [FAULT OPTIONS] -- train.py --config x.yaml --set train.epochs=3

Everything before ``--`` is this wrapper's own options; after it come the
script's path and its arguments. The wrapper installs the requested faults
(patches of torch or the standard library, in this process), then runs the
script in this same process with ``runpy`` as ``__main__``, ``sys.argv`` and
``sys.path[0]`` set as ``python <script> <args>`` would set them; its exit
status is the script's.

Faults (each an option, a function installing it, and a line in ``install``):

``--sigint-at-step N``
    Ctrl-C right after the N-th optimizer step of the run (counted over every
    optimizer, from 1): SIGINT goes to this process's group when this process
    leads one (start it with ``start_new_session=True``, as a terminal does for
    a command), so data-loader workers get it too, else to this process only.
``--disk-full-at-save K``
    The K-th checkpoint save, and every later one, finds the disk full: its
    writes fail with ENOSPC after the first 4 KiB, as a real full disk would
    fail half-way through a file.
``--nan-loss-at-step N``
    From the N-th optimizer step on (counted from 1), the loss is NaN.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import runpy
import signal
import sys
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple


def parse_args(argv: List[str]) -> Tuple[argparse.Namespace, List[str]]:
    """The wrapper's options (before ``--``) and the script's command line (after it)."""
    p = argparse.ArgumentParser(prog="entry_faults.py", usage="%(prog)s [FAULT OPTIONS] -- SCRIPT [ARGS ...]",
                                description="Run SCRIPT with faults injected (see the module docstring).")
    p.add_argument("--sigint-at-step", type=int, metavar="N", help="Ctrl-C after the N-th optimizer step")
    p.add_argument("--disk-full-at-save", type=int, metavar="K", help="the disk is full from the K-th save on")
    p.add_argument("--nan-loss-at-step", type=int, metavar="N", help="the loss is NaN from the N-th step on")
    if "--" not in argv:
        p.error("put -- between the fault options and the script to run")
    split = argv.index("--")
    args = p.parse_args(argv[:split])
    command = argv[split + 1:]
    if not command:
        p.error("no script after --")
    if args.sigint_at_step is not None and args.sigint_at_step < 1:
        p.error("--sigint-at-step must be at least 1")
    return args, command


# ----------------------------------------------------------------- faults


def sigint_at_step(n: int) -> None:
    """Send SIGINT (like Ctrl-C) once the N-th optimizer step has returned."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    steps = 0

    def after_step(optimizer: object, args: object, kwargs: object) -> None:
        nonlocal steps
        steps += 1
        if steps == n:
            if os.getpgrp() == os.getpid():
                os.killpg(os.getpgrp(), signal.SIGINT)
            else:
                os.kill(os.getpid(), signal.SIGINT)

    register_optimizer_step_post_hook(after_step)


class _FullDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes have been written."""

    def __init__(self, fh: Any, room: int) -> None:
        self.fh, self.room = fh, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.fh.write(bytes(data)[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.fh.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)


def disk_full_at_save(k: int) -> None:
    """From the K-th ``save_checkpoint`` on, the checkpoint file's writes fail half-way with ENOSPC."""
    import utils.checkpoint as checkpoint

    real_open = checkpoint.atomic_open
    saves = 0

    @contextlib.contextmanager
    def atomic_open(path: Any, mode: str = "w") -> Iterator[Any]:
        nonlocal saves
        saves += 1
        with real_open(path, mode) as fh:
            yield _FullDisk(fh, 4096) if saves >= k else fh

    checkpoint.atomic_open = atomic_open


def nan_loss_at_step(n: int) -> None:
    """From the N-th optimizer step on, the training loss is NaN."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    import utils.losses as losses

    steps = 0

    def after_step(optimizer: object, args: object, kwargs: object) -> None:
        nonlocal steps
        steps += 1

    register_optimizer_step_post_hook(after_step)
    real_forward = losses.CombinedLoss.forward

    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        loss, terms = real_forward(self, *args, **kwargs)
        return (loss * float("nan"), terms) if steps + 1 >= n else (loss, terms)

    losses.CombinedLoss.forward = forward


def install(args: argparse.Namespace) -> None:
    """Install every fault asked for."""
    if args.sigint_at_step is not None:
        sigint_at_step(args.sigint_at_step)
    if args.disk_full_at_save is not None:
        disk_full_at_save(args.disk_full_at_save)
    if args.nan_loss_at_step is not None:
        nan_loss_at_step(args.nan_loss_at_step)


# ----------------------------------------------------------------- run


def main(argv: Optional[List[str]] = None) -> None:
    args, (script, *script_args) = parse_args(sys.argv[1:] if argv is None else argv)
    install(args)
    sys.argv = [script, *script_args]
    sys.path[0] = str(Path(script).resolve().parent)  # where `python script` looks first, not tests/
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
