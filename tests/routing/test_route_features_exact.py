"""The fast feature code (byte skeletons, skipped regexes) gives exactly what the plain definitions give.

The reference below is the straightforward version: one regex or str.count over the whole text per signal. It
is slow (a few times slower on 8k characters) but obviously right; the shipped code must match it value for value.
"""

from __future__ import annotations

import gzip
import json
import math
import random
import re
from collections import Counter
from pathlib import Path

from server.routing import features as f

# 500 real MMLU prompts (source and licence: tests/routing/data/README.md)
MMLU_SAMPLE = Path(__file__).resolve().parent / "data" / "mmlu-prompts-500.jsonl.gz"
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


def reference(last: str) -> dict[str, float]:
    lowered = last.lower()
    words = lowered.translate(f._SEPARATORS).split()
    bag = Counter(words)
    cue = {name: sum(n for w, n in bag.items() if w in vocabulary) for name, vocabulary in f._CUES}
    code = cue["code"] + sum(last.count(mark) for mark in f._CODE_MARKS)
    maths = cue["math"] + len(f._MATH_SYNTAX.findall(last)) + sum(last.count(mark) for mark in f._MATH_MARKS)
    ascii_digits = re.sub(r"[^0-9.,]", " ", last.encode("ascii", "replace").decode())  # ASCII digits count
    numbers = len(_NUMBER.findall(ascii_digits))
    letters = sum(map(len, words)) or 1
    return {
        "code": math.log1p(code),
        "math": math.log1p(maths),
        "numbers_log": math.log1p(numbers),
        "choices": float(len(f._CHOICE.findall(last)) >= 2),
        "long_words": sum(n for w, n in bag.items() if len(w) >= 10) / len(words) if words else 0.0,
        "non_ascii": sum(len(w) * n for w, n in bag.items() if not w.isascii()) / letters,
        "reasoning": math.log1p(cue["reasoning"]),
        "negation": math.log1p(cue["negation"]),
        "constraints": math.log1p(cue["constraints"]),
        "words": frozenset(words),  # type: ignore[dict-item]
    }


PIECES = (
    "1+2", "3 * 4", "5\t-\t6", "7\n=\n8", "9  + 1", "x=1", "a==b", "f()", ";\n", "{\n", "</div>", "```py", "->",
    "=>", "::", "!=", "A. ", "B) ", "\nC. x", "(D) ", " \n A. ", "1.5", "3,000.25", "٣+٤", "3\xa0+\xa04",
    "3\x1c+4", "3\u2003-1", "é", "über", "東京", "İstanbul", "\u212a", "ΣΑ'Σ", "\u2028", "\r\n", "\ud800",
    "extraordinarily", "internationalization", "why", "not", "must", "least", "sum", "def", "\\frac{1}{2}",
    "\\SUM", "$$", "≤", "π", "±", "?", " ", "\n", "\t", "..", ",,", "-", "_", "|", "—", "“quote”", "«»", "12a3",
    "0x1F", "2^10", "4/5", "6<7", "8>9", "word", "Word", "WHY",
)  # fmt: skip


def synthetic(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        pieces = [p for p in PIECES if p.isascii()] if i % 2 else list(PIECES)  # half all-ASCII: the fast paths
        out.append("".join(rng.choice(pieces) + rng.choice(("", " ", "\n")) for _ in range(rng.randint(0, 60))))
    return out


def check(texts: list[str]) -> None:
    for text in texts:
        got = f.text_features([text])
        want = reference(text)
        values = {name: got.values[name] for name in want if name != "words"}
        assert values == {k: v for k, v in want.items() if k != "words"}, repr(text)
        assert set(got.words) == want["words"], repr(text)


def test_fast_features_equal_the_reference_on_synthetic_text() -> None:
    check(synthetic(0, 1500))


def test_fast_features_equal_the_reference_on_long_text() -> None:
    texts = synthetic(1, 40)
    check(["\n".join(texts), " ".join(t for t in texts if t.isascii()) * 3])


def test_fast_features_equal_the_reference_on_mmlu_sample() -> None:
    prompts = [json.loads(line)["prompt"] for line in gzip.decompress(MMLU_SAMPLE.read_bytes()).splitlines()]
    assert len(prompts) == 500
    check(prompts)


def test_math_hint_knows_every_lead_byte_of_a_non_ascii_digit_or_space() -> None:
    # \d is Unicode Nd (str.isdecimal), \s is str.isspace; the hint must see every such character.
    leads = {
        chr(c).encode("utf-8", "surrogatepass")[0]
        for c in range(128, 0x110000)
        if chr(c).isdecimal() or chr(c).isspace()
    }
    assert leads <= set(f._DIGIT_OR_SPACE_LEADS)
