"""The hostile mix for ``bench/api.py``: what one careless or hostile client sends, beside the normal
load, all on loopback and bounded (a fixed number of normal requests; the hostile clients stop with
them).

Hostile clients, each in its own loop until the normal requests are done:
  * thin: a 1x4000 PNG (its detection copy once rounded to 0 px wide);
  * huge: a 2 KB WebP declaring 7745x7745 (60 Mpx: 11-14 s and 1.4 GB to decode before the cap);
  * many faces: an 8x8 grid of one face (64 faces: 34.5 s of ResNet50 before the cap);
  * slow: headers and a sliver of the body, then a byte a second;
  * abandoned: a many-face photo, hung up after 0.2 s;
  * idle: 50 connections that send nothing;
  * huge header: a 1 MB header line.
"""
from __future__ import annotations

import io
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

NORMAL_CLIENTS = 4
NORMAL_REQUESTS = 40
FACE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces" / "img2.jpg"


def encoded(image: Image.Image, kind: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return buffer.getvalue()


def hostile_photos() -> dict[str, bytes]:
    face = Image.open(FACE).convert("RGB")
    face.thumbnail((160, 160))
    grid = Image.new("RGB", (face.width * 8, face.height * 8))
    for i in range(64):
        grid.paste(face, ((i % 8) * face.width, (i // 8) * face.height))
    return {"thin": encoded(Image.new("RGB", (1, 4000), "gray"), "PNG"),
            "huge": encoded(Image.new("RGB", (7745, 7745), "white"), "WEBP"),
            "many_faces": encoded(grid, "JPEG")}


def post(url: str, body: bytes, timeout: float = 600) -> tuple[int, float]:
    """(status, seconds) of one prediction; status 0 when the connection failed."""
    started = time.perf_counter()
    request = urllib.request.Request(f"{url}/predict", data=body, method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
    except OSError:
        status = 0
    return status, time.perf_counter() - started


def raw_client(url: str, payload: bytes, then, timeout: float = 60) -> str:
    """Sends ``payload`` on a fresh connection, runs ``then(sock)``; the outcome in a word."""
    host, port = url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(payload)
            return then(sock)
    except OSError as err:
        return type(err).__name__


def status_line(sock: socket.socket) -> str:
    answer = sock.recv(64)
    return answer.split(b" ")[1].decode() if answer.startswith(b"HTTP/") else "closed"


def hostile_loops(url: str, stop: threading.Event, outcomes: Counter) -> list[threading.Thread]:
    photos = hostile_photos()
    many = photos["many_faces"]

    def post_head(body: bytes, length: int | None = None) -> bytes:
        return (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                % (length or len(body)) + body)

    def trickle(sock: socket.socket) -> str:
        while not stop.is_set():
            sock.sendall(b"\xff")
            time.sleep(1)
            sock.setblocking(False)
            try:
                return status_line(sock)
            except BlockingIOError:
                sock.setblocking(True)
        return "stopped"

    def hang_up(sock: socket.socket) -> str:
        time.sleep(0.2)
        return "hung_up"

    def idle(sock: socket.socket) -> str:
        return "closed" if sock.recv(1) == b"" else "answered"

    kinds = {
        "thin": lambda: str(post(url, photos["thin"])[0]),
        "huge": lambda: str(post(url, photos["huge"])[0]),
        "many_faces": lambda: str(post(url, many)[0]),
        "slow": lambda: raw_client(url, post_head(b"\xff" * 100, 500_000), trickle),
        "abandoned": lambda: raw_client(url, post_head(many), hang_up),
        "huge_header": lambda: raw_client(url, b"GET /health HTTP/1.1\r\nX: " + b"a" * 1_000_000 + b"\r\n\r\n",
                                          status_line),
    }

    def loop(kind: str, run) -> None:
        while not stop.is_set():
            outcomes[f"{kind}:{run()}"] += 1

    threads = [threading.Thread(target=loop, args=item, daemon=True) for item in kinds.items()]
    threads += [threading.Thread(target=lambda: outcomes.update([f"idle:{raw_client(url, b'', idle)}"]),
                                 daemon=True) for _ in range(50)]
    return threads


def normal_latencies_under_mix(url: str, body: bytes, hostile: bool) -> dict:
    """p50/p95 of NORMAL_REQUESTS predictions of ``body`` by NORMAL_CLIENTS clients, with the hostile
    clients running beside them when ``hostile``."""
    stop, outcomes = threading.Event(), Counter()
    threads = hostile_loops(url, stop, outcomes) if hostile else []
    for thread in threads:
        thread.start()
    time.sleep(2 if hostile else 0)  # let the mix get going
    with ThreadPoolExecutor(NORMAL_CLIENTS) as pool:
        results = list(pool.map(lambda _: post(url, body), range(NORMAL_REQUESTS)))
    stop.set()
    for thread in threads:
        thread.join(timeout=90)
    latencies = sorted(seconds for status, seconds in results if status == 200)
    return {"p50": statistics.median(latencies), "p95": latencies[max(0, round(0.95 * len(latencies)) - 1)],
            "ok": len(latencies), "refused": sum(status == 503 for status, _ in results),
            "other": sorted(status for status, _ in results if status not in (200, 503)),
            "hostile": dict(outcomes)}
