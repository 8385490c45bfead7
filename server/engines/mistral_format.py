"""Chat formatting with mistral_common: our normalized messages -> Mistral tokens and image arrays.

Templates come from mistral_common, never from hand-written strings: a template that drifts
from the tokenizer is the most common way Mistral deployments break.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mistral_common.exceptions import MistralCommonException
from mistral_common.protocol.instruct.chunk import ImageChunk, TextChunk
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, ToolMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.tool_calls import Function, FunctionCall, Tool
from mistral_common.protocol.instruct.tool_calls import ToolCall as MistralToolCall
from mistral_common.tokens.tokenizers.base import SpecialTokenPolicy
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from server.errors import InvalidRequestError
from server.types import ImagePart, Message, TextPart


@dataclass
class EncodedPrompt:
    tokens: list[int]
    images: list[np.ndarray]  # channels-first float arrays, normalized, one per image


class MistralChatFormat:
    """Wraps one MistralTokenizer: encode chats, decode streamed tokens."""

    def __init__(self, tokenizer: MistralTokenizer) -> None:
        self.tokenizer = tokenizer
        self._raw = tokenizer.instruct_tokenizer.tokenizer

    @classmethod
    def from_file(cls, path: Path) -> MistralChatFormat:
        return cls(MistralTokenizer.from_file(str(path)))

    @property
    def eos_id(self) -> int:
        return int(self._raw.eos_id)

    def encode(self, messages: list[Message], tools: list[dict[str, Any]] | None = None) -> EncodedPrompt:
        try:
            request = ChatCompletionRequest(
                messages=[_to_mistral(message) for message in messages],
                tools=[Tool(function=Function(**tool["function"])) for tool in tools] if tools else None,
            )
            encoded = self.tokenizer.encode_chat_completion(request)
        except (MistralCommonException, ValueError, TypeError, KeyError) as exc:
            raise InvalidRequestError(f"messages cannot be formatted for this model: {exc}", code="invalid_messages",
                                      param="messages") from exc
        return EncodedPrompt(tokens=list(encoded.tokens), images=list(encoded.images))

    def decoder(self, *, keep_tool_calls: bool = False) -> TokenDecoder:
        """``keep_tool_calls``: decode the [TOOL_CALLS] control token as text, for the tool-call parser."""
        tool_calls = self._raw.get_special_token("[TOOL_CALLS]")  # type: ignore[attr-defined]
        keep = frozenset({int(tool_calls)}) if keep_tool_calls else frozenset()
        return TokenDecoder(self._raw, keep)


class TokenDecoder:
    """Incremental detokenizer: token ids in, text out, never splitting a UTF-8 character.

    Special tokens (ids below num_special_tokens) decode to nothing.
    """

    def __init__(self, raw_tokenizer: Any, keep: frozenset[int] = frozenset()) -> None:
        self._raw = raw_tokenizer
        self._keep = keep
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        if token_id in self._keep:
            return self._utf8.decode(self._raw.id_to_byte_piece(token_id, SpecialTokenPolicy.KEEP))
        return self._utf8.decode(self._raw.id_to_byte_piece(token_id))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)

    def piece(self, token_id: int) -> str:
        return self._raw.id_to_byte_piece(token_id).decode("utf-8", errors="replace")


def _to_mistral(message: Message) -> Any:
    if message.role == "system":
        return SystemMessage(content=message.text)
    if message.role == "user":
        if not message.images:
            return UserMessage(content=message.text)
        chunks: list[Any] = []  # mistral_common's chunk union; its list type is invariant
        for part in message.content:
            if isinstance(part, TextPart):
                chunks.append(TextChunk(text=part.text))
            elif isinstance(part, ImagePart):
                chunks.append(ImageChunk(image=part.image))
        return UserMessage(content=chunks)
    if message.role == "assistant":
        calls = [
            MistralToolCall(id=call.id, function=FunctionCall(name=call.name, arguments=_json_or_text(call.arguments)))
            for call in message.tool_calls
        ]
        return AssistantMessage(content=message.text or None, tool_calls=calls or None)
    return ToolMessage(content=message.text, tool_call_id=message.tool_call_id)


def _json_or_text(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments
