"""The prediction API under load, side by side with its baseline (``bench/api_baseline.py``: the
Flask + gunicorn sync workers it replaced), on a pipeline root with a registered model:

    python bench/api.py --root out --image ../shared/data/faces/couple.jpg [--workers 2]

Each server runs alone (started, measured, stopped; never both at once on the same cores):
  * req/s, p50 and p95 at 1, 8 and 32 concurrent clients sending the photo;
  * /health latency while 8 clients predict and 1 client stalls mid-body (sends its headers and a
    sliver of a 500 KB body, then nothing).

Then the pipeline's API alone under the hostile mix (``bench/api_hostile.py``; ``--mix-only`` runs
just this): p95 of normal requests while hostile clients send thin, huge-dimension and many-face
photos, trickle their bodies, hang up, idle and send huge headers, against p95 without them.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HEALTH_GIVE_UP = 30.0  # seconds: a /health slower than this is reported as this


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, root: str, port: int, workers: int) -> subprocess.Popen:
    if kind == "pipeline":
        command = [str(Path(sys.executable).parent / "emotion-pipeline"), "serve", "--root", root,
                   "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    else:
        command = [sys.executable, "-m", "gunicorn", "--workers", str(workers), "--timeout", "300",
                   "--bind", f"127.0.0.1:{port}", "bench.api_baseline:create_app()"]
    return subprocess.Popen(command, env={**os.environ, "EMOTION_PIPELINE_ROOT": root},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def get(url: str, timeout: float = HEALTH_GIVE_UP) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def wait_ready(url: str, process: subprocess.Popen) -> None:
    in_a_row, deadline = 0, time.monotonic() + 600
    while in_a_row < 10:  # every worker loads its own model: wait until they all answer ready
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server at {url} did not start")
        try:
            in_a_row = in_a_row + 1 if get(f"{url}/health", 5) == 200 else 0
        except OSError:
            in_a_row = 0
        time.sleep(0.2 if in_a_row else 1)


def predict(url: str, body: bytes) -> float:
    started = time.perf_counter()
    request = urllib.request.Request(f"{url}/predict", data=body, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=600) as response:
        response.read()
    return time.perf_counter() - started


def load(url: str, body: bytes, clients: int, requests: int) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(pool.map(lambda _: predict(url, body), range(requests)))
    return {"rps": requests / (time.perf_counter() - started), "p50": statistics.median(latencies),
            "p95": latencies[max(0, round(0.95 * len(latencies)) - 1)]}


def health_while_busy(url: str, body: bytes, seconds: float = 20.0) -> dict:
    """/health latencies while 8 clients predict in a loop and 1 client stalls mid-body."""
    host, port = url.removeprefix("http://").split(":")
    stalled = socket.create_connection((host, int(port)))
    stalled.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                    b"Content-Length: 500000\r\n\r\n" + b"\xff" * 1000)
    stop = threading.Event()

    def keep_predicting() -> None:
        while not stop.is_set():
            predict(url, body)

    busy = [threading.Thread(target=keep_predicting, daemon=True) for _ in range(8)]
    for thread in busy:
        thread.start()
    time.sleep(2)  # let the predictions queue up
    latencies, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        asked = time.perf_counter()
        try:
            get(f"{url}/health")
            latencies.append(time.perf_counter() - asked)
        except OSError:  # timed out
            latencies.append(HEALTH_GIVE_UP)
        time.sleep(0.5)
    stop.set()
    stalled.close()
    for thread in busy:
        thread.join(timeout=600)
    return {"health_p50": statistics.median(latencies), "health_max": max(latencies), "samples": len(latencies)}


def measure(kind: str, root: str, body: bytes, workers: int) -> dict:
    def figures(url: str) -> dict:
        results = {clients: load(url, body, clients, max(16, 2 * clients)) for clients in (1, 8, 32)}
        return {"load": results, **health_while_busy(url, body)}
    return with_server(kind, root, workers, body, figures)


def with_server(kind: str, root: str, workers: int, body: bytes, measure_on):
    """``measure_on(url)`` on a fresh server of ``kind``, warmed up, stopped afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start(kind, root, port, workers)
    try:
        wait_ready(url, process)
        predict(url, body)  # warm-up: the first TensorFlow calls trace graphs
        return measure_on(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def measure_hostile_mix(root: str, body: bytes, workers: int) -> dict:
    try:  # python bench/api.py, or python -m bench.api
        from api_hostile import normal_latencies_under_mix
    except ImportError:
        from bench.api_hostile import normal_latencies_under_mix

    def figures(url: str) -> dict:
        calm = normal_latencies_under_mix(url, body, hostile=False)
        stormy = normal_latencies_under_mix(url, body, hostile=True)
        return {"without_mix": calm, "with_mix": stormy, "p95_ratio": stormy["p95"] / calm["p95"]}
    return with_server("pipeline", root, workers, body, figures)


def print_hostile_mix(mix: dict) -> None:
    calm, stormy = mix["without_mix"], mix["with_mix"]
    print(f"{'normal requests (4 clients)':<32} {'without the mix':>24} {'with the mix':>20} {'ratio':>7}")
    print(f"{'p50 s':<32} {calm['p50']:>24.2f} {stormy['p50']:>20.2f} {stormy['p50'] / calm['p50']:>7.2f}")
    print(f"{'p95 s':<32} {calm['p95']:>24.2f} {stormy['p95']:>20.2f} {mix['p95_ratio']:>7.2f}")
    print(f"{'answered 200 / refused 503':<32} {calm['ok']:>18} / {calm['refused']:<3} "
          f"{stormy['ok']:>14} / {stormy['refused']:<3}")
    print("hostile requests by outcome:", json.dumps(stormy["hostile"], sort_keys=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="a pipeline root with a registered model")
    parser.add_argument("--image", default="../shared/data/faces/couple.jpg")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--mix-only", action="store_true", help="only the hostile mix, not the baseline")
    args = parser.parse_args()
    body = Path(args.image).read_bytes()
    mix = measure_hostile_mix(args.root, body, args.workers)
    print_hostile_mix(mix)
    if args.mix_only:
        if args.json:
            args.json.write_text(json.dumps({"hostile_mix": mix}, indent=2))
        return
    results = {kind: measure(kind, args.root, body, args.workers) for kind in ("baseline", "pipeline")}
    base, ours = results["baseline"], results["pipeline"]
    print(f"{'measure':<32} {'baseline (Flask, sync)':>24} {'pipeline (uvicorn)':>20} {'ratio':>7}")
    for clients in (1, 8, 32):
        b, p = base["load"][clients], ours["load"][clients]
        print(f"{f'{clients} clients: req/s':<32} {b['rps']:>24.2f} {p['rps']:>20.2f} {p['rps'] / b['rps']:>7.2f}")
        print(f"{f'{clients} clients: p95 s':<32} {b['p95']:>24.2f} {p['p95']:>20.2f} {b['p95'] / p['p95']:>7.2f}")
    for key in ("health_p50", "health_max"):
        label = f"/health {key[7:]} s, 8 busy + 1 stalled"
        print(f"{label:<32} {base[key]:>24.3f} {ours[key]:>20.3f} {base[key] / max(ours[key], 1e-3):>7.1f}")
    if args.json:
        args.json.write_text(json.dumps({**results, "hostile_mix": mix}, indent=2))


if __name__ == "__main__":
    main()
