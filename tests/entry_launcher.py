"""Run entry points (train.py, test.py, ``-m datasets.synthetic`` ...) in forked children of one warm process.

Starting ``python train.py`` costs about 3.5 s on a 2-core machine, nearly
all of it importing torch and torchvision, and the user-error tests start it
some forty times. This server imports those once, runs no tensor operation
(so no thread pool exists to be broken by ``fork``), and then, for each
request, forks a child that runs the command exactly as ``python ARGV``
would after start-up: ``runpy`` runs the script (or module) as ``__main__``
with ``sys.argv`` and ``sys.path[0]`` set, in the requested folder, with
stdout and stderr going to one file. An uncaught exception prints its
traceback as the interpreter would and exits 1. The child's exit status and
output come back to the test.

Protocol: one JSON request per line on stdin ``{"argv": [...], "cwd": ..., "timeout": s}``,
one JSON reply per line on stdout ``{"status": int, "output": str}``.
"""
from __future__ import annotations

import json
import os
import runpy
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import IO, List

REPO = Path(__file__).resolve().parents[1]


def run_command(argv: List[str]) -> int:
    """What ``python ARGV`` does after start-up; returns the exit status."""
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(argv)
            sys.path[0] = str(Path(argv[0]).resolve().parent)
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exc:
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: BLE001 - printed as the interpreter prints it
        traceback.print_exc()
        return 1
    return 0


def child(argv: List[str], cwd: str, out: IO[bytes]) -> None:
    """In the forked child: redirect, run, flush, exit without running the parent's clean-up."""
    code = 1
    try:
        os.chdir(cwd)
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)  # the requests pipe stays the server's
        sys.stdin = open(os.devnull)
        sys.stdout = sys.__stdout__  # fd 1, now the output file
        code = run_command(argv)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve_one(argv: List[str], cwd: str, timeout: float) -> dict:
    """Fork a child for one command; its status (-9 after ``timeout``) and output."""
    with tempfile.TemporaryFile() as out:
        pid = os.fork()
        if pid == 0:
            child(argv, cwd, out)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.02)
        out.seek(0)
        return {"status": os.waitstatus_to_exitcode(status), "output": out.read().decode("utf-8", "replace")}


def main() -> None:
    sys.path.insert(0, str(REPO))
    # Warm imports only: no tensor is created here, so the children start with fresh thread pools.
    import torch  # noqa: F401
    import torchvision  # noqa: F401

    import datasets  # noqa: F401
    import datasets.check  # noqa: F401
    import models  # noqa: F401
    import train  # noqa: F401
    import utils.export  # noqa: F401
    import utils.transforms  # noqa: F401

    replies = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies on the protocol stream (children point it back at fd 1)
    replies.write(json.dumps({"ready": True}) + "\n")
    replies.flush()
    for line in sys.stdin:
        request = json.loads(line)
        reply = serve_one(request["argv"], request["cwd"], float(request.get("timeout", 300)))
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


if __name__ == "__main__":
    main()
