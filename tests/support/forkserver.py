"""A process that has already imported mailmag and forks a fresh ``mailmag serve`` on demand.

Started as ``python -m tests.support.forkserver`` with the service's environment. Each line
``serve`` on its standard input forks a child that runs the console script's own ``main()``
as ``mailmag serve`` (settings, engine, app and listener all made in the child) and answers
the child's pid on standard output. Children are reaped by the kernel (SIGCHLD ignored), so
a caller that kills one with SIGKILL knows it is gone when its pid no longer exists.

Why: an exec'd ``mailmag serve`` spends about 1.5 s importing FastAPI, SQLAlchemy and the
rest before it serves, which limited the durability test to a few dozen kills. A forked
child is the same program in a process of its own; what it acknowledged survives a SIGKILL
only if it reached the store, which is what the test proves.
"""

from __future__ import annotations

import os
import signal
import sys

import uvicorn.lifespan.on
import uvicorn.loops.auto
import uvicorn.protocols.http.auto  # noqa: F401  (imported here so children need not)

from subscriptions import cli


def serve_forever() -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    for line in sys.stdin:
        if line.strip() != "serve":
            continue
        pid = os.fork()
        if pid == 0:
            quiet = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(quiet, fd)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            sys.argv = ["mailmag", "serve"]
            try:
                cli.main()
            finally:
                os._exit(0)
        sys.stdout.write(f"{pid}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve_forever()
