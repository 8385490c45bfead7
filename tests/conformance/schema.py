"""OpenAI's published schemas (openai/schemas.json, vendored), ready for ``jsonschema``.

OpenAI's document is OpenAPI 3.1, whose schemas are JSON Schema 2020-12, but it still marks some properties with
OpenAPI 3.0's ``nullable: true``, a keyword JSON Schema does not know (a validator would ignore it and refuse the
nulls OpenAI itself sends, e.g. a chunk's ``"finish_reason": null``). ``resolve_nullable`` rewrites each such
schema into ``anyOf: [<the schema>, {"type": "null"}]`` first.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SCHEMAS = Path(__file__).with_name("openai") / "schemas.json"
REF = "#/components/schemas/"


def resolve_nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [resolve_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    resolved = {key: resolve_nullable(value) for key, value in node.items()}
    # Only the boolean keyword: a property *named* "nullable" (inside "properties") holds a schema, not a bool.
    if resolved.get("nullable") is True:
        del resolved["nullable"]
        return {"anyOf": [resolved, {"type": "null"}]}
    if resolved.get("nullable") is False:
        del resolved["nullable"]
    return resolved


@functools.cache
def document() -> dict[str, Any]:
    return resolve_nullable(json.loads(SCHEMAS.read_text()))  # type: ignore[no-any-return]


@functools.cache
def validator(name: str) -> Draft202012Validator:
    doc = document()
    if name not in doc["components"]["schemas"]:
        raise KeyError(f"{name} is not among the vendored schemas (rebuild them with openai/vendor.py)")
    # The whole document is the root, so "#/components/schemas/..." references resolve inside it.
    return Draft202012Validator({**doc, "$ref": f"{REF}{name}"})


def errors(name: str, instance: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator(name).iter_errors(instance)
    ]


def assert_valid(name: str, instance: Any) -> None:
    found = errors(name, instance)
    assert not found, f"not a valid {name}:\n" + "\n".join(found) + f"\n{json.dumps(instance)[:2000]}"
