"""What the tests of a running API process share: a JSON call and a wait."""
import json
import time
import urllib.error
import urllib.request


def call(base, method, path, data=None):
    """(status, JSON body) of one request; a photo in ``data`` goes as the raw body."""
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "image/jpeg"} if data else {})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_until(condition, seconds: float, what: str):
    """``condition()``'s first true value, asked every half second (a refused connection is a no)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"not within {seconds} s: {what}")
