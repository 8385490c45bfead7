"""Labelled routing data: a prompt and whether the weak and the strong model answered it correctly.

Two formats: RouteLLM's per-subject CSV (``prompt,<weak model>,<strong model>`` with ``True``/``False``), and
JSONL lines ``{"prompt": ..., "weak": bool|float, "strong": bool|float}`` (or ``"messages"``, an OpenAI chat
list, instead of ``"prompt"``: multi-turn traffic). A folder means all its ``*.csv``
files; a ``contaminated_prompts.jsonl`` beside them lists prompts to leave out of evaluation (``eval_prompt``).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import InvalidRequestError

CONTAMINATED_FILE = "contaminated_prompts.jsonl"


@dataclass(frozen=True)
class Example:
    prompt: str
    weak: float  # 1.0 when the weak (local) model was right
    strong: float
    group: str  # subject or source file: the unit held out in grouped cross-validation
    messages: tuple[dict[str, Any], ...] | None = None  # a chat (JSONL ``messages``); ``prompt`` is its last ask

    def request_json(self) -> dict[str, Any]:
        """The line as ``inputs.request_from_json`` reads it."""
        return {"messages": list(self.messages)} if self.messages else {"prompt": self.prompt}


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    raise TypeError("messages has no user turn")


def _truth(value: object) -> float:
    if isinstance(value, bool | int | float):
        return float(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return 1.0
    if text in ("false", "0", "no"):
        return 0.0
    raise InvalidRequestError(f"not a correctness label: {value!r}", code="invalid_label")


def _group(path: Path) -> str:
    return path.stem.removeprefix("mmlu_")


def read_csv(path: Path) -> list[Example]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows or len(rows[0]) < 3:
        raise InvalidRequestError(f"{path}: expected columns prompt,<weak>,<strong>", code="invalid_label_file")
    return [Example(row[0], _truth(row[1]), _truth(row[2]), _group(path)) for row in rows[1:] if row]


def read_jsonl(path: Path) -> list[Example]:
    examples = []
    # Split on "\n" only: str.splitlines also breaks at U+2028 and friends, which JSON strings may hold raw.
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            messages = item.get("messages")
            if messages is not None:
                if not isinstance(messages, list) or not messages:
                    raise TypeError("messages must be a non-empty list")
                prompt = _last_user_text(messages)
            else:
                prompt = item["prompt"]
            group = str(item.get("group", path.stem))
            weak, strong = _truth(item["weak"]), _truth(item["strong"])
            examples.append(Example(prompt, weak, strong, group, tuple(messages) if messages is not None else None))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise InvalidRequestError(
                f"{path}:{number}: need prompt (or messages), weak, strong", code="invalid_label_file"
            ) from exc
    return examples


def contaminated_prompts(folder: Path) -> set[str]:
    path = folder / CONTAMINATED_FILE
    if not path.is_file():
        return set()
    return {json.loads(line)["eval_prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def load(paths: list[Path]) -> tuple[list[Example], set[str]]:
    """All examples under ``paths`` (files or folders) and the contaminated prompts found beside them."""
    examples: list[Example] = []
    contaminated: set[str] = set()
    for path in paths:
        if path.is_dir():
            contaminated |= contaminated_prompts(path)
            files = sorted(path.glob("*.csv")) + sorted(p for p in path.glob("*.jsonl") if p.name != CONTAMINATED_FILE)
        elif path.is_file():
            files = [path]
        else:
            raise InvalidRequestError(f"no such file or folder: {path}", code="invalid_label_file")
        for file in files:
            examples += read_jsonl(file) if file.suffix == ".jsonl" else read_csv(file)
    return examples, contaminated
