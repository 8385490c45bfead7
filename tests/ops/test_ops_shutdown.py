"""SIGTERM on a real server process: stop accepting, finish in-flight streams, 503 the queue, abort past the drain."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil

from tests.conftest import LiveServer, stop_server
from tests.ops.conftest import CHAT, log_lines, start_scripted_server


class Stream(threading.Thread):
    """One streaming chat request read to its end (or until the server cuts it)."""

    def __init__(self, server: LiveServer, request_id: str) -> None:
        super().__init__(daemon=True)
        self.server, self.request_id = server, request_id
        self.status = 0
        self.first = threading.Event()
        self.events: list[str] = []
        self.body: dict = {}
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", f"{self.server.v1}/chat/completions", json={**CHAT, "stream": True},
                              headers={"x-request-id": self.request_id}, timeout=60) as response:
                self.status = response.status_code
                if response.status_code != 200:
                    response.read()
                    self.body = response.json()
                    self.headers = response.headers
                    return
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[6:])
                        self.first.set()
        except httpx.HTTPError as exc:
            self.error = exc
        finally:
            self.first.set()

    @property
    def complete(self) -> bool:
        return bool(self.events) and self.events[-1] == "[DONE]"


def refused(server: LiveServer) -> bool:
    """No new connection is served: refused, or (uvloop, a connect racing the listener's close) reset unanswered."""
    try:
        httpx.get(f"{server.base_url}/health", timeout=1)
    except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
        return True
    return False


def test_sigterm_drains_streams_and_refuses_the_rest(tmp_path: Path) -> None:
    gate = tmp_path / "let-the-streams-go-on"
    server = start_scripted_server(tmp_path, {
        "OPS_CHUNKS": "30", "OPS_DELAY_S": "0.01", "OPS_GATE_FILE": str(gate),  # held after the first chunk
        "MSSERVE_DRAIN_TIMEOUT_S": "30", "MSSERVE_MAX_CONCURRENT_REQUESTS": "2", "MSSERVE_MAX_WAITING_REQUESTS": "4",
    })
    try:
        running = [Stream(server, f"run-{i}") for i in range(2)]
        for stream in running:
            stream.start()
            stream.first.wait(10)
        queued = Stream(server, "queued")
        queued.start()
        deadline = time.monotonic() + 5
        while httpx.get(f"{server.base_url}/metrics").text.find("msserve_server_queue_depth 1.0") < 0:
            assert time.monotonic() < deadline, "the third request never queued"
            time.sleep(0.05)
        server.process.send_signal(signal.SIGTERM)
        queued.join(10)
        assert queued.status == 503 and queued.body["error"]["code"] == "server_draining"
        assert queued.headers["retry-after"] == "1"
        deadline = time.monotonic() + 5
        while not refused(server):  # the listening socket closes at once
            assert time.monotonic() < deadline, "still accepting connections after SIGTERM"
            time.sleep(0.05)
        # The streams are held by the gate, so they are in flight now whatever the machine's speed; once let go,
        # they must run to their end although SIGTERM came in the middle.
        assert all(stream.is_alive() and len(stream.events) <= 2 for stream in running)
        gate.touch()
        for stream in running:
            stream.join(30)
            assert stream.status == 200 and stream.error is None and stream.complete
            assert len(stream.events) == 1 + 30 + 1 + 1  # role, 30 deltas, finish, [DONE]
        assert server.process.wait(30) == 0
    finally:
        stop_server(server)
    outcomes = {line["request_id"]: (line["status"], line["outcome"]) for line in log_lines(server)}
    assert outcomes["run-0"] == outcomes["run-1"] == (200, "ok")
    assert outcomes["queued"] == (503, "error")
    assert "draining" in server.log()


def test_streams_past_the_drain_timeout_are_aborted(tmp_path: Path) -> None:
    server = start_scripted_server(tmp_path, {"OPS_CHUNKS": "2000", "OPS_DELAY_S": "0.05",  # 100 s per stream
                                              "MSSERVE_DRAIN_TIMEOUT_S": "1"})
    try:
        streams = [Stream(server, f"long-{i}") for i in range(2)]
        for stream in streams:
            stream.start()
            stream.first.wait(10)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0  # the streams wanted 100 s more
        for stream in streams:
            stream.join(10)
            assert stream.status == 200 and not stream.complete  # cut off: no [DONE]
    finally:
        stop_server(server)
    lines = {line["request_id"]: line for line in log_lines(server)}
    assert lines["long-0"]["outcome"] == lines["long-1"]["outcome"] == "aborted"
    assert "timeout graceful shutdown exceeded" in server.log()


def test_sigterm_while_the_engine_loads_exits_at_once_and_stops_what_the_load_started(tmp_path: Path) -> None:
    # The load blocks a thread for 10 minutes after starting a helper process, as vLLM's start-up does.
    server = start_scripted_server(tmp_path, {"OPS_LOAD_S": "600"}, ready_path="/health")
    try:
        deadline = time.monotonic() + 30
        while (found := re.search(r"helper process (\d+)", server.log())) is None:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        helper = psutil.Process(int(found.group(1)))
        assert httpx.get(f"{server.base_url}/ready").status_code == 503  # still loading
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0  # not after the load's 600 s
        helper.wait(10)  # raises psutil.TimeoutExpired if the helper outlived the server, orphaned
        assert not helper.is_running()
    finally:
        stop_server(server)
    assert "the engine was still loading" in server.log()
