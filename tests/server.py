"""`amfrec serve` as a real process on a free loopback port, for the load and browser tests."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(run: Path, max_queue: int = 32, timeout: float = 120.0) -> Iterator[str]:
    """Start `amfrec serve --run RUN` on 127.0.0.1; yield its base URL once /health answers; stop it after."""
    port = free_port()
    argv = [sys.executable, "-m", "amfrec.cli", "-q", "serve", "--run", str(run), "--port", str(port),
            "--max-queue", str(max_queue)]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"amfrec serve exited with {proc.returncode}: {proc.stdout.read().decode()}"
                )
            try:
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("amfrec serve did not answer /health in time")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
