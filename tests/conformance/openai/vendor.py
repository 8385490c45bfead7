"""Rebuild schemas.json from OpenAI's openapi.json: the component schemas the conformance tests validate against,
with every schema they reference, unchanged.

    python tests/conformance/openai/vendor.py path/to/openai-openapi/openapi.json

Then record the source commit in SOURCE.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# What our responses are: a chat completion, a chunk of one, the model list, an error body; and the file and
# batch objects, for the files and batches endpoints.
ROOTS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "ListModelsResponse",
    "ErrorResponse",
    "OpenAIFile",
    "ListFilesResponse",
    "DeleteFileResponse",
    "Batch",
    "ListBatchesResponse",
)
PREFIX = "#/components/schemas/"


def references(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].removeprefix(PREFIX)} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(references(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(references(value) for value in node))
    return set()


def subset(schemas: dict[str, Any], roots: tuple[str, ...] = ROOTS) -> dict[str, Any]:
    keep: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo.extend(references(schemas[name]))
    return {name: schemas[name] for name in sorted(keep)}


def main(source: str) -> None:
    document = json.loads(Path(source).read_text())
    out = {"openapi": document["openapi"], "components": {"schemas": subset(document["components"]["schemas"])}}
    target = Path(__file__).with_name("schemas.json")
    target.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"{target}: {len(out['components']['schemas'])} schemas")


if __name__ == "__main__":
    main(sys.argv[1])
