"""Load benchmark: N concurrent users each make M /report calls against a running app.

    python -m train.evaluation.load_benchmark [--url http://127.0.0.1:7860/] [--users 32] [--calls 3]

Prints p50 and p95 latency and the error count. Without --url it starts `python app.py`
itself on a free port and stops it afterwards.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from train import REPO

EXAMPLES = REPO / "lesion_app" / "examples"


def run_load(url: str, users: int = 32, calls: int = 3) -> dict:
    """Returns {"latencies": [...], "errors": [...], "wall": s}; one Client per user."""
    from gradio_client import Client, handle_file
    images = sorted((EXAMPLES / "images").glob("*.jpg"))
    latencies, errors, lock = [], [], threading.Lock()

    def user(u: int):
        try:
            client = Client(url, verbose=False)
        except Exception as e:  # noqa: BLE001 - every failure is counted, not raised
            with lock:
                errors.extend([f"user {u}: connect: {e}"] * calls)
            return
        for c in range(calls):
            t = time.perf_counter()
            try:
                r = client.predict(handle_file(str(images[(u + c) % len(images)])), 30 + u, "female",
                                   "back", api_name="/report")
                assert abs(sum(r["fusion"]["probabilities"].values()) - 1) < 1e-3
                with lock:
                    latencies.append(time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001
                with lock:
                    errors.append(f"user {u} call {c}: {e}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=user, args=(u,)) for u in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"latencies": latencies, "errors": errors, "wall": time.perf_counter() - t0}


def start_app() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    t0 = time.time()
    while time.time() - t0 < 120:
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("app did not start within 120 s")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url")
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--calls", type=int, default=3)
    a = p.parse_args(argv)
    proc, url = (None, a.url) if a.url else start_app()
    try:
        r = run_load(url, a.users, a.calls)
    finally:
        if proc:
            proc.terminate()
    lat = sorted(r["latencies"])
    p95 = lat[max(0, int(round(0.95 * len(lat))) - 1)] if lat else float("nan")
    print(f"{a.users} users x {a.calls} calls: {len(lat)} ok, {len(r['errors'])} errors, "
          f"wall {r['wall']:.1f} s")
    if lat:
        print(f"latency p50 {statistics.median(lat):.2f} s, p95 {p95:.2f} s, max {lat[-1]:.2f} s")
    for e in r["errors"][:5]:
        print("error:", e)
    return 1 if r["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
