"""The cascade's confidence on the served model's real log-probabilities, against MSSERVE_CASCADE_THRESHOLD.

    python scripts/cascade_check.py [--profile tiny-mistral3] [--max-tokens 24]

The cascade answers locally first and escalates when the answer's geometric-mean token probability is below the
threshold (server.routing.policy.confidence). This runs the real transformers engine on a few prompts, greedy and
sampled, and prints each answer's confidence and what the cascade would do. On the tiny random-weight model every
confidence is a few in a hundred thousand (1 / vocabulary size is 7.6e-6): the check shows the plumbing (real
log-probabilities reach the policy and the comparison), never whether 0.60 is the right threshold for a real model.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.config import Settings, load_profile  # noqa: E402
from server.engines.hf import HFEngine  # noqa: E402
from server.routing.policy import confidence  # noqa: E402
from server.types import GenerationRequest, Message, SamplingParams, TextPart  # noqa: E402

PROMPTS = (
    "hi",
    "What is the capital of France?",
    "Write a haiku about rain.",
    "Prove that there are infinitely many primes.",
    "Janet's ducks lay 16 eggs per day. She eats 3 and bakes with 4. She sells the rest at $2 each. How much?",
    "Implement binary search in Python.",
)


async def run(profile_name: str, max_tokens: int) -> list[tuple[str, float, float]]:
    profile = load_profile(profile_name)
    model_dir = ROOT / "models" / "tiny-mistral3" if profile.demo else None  # the demo model a checkout builds
    engine = HFEngine(profile, model_dir=model_dir)
    await engine.start()
    out = []
    try:
        for index, prompt in enumerate(PROMPTS):
            row = [prompt]
            for temperature in (0.0, 0.7):
                request = GenerationRequest(
                    request_id=f"cascade-check-{index}-{temperature}",
                    messages=[Message(role="user", content=[TextPart(text=prompt)])],
                    sampling=SamplingParams(max_tokens=max_tokens, temperature=temperature, logprobs=True, seed=0),
                )
                logprobs = [lp async for chunk in engine.generate(request) for lp in chunk.logprobs]
                row.append(confidence(logprobs) or 0.0)
            out.append((row[0], row[1], row[2]))
    finally:
        await engine.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="tiny-mistral3")
    parser.add_argument("--max-tokens", type=int, default=24)
    args = parser.parse_args()
    threshold = Settings().cascade_threshold
    rows = asyncio.run(run(args.profile, args.max_tokens))
    print(f"profile {args.profile}; cascade threshold {threshold}")
    for prompt, greedy, sampled in rows:
        verdict = "escalate" if max(greedy, sampled) < threshold else "keep local"
        print(f"greedy {greedy:.2e}  sampled {sampled:.2e}  -> {verdict:10s} {prompt[:60]!r}")
    values = [v for _, g, s in rows for v in (g, s)]
    print(
        f"confidence median {statistics.median(values):.2e}, max {max(values):.2e}; all below threshold: "
        f"{all(v < threshold for v in values)}"
    )


if __name__ == "__main__":
    main()
