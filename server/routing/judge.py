"""The judge: an Azure deployment compares the local answer and Azure's answer to the same request, pairwise.

It is asked twice, once with each answer first, and the two votes are added, which cancels a preference for
whichever answer comes first: Azure's answer won both or one with a tie -> "helped"; the local one -> "hurt";
otherwise (a tie, or one vote each way) -> "same". The reply must name "A", "B" or "TIE"; anything else counts as
a tie, so a judge that rambles cannot invent a label.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from server.routing.outcomes import Verdict
from server.types import GenerationRequest, Message, SamplingParams, TextPart

INSTRUCTIONS = (
    "You are judging two answers to the same request. Decide which answer serves the user better: correct, "
    "complete, and following the request's instructions. Length is not quality. Reply with exactly one word: "
    "A if Answer A is better, B if Answer B is better, TIE if neither is clearly better."
)
_VOTE = re.compile(r"\b(TIE|A|B)\b")
_MAX_CHARS = 12_000  # of the request and of each answer: a judge call stays cheap and inside its context


def transcript(request: GenerationRequest) -> str:
    lines = []
    for message in request.messages:
        text = "".join(part.text for part in message.content if isinstance(part, TextPart))
        images = len(message.images)
        note = f" [{images} image(s) not shown]" if images else ""
        lines.append(f"{message.role}: {text}{note}")
    return "\n".join(lines)[-_MAX_CHARS:]


def judge_request(request: GenerationRequest, first: str, second: str, request_id: str) -> GenerationRequest:
    prompt = (
        f"[Request]\n{transcript(request)}\n\n[Answer A]\n{first[:_MAX_CHARS]}\n\n[Answer B]\n{second[:_MAX_CHARS]}\n\n"
        "Which answer is better? Reply A, B or TIE."
    )
    return GenerationRequest(
        request_id=request_id,
        messages=[
            Message(role="system", content=[TextPart(text=INSTRUCTIONS)]),
            Message(role="user", content=[TextPart(text=prompt)]),
        ],
        sampling=SamplingParams(max_tokens=4, temperature=0.0),
        stream=False,
    )


def vote(reply: str) -> str:
    match = _VOTE.search(reply.upper())
    return match.group(1) if match else "TIE"


def combine(local_first: str, azure_first: str) -> Verdict:
    """Votes from both orders -> did escalating help? (order 1: A = local; order 2: A = Azure)."""
    points = {"A": -1, "B": 1, "TIE": 0}[local_first] + {"A": 1, "B": -1, "TIE": 0}[azure_first]
    return "helped" if points > 0 else "hurt" if points < 0 else "same"


Ask = Callable[[GenerationRequest], Awaitable[str | None]]


async def judge(request: GenerationRequest, local: str, azure: str, ask: Ask) -> Verdict | None:
    """Both orders through ``ask`` (one judge call; None: no answer, e.g. the budget said no) -> the verdict."""
    first = await ask(judge_request(request, local, azure, f"{request.request_id}-judge-1"))
    if first is None:
        return None
    second = await ask(judge_request(request, azure, local, f"{request.request_id}-judge-2"))
    if second is None:
        return None
    return combine(vote(first), vote(second))
