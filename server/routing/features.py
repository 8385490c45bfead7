"""Features of a request that say how hard it is: text shape, code, math, reasoning cues, turns, images, tools.

Everything per character runs in C (str.split, Counter, bytes.translate on a symbol skeleton; regexes only where
a cheap hint says they can match), which keeps an 8k-character prompt at a few tenths of a millisecond, ASCII or
not; tests/routing/test_route_features_exact.py holds the plain definitions these values must equal. The same
function feeds training (scripts/train_router.py) and serving, so the model sees at run time exactly what it saw
when it learned.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Set
from dataclasses import dataclass, field

from server.engines.base import GenerationRequest, ImagePart, TextPart

# The dense features, in the order the model's weights use. Keep names stable: they are keys in the weights JSON.
FEATURE_NAMES: tuple[str, ...] = (
    "chars_log",  # log1p of all message text, in characters
    "last_user_chars_log",  # log1p of the last user message alone
    "lines_log",  # log1p of the line count of the last user message
    "turns",  # earlier user turns (a follow-up in a conversation), capped
    "has_system",  # a system prompt is present
    "code",  # code signals: fences, keywords, braces, operators (log1p count)
    "math",  # math signals: equations, LaTeX, math vocabulary (log1p count)
    "numbers_log",  # log1p count of numbers
    "reasoning",  # multi-step reasoning cues: why, explain, prove, derive, compare, ... (log1p count)
    "constraints",  # instructions that constrain the answer: must, exactly, at least, format, ... (log1p count)
    "negation",  # negatively framed asks: not, except, false, incorrect (log1p count)
    "questions",  # question marks (log1p count)
    "choices",  # multiple-choice options (A. ... D.) are present
    "long_words",  # share of words with 10+ letters: technical or formal vocabulary
    "non_ascii",  # share of non-ASCII letters: a language other than English, or symbols
    "images_log",  # log1p image count
    "tools_log",  # log1p count of tools offered
    "structured_output",  # response_format asks for JSON (object or schema)
    "long_output",  # log2(max_tokens / 512) clipped to [0, 4]: a long answer was asked for
)

REASONING_CUES = frozenset(
    "why explain prove proof derive derivation justify analyze analyse compare contrast evaluate calculate compute "
    "determine infer inference implies imply therefore hence deduce estimate reason reasoning step steps "
    "consequently conclude conclusion assume assuming suppose optimal optimize tradeoff tradeoffs "
    "argue argument whereas".split()
)
CONSTRAINT_CUES = frozenset(
    "must exactly least most only without format formatted json yaml table bullet bullets words sentences "
    "paragraphs limit strictly always never cannot required requirement requirements constraint constraints "
    "ensure".split()
)
NEGATION_CUES = frozenset("not except false incorrect never least neither nor unlikely weakest".split())
MATH_WORDS = frozenset(
    "equation equations integral derivative matrix matrices probability theorem polynomial sqrt sum product "
    "log ln sin cos tan limit vector vectors eigenvalue variance mean median modulo prime primes factor "
    "factorial fraction percent ratio solve solution function functions group ring field".split()
)
CODE_WORDS = frozenset(
    "def return import class function const var let print printf elif lambda async await struct public "
    "static void int char bool null none nullptr select from where join include namespace println "
    "python javascript typescript java rust golang sql bash regex api json html css bug compile compiler "
    "stack traceback exception algorithm recursion runtime".split()
)
_CUES = (
    ("reasoning", REASONING_CUES),
    ("constraints", CONSTRAINT_CUES),
    ("negation", NEGATION_CUES),
    ("math", MATH_WORDS),
    ("code", CODE_WORDS),
)
_CUE_NAMES = tuple(name for name, _ in _CUES)
_CUE_WORDS = {word: tuple(name for name, words in _CUES if word in words) for _, words in _CUES for word in words}

# Words: punctuation and digits become spaces, then str.split (C speed; a \w regex is several times slower).
_NON_ASCII_SEPARATORS = "“”‘’—–…«»¿¡·•"
_SEPARATORS = str.maketrans(dict.fromkeys(string.punctuation + string.digits + _NON_ASCII_SEPARATORS, " "))
# The same on UTF-8 bytes: str.translate leaves its fast path at the first non-ASCII character (one curly quote
# makes an 8k prompt take 1.5 ms); bytes.translate never does, and bytes >= 128 (UTF-8 sequences) pass unchanged.
_ASCII_SEPARATORS = bytes(32 if chr(b) in string.punctuation + string.digits else b for b in range(256))
_CHOICE_MARKS = tuple(f"{letter}{mark}" for letter in "ABCD" for mark in ".)")
_CODE_MARKS = ("```", "=>", "->", "::", "==", "!=", "()", ";\n", "{\n", "</")
_MATH_MARKS = ("\\frac", "\\sum", "\\int", "\\sqrt", "\\cdot", "\\times", "$$", "∑", "∫", "√", "≤", "≥", "≠", "±", "π")
_ASCII_MATH_MARK_BYTES = tuple(mark.encode() for mark in _MATH_MARKS if mark.isascii())
_PLAIN_ASCII_MATH_MARK_BYTES = tuple(mark for mark in _ASCII_MATH_MARK_BYTES if not mark.startswith(b"\\"))
_NON_ASCII_MATH_MARK_BYTES = tuple(mark.encode() for mark in _MATH_MARKS if not mark.isascii())
_MATH_SYNTAX = re.compile(r"\d\s?[-+*/^=<>]\s?\d")
_CHOICE = re.compile(r"^\s*\(?[A-D][.)]\s", re.MULTILINE)

# The symbol skeleton. Ten str.count scans and a regex tried at every position of an 8k-character prompt cost
# more than all the word features together, so the code, number and choice-mark counts run on a skeleton of the
# UTF-8 text: the bytes they look at (digits as "0", ".,", operators, code punctuation, "A-D") kept one for one,
# a newline written "|", anything else a space; split() then leaves a few short runs. Every mark and number lies
# inside one run, so counts on the runs joined by spaces equal counts on the text.
_KEPT = string.digits + ".,-+*/^=<>`:!();{ABCD"
_SKELETON = bytes(
    ord("0") if chr(b) in string.digits else b if chr(b) in _KEPT else ord("|") if b == 10 else 32 for b in range(256)
)
_SKELETON_CODE_MARKS = tuple(mark.replace("\n", "|").encode() for mark in _CODE_MARKS)
_SKELETON_CHOICE_MARKS = tuple(mark.encode() for mark in _CHOICE_MARKS)
# Numbers: ASCII digits only (non-ASCII ones never counted). Digits are all "0" in the skeleton: a literal first
# byte, which the regex engine finds far faster than a class.
_SKELETON_NUMBER = re.compile(rb"0+(?:[.,]0+)?")
# _MATH_SYNTAX's regex tried at every position costs ~0.1 ms on 8k characters, and most prompts have no match.
# A match is still there, as this hint, once digits are written "0", operators "+", whitespace "_" and every other
# byte is deleted, except that a UTF-8 lead byte that can start a non-ASCII digit or space (to \d and \s) becomes
# "0" too: without the hint the count is 0 and the regex is skipped. Deleting can only make the hint fire where the
# regex then finds nothing; its literal first byte lets the regex engine jump from "0" to "0". Accented letters
# (lead bytes C3-C5) and CJK ideographs (E4-E9) never fire it; test_route_features_exact.py checks the lead bytes.
_MATH_OPERATORS = "-+*/^=<>"
_DIGIT_OR_SPACE_LEADS = bytes((0xC2, 0xD9, 0xDB, 0xDF, 0xE0, 0xE1, 0xE2, 0xE3, 0xEA, 0xEF, 0xF0))
_ASCII_SPACES = bytes(b for b in range(128) if chr(b).isspace())
_MATH_KEPT = {
    **dict.fromkeys(string.digits.encode() + _DIGIT_OR_SPACE_LEADS, ord("0")),
    **dict.fromkeys(_MATH_OPERATORS.encode(), ord("+")),
    **dict.fromkeys(_ASCII_SPACES, ord("_")),
}
_MATH_SHAPE = bytes(_MATH_KEPT.get(b, 32) for b in range(256))
_MATH_SHAPE_DROP = bytes(b for b in range(256) if b not in _MATH_KEPT)
_MATH_SYNTAX_HINT = re.compile(rb"0_?\+_?0")
# Non-ASCII math marks are counted only when found in the text cut down to their bytes (short; a mark's bytes stay
# together in it, so a mark not found there is not in the text).
_MATH_SYMBOL_BYTES = bytes(sorted({b for mark in _MATH_MARKS if not mark.isascii() for b in mark.encode()}))
_NOT_MATH_SYMBOL_BYTES = bytes(b for b in range(256) if b not in _MATH_SYMBOL_BYTES)


@dataclass(frozen=True)
class Features:
    """Dense feature values (by name), the words the vocabulary part of the model looks at, and raw counts."""

    values: dict[str, float]
    words: Set[str]  # distinct words of the last user turn
    counts: dict[str, int] = field(default_factory=dict)  # raw counts, for reasons people read

    def vector(self) -> list[float]:
        return [self.values[name] for name in FEATURE_NAMES]


def _log1p(count: int) -> float:
    return math.log1p(count)


def _math_mark_count(text: str, encoded: bytes) -> int:
    """Occurrences of the math marks (``encoded`` is ``text`` in UTF-8, where a mark's count is the same)."""
    marks = _PLAIN_ASCII_MATH_MARK_BYTES if "\\" not in text else _ASCII_MATH_MARK_BYTES  # LaTeX needs a backslash
    count = sum(encoded.count(mark) for mark in marks)
    if not text.isascii():
        symbols = encoded.translate(None, _NOT_MATH_SYMBOL_BYTES)  # a mark's bytes stay together in here
        count += sum(encoded.count(mark) for mark in _NON_ASCII_MATH_MARK_BYTES if mark in symbols)
    return count


def _skeleton(encoded: bytes) -> bytes:
    """The symbol skeleton of UTF-8 text (see _SKELETON): its runs of kept bytes, joined by spaces."""
    return b" ".join(encoded.translate(_SKELETON).split())


def _separate(lowered: str) -> tuple[str, bytes]:
    """``lowered.translate(_SEPARATORS)`` at C speed for any text, and the UTF-8 bytes it was made from."""
    for mark in _NON_ASCII_SEPARATORS:
        if mark in lowered:
            lowered = lowered.replace(mark, " ")
    # surrogatepass: a lone surrogate (valid in a JSON string) goes through unchanged, as with str.translate.
    encoded = lowered.encode("utf-8", "surrogatepass")
    return encoded.translate(_ASCII_SEPARATORS).decode("utf-8", "surrogatepass"), encoded


def _long_words(bag: Counter[str]) -> int:
    return sum(n for word, n in bag.items() if len(word) >= 10)


def text_features(
    texts: list[str], *, system: bool = False, images: int = 0, tools: int = 0, structured: bool = False
) -> Features:
    """Features from the user/assistant texts (last one is the current ask) and the request's shape."""
    last = texts[-1] if texts else ""
    whole_chars = sum(map(len, texts)) + max(0, len(texts) - 1)  # texts joined by newlines
    lowered = last.lower()
    # UTF-8: multi-byte characters become spaces in the skeleton, and a character count equals its bytes' count.
    encoded = last.encode("utf-8", "surrogatepass")
    if lowered.isascii():
        spaced, hint_bytes = lowered.translate(_SEPARATORS), encoded
    else:
        # The math-syntax hint may read the lowered text with its quotes and dashes spaced out (lowering and a
        # space can only add hint matches), where curly quotes (lead byte E2, shared with U+2000 spaces) are gone.
        spaced, hint_bytes = _separate(lowered)
    words = spaced.split()
    bag = Counter(words)
    unique = bag.keys()
    cues = dict.fromkeys(_CUE_NAMES, 0)
    for word in unique & _CUE_WORDS.keys():  # one set operation for all five lists
        for name in _CUE_WORDS[word]:
            cues[name] += bag[word]
    skeleton = _skeleton(encoded)
    code = cues["code"] + sum(skeleton.count(mark) for mark in _SKELETON_CODE_MARKS)
    hint = _MATH_SYNTAX_HINT.search(hint_bytes.translate(_MATH_SHAPE, _MATH_SHAPE_DROP))
    math_syntax = len(_MATH_SYNTAX.findall(last)) if hint else 0
    maths = cues["math"] + math_syntax + _math_mark_count(last, encoded)
    numbers = len(_SKELETON_NUMBER.findall(skeleton))
    # Words are ASCII when the separators left no other byte: no letters outside ASCII, and no need to count them.
    non_ascii = 0.0
    if not spaced.isascii():
        letters = len("".join(words)) or 1
        non_ascii = sum(len(w) * n for w, n in bag.items() if not w.isascii()) / letters
    counts = {
        "chars": whole_chars,
        "last_chars": len(last),
        "code": code,
        "math": maths,
        "numbers": numbers,
        "reasoning": cues["reasoning"],
        "constraints": cues["constraints"],
        "negation": cues["negation"],
        "questions": last.count("?"),
        "turns": max(0, len(texts) - 1),
        "images": images,
        "tools": tools,
    }
    values = {
        "chars_log": _log1p(whole_chars),
        "last_user_chars_log": _log1p(len(last)),
        "lines_log": _log1p(last.count("\n") + 1 if last else 0),
        "turns": float(min(counts["turns"], 10)),
        "has_system": float(system),
        "code": _log1p(code),
        "math": _log1p(maths),
        "numbers_log": _log1p(numbers),
        "reasoning": _log1p(cues["reasoning"]),
        "constraints": _log1p(cues["constraints"]),
        "negation": _log1p(cues["negation"]),
        "questions": _log1p(counts["questions"]),
        # The regex only runs when a mark is there (almost only on multiple-choice prompts).
        "choices": float(any(mark in skeleton for mark in _SKELETON_CHOICE_MARKS) and len(_CHOICE.findall(last)) >= 2),
        "long_words": _long_words(bag) / len(words) if words else 0.0,
        "non_ascii": non_ascii,
        "images_log": _log1p(images),
        "tools_log": _log1p(tools),
        "structured_output": float(structured),
        "long_output": 0.0,
    }
    # The Counter's key view is the set of words (no copy into a frozenset: the model only tests membership).
    return Features(values=values, words=unique, counts=counts)


def extract(request: GenerationRequest) -> Features:
    """Features of a whole request. Only user turns count as asks; assistant and tool turns add length."""
    asks: list[str] = []
    context: list[str] = []
    system = False
    images = 0
    for message in request.messages:
        text = "".join(part.text for part in message.content if isinstance(part, TextPart))
        images += sum(1 for part in message.content if isinstance(part, ImagePart))
        if message.role == "system":
            system = True
            context.append(text)
        elif message.role == "user":
            asks.append(text)
        else:
            context.append(text)
    response_type = (request.response_format or {}).get("type", "text")
    features = text_features(
        asks,
        system=system,
        images=images,
        tools=len(request.tools or []),
        structured=response_type in ("json_object", "json_schema"),
    )
    extra = sum(len(text) for text in context)
    if extra:
        features.values["chars_log"] = _log1p(features.counts["chars"] + extra)
        features.counts["chars"] += extra
    max_tokens = request.sampling.max_tokens
    if max_tokens:
        features.values["long_output"] = min(4.0, max(0.0, math.log2(max_tokens / 512)))
        features.counts["max_tokens"] = max_tokens
    return features
