"""A fault-injecting HTTP proxy on loopback, in front of the GCS emulator.

``fault(n, method, path)`` decides for the n-th request: None (forward it), an HTTP status to answer
instead (429, 503, 403...), or "drop" (close the connection without an answer). Every decision is
counted, so a test can prove the faults really happened.
"""
from __future__ import annotations

import http.client
import threading
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

Fault = Callable[[int, str, str], "int | str | None"]


class FaultyProxy:
    def __init__(self, upstream: str, fault: Fault):
        self.upstream = urlsplit(upstream)
        self.fault = fault
        self.counts: Counter = Counter()
        self.faulted_methods: Counter = Counter()
        self.requests: list[tuple[str, str, object]] = []  # (method, path, decision)
        self._n = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with proxy._lock:
                    proxy._n += 1
                    decision = proxy.fault(proxy._n, self.command, self.path)
                    proxy.counts[decision or "forwarded"] += 1
                    proxy.requests.append((self.command, self.path, decision))
                    if decision:
                        proxy.faulted_methods[self.command] += 1
                if decision == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if decision:
                    payload = b'{"error": {"code": %d, "message": "injected fault"}}' % decision
                    self.send_response(decision)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                upstream.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FaultyProxy:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def client(self):
        """A google-cloud-storage client that goes through this proxy."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(project="emulator", credentials=AnonymousCredentials(),
                              client_options={"api_endpoint": self.url})
