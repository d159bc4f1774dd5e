"""The real API under uvicorn on loopback: real HTTP requests (urllib, raw sockets, real curl), real
photos, every bad input, stalled, oversized, idle, abandoned and too many clients, photos that cost
too much (pixels, faces, multipart parts)."""
import http.client
import io
import json
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

from emotion_pipeline.core.config import CLASSES, detector_min_confidence
from tests.bad_inputs import giant_png_header
from tests.conftest import FACES, FLICKR, flickr_names, free_port, stop

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
LIMIT_MB = 1
READ_TIMEOUT = 3  # seconds the API gives a client to send its body
HEADER_TIMEOUT = 2  # seconds a connection has to send a request's headers
MAX_FACES = 4
MAX_WAITING = 4  # predictions waiting per worker (2 workers)
MAX_IMAGE_MPX = 16


@pytest.fixture(scope="module")
def api_log(tmp_path_factory):
    return tmp_path_factory.mktemp("api") / "api.log"


@pytest.fixture(scope="module")
def api(trained_root, api_log):
    config, _ = trained_root
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "emotion-pipeline"), "serve", "--root", config.root,
         "--port", str(port), "--host", "127.0.0.1", "--workers", "2", "--max-upload-mb", str(LIMIT_MB),
         "--read-timeout", str(READ_TIMEOUT), "--header-timeout", str(HEADER_TIMEOUT),
         "--max-faces", str(MAX_FACES), "--max-waiting", str(MAX_WAITING), "--max-image-mpx", str(MAX_IMAGE_MPX)],
        stdout=subprocess.DEVNULL, stderr=api_log.open("w"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        ready_in_a_row = 0  # each of the 2 workers loads its own model: wait until both answer ready
        while ready_in_a_row < 10:
            assert process.poll() is None, "the server exited"
            try:
                ready_in_a_row = ready_in_a_row + 1 if call(base, "GET", "/health")[0] == 200 else 0
            except OSError:
                ready_in_a_row = 0
            assert time.monotonic() < deadline, "the model did not load in time"
            time.sleep(0.2 if ready_in_a_row else 1)
        yield base
    finally:
        stop(process)


def call(base, method, path, data=None, headers=None):
    return call_with_headers(base, method, path, data, headers)[:2]


def call_with_headers(base, method, path, data=None, headers=None):
    """(status, JSON body, response headers)."""
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


def multipart(data: bytes, field="image", filename="photo.jpg"):
    boundary = "emotionboundary42"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def raw(data: bytes):
    return data, {"Content-Type": "application/octet-stream"}


def test_health_and_model(api, trained_root):
    _, results = trained_root
    status, health = call(api, "GET", "/health")
    assert status == 200 and health["status"] == "ready"
    status, model = call(api, "GET", "/model")
    assert status == 200 and model["classes"] == list(CLASSES)
    assert model["model_version"] == results["train"].model_version
    assert "model.test_macro_f1" in model["metrics"]


def test_predict_finds_faces_with_five_probabilities(api):
    photo = (FACES / "couple.jpg").read_bytes()
    status, by_upload = call(api, "POST", "/predict", *multipart(photo))
    assert status == 200 and len(by_upload["faces"]) >= 2
    threshold = detector_min_confidence(call(api, "GET", "/model")[1]["detector"])  # the trained run's own
    for face in by_upload["faces"]:
        assert set(face["probabilities"]) == set(CLASSES)
        assert abs(sum(face["probabilities"].values()) - 1) < 1e-3
        assert face["emotion"] == max(face["probabilities"], key=face["probabilities"].get)
        assert face["box"]["w"] > 50 and face["confidence"] >= threshold
    status, by_body = call(api, "POST", "/predict", *raw(photo))
    assert status == 200 and by_body == by_upload


def test_a_photo_without_faces_is_an_empty_list(api):
    buffer = io.BytesIO()
    Image.fromarray(np.full((200, 300, 3), 128, dtype=np.uint8)).save(buffer, format="JPEG")
    status, result = call(api, "POST", "/predict", *raw(buffer.getvalue()))
    assert status == 200 and result["faces"] == []


@pytest.mark.parametrize("size", [(1, 4000), (4000, 1), (1, 1)])
def test_a_photo_one_pixel_thin_is_a_photo_without_faces(api, size):
    """The issue's 102-byte 1x4000 PNG was a 500 (its scaled side rounded to 0 pixels)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 150, 120)).save(buffer, format="PNG")
    status, result = call(api, "POST", "/predict", *multipart(buffer.getvalue(), filename="thin.png"))
    assert (status, result["faces"]) == (200, []), result


def _bmp() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="BMP")
    return buffer.getvalue()


@pytest.mark.parametrize("name, request_args, expected", [
    ("no file", (b"", {}), 400),
    ("empty upload", multipart(b""), 400),
    ("not an image", raw(b"<html>not a photo</html>" * 50), 400),
    ("truncated", raw((FLICKR / flickr_names(1)[0]).read_bytes()[:3000]), 400),
    ("unsupported format", raw(_bmp()), 415),
    ("giant dimensions", raw(giant_png_header(40_000, 40_000)), 422),
])
def test_bad_input_is_a_clear_4xx(api, name, request_args, expected):
    status, body = call(api, "POST", "/predict", *request_args)
    assert status == expected, (name, body)
    assert body["error"]


def test_oversized_upload_is_refused_from_its_declared_size_before_the_body_is_sent(api):
    """Only the headers and 1 KiB of a body declared one byte over the limit go out: the API must answer
    413 from Content-Length alone (sending the whole body could meet a closed socket: EPIPE)."""
    url = urlsplit(api)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    connection.putrequest("POST", "/predict")
    connection.putheader("Content-Type", "application/octet-stream")
    connection.putheader("Content-Length", str(LIMIT_MB * 1024 * 1024 + 1))
    connection.endheaders(b"\xff" * 1024)
    response = connection.getresponse()
    assert response.status == 413
    assert json.loads(response.read())["error"]
    connection.close()


def test_concurrent_requests_are_safe(api):
    photos = [(FACES / "img2.jpg").read_bytes(), (FACES / "couple.jpg").read_bytes()]  # both under the limit
    expected = [call(api, "POST", "/predict", *raw(p))[1] for p in photos]
    with ThreadPoolExecutor(MAX_WAITING) as pool:  # never more than one worker's queue holds
        results = list(pool.map(lambda i: call(api, "POST", "/predict", *raw(photos[i % 2])), range(8)))
    for i, (status, body) in enumerate(results):
        assert status == 200
        assert body["model_version"] == expected[i % 2]["model_version"]
        got = [f["probabilities"] for f in body["faces"]]
        want = [f["probabilities"] for f in expected[i % 2]["faces"]]
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert all(abs(g[c] - w[c]) < 1e-4 for c in CLASSES)


def curl(base: str, *args: str) -> tuple[int, dict]:
    """Real curl, as the README tells users to call the API: (HTTP status, JSON body)."""
    done = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args, f"{base}/predict"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    return int(status), json.loads(body)


def test_curl_sends_the_photo_however_the_readme_says(api, tmp_path):
    """--data-binary sends a form content type (application/x-www-form-urlencoded); -F a file part;
    -F name=<file a part without a file name. All three are the photo."""
    photo = FACES / "couple.jpg"
    status, expected = call(api, "POST", "/predict", *raw(photo.read_bytes()))
    assert status == 200 and len(expected["faces"]) >= 2
    for args in (["--data-binary", f"@{photo}"], ["-F", f"image=@{photo}"], ["-F", f"image=<{photo}"],
                 ["--data-binary", f"@{photo}", "-H", "Content-Type: image/jpeg"]):
        status, body = curl(api, *args)
        assert status == 200 and body == expected, (args, body)


def test_a_chunked_upload_over_the_limit_is_413(api, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(b"\xff" * (LIMIT_MB * 1024 * 1024 + 100_000))
    status, body = curl(api, "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{big}")
    assert status == 413 and "limit" in body["error"]


def test_the_pixel_cap_is_the_apis_below_the_pipelines(api, trained_root):
    """A 60 Mpx photo the pipeline takes costs a serving worker 11-14 s: the API's cap is lower, and
    declared dimensions over it are refused before any pixel is decoded."""
    config, _ = trained_root
    cap = MAX_IMAGE_MPX * 1_000_000
    assert call(api, "GET", "/model")[1]["max_image_pixels"] == cap < config.max_image_pixels
    under = int((cap * 0.9) ** 0.5)  # declared under the cap: decoded, then corrupt
    assert call(api, "POST", "/predict", *raw(giant_png_header(under, under)))[0] == 400
    over = int((cap * 1.1) ** 0.5)  # under the pipeline's limit, over the API's
    status, body = call(api, "POST", "/predict", *raw(giant_png_header(over, over)))
    assert status == 422 and body["status"] == "too_large"


def test_stalled_clients_do_not_delay_health_and_are_cut_off(api):
    """Four clients (two per worker) send headers and a sliver of their body, then stall: /health still
    answers within a second, and each stalled client gets 408 after the read timeout."""
    url = urlsplit(api)
    stalled = []
    for _ in range(4):
        client = socket.create_connection((url.hostname, url.port), timeout=60)
        client.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                       b"Content-Length: 500000\r\n\r\n" + b"\xff" * 1000)
        stalled.append(client)
    started = time.monotonic()
    for _ in range(5):
        asked = time.monotonic()
        assert call(api, "GET", "/health")[0] == 200
        assert time.monotonic() - asked < 1.0  # the liveness bound the API promises, not a benchmark
    for client in stalled:
        answer = client.recv(4096).decode(errors="replace")
        assert answer.startswith("HTTP/1.1 408"), answer[:200]
        client.close()
    assert time.monotonic() - started < READ_TIMEOUT + 10


def face_grid(side: int) -> bytes:
    """One face photo tiled side x side: side**2 faces the detector finds."""
    face = Image.open(FACES / "img2.jpg").convert("RGB")
    face.thumbnail((240, 240))
    grid = Image.new("RGB", (face.width * side, face.height * side))
    for i in range(side * side):
        grid.paste(face, ((i % side) * face.width, (i // side) * face.height))
    buffer = io.BytesIO()
    grid.save(buffer, format="JPEG")
    return buffer.getvalue()


def test_faces_per_photo_are_capped_at_the_largest(api):
    """An 8x8 grid of one face cost 64 ResNet50 passes (34.5 s) while every other prediction waited."""
    status, body = call(api, "POST", "/predict", *raw(face_grid(3)))
    assert status == 200 and len(body["faces"]) == MAX_FACES and body["faces_found"] > MAX_FACES, body


def test_a_full_queue_is_503_with_retry_after_and_nothing_else_fails(api):
    """16 clients at once on 2 workers that each run 1 and queue MAX_WAITING: the rest are told when
    to come back, at once, instead of waiting behind everyone."""
    face = Image.open(FACES / "img2.jpg").convert("RGB")
    face.thumbnail((320, 320))  # quick to predict: the admitted ones are done soon
    buffer = io.BytesIO()
    face.save(buffer, format="JPEG")
    photo = buffer.getvalue()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: call_with_headers(api, "POST", "/predict", *raw(photo)), range(16)))
    statuses = sorted(status for status, _, _ in results)
    assert set(statuses) == {200, 503} and statuses.count(200) <= 2 * (1 + MAX_WAITING), statuses
    for status, body, headers in results:
        if status == 503:
            assert int(headers["Retry-After"]) >= 1 and "retry" in body["error"]


def test_work_of_clients_that_left_is_dropped(api, api_log):
    """Eight clients send a many-face photo and hang up once the first prediction is answered: the
    predictions of the others are dropped (waiting ones at once, a running one between its steps)
    instead of running to the end. Which worker takes which connection is the kernel's choice, and how
    fast a prediction runs is the machine's, so the test counts what it can see: a client answered
    before it left (refused 503, or done) logs no drop; of the others, every one but the (at most one
    per worker) running ones must be dropped. Hanging up after a fixed time failed both ways: after
    0.3 s on a loaded machine uvicorn had not always read every request (an unread request starts no
    work and logs no drop); after 1 s on a fast machine five of eight had been answered."""
    photo = face_grid(3)
    url = urlsplit(api)
    before = api_log.read_text().count("dropped a prediction")
    clients = []
    for _ in range(8):
        client = socket.create_connection((url.hostname, url.port), timeout=60)
        client.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(photo) + photo)
        clients.append(client)
    answered = answered_until_one_prediction_is_done(clients, deadline=time.monotonic() + 60)
    unanswered = len(clients) - len(answered)
    for client in clients:
        client.close()
    must_drop = unanswered - 2  # two workers: at most two were running and may have finished
    assert must_drop >= 2, f"only {unanswered} of 8 requests were still waiting when the first was done"
    deadline = time.monotonic() + 60
    while api_log.read_text().count("dropped a prediction") - before < must_drop and time.monotonic() < deadline:
        time.sleep(0.5)
    assert api_log.read_text().count("dropped a prediction") - before >= must_drop, api_log.read_text()[-3000:]
    assert call(api, "POST", "/predict", *raw((FACES / "img2.jpg").read_bytes()))[0] == 200


def answered_until_one_prediction_is_done(clients: list[socket.socket], deadline: float) -> set[socket.socket]:
    """The clients the server answered, waiting until one answer is a finished prediction (200): by
    then the event loops, idle while predictions run in threads, have read every request sent."""
    answered: set[socket.socket] = set()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([c for c in clients if c not in answered], [], [], 0.05)
        for client in ready:
            answered.add(client)
            if client.recv(12).startswith(b"HTTP/1.1 200"):
                return answered
    return answered


def raw_exchange(base: str, request: bytes, timeout: float = 30) -> bytes:
    """What the server answers to raw request bytes; b"" when it closes the connection (or resets it)."""
    url = urlsplit(base)
    with socket.create_connection((url.hostname, url.port), timeout=timeout) as client:
        try:
            client.sendall(request)
            return client.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            return b""


def test_a_huge_header_is_refused(api):
    """httptools took a 50 MB header (+123 MB, /health stalled): h11 refuses past 32 KiB."""
    answer = raw_exchange(api, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n")
    assert not answer.startswith(b"HTTP/1.1 200"), answer[:100]
    assert call(api, "GET", "/health")[0] == 200


def test_idle_and_trickling_connections_are_closed(api):
    """Connections that send no request, or a header byte at a time, are closed after the header
    timeout: they cannot pile up until every client is refused."""
    url = urlsplit(api)
    idle = [socket.create_connection((url.hostname, url.port), timeout=HEADER_TIMEOUT + 10) for _ in range(20)]
    trickling = socket.create_connection((url.hostname, url.port), timeout=HEADER_TIMEOUT + 10)
    trickling.sendall(b"GET /health HTTP/1.1\r\n")
    started = time.monotonic()
    closed = False
    while not closed and time.monotonic() - started < HEADER_TIMEOUT + 10:
        try:
            trickling.sendall(b"X")
            time.sleep(0.3)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
    assert closed, "a connection trickling its headers was held"
    for client in idle:
        try:
            assert client.recv(100) == b""  # closed by the server, nothing sent
        except ConnectionResetError:
            pass
        client.close()
    assert call(api, "GET", "/health")[0] == 200


def test_a_multipart_body_of_many_parts_is_refused(api):
    """A body of 126k parts was parsed on the event loop (/health stalled 5.6 s): parts are capped."""
    body, headers = multipart((FACES / "img2.jpg").read_bytes())
    boundary = b"emotionboundary42"
    filler = b"".join(b"--%s\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\nx\r\n" % (boundary, i)
                      for i in range(2000))
    status, answer = call(api, "POST", "/predict", filler + body, headers)
    assert status == 400 and "parts" in answer["error"], answer


def test_media_types_are_case_insensitive(api):
    photo = (FACES / "couple.jpg").read_bytes()
    body, headers = multipart(photo)
    mixed_case = headers["Content-Type"].replace("multipart/form-data", "Multipart/Form-Data")
    status, answer = call(api, "POST", "/predict", body, {"Content-Type": mixed_case})
    assert status == 200 and answer == call(api, "POST", "/predict", *raw(photo))[1]


def test_a_wrong_method_is_405_with_allow(api):
    status, body, headers = call_with_headers(api, "GET", "/predict")
    assert status == 405 and "POST" in headers["Allow"] and body["error"]
