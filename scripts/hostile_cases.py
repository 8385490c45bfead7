"""The stateful part of issue 22's hostile corpus (budget race, breaker probe, trickling bodies, tenants,
cross-site requests, disconnects) and the ``Run`` that sends and judges inputs, for scripts/hostile.py."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import socket
import threading
import time
from typing import Any

import httpx
from hostile_corpus import Probe, chat, data_url, png

from tests.fakes.fake_azure import ContentFiltered, FakeAzure, Reply, ServerError  # the repo root is on sys.path

HOST = "127.0.0.1"
KEYS = {"alice": "sk-alice-0123456789abcdef", "bob": "sk-bob-0123456789abcdef0", "admin": "sk-admin-0123456789abcd"}
BUDGET_USD = 3.0
PRICE_PER_TOKEN = 0.25  # $250,000 per million output tokens: a 4-token answer costs $1
FOUR_WORDS = "one two three four"
HEALTH_LIMIT_S = 1.0


class BilledAzure(FakeAzure):
    """The fake Azure, adding up what a real one would bill: every answer it starts, streamed or not."""

    billed_usd = 0.0

    def _bill(self, reply: Reply) -> None:
        self.billed_usd += len(reply.text.split(" ")) * PRICE_PER_TOKEN

    def _completion(self, reply: Reply, body: dict[str, Any]) -> dict[str, Any]:
        self._bill(reply)
        return super()._completion(reply, body)

    def _sse(self, reply: Reply, body: dict[str, Any], include_usage: bool) -> Any:
        self._bill(reply)
        return super()._sse(reply, body, include_usage)


class HealthWatch(threading.Thread):
    """Polls /health every 50 ms; ``window()`` returns the worst latency since the last call."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base, self.worst, self.overall, self.stopped = base, 0.0, 0.0, threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stopped.is_set():
                started = time.perf_counter()
                with contextlib.suppress(httpx.HTTPError):
                    client.get(f"{self.base}/health")
                took = time.perf_counter() - started
                self.worst, self.overall = max(self.worst, took), max(self.overall, took)
                self.stopped.wait(0.05)

    def window(self) -> float:
        worst, self.worst = self.worst, 0.0
        return worst


# -- start-up ----------------------------------------------------------------------------------------------------


class Run:
    def __init__(self, base: str, azure: BilledAzure, health: HealthWatch, deadline: float) -> None:
        self.base, self.azure, self.health, self.deadline = base, azure, health, deadline
        self.client = httpx.Client(base_url=base, timeout=180)
        self.failures: list[str] = []

    def headers(self, key: str = "alice", **extra: str) -> dict[str, str]:
        return {"authorization": f"Bearer {KEYS[key]}", **extra}

    def report(self, item: int, name: str, statuses: list[int], problem: str | None = None,
               upstream_5xx: bool = False) -> None:
        worst = self.health.window()
        shown = ",".join(str(s) for s in statuses) if len(statuses) <= 2 else _counts(statuses)
        print(f"{item:>2}  {name[:60]:<60} {shown:<12} /health worst {worst * 1e3:6.0f} ms"
              + (f"  PROBLEM: {problem}" if problem else ""), flush=True)
        if any(s >= 500 for s in statuses) and not upstream_5xx:
            self.failures.append(f"item {item} {name}: 5xx {statuses}")
        if worst > HEALTH_LIMIT_S:
            self.failures.append(f"item {item} {name}: /health took {worst:.2f}s")
        if problem:
            self.failures.append(f"item {item} {name}: {problem}")

    def probe(self, probe: Probe) -> None:
        # Serialized before the /health window opens: the watcher shares this process's GIL, and building a
        # 3 MB body is this script's work, not the server's.
        payload = probe.body if isinstance(probe.body, bytes) else json.dumps(probe.body).encode()
        self.health.window()
        try:
            response = self.client.post(probe.path, content=payload, headers={
                **self.headers("alice", **probe.headers), "content-type": "application/json"})
            status, code = response.status_code, _code(response)
        except httpx.HTTPError as exc:
            self.report(probe.item, probe.name, [0], f"no answer: {exc!r}")
            return
        problem = None
        if probe.expect and status not in probe.expect:
            problem = f"status {status} ({code}), wanted {sorted(probe.expect)}"
        self.report(probe.item, f"{probe.name} [{code or 'ok'}]", [status], problem)

    def chat(self, key: str = "alice", route: str | None = None, **body: Any) -> httpx.Response:
        extra = {"x-msserve-route": route} if route else {}
        return self.client.post("/v1/chat/completions", json={**chat("hello"), **body},
                                headers=self.headers(key, **extra))

    def engine_idle(self, limit_s: float = 60.0) -> bool:
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            engine = self.client.get("/ready").json().get("engine", {})
            if engine.get("running", 0) == 0 and engine.get("waiting", 0) == 0:
                return True
            time.sleep(0.2)
        return False


