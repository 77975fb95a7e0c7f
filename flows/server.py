"""Run a command against one temporary Prefect server: ``python -m flows.server dvc repro``.

Every DVC stage is its own process, and a flow run with no ``PREFECT_API_URL`` starts (and stops)
a temporary Prefect server of its own: about 10 s per stage on a 2-core machine. ``make run``
starts one server for the whole pipeline instead, on 127.0.0.1 and a free port, hands its address
to the command in ``PREFECT_API_URL``, and stops it when the command ends (also on Ctrl-C or a
failed stage); the flow runs are kept in the usual Prefect database (``PREFECT_HOME``).

With ``PREFECT_API_URL`` already set (a server of your own), the command runs against it, unchanged.
The exit status is the command's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

STARTUP_TIMEOUT_S = 90  # Prefect's own 20 s default is too tight on a loaded 2-core machine (first start 17-23 s seen here)


def run_with_server(command: list[str]) -> int:
    if not command:
        raise SystemExit("usage: python -m flows.server COMMAND [ARGS...]   e.g. python -m flows.server dvc repro")
    if os.environ.get("PREFECT_API_URL"):
        return subprocess.call(command)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    timeout = int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", STARTUP_TIMEOUT_S))
    server.start(timeout=max(timeout, STARTUP_TIMEOUT_S))
    child = None

    def forward(signum, _frame):  # a SIGTERM (CI, a scheduler) goes to the command, then the server stops
        if child is not None and child.poll() is None:
            child.send_signal(signum)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        child = subprocess.Popen(command, env={**os.environ, "PREFECT_API_URL": server.api_url})
        try:
            return child.wait()
        except KeyboardInterrupt:  # the command got the Ctrl-C too: let it finish its own clean-up (DVC's lock)
            return child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()


if __name__ == "__main__":
    sys.exit(run_with_server(sys.argv[1:]))
