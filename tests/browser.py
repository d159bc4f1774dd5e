"""A real headless Chromium (Debian's) driven over the DevTools protocol: wait for text, screenshot.

Pages like Streamlit's render in the browser over a websocket, so one-shot `--dump-dom` can catch an
empty shell; here we poll the rendered text in real time instead.
"""
from __future__ import annotations

import base64
import io
import itertools
import json
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import free_port, stop

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--remote-allow-origins=*", "--window-size=1280,1600"]


class Browser:
    def __init__(self, profile: Path) -> None:
        from websockets.sync.client import connect

        port = free_port()
        self.process = subprocess.Popen(
            ["chromium", *FLAGS, f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=2) as response:
                    pages = [t for t in json.loads(response.read()) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                stop(self.process)
                raise TimeoutError("chromium did not open its DevTools port")
            time.sleep(0.3)
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.ids = itertools.count(1)

    def call(self, method: str, **params):
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=120))
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def open(self, url: str, texts: list[str], timeout: float = 120) -> str:
        """Navigate and wait until every one of ``texts`` is rendered; returns the page's text."""
        self.call("Page.navigate", url=url)
        return self.wait_for(texts, timeout)

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def count(self, selector: str) -> int:
        """How many elements match a CSS selector now."""
        return self.evaluate(f"document.querySelectorAll({json.dumps(selector)}).length")

    def upload(self, selector: str, path: Path, timeout: float = 60) -> None:
        """Put a file into the file input that matches ``selector``, as choosing it in the dialog does."""
        deadline = time.monotonic() + timeout
        while not self.count(selector):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {selector} on the page")
            time.sleep(0.5)
        document = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=document, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", files=[str(path)], nodeId=node)

    def wait_for(self, texts: list[str], timeout: float = 120) -> str:
        """Wait until every one of ``texts`` is rendered (or the timeout); returns the page's text."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.evaluate("document.body ? document.body.innerText : ''") or ""
            if all(t in text for t in texts) or time.monotonic() > deadline:
                return text
            time.sleep(1)

    def screenshot(self, out: Path) -> np.ndarray:
        time.sleep(2)  # let images and charts finish drawing
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"])
        out.write_bytes(data)
        return np.asarray(Image.open(io.BytesIO(data)).convert("L"))

    def close(self) -> None:
        self.ws.close()
        stop(self.process)
