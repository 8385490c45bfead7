"""Request features: what the question asks (task signals), read in bounded time with linear patterns only."""

from __future__ import annotations

import re
from re import _constants as sre_constants  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]

import pytest

from server.routing import features as f
from server.routing.features import FEATURE_NAMES, extract, question_of
from server.routing.inputs import request_from_json, request_from_prompt
from server.types import GenerationRequest, Message, SamplingParams, TextPart


def features_of(prompt: str) -> f.Features:
    return extract(request_from_prompt(prompt))


def test_vector_follows_feature_names() -> None:
    features = features_of("hello")
    assert len(features.vector()) == len(FEATURE_NAMES)
    assert set(features.values) == set(FEATURE_NAMES)
    assert f.FEATURE_SET_VERSION.startswith("task-v2-")


def test_exam_scaffolding_is_not_part_of_the_question() -> None:
    exam = "Which gas do plants take in?\nA. oxygen\nB. carbon dioxide\nC. helium\nD. neon\nAnswer:"
    assert question_of(exam) == "Which gas do plants take in?\n"
    assert features_of(exam).counts["question_chars"] == len("Which gas do plants take in?\n")
    # One line that happens to start like an option is prose, not an options block.
    prose = "Here is my plan.\nA. I go first, then you follow."
    assert question_of(prose) == prose
    assert question_of("What is 2 + 2?\nAnswer:") == "What is 2 + 2?\n"


def test_task_signals_are_counted() -> None:
    code = features_of("Why does this fail?\n```python\ndef f(x):\n    return x == 1;\n```")
    maths = features_of("Solve the equation 3x + 5 = 20 and prove the solution is unique.")
    parts = features_of("Answer both.\n1. Who wrote it?\n2. When?\nStatement 3 is false.")
    assert code.counts["code"] >= 4 and code.task == "code"
    assert maths.counts["math"] >= 3 and maths.counts["quantities"] == 3
    assert maths.counts["proof"] == 1 and maths.task == "proof"
    assert parts.counts["parts"] == 3
    plain = features_of("Tell me a nice story about a cat.")
    assert plain.counts["code"] == plain.counts["math"] == plain.counts["proof"] == plain.counts["quantities"] == 0
    # Hyphenated words are not arithmetic; numbers around an operator are.
    assert features_of("a well-known, long-standing rule").counts["math"] == 0
    assert features_of("what is 12*7").counts["math"] >= 1


@pytest.mark.parametrize(
    ("prompt", "flag", "task"),
    [
        ("Write a poem about the sea in spring.", "writing", "writing"),
        ("Compose an engaging travel blog post about a recent trip to Hawaii.", "writing", "writing"),
        ("Summarize the following paragraph: the council met on Monday.", "extraction", "text transformation"),
        ("Please translate this into French: good morning", "extraction", "text transformation"),
        ("hi", "chat", "small talk"),
        ("how are you?", "chat", "small talk"),
    ],
)
def test_request_types_come_from_how_the_ask_opens(prompt: str, flag: str, task: str) -> None:
    features = features_of(prompt)
    assert features.values[flag] == 1.0
    assert features.task == task


def test_words_deep_inside_a_question_are_not_request_types() -> None:
    exam = features_of("In the novel, the author's letters describe a story the narrator later tells to a friend.")
    assert exam.values["writing"] == exam.values["extraction"] == exam.values["chat"] == 0.0


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
    assert features.counts["tools"] == 1 and features.task == "tool use"
    assert features.values["structured_output"] == 1.0
    assert features.values["long_output"] == 3.0  # log2(4096 / 512)
    assert "these" in features.words  # words come from the current ask
    assert features.counts["chars"] == len("be brief") + len("first") + len("ok") + len("what is in these?")


def test_empty_request_is_safe() -> None:
    request = GenerationRequest(request_id="x", messages=[Message(role="user", content=[])], sampling=SamplingParams())
    features = extract(request)
    assert features.values["ask_length"] == 0.0
    assert not features.words


def test_assistant_text_adds_context_not_cues() -> None:
    short = request_from_prompt("why?")
    longer = GenerationRequest(
        request_id="y",
        messages=[Message(role="assistant", content=[TextPart(text="prove " * 200)]), *short.messages],
    )
    assert extract(longer).counts["chars"] == extract(short).counts["chars"] + 1200
    assert extract(longer).values["context_log"] > 0
    assert extract(longer).counts["proof"] == extract(short).counts["proof"] == 0


def test_question_length_counts_up_to_the_cap() -> None:
    at_cap = features_of("x" * f.ASK_CHARS_CAP)
    beyond = features_of("x" * (f.ASK_CHARS_CAP * 10))
    assert at_cap.values["ask_length"] == beyond.values["ask_length"]
    assert beyond.counts["question_chars"] == f.ASK_CHARS_CAP * 10


