"""Run issue 22's hostile corpus against a real server on 127.0.0.1, bounded in count and time.

    python scripts/hostile.py [--only 1,3,11] [--max-seconds 900] [--skip-startup-checks]

Starts the fake Azure (tests/fakes/fake_azure.py) and `msserve serve --profile tiny-mistral3` on loopback,
sends every input of scripts/hostile_corpus.py plus the stateful ones here (budget race, breaker probe,
trickling bodies, tenants, cross-site, disconnects), and prints each input, its status and the worst /health
latency seen meanwhile. Exits non-zero on any unexpected 5xx, a /health answer slower than 1 s, an Azure spend
over the daily budget, a server that starts with keys that parse to nothing, or an input not refused as it must
be. Nothing is sent anywhere but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hostile_cases import (  # noqa: E402
    BUDGET_USD,
    KEYS,
    PRICE_PER_TOKEN,
    STATEFUL,
    BilledAzure,
    HealthWatch,
    Run,
)
from hostile_corpus import EMPTY_KEYS, Probe, static_probes  # noqa: E402

from tests.conftest import LiveServer, free_port, serve_command, spawn, stop_server, wait_ready  # noqa: E402
from tests.fakes.fake_azure import FakeAzure  # noqa: E402


def launch(env: dict[str, str], log: Path) -> LiveServer:
    """`msserve serve` on the tiny model at a free loopback port, its output in ``log``."""
    port = free_port()
    return spawn(serve_command("tiny-mistral3", port), log.parent, {**os.environ, **env}, port=port, log_name=log.name)


def empty_keys(tmp: Path) -> list[str]:
    """Item 4: a server given keys that parse to nothing must refuse to start."""
    failures = []
    for index, value in enumerate(EMPTY_KEYS):
        server = launch({"MSSERVE_API_KEYS": value, "MSSERVE_STATE_DIR": str(tmp)}, tmp / f"keys{index}.log")
        served = wait_ready(server, timeout=60, ready_path="/health")
        stop_server(server)
        process = server.process
        verdict = "SERVED: PROBLEM" if served else f"refused to start (exit {process.returncode})"
        print(f" 4  MSSERVE_API_KEYS={value!r:<36} {verdict}", flush=True)
        if served or process.returncode == 0:
            failures.append(f"item 4: the server started with MSSERVE_API_KEYS={value!r}")
    return failures


def server_env(azure: FakeAzure, state_dir: Path) -> dict[str, str]:
    return {
        "MSSERVE_API_KEYS": ",".join(f"{name}:{key}" for name, key in KEYS.items()),
        "MSSERVE_ADMIN_KEYS": "admin", "MSSERVE_AZURE_KEYS": "alice,admin", "MSSERVE_LOG_CONTENTS": "true",
        "MSSERVE_AZURE_ENDPOINT": f"{azure.endpoint}/openai/v1/", "MSSERVE_AZURE_API_KEY": azure.api_key,
        "MSSERVE_AZURE_DEPLOYMENT": azure.deployment, "MSSERVE_AZURE_DAILY_BUDGET_USD": str(BUDGET_USD),
        "MSSERVE_AZURE_PRICE_INPUT_PER_MTOK": "0", "MSSERVE_AZURE_PRICE_OUTPUT_PER_MTOK": str(PRICE_PER_TOKEN * 1e6),
        "MSSERVE_AZURE_BREAKER_FAILURES": "2", "MSSERVE_AZURE_BREAKER_COOLDOWN_S": "1",
        "MSSERVE_ROUTER_THRESHOLD": "1.0", "MSSERVE_ESCALATE_WHEN_QUEUE_OVER": "100000",
        "MSSERVE_MAX_CONCURRENT_REQUESTS": "16", "MSSERVE_MAX_WAITING_REQUESTS": "32",
        "MSSERVE_BODY_MIN_RATE_GRACE_S": "2", "MSSERVE_STATE_DIR": str(state_dir), "MSSERVE_LOG_LEVEL": "info",
    }


def loop_lag(run: Run) -> str:
    """What msserve_event_loop_lag_seconds saw: samples over 100 ms, of all."""
    text = run.client.get("/metrics", headers=run.headers("admin")).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("msserve_event_loop_lag_seconds_") and " " in line:
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    total = values.get("msserve_event_loop_lag_seconds_count")
    under = values.get('msserve_event_loop_lag_seconds_bucket{le="0.1"}')
    if total is None or under is None:
        return "no event-loop lag metric"
    return f"event loop blocked > 100 ms in {total - under:.0f} of {total:.0f} lag samples"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", type=lambda text: {int(i) for i in text.split(",") if i}, default=set(range(1, 14)),
                        help="comma-separated issue items to run (default: all 13)")
    parser.add_argument("--max-seconds", type=float, default=900.0, help="stop sending new inputs after this")
    parser.add_argument("--skip-startup-checks", action="store_true", help="skip item 4's refused start-ups")
    parser.add_argument("--log-dir", type=Path, default=None, help="keep the server logs here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = args.log_dir or Path(tempfile.mkdtemp(prefix="msserve-hostile-"))
    tmp.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    deadline = started + args.max_seconds
    failures: list[str] = []
    if 4 in args.only and not args.skip_startup_checks:
        failures += empty_keys(tmp)
    print("item input" + " " * 54 + "status" + " " * 7 + "worst /health meanwhile", flush=True)
    azure = BilledAzure(api_key="fake-azure-key").start()
    server = launch(server_env(azure, tmp / "state"), tmp / "server.log")
    base = server.base_url
    try:
        if not wait_ready(server, timeout=300):
            print(f"the server did not get ready; its log: {tmp / 'server.log'}")
            return 2
        health = HealthWatch(base)
        health.start()
        run = Run(base, azure, health, deadline)
        # Azure's state first (breaker, then budget): later inputs may not move the spend.
        steps: list[Any] = [STATEFUL[i] for i in (8, 3) if i in args.only]
        steps += [p for p in static_probes() if p.item in args.only]
        steps += [STATEFUL[i] for i in (5, 7, 9, 10, 12, 13) if i in args.only]
        for step in steps:
            if time.monotonic() > deadline:
                run.failures.append(f"time budget of {args.max_seconds:g}s spent before every input ran")
                break
            if isinstance(step, Probe):
                run.probe(step)
            else:
                step(run)
        health.stopped.set()
        print(f"worst /health latency {health.overall * 1e3:.0f} ms; billed Azure ${azure.billed_usd:.2f} "
              f"(budget ${BUDGET_USD:.2f}); {loop_lag(run)}")
        if azure.billed_usd > BUDGET_USD:
            run.failures.append(f"item 3: Azure billed ${azure.billed_usd:.2f} over the ${BUDGET_USD:.2f} budget")
        failures += run.failures
    finally:
        stop_server(server)
        azure.stop()
    print(f"server log: {tmp / 'server.log'}; {time.monotonic() - started:.0f} s in all")
    for failure in failures:
        print(f"FAIL {failure}")
    print("PASS" if not failures else f"{len(failures)} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
