"""Keep the API process off the cores vLLM's CPU worker is bound to.

On a CPU host vLLM binds its worker's OpenMP threads to cores (``VLLM_CPU_OMP_THREADS_BIND=auto``) and leaves
the rest "reserved" for the EngineCore and the API server, but does not keep those processes off the worker's
cores. On a small host the API process's event loop and its image-preparation threads then run on the worker's
core in the middle of a forward pass, and every stream's next token waits. So once the engine is up, this
process (all its threads; threads started later inherit it) keeps to the cores no worker is bound to.

Only the API process moves. The EngineCore stays where vLLM put it: pinned beside the API process, its first
tokens came later; pinned beside the worker, requests/s fell 8 % (docs/BENCHMARKS.md). Measured against itself,
this placement gave 5.4 % more requests/s and 10 % sooner first tokens on one 2-vCPU VM (36 pairs of rounds) and
was not shown to matter on another (18 pairs), so it is on by default. Nothing moves when the workers are not bound
(``VLLM_CPU_OMP_THREADS_BIND=nobind``) or when no core would be left; the caller asks only for vLLM's CPU backend.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable

import psutil

log = logging.getLogger(__name__)


def worker_cores(allowed: set[int], descendants: Iterable[set[int]]) -> set[int]:
    """The cores held by descendants bound to fewer cores than this process may use (vLLM's bound workers)."""
    bound: set[int] = set()
    for cores in descendants:
        if cores < allowed:
            bound |= cores
    return bound


def keep_off_worker_cores() -> Callable[[], None] | None:
    """Move this process off its bound workers' cores; returns what undoes it, or None when nothing moved."""
    if not hasattr(os, "sched_setaffinity"):  # Linux only
        return None
    allowed = os.sched_getaffinity(0)
    bound = worker_cores(allowed, _descendant_affinities())
    spare = allowed - bound
    if not bound or not spare:
        return None
    _pin_threads(spare)
    log.info("vLLM's CPU worker is bound to cores %s: the API process keeps to cores %s",
             _cores(bound), _cores(spare))
    return lambda: _pin_threads(allowed)


def _descendant_affinities() -> Iterable[set[int]]:
    for child in psutil.Process().children(recursive=True):
        try:
            yield set(os.sched_getaffinity(child.pid))
        except (ProcessLookupError, PermissionError):  # gone meanwhile, or not ours to read
            continue


def _pin_threads(cores: set[int]) -> None:
    # On Linux affinity is per thread: the process's existing threads each move; new ones inherit their creator's.
    for thread in psutil.Process().threads():
        try:
            os.sched_setaffinity(thread.id, cores)
        except ProcessLookupError:  # the thread ended meanwhile
            continue


def _cores(cores: set[int]) -> str:
    return ",".join(str(core) for core in sorted(cores))
