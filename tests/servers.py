"""The real server, `python -m service`, in a child process on 127.0.0.1, for tests that need real sockets."""

import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(model_dir: Path, log_path: Path, settings: dict[str, str] | None = None, preexec_fn=None):
    """Yields {"base", "port", "pid", "log"} once /readyz answers 200; stops the server with SIGTERM after."""
    port = free_port()
    env = {**os.environ, "FER_MODEL_DIR": str(model_dir), "FER_HOST": "127.0.0.1", "FER_PORT": str(port),
           "FER_DEVICE": "cpu", "MPLCONFIGDIR": str(log_path.parent), **(settings or {})}
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "service"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=preexec_fn, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "not ready within 180 s"
            time.sleep(0.3)
        yield {"base": base, "port": port, "pid": process.pid, "log": log_path}
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