def test_only_the_head_and_tail_of_a_huge_message_are_read() -> None:
    # 400k numbers: every one would count if the whole text were read.
    huge = "1 " * 400_000
    features = features_of(huge)
    assert features.counts["quantities"] <= (f.HEAD_CHARS + f.TAIL_CHARS) // 2 + 1
    assert features.counts["chars"] == len(huge)
    assert len(f.bounded(huge)) == f.HEAD_CHARS + f.TAIL_CHARS + 1


def test_pathological_option_lines_stay_bounded() -> None:
    # "A. x" then many newlines: a pattern whose whitespace run may cross newlines is quadratic on this text.
    prompt = "A. x" + "\n" * 16_000 + "B. y"
    features = features_of(prompt)
    assert features.counts["chars"] == len(prompt)
    assert len(f.bounded(prompt)) <= f.HEAD_CHARS + f.TAIL_CHARS + 1


_REPEATS = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT)


def _matches_newline(item: tuple) -> bool:  # type: ignore[type-arg]
    op, arg = item
    if op == sre_constants.LITERAL:
        return arg == ord("\n")
    if op == sre_constants.IN:
        return bool(re.match(_class_regex(arg), "\n"))
    return op in (sre_constants.ANY, sre_constants.CATEGORY)


def _class_regex(items: list) -> str:  # type: ignore[type-arg]
    # Rebuild a one-character class from the parsed items, enough to ask whether it takes "\n".
    parts = []
    for op, arg in items:
        if op == sre_constants.LITERAL:
            parts.append(re.escape(chr(arg)))
        elif op == sre_constants.RANGE:
            parts.append(f"{re.escape(chr(arg[0]))}-{re.escape(chr(arg[1]))}")
        elif op == sre_constants.CATEGORY:
            parts.append(
                {"CATEGORY_DIGIT": r"\d", "CATEGORY_SPACE": r"\s", "CATEGORY_WORD": r"\w"}.get(str(arg), r"\s")
            )
        elif op == sre_constants.NEGATE:
            parts.insert(0, "^")
    return "[" + "".join(parts) + "]"


def _check(parsed: sre_parse.SubPattern, inside_unbounded: bool, multiline: bool) -> list[str]:
    problems = []
    for op, arg in parsed:
        if op in _REPEATS:
            _low, high, sub = arg
            unbounded = high == sre_constants.MAXREPEAT
            if unbounded and inside_unbounded:
                problems.append("an unbounded repeat inside another")
            if unbounded and multiline and any(_matches_newline(item) for item in sub):
                problems.append("an unbounded run that can cross newlines in a multi-line pattern")
            problems += _check(sub, inside_unbounded or unbounded, multiline)
        elif op == sre_constants.SUBPATTERN:
            problems += _check(arg[-1], inside_unbounded, multiline)
        elif op == sre_constants.BRANCH:
            for branch in arg[1]:
                problems += _check(branch, inside_unbounded, multiline)
    return problems


def test_every_pattern_on_request_text_is_linear_in_shape() -> None:
    patterns = [value for value in vars(f).values() if isinstance(value, re.Pattern)]
    assert len(patterns) >= 4
    for pattern in patterns:
        parsed = sre_parse.parse(pattern.pattern, pattern.flags)
        problems = _check(parsed, False, bool(pattern.flags & re.MULTILINE))
        assert not problems, f"{pattern.pattern!r}: {problems}"


def test_the_shape_check_catches_the_quadratic_patterns() -> None:
    # The check must be able to fail: the old multiple-choice pattern and a nested repeat are caught.
    old = re.compile(r"^\s*\(?[A-D][.)]\s", re.MULTILINE)
    assert _check(sre_parse.parse(old.pattern, old.flags), False, True)
    nested = re.compile(r"(\w+\s?)*$")
    assert _check(sre_parse.parse(nested.pattern, nested.flags), False, False)


def test_a_conversation_keeps_the_task_its_first_turn_set() -> None:
    def conversation(*turns: str) -> f.Features:
        messages = []
        for index, turn in enumerate(turns):
            messages.append({"role": "user", "content": turn})
            if index < len(turns) - 1:
                messages.append({"role": "assistant", "content": "ok"})
        return extract(request_from_json({"messages": messages}))

    follow_up = conversation("Prove that the square root of 2 is irrational.", "Now do it for 3.")
    assert follow_up.task == "proof" and follow_up.counts["turns"] == 1
    assert follow_up.counts["question_chars"] == len("Now do it for 3.")  # length is the current ask's
    poem = conversation("Write a poem about the sea.", "Make it rhyme.")
    assert poem.values["writing"] == 1.0
    # A greeting that opened the conversation does not make a later question small talk.
    later = conversation("hi", "What is the integral of x^2 from 0 to 3?")
    assert later.values["chat"] == 0.0 and later.counts["math"] >= 1
