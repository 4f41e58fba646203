"""A zygote for ``test_crash.py``: one process that has imported the producer and forks an
incarnation of it on request.

    python crash_zygote.py

Starting Python and importing Trio and terraphim_actors takes about half a second, most of
the life of a producer that is killed early, and the test starts 51 of them. This program pays
for it once, then reads requests on its standard input, one JSON object a line, and answers
each with one line on its standard output:

- ``{"start": ARGUMENTS, "stderr": PATH}``: fork a child that does what
  ``python crash_producer.py ARGUMENTS`` does, its standard error written to the file ``PATH``
  and its input and output on ``/dev/null``; answer ``{"pid": PID}``.
- ``{"poll": PID}``: answer ``{"code": CODE}``, where ``CODE`` is ``null`` while the child
  runs, else its exit status as ``subprocess`` gives it (``-9`` for SIGKILL); the child is
  reaped then.
- ``{"kill": PID}``: send the child SIGKILL unless it has been reaped (a pid of ours only
  names our child until then), and answer ``{"killed": PID}``.

The zygote never blocks but on its input. At the end of its input it kills the children it has
not reaped, reaps them and exits.

Forking is sound here because the zygote is a fresh process with one thread that has only
imported modules and never ran Trio: a child starts from the state a new
``python crash_producer.py`` is in once its imports are done, and runs its own ``trio.run``
in a process of its own. What it shares with its siblings is what was fixed at the zygote's
start: the interpreter and its hash seed (``random`` is reseeded in each child).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from typing import Any, NoReturn

import crash_producer


def redirect(errors_path: str) -> None:
    """Standard error to ``errors_path``, input and output to ``/dev/null``."""
    null = os.open(os.devnull, os.O_RDWR)
    errors = os.open(errors_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(errors, 2)
    os.close(null)
    os.close(errors)


def produce(arguments: list[str], errors_path: str) -> int:
    """Run the producer as the interpreter runs a script; return its exit status."""
    try:
        redirect(errors_path)
        sys.argv = [crash_producer.__file__, *arguments]
        crash_producer.run(arguments)
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            return exit.code or 0
        print(exit.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def child(arguments: list[str], errors_path: str) -> NoReturn:
    code = 1
    try:
        code = produce(arguments, errors_path)
        sys.stderr.flush()
    finally:
        # Never back into the zygote's loop, nor through its exit handlers.
        os._exit(code)


def answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def serve() -> None:
    children: set[int] = set()
    try:
        for line in sys.stdin.buffer:
            request = json.loads(line)
            if "start" in request:
                pid = os.fork()
                if pid == 0:
                    child(request["start"], request["stderr"])
                children.add(pid)
                answer({"pid": pid})
            elif "poll" in request:
                pid, status = os.waitpid(request["poll"], os.WNOHANG)
                if pid == 0:
                    answer({"code": None})
                else:
                    children.discard(pid)
                    answer({"code": os.waitstatus_to_exitcode(status)})
            elif "kill" in request:
                if request["kill"] in children:
                    os.kill(request["kill"], signal.SIGKILL)
                answer({"killed": request["kill"]})
            else:
                raise ValueError(f"unknown request {request!r}")
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


if __name__ == "__main__":
    serve()
