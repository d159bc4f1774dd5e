"""``emotion-pipeline ui``: Airflow standalone (LocalExecutor, SQLite) with this DAG and the gpu pool."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from . import local_airflow


def start_ui(source: str, root: str, port: int, airflow_home: Path | None = None) -> int:
    home = airflow_home or local_airflow.DEFAULT_HOME
    os.environ.update({
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
        # Defaults of the trigger form's source/root fields (read when the DAG file is parsed).
        "EMOTION_PIPELINE_SOURCE": source,
        "EMOTION_PIPELINE_ROOT": root,
    })
    local_airflow.configure(home, executor="LocalExecutor")
    local_airflow.ensure_gpu_pool()
    # Parse and store the DAG now, so it is in the UI at once instead of after the next DAG scan.
    subprocess.run([sys.executable, "-m", "airflow", "dags", "reserialize"], check=True,
                   stdout=subprocess.DEVNULL)

    standalone = subprocess.Popen([sys.executable, "-m", "airflow", "standalone"], env=os.environ.copy())
    # `airflow standalone` shuts its components down on Ctrl-C only; turn a SIGTERM into one.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        url = f"http://localhost:{port}"
        if wait_until_healthy(url, standalone):
            user, password = login(home)
            print(f"\nAirflow UI: {url}/dags/{local_airflow.DAG_ID}   login: {user} / {password}\n"
                  "Trigger the DAG with the form (source, root, shard size, detector, ...).", flush=True)
        return standalone.wait()
    except KeyboardInterrupt:
        standalone.send_signal(signal.SIGINT)
        try:
            return standalone.wait(timeout=60)
        except subprocess.TimeoutExpired:
            standalone.kill()
            return standalone.wait()


def wait_until_healthy(url: str, process: subprocess.Popen, timeout: float = 180) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            time.sleep(1)
    return False


def login(home: Path) -> tuple[str, str]:
    """The admin password ``airflow standalone`` generated (SimpleAuthManager's password file)."""
    passwords = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
    user = next(iter(passwords))
    return user, passwords[user]
