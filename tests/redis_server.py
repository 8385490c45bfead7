"""A real ``redis-server`` for tests: its own process on a free loopback port, nothing on disk that outlives it.

``make test`` installs the Debian package (scripts/install_test_deps.sh). A machine without it fails the tests
that need it, loudly: shared-state behaviour is never skipped.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"
REDIS_SERVER = "redis-server"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _ping(port: int, timeout_s: float = 0.5) -> bool:
    """One inline PING over a raw socket (no client library: this also checks the test's own redis-py install)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """``redis-server --port N --bind 127.0.0.1``, no persistence, its working folder under ``directory``."""

    def __init__(self, directory: Path, *, ready_timeout_s: float = 10.0) -> None:
        binary = shutil.which(REDIS_SERVER) or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                                 else None)
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `bash scripts/install_test_deps.sh` "
                               "(apt-get install redis-server), as `make test` does")
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = _free_port()
        self.log_path = directory / f"redis-{self.port}.log"
        command = [binary, "--port", str(self.port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no",
                   "--dir", str(directory), "--logfile", str(self.log_path), "--daemonize", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout_s
        while not _ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
                raise RuntimeError(f"redis-server did not answer PING on port {self.port}:\n{log}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None and _ping(self.port)

    def stop(self) -> None:
        """SIGTERM and wait (it exits at once: nothing to save)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL: Redis goes away mid-run, as a crashed or partitioned store would."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
