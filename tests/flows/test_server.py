"""flows.server: one temporary Prefect server for a whole command (make run's dvc repro)."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # starts a Prefect server

PROBE = ("import os, httpx; url = os.environ['PREFECT_API_URL']; "
         "print(url, httpx.get(url + '/health', timeout=10).status_code)")


def test_the_command_sees_a_running_server_which_is_gone_after(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    out = subprocess.run([sys.executable, "-m", "flows.server", sys.executable, "-c", PROBE], env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    url, status = out.stdout.split()[-2:]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/api") and status == "200"
    import httpx
    try:
        httpx.get(url + "/health", timeout=2)
        raise AssertionError(f"{url} still answers after the command ended")
    except httpx.TransportError:
        pass


def test_the_exit_status_is_the_commands_and_a_given_server_is_used_as_it_is():
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # nothing listens: no server is started for it
    out = subprocess.run([sys.executable, "-m", "flows.server", sys.executable, "-c",
                          "import os, sys; print(os.environ['PREFECT_API_URL']); sys.exit(3)"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and out.stdout.strip() == "http://127.0.0.1:9/api"
    usage = subprocess.run([sys.executable, "-m", "flows.server"], capture_output=True, text=True, timeout=60)
    assert usage.returncode != 0 and "usage: python -m flows.server COMMAND" in usage.stderr
