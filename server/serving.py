"""Run the app under uvicorn with a graceful drain on SIGTERM / SIGINT.

What uvicorn 0.54 does on a signal (``Server.handle_exit`` then ``Server.shutdown``): stop the main loop,
close the listening sockets (new connections are refused), close idle keep-alive connections and mark busy
ones to close after their response, wait for the open connections up to ``timeout_graceful_shutdown``,
then cancel what is left, then run the lifespan shutdown (which stops the engines). Afterwards it re-raises
the captured signal with the previous handlers restored, so under the default handler the process would die
"killed by SIGTERM" even after a clean drain.

What we add: the moment the signal arrives, ``begin_drain`` marks the server draining (``/ready`` answers
503, requests still waiting for a slot get 503 + Retry-After), and we install the server's own handler first so the
re-raised signal lands in our handler again and the process exits normally, status 0. A signal that comes
while the engine is still loading ends the process as soon as uvicorn is done, without waiting for the load.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from types import FrameType
from typing import NoReturn

import uvicorn
from fastapi import FastAPI

from server.config import Settings

log = logging.getLogger(__name__)

CHILD_EXIT_TIMEOUT_S = 10.0  # vLLM's engine process stops its workers on SIGTERM; after this it is killed


def begin_drain(app: FastAPI) -> None:
    """Stop taking model requests: idempotent, safe to call from a signal handler (no awaits)."""
    services = getattr(app.state, "services", None)
    if services is not None:
        services.draining = True
    limiter = getattr(app.state, "limiter", None)
    if limiter is not None and not limiter.draining:
        limiter.drain()


def set_switch_interval(settings: Settings) -> None:
    """Apply ``gil_switch_interval_ms`` to this process (the serving process only: it is an interpreter setting)."""
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.warning("signal %s: draining, in-flight requests have %.0fs to finish", signal.Signals(sig).name,
                        self.config.timeout_graceful_shutdown or 0)
            begin_drain(self._app)
        super().handle_exit(sig, frame)


def serve_until_signal(app: FastAPI, settings: Settings) -> str | None:
    """Serve until SIGTERM/SIGINT, drain for ``settings.drain_timeout_s``, exit normally.

    Returns why the engine failed to start, when that is what stopped the server (the caller exits non-zero).
    """
    # uvicorn's own access line is off: the access-log middleware writes one JSON line per request with more
    # in it (request id, tier, timings), and a second line per request cost ~2 % of a proxied request's CPU.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=max(1, round(settings.drain_timeout_s)),
                            timeout_keep_alive=settings.keep_alive_timeout_s, access_log=False,
                            proxy_headers=False)  # forwarded headers: MSSERVE_TRUSTED_PROXIES (server.middleware)
    set_switch_interval(settings)
    server = DrainingServer(config, app)
    failures: list[str] = []

    def engine_failed(reason: str) -> None:
        failures.append(reason)
        server.should_exit = True

    app.state.request_exit = engine_failed  # read by the lifespan's engine start (server.app)
    # Before uvicorn takes the signals, and again when it re-raises them after shutdown: a second call of
    # handle_exit is harmless, and the process then leaves run() and exits with status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, server.handle_exit)
    server.run()
    if getattr(app.state, "engine_load_abandoned", False):
        exit_without_the_loading_engine()
    return failures[0] if failures else None


def exit_without_the_loading_engine() -> NoReturn:
    """Exit now, status 0, though the engine's load is still running in its thread.

    A load cannot be interrupted (a hub download, vLLM starting its engine processes, weights being read), and
    at exit the interpreter would wait for its thread: minutes for Mistral Small 3.1, after the server had
    already said it shut down. What the load started is stopped first: vLLM's engine process, on SIGTERM, stops
    its workers. The loop runs again because the load thread may start a process while we wait.
    """
    log.warning("the engine was still loading: stopping what it started and exiting without waiting for it")
    for _ in range(3):
        children = multiprocessing.active_children()
        if not children:
            break
        for child in children:
            child.terminate()
        for child in children:
            child.join(CHILD_EXIT_TIMEOUT_S)
            if child.is_alive():
                child.kill()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
