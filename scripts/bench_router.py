"""Router decision latency: the full Router.decide (features included) on short and 8k-character prompts.

    python scripts/bench_router.py [--n 5000]

Target: p99 under 1 ms for an 8k-character prompt on one core. Prints p50/p99 in microseconds: wall time, and
the thread's CPU time per decision (the same on an idle core; on a shared, loaded machine it leaves out the time the
process was not running, which wall-clock p99 then mostly measures). Pin it: `taskset -c 1 python ...`.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_stats import percentile

from server.routing.inputs import request_from_json
from server.routing.router import Router

WORDS = (
    "the model must explain why step by step and prove that x = 3 * y + 2 holds for every integer in the table "
    "def compute(a, b): return a == b; not all values are valid except when the function is recursive"
).split()


# One curly quote or accent makes a text non-ASCII, which takes other paths in C (str.translate left its fast
# path there: this case once took 1.5 ms); copied-in prose is often like this.
NON_ASCII_WORDS = [*WORDS, "“café”", "naïve", "—", "résumé", "it’s"]


def prompt(chars: int, rng: random.Random, words: list[str] = WORDS) -> str:
    out: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(words)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)[:chars]


def measure(router: Router, body: dict[str, object], n: int) -> tuple[float, float, float, float]:
    """Wall p50, p99, then CPU-time p50, p99, in microseconds."""
    request = request_from_json(body)
    for _ in range(200):
        router.decide(request)
    wall, cpu = [], []
    for _ in range(n):
        start, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
        router.decide(request)
        cpu.append((time.thread_time_ns() - start_cpu) / 1000)
        wall.append((time.perf_counter_ns() - start) / 1000)
    return percentile(wall, 50), percentile(wall, 99), percentile(cpu, 50), percentile(cpu, 99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000)
    args = parser.parse_args()
    rng = random.Random(0)
    router = Router.from_weights()
    cases = {
        "short (60 chars)": {"prompt": prompt(60, rng)},
        "8k chars": {"prompt": prompt(8000, rng)},
        # its own generator, so the other cases keep the prompts they always had
        "8k chars, non-ASCII (quotes, accents)": {"prompt": prompt(8000, random.Random(1), NON_ASCII_WORDS)},
        "8k chars, 6 turns, 2 images, tools": {
            "messages": [
                {"role": "system", "content": "You are helpful."},
                *[{"role": "user" if i % 2 == 0 else "assistant", "content": prompt(1300, rng)} for i in range(5)],
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": prompt(1500, rng)},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    ],
                },
            ],
            "tools": [{"type": "function", "function": {"name": "lookup"}}],
        },
    }
    print(f"weights {router.model.name}; {args.n} decisions per case")
    for name, body in cases.items():
        p50, p99, cpu50, cpu99 = measure(router, body, args.n)
        print(f"{name:38s} p50 {p50:7.1f} us   p99 {p99:7.1f} us   (CPU time p50 {cpu50:7.1f} p99 {cpu99:7.1f})")


if __name__ == "__main__":
    main()
