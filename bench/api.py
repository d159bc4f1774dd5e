"""Requests/s and latency percentiles of a running prediction API, at 1 and 8 concurrent clients.

    emotion-pipeline serve --root out --port 8080 --workers 2 &
    python bench/api.py --url http://127.0.0.1:8080 --image ../shared/data/faces/couple.jpg
"""
from __future__ import annotations

import argparse
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def one_request(url: str, body: bytes) -> float:
    started = time.perf_counter()
    request = urllib.request.Request(f"{url}/predict", data=body, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(request, timeout=300) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"status {response.status}")
    return time.perf_counter() - started


def run(url: str, body: bytes, clients: int, requests: int) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(pool.map(lambda _: one_request(url, body), range(requests)))
    wall = time.perf_counter() - started
    return {"clients": clients, "requests": requests, "rps": requests / wall,
            "p50": statistics.median(latencies), "p95": latencies[max(0, int(0.95 * len(latencies)) - 1)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--image", default="../shared/data/faces/couple.jpg")
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    body = Path(args.image).read_bytes()
    one_request(args.url, body)  # warm-up: first TF calls trace graphs
    print(f"{'clients':>7} {'requests':>8} {'req/s':>7} {'p50 s':>7} {'p95 s':>7}")
    for clients in (1, 8):
        row = run(args.url, body, clients, args.requests)
        print(f"{row['clients']:>7} {row['requests']:>8} {row['rps']:>7.2f} {row['p50']:>7.3f} {row['p95']:>7.3f}")


if __name__ == "__main__":
    main()
