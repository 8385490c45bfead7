from server.engines.base import GenerationRequest, Message, SamplingParams, TextPart
from server.routing.features import FEATURE_NAMES, extract
from server.routing.inputs import request_from_json, request_from_prompt


def test_vector_follows_feature_names() -> None:
    features = extract(request_from_prompt("hello"))
    assert len(features.vector()) == len(FEATURE_NAMES)
    assert set(features.values) == set(FEATURE_NAMES)


def test_code_math_reasoning_cues_are_counted() -> None:
    plain = extract(request_from_prompt("Tell me a nice story about a cat."))
    code = extract(request_from_prompt("Why does this fail?\n```python\ndef f(x):\n    return x == 1;\n```"))
    maths = extract(request_from_prompt("Solve the equation 3x + 5 = 20 and prove the solution is unique."))
    assert plain.counts["code"] == 0 and plain.counts["math"] == 0 and plain.counts["reasoning"] == 0
    assert code.counts["code"] >= 3
    assert maths.counts["math"] >= 2
    assert maths.counts["reasoning"] >= 1
    assert maths.counts["numbers"] == 3


def test_shape_features_from_request() -> None:
    request = request_from_json(
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is in these?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    ],
                },
            ],
            "tools": [{"type": "function", "function": {"name": "a"}}],
            "response_format": {"type": "json_schema", "json_schema": {}},
            "max_tokens": 4096,
        }
    )
    features = extract(request)
    assert features.counts["images"] == 2
    assert features.values["has_system"] == 1.0
    assert features.counts["turns"] == 1
    assert features.counts["tools"] == 1
    assert features.values["structured_output"] == 1.0
    assert features.values["long_output"] == 3.0  # log2(4096 / 512)
    assert "these" in features.words  # vocabulary words come from the last user turn


def test_choices_and_non_ascii() -> None:
    mcq = extract(request_from_prompt("Which one?\nA. red\nB. blue\nC. green\nD. none"))
    assert mcq.values["choices"] == 1.0
    french = extract(request_from_prompt("Écrivez un résumé détaillé, s'il vous plaît, à propos de l'été."))
    assert french.values["non_ascii"] > 0.1


def test_empty_request_is_safe() -> None:
    request = GenerationRequest(request_id="x", messages=[Message(role="user", content=[])], sampling=SamplingParams())
    features = extract(request)
    assert features.values["chars_log"] == 0.0
    assert features.words == frozenset()


def test_assistant_text_adds_length_not_cues() -> None:
    short = request_from_prompt("why?")
    longer = GenerationRequest(
        request_id="y",
        messages=[Message(role="assistant", content=[TextPart(text="x" * 1000)]), *short.messages],
    )
    assert extract(longer).counts["chars"] == extract(short).counts["chars"] + 1000
    assert extract(longer).counts["reasoning"] == extract(short).counts["reasoning"]