def _code(response: httpx.Response) -> str | None:
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    return error.get("code") if isinstance(error, dict) else None


def _counts(statuses: list[int]) -> str:
    return " ".join(f"{s}x{statuses.count(s)}" for s in sorted(set(statuses)))


# -- stateful cases --------------------------------------------------------------------------------------------


def breaker_probe(run: Run) -> None:
    """Item 8: open the breaker, let its half-open probe end in a content filter: escalation must come back."""
    run.azure.script[:] = [ServerError()] * 6
    statuses = [run.chat(route="azure", max_tokens=4).status_code for _ in range(2)]
    run.azure.script.clear()
    run.report(8, "Azure fails twice: breaker opens", statuses, upstream_5xx=True)
    time.sleep(1.5)  # the cooldown (MSSERVE_AZURE_BREAKER_COOLDOWN_S=1)
    run.azure.script[:] = [ContentFiltered()]
    probe = run.chat(route="azure", max_tokens=4)
    run.azure.script.clear()
    run.report(8, f"half-open probe hits a content filter [{_code(probe)}]", [probe.status_code], upstream_5xx=True)
    time.sleep(1.5)
    run.azure.script[:] = [Reply(text=FOUR_WORDS)]
    after = run.chat(route="azure", max_tokens=4)
    run.azure.script.clear()
    tier = after.headers.get("x-msserve-tier")
    run.report(8, f"escalation after the probe (tier {tier})", [after.status_code],
               None if tier == "azure" else "escalation stayed off after the probe")


def budget_race(run: Run) -> None:
    """Item 3: 12 concurrent forced escalations at $1 each against the $3 daily budget."""
    run.azure.script[:] = [Reply(text=FOUR_WORDS, delay_s=0.5) for _ in range(12)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: run.chat(route="azure", max_tokens=4), range(12)))
    run.azure.script.clear()
    tiers = [a.headers.get("x-msserve-tier") for a in answers]
    spent = run.azure.billed_usd
    run.report(3, f"12 forced escalations: {tiers.count('azure')} on Azure, ${spent:.2f} billed",
               [a.status_code for a in answers], f"spent ${spent:.2f} > ${BUDGET_USD:.2f}" if spent > BUDGET_USD
               else None)


