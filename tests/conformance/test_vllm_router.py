"""Behind a real vllm-router (PyPI ``vllm-router``, the Rust load balancer; dev extra): three local replicas of
``msserve serve --profile tiny-mistral3`` on loopback.

- Balanced round robin; every JSON and streamed chat completion answered. The router adds vLLM's (and SGLang's)
  request fields to every body it forwards; they must be accepted.
- ``/v1/models``, the replicas' ``/ready`` and the router's own health endpoints answer through it.
- One replica killed (SIGKILL) under a steady load of JSON and streamed requests: the router's health check marks it
  unhealthy and stops sending to it, requests that reach the dead replica before that are retried on the others, and
  what is lost is only what was in flight on the killed replica. The count is printed (run with ``-s``) and recorded
  in docs/deployment.md.

vllm-router (0.1.17) retries a request whose attempt answered 408, 429, 500, 502, 503 or 504; a connection it
cannot make or that breaks before the response head turns into a 500, so that is retried too. A stream whose 200
head has gone to the client is not retried: when its replica dies the router cuts the stream.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

from server.gateway_metrics import RUNNING
from tests.conformance.schema import assert_valid
from tests.conftest import LOOPBACK, LiveServer, free_port, start_server, stop_server, wait_until_up

MODEL = "tiny-mistral3"
REQUESTS = 6
REPLICAS = 3
# The failover router: probe every second, one failed probe marks a replica unhealthy, and a request whose attempt
# fails (connection refused: a 500 from the router) is tried again, on the next replica, up to 3 attempts in all.
FAILOVER_FLAGS = (
    "--health-check-interval-secs", "1",
    "--health-failure-threshold", "1",
    "--health-check-timeout-secs", "1",
    "--retry-max-retries", "3",
    "--retry-initial-backoff-ms", "50",
    "--cb-failure-threshold", "2",
)  # fmt: skip
LOAD_THREADS = 3  # of each kind, JSON and streamed: 6 requests in flight, 2 per replica
AFTER_MARK = 12  # requests that must start, and finish, after the router marked the killed replica unhealthy
BOUND_S = 90  # the longest any of the waits below may take; none is a speed assertion


@pytest.fixture(scope="module")
def replicas(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LiveServer]]:
    folder = tmp_path_factory.mktemp("replicas")
    with ThreadPoolExecutor(REPLICAS) as pool:  # all load at once: one wait, not three
        futures = [pool.submit(start_server, folder) for _ in range(REPLICAS)]
        started = [future.result() for future in futures]
    yield started
    for server in started:
        stop_server(server)


@dataclass
class Router:
    url: str
    metrics_url: str
    log_path: Path

    def metric(self, name: str, **labels: str) -> float:
        return metric_sum(self.metrics_url, name, **labels)

    def healthy(self) -> dict[str, bool]:
        workers = httpx.get(f"{self.url}/workers", timeout=10).json()["workers"]
        return {worker["url"]: worker["is_healthy"] for worker in workers}


@contextmanager
def running_router(workers: list[LiveServer], folder: Path, *flags: str) -> Iterator[Router]:
    if importlib.util.find_spec("vllm_router") is None:
        pytest.fail(f"vllm-router is not installed in {sys.executable}: pip install -e '.[dev]'")
    port, metrics_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "vllm_router.launch_router",
        "--host", LOOPBACK, "--port", str(port),
        "--policy", "round_robin",
        "--worker-urls", *(server.base_url for server in workers),
        "--prometheus-host", LOOPBACK, "--prometheus-port", str(metrics_port),
        "--health-check-endpoint", "/ready",  # a draining or loading replica says 503 there
        *flags,
    ]  # fmt: skip
    log_path = folder / f"router-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    router = Router(f"http://{LOOPBACK}:{port}", f"http://{LOOPBACK}:{metrics_port}/metrics", log_path)
    try:
        wait_until_up(process, f"{router.url}/v1/models", log_path, timeout=60, interval=0.2)
        yield router
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def router(replicas: list[LiveServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    with running_router(replicas, tmp_path_factory.mktemp("router"), "--disable-retries") as started:
        yield started


def metric_sum(url: str, name: str, **labels: str) -> float:
    """The sum of the Prometheus samples of `name` at url that carry these labels (0 when there is none yet)."""
    total = 0.0
    for line in httpx.get(url, timeout=10).text.splitlines():
        named = line.startswith((f"{name}{{", f"{name} "))
        if named and all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def chat_requests_served(server: LiveServer) -> int:
    return int(metric_sum(f"{server.base_url}/metrics", "msserve_requests_total", endpoint="/v1/chat/completions",
                          status="200"))


def test_requests_through_vllm_router_succeed_on_every_replica(router: Router, replicas: list[LiveServer]) -> None:
    before = [chat_requests_served(server) for server in replicas]
    with openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        for index in range(REQUESTS):
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": f"question {index}"}], max_tokens=3
            )
            assert raw.http_response.status_code == 200
            assert_valid("CreateChatCompletionResponse", raw.http_response.json())
        stream = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "stream it"}], max_tokens=3, stream=True
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    served = [chat_requests_served(server) - start for server, start in zip(replicas, before, strict=True)]
    assert sum(served) == REQUESTS + 1 and min(served) >= REQUESTS // REPLICAS  # round robin: each took its share


def test_models_and_health_through_the_router(router: Router, replicas: list[LiveServer]) -> None:
    with openai.OpenAI(base_url=f"{router.url}/v1", api_key="unused", max_retries=0, timeout=60) as client:
        assert [model.id for model in client.models.list()] == [MODEL]
    ready = httpx.get(f"{router.url}/ready", timeout=10)  # passed on to a replica: its own answer
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    health = httpx.get(f"{router.url}/health", timeout=10)  # the router's view of its replicas
    assert health.status_code == 200, health.text
    assert httpx.get(f"{router.url}/readiness", timeout=10).json()["healthy_workers"] == REPLICAS
    assert router.healthy() == {server.base_url: True for server in replicas}


@dataclass
class Outcome:
    seq: int
    request_id: str
    stream: bool
    ok: bool
    detail: str = ""
    chunks: int = 0  # content chunks a stream delivered before it ended or was cut


class Load:
    """Threads sending chat completions through the router back to back, each numbered in the order it started."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.outcomes: list[Outcome] = []
        self._counter = itertools.count()
        self._next = 0
        self._lock = threading.Lock()

    def started(self) -> int:
        """How many requests have been numbered: every request numbered later started after this call."""
        with self._lock:
            return self._next

    def finished(self, since: int) -> int:
        with self._lock:
            return sum(1 for outcome in self.outcomes if outcome.seq >= since)

    def _number(self) -> int:
        with self._lock:
            self._next = next(self._counter) + 1
            return self._next - 1

    def worker(self, stream: bool) -> None:
        # A request that hangs times out (an APIError) well within the join below, so it is counted as lost.
        with openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=BOUND_S / 2) as client:
            while not self.stop.is_set():
                seq = self._number()
                outcome = self._one(client, seq, stream)
                with self._lock:
                    self.outcomes.append(outcome)

    @staticmethod
    def _one(client: openai.OpenAI, seq: int, stream: bool) -> Outcome:
        request_id = f"load-{seq}"
        outcome = Outcome(seq, request_id, stream, ok=False)
        messages = [{"role": "user", "content": f"tell me about number {seq}"}]
        headers = {"x-request-id": request_id}
        try:
            if stream:
                finish = None
                for chunk in client.chat.completions.create(
                    model=MODEL, messages=messages, max_tokens=24, stream=True, extra_headers=headers  # type: ignore[arg-type]
                ):
                    for choice in chunk.choices:
                        outcome.chunks += 1 if choice.delta.content else 0
                        finish = choice.finish_reason or finish
                outcome.ok = finish is not None
                outcome.detail = f"finish_reason {finish}"
            else:
                answer = client.chat.completions.create(
                    model=MODEL, messages=messages, max_tokens=8, extra_headers=headers  # type: ignore[arg-type]
                )
                outcome.ok = answer.choices[0].finish_reason is not None
                outcome.detail = f"finish_reason {answer.choices[0].finish_reason}"
        except (openai.APIError, httpx.HTTPError) as error:
            outcome.detail = f"{type(error).__name__}: {error}"
        return outcome


