"""The API process keeps off the cores a bound child (vLLM's CPU worker) holds: real processes and threads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from server.engines.cpu_placement import keep_off_worker_cores, worker_cores

ALLOWED = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
needs_two_cores = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(ALLOWED) < 2, reason="needs Linux affinity and two usable cores"
)


def test_worker_cores_are_those_of_descendants_bound_to_fewer_cores() -> None:
    allowed = {0, 1, 2, 3}
    assert worker_cores(allowed, [allowed, {0}, {2}]) == {0, 2}
    assert worker_cores(allowed, [allowed, allowed]) == set()
    assert worker_cores(allowed, []) == set()
    # Allowed elsewhere too (not a subset of ours): not a worker bound among our cores.
    assert worker_cores({0, 1}, [{1, 5}]) == set()


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()
        os.sched_setaffinity(0, ALLOWED)


class Parked(threading.Thread):
    """A thread that waits until released, so its affinity can be read while it lives."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.release = threading.Event()
        self.started_up = threading.Event()

    def run(self) -> None:
        self.started_up.set()
        self.release.wait(60)

    def __enter__(self) -> Parked:
        self.start()
        self.started_up.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.join(10)


def thread_cores(thread: threading.Thread) -> set[int]:
    assert thread.native_id is not None
    return os.sched_getaffinity(thread.native_id)


@needs_two_cores
def test_moves_every_thread_off_a_bound_child_and_back(child: subprocess.Popen[bytes]) -> None:
    worker_core = min(ALLOWED)
    os.sched_setaffinity(child.pid, {worker_core})
    spare = ALLOWED - {worker_core}
    with Parked() as before:
        undo = keep_off_worker_cores()
        assert undo is not None
        assert os.sched_getaffinity(0) == spare
        assert thread_cores(before) == spare  # a thread that was already running moved too
        with Parked() as after:
            assert thread_cores(after) == spare  # and one started later inherits it
        undo()
        assert os.sched_getaffinity(0) == ALLOWED
        assert thread_cores(before) == ALLOWED


@needs_two_cores
def test_nothing_moves_without_a_bound_child(child: subprocess.Popen[bytes]) -> None:
    assert os.sched_getaffinity(child.pid) == ALLOWED
    assert keep_off_worker_cores() is None
    assert os.sched_getaffinity(0) == ALLOWED


@needs_two_cores
def test_nothing_moves_when_the_workers_hold_every_core(child: subprocess.Popen[bytes]) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        cores = sorted(ALLOWED)
        os.sched_setaffinity(child.pid, set(cores[:1]))
        os.sched_setaffinity(other.pid, set(cores[1:]))
        assert keep_off_worker_cores() is None
        assert os.sched_getaffinity(0) == ALLOWED
    finally:
        other.kill()
        other.wait()
