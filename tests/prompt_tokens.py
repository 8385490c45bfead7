"""mistral_common's own prompt-token counts, which the server's usage must equal exactly (a dropped turn, tool,
image or instruction changes them)."""

from __future__ import annotations

from mistral_common.protocol.instruct.chunk import ImageURLChunk, TextChunk
from mistral_common.protocol.instruct.messages import UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.tool_calls import Tool
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from tests.conftest import TINY_MODEL


def expected_prompt_tokens(text: str, image_url: str | None = None, *, image_first: bool = False) -> int:
    """What mistral_common itself counts for the same message: the server must feed the model exactly this."""
    if image_url is None:
        return expected_tokens([UserMessage(content=text)])
    content = [TextChunk(text=text), ImageURLChunk(image_url=image_url)]
    return expected_tokens([UserMessage(content=content[::-1] if image_first else content)])


def expected_tokens(messages: list, tools: list[Tool] | None = None) -> int:  # type: ignore[type-arg]
    """mistral_common's own count for a whole conversation (and tools): a dropped turn or tool changes it."""
    tokenizer = MistralTokenizer.from_file(str(TINY_MODEL / "tekken.json"))
    request = ChatCompletionRequest(messages=messages, tools=tools)
    return len(tokenizer.encode_chat_completion(request).tokens)