def served_ids(server: LiveServer) -> set[str]:
    """The request ids a replica finished a chat completion for (its JSON access log, one line per request)."""
    ids = set()
    for line in server.log().splitlines():
        if line.startswith("{") and '"request_id"' in line:
            record = json.loads(line)
            if record.get("endpoint") == "/v1/chat/completions" and record.get("status") == 200 \
                    and record.get("outcome") == "ok":
                ids.add(record["request_id"])
    return ids


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """A bounded wait on a condition of the system (the test runs in the order things happen, not by the clock)."""
    done = threading.Event()
    for _ in range(int(BOUND_S / 0.05)):
        if condition():
            return
        done.wait(0.05)
    raise AssertionError(f"not within {BOUND_S} s: {what}")


def running_on(server: LiveServer) -> float:
    return metric_sum(f"{server.base_url}/metrics", RUNNING)


def test_a_replica_killed_mid_load_loses_only_its_requests_in_flight(
    replicas: list[LiveServer], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Runs last in this module: it kills one of the module's replicas."""
    victim, survivors = replicas[0], replicas[1:]
    with running_router(replicas, tmp_path_factory.mktemp("failover"), *FAILOVER_FLAGS) as router:
        load = Load(router.url)
        threads = [threading.Thread(target=load.worker, args=(kind,)) for kind in (False, True) * LOAD_THREADS]
        for thread in threads:
            thread.start()
        try:
            wait_for(lambda: load.finished(0) >= 2 * LOAD_THREADS, "the load is under way")
            wait_for(lambda: running_on(victim) >= 1, "the victim is generating")
            in_flight = running_on(victim)  # what it held when it died (the gauge may be a moment old)
            at_kill = load.started()
            victim_before = router.metric("vllm_router_processed_requests_total", worker=victim.base_url)
            retries_before = router.metric("vllm_router_retries_total")
            victim.process.kill()  # SIGKILL: no drain, no goodbye
            victim.process.wait()
            wait_for(lambda: not router.healthy()[victim.base_url], "the router marks the killed replica unhealthy")
            at_mark = load.started()
            sent_to_victim_at_mark = router.metric("vllm_router_processed_requests_total", worker=victim.base_url)
            wait_for(lambda: load.finished(at_mark) >= AFTER_MARK, f"{AFTER_MARK} requests after the mark")
        finally:
            load.stop.set()
            for thread in threads:
                thread.join(timeout=BOUND_S)
        assert not [thread for thread in threads if thread.is_alive()], "a load thread is stuck"
        health = httpx.get(f"{router.url}/health", timeout=10)
        healthy_workers = httpx.get(f"{router.url}/readiness", timeout=10).json()["healthy_workers"]
        sent_to_victim_at_end = router.metric("vllm_router_processed_requests_total", worker=victim.base_url)
        retries = router.metric("vllm_router_retries_total") - retries_before

    outcomes = sorted(load.outcomes, key=lambda outcome: outcome.seq)
    failures = [outcome for outcome in outcomes if not outcome.ok]
    on_survivors = set().union(*(served_ids(server) for server in survivors))
    on_victim = served_ids(victim)
    summary = (
        f"failover: {len(outcomes)} requests ({sum(o.stream for o in outcomes)} streamed), killed after #{at_kill} "
        f"holding {in_flight:.0f}, marked unhealthy by #{at_mark}; lost {len(failures)} "
        f"({sum(f.stream for f in failures)} streams cut after {[f.chunks for f in failures if f.stream]} chunks, "
        f"{sum(not f.stream for f in failures)} JSON); router retries after the kill: {retries:.0f}; "
        f"sent to the victim between kill and mark: {sent_to_victim_at_mark - victim_before:.0f}"
    )
    print(f"\n{summary}")

    assert not [o for o in outcomes if o.seq >= at_kill and not o.ok], summary  # reached the dead one: retried
    for failure in failures:  # each one was in flight on the killed replica when it died
        assert failure.seq < at_kill, (failure, summary)
        assert failure.request_id not in on_survivors and failure.request_id not in on_victim, (failure, summary)
    after_mark = [o for o in outcomes if o.seq >= at_mark]
    assert len(after_mark) >= AFTER_MARK and all(o.ok for o in after_mark), summary
    assert {o.request_id for o in after_mark} <= on_survivors  # served by the two left
    assert sent_to_victim_at_end == sent_to_victim_at_mark, summary  # nothing sent to it once marked
    assert health.status_code == 503 and victim.base_url in health.text  # the router's health names it
    assert healthy_workers == REPLICAS - 1
    assert all(o.ok for o in outcomes if o.request_id in on_survivors | on_victim)
