"""Shared pieces of the HTTP benchmarks (bench_serving.py, bench_gateway.py): processes, load, the machine.
The statistics are bench_stats.py's; their names are importable from here too.

Only the standard library and httpx, so the scripts run in any of the project's venvs. Everything talks to
127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from bench_stats import (  # noqa: F401  (re-exported: scripts import the statistics from here as well)
    TARGETS,
    format_interval,
    interval_text,
    meets,
    order_balanced,
    per_round_ratios,
    percentile,
    ratio,
    ratio_interval,
    student_t_quantile,
    summarize,
    usable_logs,
)

REPO = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
# .pth files a clean venv may hold: setuptools' shim and editable installs of this project. Anything else runs
# code at every interpreter start (the 2026 LiteLLM compromise shipped exactly that), so its presence is fatal.
ALLOWED_PTH_PREFIXES = ("distutils-precedence", "__editable__.mistral_small_server", "_mistral_small_server")
Spec = TypeVar("Spec")  # what drive_load hands to its send function: a RequestSpec, or a body


# -- which runs the serving targets apply to ------------------------------------------------------------


def baseline(run: dict[str, Any]) -> str | None:
    """What the "vllm" side of a bench_serving.py result ran, by its first two words with paths cut to names:
    "vllm serve" as the benchmark ships, "python -m" where an A/B run put our server there, followed by the
    settings it ran with where the run recorded them (--baseline-env); None where the run recorded no command."""
    command = run.get("commands", {}).get("vllm")
    if not command:
        return None
    settings = run.get("baseline_env") or {}
    return " ".join([*(Path(word).name for word in command[:2]), *(f"{k}={v}" for k, v in sorted(settings.items()))])


def against_vllm_serve(run: dict[str, Any]) -> bool:
    """Whether the run measured ours against `vllm serve` (as every run that recorded no command did)."""
    return baseline(run) in (None, "vllm serve")


def no_target_reason(run: dict[str, Any], over: str = "vllm") -> str | None:
    """Why the serving targets do not apply to a bench_serving.py result divided by ``over``; None where they do. They
    are for ours over `vllm serve` in the closed loop: an A/B measures one of our settings, and in the open loop
    (--rate) requests/s is the offered rate, not a server's capacity. bench_serving.py (one run) and bench_pool.py
    (pooled runs) both ask this."""
    if over != "vllm":
        return f"pooled over {over}"
    if not against_vllm_serve(run):
        return f"the baseline ran `{baseline(run)}`: an A/B of our own server"
    rate = run.get("args", {}).get("rate")
    if rate not in (None, "None"):
        return f"open loop at {rate} requests/s: requests/s is the offered rate"
    return None


# -- machine ----------------------------------------------------------------------------------------------------


def git_commit() -> str | None:
    """This checkout's commit, '+dirty' when tracked files differ from it (runs pooled by bench_pool.py say which)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
        "commit": git_commit(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()
        info["mem_gib"] = round(int(mem[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def package_versions(python: Path | str, names: Sequence[str]) -> dict[str, str]:
    """Installed versions of ``names`` in the interpreter ``python`` (``"-"`` when absent)."""
    code = (
        "import json, sys\nfrom importlib import metadata\nout = {}\nfor n in sys.argv[1:]:\n"
        "    try: out[n] = metadata.version(n)\n    except metadata.PackageNotFoundError: out[n] = '-'\n"
        "print(json.dumps(out))"
    )
    result = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True, check=False)
    try:
        return dict(json.loads(result.stdout))
    except json.JSONDecodeError:
        return {name: "?" for name in names}


def site_packages(python: Path | str) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip())


def unexpected_pth_files(site: Path) -> list[Path]:
    """``.pth`` files in ``site`` other than setuptools' shim and this project's editable install."""
    return sorted(p for p in site.glob("*.pth") if not p.name.startswith(ALLOWED_PTH_PREFIXES))


def refuse_pth(python: Path | str) -> None:
    """Exit when the venv of ``python`` holds a ``.pth`` file nobody asked for (see ALLOWED_PTH_PREFIXES)."""
    found = unexpected_pth_files(site_packages(python))
    if found:
        sys.exit(f"refusing to run: unexpected .pth files in {python}'s site-packages (code that runs at every "
                 f"interpreter start): {', '.join(p.name for p in found)}. Rebuild the venv with scripts/bench_env.sh.")


# -- processes --------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """A child process serving HTTP on 127.0.0.1, with its output in a log file."""

    name: str
    command: list[str]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = REPO
    ready_path: str = "/health"
    ready_codes: tuple[int, ...] = (200,)  # statuses of ready_path that mean "up"
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready_after_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            # Own process group: stop() then ends the whole tree (vLLM's engine core included), and only it.
            self.process = subprocess.Popen(self.command, cwd=self.cwd, env={**os.environ, **self.env}, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.started_at = time.monotonic()
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def poll_ready(self) -> bool:
        """True once ready; raises when the process died."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}; log {self.log_path}:\n"
                               f"{self.log_tail()}")
        try:
            ok = httpx.get(self.base_url + self.ready_path, timeout=2).status_code in self.ready_codes
        except httpx.HTTPError:
            ok = False
        if ok and self.ready_after_s is None:
            self.ready_after_s = time.monotonic() - self.started_at
        return ok

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        except ProcessLookupError:
            pass


def our_server(python: Path | str, profile: str, name: str, logs: Path, env: dict[str, str] | None = None) -> Service:
    """`python -m server serve --profile PROFILE` on a free loopback port, up when /ready says 200."""
    port = free_port()
    command = [str(python), "-m", "server", "serve", "--profile", profile, "--host", LOOPBACK, "--port", str(port)]
    return Service(name, command, port, logs / f"{name}.log", env=env or {}, ready_path="/ready")


def wait_ready(services: Sequence[Service], timeout_s: float, *, say: Callable[[str], None] = print) -> None:
    """Wait until every service answers its ready path (they start in parallel)."""
    deadline = time.monotonic() + timeout_s
    pending = list(services)
    while pending:
        pending = [s for s in pending if not s.poll_ready()]
        for service in services:
            if service not in pending and service.ready_after_s is not None and not getattr(service, "_said", False):
                say(f"  {service.name} ready after {service.ready_after_s:.0f}s")
                service._said = True  # type: ignore[attr-defined]
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"not ready after {timeout_s:.0f}s: {', '.join(s.name for s in pending)}; logs: "
                               + ", ".join(str(s.log_path) for s in pending))
        if pending:
            time.sleep(0.5)


def cpu_seconds(pid: int, *, tree: bool = False) -> float:
    """User + system CPU seconds used so far by process ``pid`` (and, with ``tree``, its live descendants)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, cpu seconds)
    for entry in Path("/proc").iterdir() if tree else [Path(f"/proc/{pid}")]:
        if not entry.name.isdigit():
            continue
        try:
            fields = entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    wanted = {pid}
    grew = tree
    while grew:
        more = {p for p, (parent, _) in stats.items() if parent in wanted} - wanted
        wanted |= more
        grew = bool(more)
    return sum(cpu for p, (_, cpu) in stats.items() if p in wanted)


def resident_mib(pid: int) -> float:
    """Resident memory (RSS) of process ``pid`` alone, in MiB; NaN once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return kib / 1024


def py_spy(pid: int, out: Path, during: Callable[[], object], *, rate: int = 200) -> Path:
    """Run ``during()`` while py-spy samples process ``pid`` (collapsed stacks, one line per stack, to ``out``).

    py-spy comes from PATH or from the running interpreter's bin/ (pip install py-spy).
    """
    import shutil

    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.parent.mkdir(parents=True, exist_ok=True)
    recorder = subprocess.Popen([binary, "record", "--pid", str(pid), "--format", "raw", "--rate", str(rate),
                                 "--nonblocking", "--output", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    time.sleep(1.0)  # attached before the load starts
    try:
        during()
    finally:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        recorder.wait(timeout=60)
    return out


# -- load -------------------------------------------------------------------------------------------------------


@dataclass
class RequestSpec:
    url: str
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    kind: str = "text"


@dataclass
class RequestResult:
    kind: str
    ok: bool
    start_s: float  # since the round began
    e2e_s: float
    ttft_s: float | None = None  # streamed requests: first non-empty content delta
    prompt_tokens: int | None = None
    output_tokens: int = 0
    content_events: int = 0  # streamed: events with text (fewer than tokens where a server merged deltas)
    error: str = ""


async def _one(client: httpx.AsyncClient, spec: RequestSpec, t0: float) -> RequestResult:
    start = time.perf_counter()
    stream = bool(spec.body.get("stream"))
    result = RequestResult(kind=spec.kind, ok=False, start_s=start - t0, e2e_s=0.0)
    try:
        if stream:
            await _read_stream(client, spec, start, result)
        else:
            response = await client.post(spec.url, json=spec.body, headers=spec.headers)
            if response.status_code != 200:
                result.error = f"{response.status_code}: {response.text[:200]}"
            else:
                usage = response.json().get("usage") or {}
                result.prompt_tokens = usage.get("prompt_tokens")
                result.output_tokens = int(usage.get("completion_tokens") or 0)
                result.ok = True
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.e2e_s = time.perf_counter() - start
    return result


async def _read_stream(client: httpx.AsyncClient, spec: RequestSpec, start: float, result: RequestResult) -> None:
    deltas = 0
    async with client.stream("POST", spec.url, json=spec.body, headers=spec.headers) as response:
        if response.status_code != 200:
            result.error = f"{response.status_code}: {(await response.aread())[:200]!r}"
            return
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                result.error = str(event["error"])[:200]
                return
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    deltas += 1
                    if result.ttft_s is None:
                        result.ttft_s = time.perf_counter() - start
            usage = event.get("usage")
            if usage:
                result.prompt_tokens = usage.get("prompt_tokens")
                result.output_tokens = int(usage.get("completion_tokens") or 0)
    result.output_tokens = result.output_tokens or deltas
    result.content_events = deltas
    result.ok = True


async def run_load(specs: Sequence[RequestSpec], concurrency: int, *, arrivals: Sequence[float] | None = None,
                   timeout_s: float = 300.0) -> tuple[list[RequestResult], float]:
    """Send ``specs`` over HTTP; (results, wall seconds). The schedule is ``drive_load``'s."""
    connections = concurrency if arrivals is None else len(specs)
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        return await drive_load(specs, concurrency, functools.partial(_one, client), arrivals=arrivals)


async def drive_load(specs: Sequence[Spec], concurrency: int, send: Callable[[Spec, float], Awaitable[RequestResult]],
                     *, arrivals: Sequence[float] | None = None) -> tuple[list[RequestResult], float]:
    """Run ``send(spec, t0)`` for each spec; (results, wall seconds).

    Without ``arrivals``: a closed loop, ``concurrency`` requests in flight, the next sent as one finishes. With
    ``arrivals`` (seconds from the start, one per spec): an open loop, each request sent at its time whatever is
    still running, as real clients do (``concurrency`` is then unused). ``send`` is an HTTP request for the servers,
    a direct engine call for bench_engine_direct.py: the same schedule either way.
    """
    results: list[RequestResult] = []
    t0 = time.perf_counter()
    if arrivals is None:
        queue: asyncio.Queue[Spec] = asyncio.Queue()
        for spec in specs:
            queue.put_nowait(spec)

        async def worker() -> None:
            while not queue.empty():
                results.append(await send(queue.get_nowait(), t0))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    else:
        async def at(offset: float, spec: Spec) -> None:
            await asyncio.sleep(max(0.0, offset - (time.perf_counter() - t0)))
            results.append(await send(spec, t0))

        await asyncio.gather(*(at(offset, spec) for offset, spec in zip(arrivals, specs, strict=True)))
    return results, time.perf_counter() - t0


def poisson_arrivals(count: int, rate: float, seed: int) -> list[float]:
    """``count`` send times (seconds from the start) of a Poisson process at ``rate`` per second; same seed, same
    times, so both servers of a round get the very same schedule."""
    rng = random.Random(seed)
    times, t = [], 0.0
    for _ in range(count):
        times.append(t)
        t += rng.expovariate(rate)
    return times


def results_json(results: Sequence[RequestResult]) -> list[dict[str, Any]]:
    return [asdict(r) for r in results]


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[str(h) for h in headers], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
