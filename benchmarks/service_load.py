"""The HTTP service under load and abuse: many clients, good and bad requests, slow senders and a model reload.

    .venv/bin/python benchmarks/service_load.py [--model data/models] [--requests 2000] [--clients 8]
        [--max-mb 1] [--out benchmarks/results/service_load.md]

Starts ``uniadc serve-api`` on 127.0.0.1 as its own process (as a line runs it), waits for ``/health``, then
``--clients`` threads send ``--requests`` requests in all, a fixed seeded mix: good PNG images of the demo's test
set, corrupt bytes (a PNG header and noise: 422 expected), bodies over the limit (413), a wrong content type (415),
and slow clients that send a good image in five pieces 50 ms apart (200 expected). Halfway through, ``POST
/reload`` swaps the model while requests are in flight. Reports the status counts per kind, the latency of the
good requests (p50 / p99, one connection per request, so connection set-up is included), the server's resident
memory after a warm-up and at the end, and whether every good request got a 200 and every bad one a 4xx.
Run it alone: the server and the clients share the two cores.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uniadc_core.io import write_text  # noqa: E402

MIX = (("good", 0.65), ("corrupt", 0.1), ("oversized", 0.1), ("wrong type", 0.05), ("slow", 0.1))
EXPECTED = {"good": 200, "corrupt": 422, "oversized": 413, "wrong type": 415, "slow": 200}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def send(port: int, kind: str, png: bytes, limit: int, rng: random.Random) -> tuple[int, float]:
    """(status, seconds) of one request of ``kind``; status 0 when the connection failed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start = time.perf_counter()
    try:
        if kind == "slow":
            conn.putrequest("POST", "/predict")
            conn.putheader("Content-Type", "image/png")
            conn.putheader("Content-Length", str(len(png)))
            conn.endheaders()
            step = -(-len(png) // 5)
            for i in range(0, len(png), step):
                conn.send(png[i:i + step])
                time.sleep(0.05)
        else:
            body, ctype = {
                "good": (png, "image/png"),
                "corrupt": (b"\x89PNG\r\n\x1a\n" + rng.randbytes(2000), "image/png"),
                "oversized": (b"\0" * (limit + 1), "image/png"),
                "wrong type": (png, "text/plain"),
            }[kind]
            conn.request("POST", "/predict", body=body, headers={"Content-Type": ctype})
        answer = conn.getresponse()
        answer.read()
        return answer.status, time.perf_counter() - start
    except (OSError, http.client.HTTPException):
        return 0, time.perf_counter() - start
    finally:
        conn.close()


def wait_ready(port: int, proc: subprocess.Popen, seconds: float = 300) -> None:
    end = time.time() + seconds
    while time.time() < end:
        if proc.poll() is not None:
            sys.exit(f"the service exited with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.5)
    sys.exit("the service did not answer /health in time")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "data/models"))
    p.add_argument("--images", default=str(ROOT / "data/raw/demo"), help="a folder searched for *.png test images")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--max-mb", type=float, default=1.0)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/service_load.md"))
    a = p.parse_args()
    if not Path(a.model).is_dir():
        sys.exit(f"{a.model}: no models folder; run `make run` first (or pass --model)")
    pngs = [f.read_bytes() for f in sorted(Path(a.images).rglob("*.png")) if "test" in f.parts and "mask" not in f.name][:50]
    if not pngs:
        sys.exit(f"{a.images}: no test PNG images found")
    limit = int(a.max_mb * 1024 * 1024)
    uniadc = shutil.which("uniadc") or str(Path(sys.executable).with_name("uniadc"))
    proc = subprocess.Popen([uniadc, "serve-api", "--model", a.model, "--port", str(a.port), "--max-mb", str(a.max_mb)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_ready(a.port, proc)
        for png in pngs[:20]:  # warm-up: the first requests pay for lazy imports and allocator growth
            send(a.port, "good", png, limit, random.Random(0))
        rss_start = rss_mb(proc.pid)
        rng = random.Random(a.seed)
        kinds = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX], k=a.requests)
        jobs = [(i, k, pngs[i % len(pngs)]) for i, k in enumerate(kinds)]
        results: list[tuple[int, str, int, float]] = []
        lock, cursor = threading.Lock(), iter(jobs)
        reload_status: list[int] = []

        def client(seed: int) -> None:
            local = random.Random(seed)
            while True:
                with lock:
                    job = next(cursor, None)
                if job is None:
                    return
                i, kind, png = job
                if i == a.requests // 2:  # a promotion: the model is loaded again while requests run
                    threading.Thread(target=lambda: reload_status.append(reload(a.port))).start()
                status, seconds = send(a.port, kind, png, limit, local)
                with lock:
                    results.append((i, kind, status, seconds))

        samples: list[tuple[int, float]] = []  # (requests answered, resident MB), every second

        def watch() -> None:
            while not done.is_set():
                samples.append((len(results), rss_mb(proc.pid)))
                done.wait(1.0)

        done = threading.Event()
        watcher = threading.Thread(target=watch)
        watcher.start()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(a.seed * 100 + c,)) for c in range(a.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        done.set()
        watcher.join()
        time.sleep(1.0)
        rss_end = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    by_kind: dict[str, dict[int, int]] = {}
    for _, kind, status, _ in results:
        by_kind.setdefault(kind, {}).setdefault(status, 0)
        by_kind[kind][status] += 1
    good = sorted(s for _, k, st, s in results if k == "good" and st == 200)
    slow = sorted(s for _, k, st, s in results if k == "slow" and st == 200)
    wrong = sum(n for k, counts in by_kind.items() for st, n in counts.items() if st != EXPECTED[k])
    five = sum(n for counts in by_kind.values() for st, n in counts.items() if st >= 500 or st == 0)

    def pct(v: list[float], q: float) -> str:
        return f"{1000 * v[min(len(v) - 1, int(q * len(v)))]:.0f}" if v else "-"

    lines = [
        "# The HTTP service under load and abuse\n",
        f"Command: `python benchmarks/service_load.py {' '.join(sys.argv[1:])}`  ",
        f"Machine: {platform.machine()}, 2 cores shared by the server and the clients; model {Path(a.model).name} "
        f"(`{a.model}`); {a.requests} requests from {a.clients} clients in {wall:.1f} s ({a.requests / wall:.1f} requests/s); "
        f"request limit {a.max_mb} MB; a reload at request {a.requests // 2}.\n",
        "| kind | requests | statuses | expected |", "|---|---|---|---|",
        *[f"| {k} | {sum(by_kind.get(k, {}).values())} | {json.dumps(dict(sorted(by_kind.get(k, {}).items())))} | {EXPECTED[k]} |"
          for k, _ in MIX],
        "",
        f"- good requests: p50 {pct(good, 0.5)} ms, p99 {pct(good, 0.99)} ms (one connection each); slow senders: p50 "
        f"{pct(slow, 0.5)} ms",
        f"- 5xx or dropped connections: {five}; answers other than expected: {wrong}",
        f"- reload during the run: status {reload_status[0] if reload_status else 'not sent'}",
        f"- server resident memory: {rss_start:.0f} MB after the warm-up, {rss_end:.0f} MB at the end; by requests answered: "
        + ", ".join(f"{n}: {mb:.0f}" for n, mb in samples[:: max(1, len(samples) // 8)]),
    ]
    print("\n".join(lines))
    write_text(a.out, "\n".join(lines) + "\n")


def reload(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", "/reload")
        answer = conn.getresponse()
        answer.read()
        return answer.status
    finally:
        conn.close()


if __name__ == "__main__":
    main()