def trickling_bodies(run: Run, count: int = 24) -> None:
    """Item 5: more tricklers than slots; an honest request must still be served, the tricklers cut off."""
    port = int(run.base.rsplit(":", 1)[1])
    answers: list[bytes] = [b""] * count

    def trickle(index: int) -> None:
        with socket.create_connection((HOST, port), timeout=60) as sock:
            head = (f"POST /v1/chat/completions HTTP/1.1\r\nhost: {HOST}\r\nauthorization: Bearer {KEYS['bob']}\r\n"
                    "content-type: application/json\r\ncontent-length: 100000\r\n\r\n")
            try:
                sock.sendall(head.encode() + b'{"messages": [{"role": "user", "content": "')
                for _ in range(300):  # at most ~30 s
                    sock.sendall(b"x")
                    time.sleep(0.1)
                sock.settimeout(10)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                answers[index] = sock.recv(4096)

    threads = [threading.Thread(target=trickle, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    honest = run.chat()
    run.report(5, f"honest request beside {count} tricklers [{_code(honest) or 'ok'}]", [honest.status_code],
               None if honest.status_code == 200 else "tricklers starved an honest request")
    for thread in threads:
        thread.join(60)
    statuses = [int(a.split(b" ", 2)[1]) if a.startswith(b"HTTP/1.1 ") else 0 for a in answers]
    run.report(5, "the tricklers themselves", statuses, None if set(statuses) <= {408, 413} else "not cut off")


def shared_request_id(run: Run) -> None:
    """Item 7: a second client reusing an in-flight request's x-request-id and leaving must not abort the first."""
    body = {**chat("count to ten"), "max_tokens": 8, "stream": True}
    headers = run.headers("alice", **{"x-request-id": "shared-id-0001"})
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        victim = pool.submit(lambda: run.client.post("/v1/chat/completions", json=body, headers=headers))
        with run.client.stream("POST", "/v1/chat/completions", json=body, headers=run.headers(
                "bob", **{"x-request-id": "shared-id-0001"})) as attacker:
            next(attacker.iter_lines(), None)
        answer = victim.result()
    done = "[DONE]" in answer.text and '"error"' not in answer.text
    run.report(7, "reused x-request-id, attacker leaves", [answer.status_code, attacker.status_code],
               None if done else "the victim's stream was cut")


def tenants(run: Run) -> None:
    """Item 9: bob must not see alice's requests or prompts, nor force Azure without permission."""
    secret = "alice-secret-prompt-7f3a"
    run.client.post("/v1/chat/completions", json=chat(secret),
                    headers=run.headers("alice", **{"x-request-id": "alice-private-id-1"}))
    seen = run.client.get("/dashboard/api/state", headers=run.headers("bob"))
    leaked = seen.status_code == 200 and ("alice-private-id-1" in seen.text or secret in seen.text)
    run.report(9, "bob reads the dashboard feed", [seen.status_code], "bob sees alice's requests" if leaked else None)
    admin = run.client.get("/dashboard/api/state", headers=run.headers("admin"))
    run.report(9, "admin reads the dashboard feed", [admin.status_code],
               None if admin.status_code == 200 and "alice-private-id-1" in admin.text else "admin view incomplete")
    forced = run.chat("bob", route="azure", max_tokens=4)
    run.report(9, f"bob forces Azure without permission [{_code(forced) or forced.headers.get('x-msserve-tier')}]",
               [forced.status_code], None if forced.status_code == 403 else "not refused with 403")


def cross_site(run: Run) -> None:
    """Item 10: a rebound Host name and a cross-site form POST are refused; curl -F style uploads still work."""
    upload = [("file", ("dot.png", png(32, 32), "image/png"))]
    rebound = run.client.post("/v1/chat/completions", json=chat("hi"), headers=run.headers(host="attacker.example"))
    run.report(10, f"Host: attacker.example [{_code(rebound) or 'ok'}]", [rebound.status_code],
               "rebound Host accepted" if rebound.status_code < 400 else None)
    forged = run.client.post("/v1/captions", files=upload, data={"max_tokens": "1"}, headers=run.headers(
        origin="https://attacker.example", **{"sec-fetch-site": "cross-site"}))
    run.report(10, f"cross-site form POST to /v1/captions [{_code(forged) or 'ok'}]", [forged.status_code],
               "cross-site POST accepted" if forged.status_code < 400 else None)
    script = run.client.post("/v1/captions", files=upload, data={"max_tokens": "1"}, headers=run.headers())
    run.report(10, "curl -F style upload", [script.status_code], None if script.status_code == 200 else "refused")


def work_outlives_client(run: Run) -> None:
    """Item 12: non-streamed chat and captions whose clients leave must free the engine."""
    for path, body in (("/v1/chat/completions", {**chat("go on"), "max_tokens": 2000, "temperature": 1.0}),
                       ("/v1/captions", {"image_urls": [data_url(png(32, 32))], "max_tokens": 2000,
                                         "temperature": 1.0})):
        with contextlib.suppress(httpx.TimeoutException):  # the client gives up after 3 s and hangs up
            run.client.post(path, json=body, headers=run.headers(), timeout=3)
        idle = run.engine_idle()
        run.report(12, f"client leaves a non-streamed {path} after 3 s", [],
                   None if idle else "the engine kept working for nobody")


def forwarded_cookie(run: Run) -> None:
    """Item 13: an untrusted X-Forwarded-Proto must not make the dashboard cookie Secure-by-assertion."""
    login = run.client.post("/dashboard/login", headers=run.headers(**{"x-forwarded-proto": "https"}))
    cookie = login.headers.get("set-cookie", "").lower()
    run.report(13, "login with a spoofed X-Forwarded-Proto", [login.status_code],
               "trusted a forwarded header from an unlisted peer" if "secure" in cookie else None)


STATEFUL = {3: budget_race, 5: trickling_bodies, 7: shared_request_id, 8: breaker_probe, 9: tenants,
            10: cross_site, 12: work_outlives_client, 13: forwarded_cookie}


