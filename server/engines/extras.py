"""Sampling and scheduling options beyond OpenAI's, as vLLM's server defines them (``top_k``, ``min_p``, ...).

Gateways such as vllm-router and clients written for ``vllm serve`` send them. The API layer turns the request's
fields into one ``EngineExtras`` (server.types); each engine acts on what it can and refuses (400
``unsupported_parameter``) any other field whose value differs from the default, so no option is dropped silently.
"""

from __future__ import annotations

from server.errors import InvalidRequestError
from server.types import EngineExtras

# Other names clients send for a field (vllm-router's SGLang-lineage name), for refusals to mention.
ALSO_SENT_AS = {"include_stop_str_in_output": "no_stop_trim"}


def refuse_unsupported(extras: EngineExtras, supported: frozenset[str], engine: str, hint: str = "") -> None:
    """400 for the first field asked for that ``engine`` cannot honour; ``supported`` names those it can."""
    for name in sorted(extras.asked()):
        if name not in supported:
            also = f" (or {ALSO_SENT_AS[name]})" if name in ALSO_SENT_AS else ""
            raise InvalidRequestError(
                f"{name}{also} is not supported by the {engine}; send it at its default value or leave it out{hint}",
                param=name,
                code="unsupported_parameter",
            )
