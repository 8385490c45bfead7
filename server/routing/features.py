"""What a request asks for: the task (math, code, proof, writing, ...) and the signals that make it hard.

Features describe the task, not a test format: the question is read without its multiple-choice options (a
trailing "A. ... / B. ..." block and an "Answer:" cue are exam scaffolding, not part of what is asked), so an exam
question and the same question asked in chat get the same features. The same function feeds training
(scripts/train_router.py) and serving, so the model sees at run time exactly what it learned from.

Bounded and linear, because it runs on the event loop for every request:
- each message is read only in its first ``HEAD_CHARS`` and last ``TAIL_CHARS`` characters; lengths come from
  ``len()`` of the whole text, so a megabyte prompt costs what a 6k one does;
- every pattern is linear: no quantifier can run across a newline from every line start, and no two adjacent
  quantifiers can match the same characters (tests/routing/test_route_features.py checks the patterns' shape).
"""

from __future__ import annotations

import hashlib
import math
import re
import string
from collections import Counter
from collections.abc import Set
from dataclasses import dataclass, field

from server.types import GenerationRequest, ImagePart, TextPart

# The dense features, in the order the model's weights use. Keep names stable: they are keys in the weights JSON.
FEATURE_NAMES: tuple[str, ...] = (
    "ask_length",  # log1p(min(chars of the question, ASK_CHARS_CAP)): how much the question sets out, up to a point
    "quantities",  # log1p count of numbers in the question: quantities to combine, i.e. steps to take
    "parts",  # log1p count of enumerated parts: numbered items, "Scenario 1", "Statement 2", (i), II.
    "context_log",  # log1p chars of everything else: system prompt, earlier turns, answers so far
    "turns",  # earlier user turns (a follow-up in a conversation), capped at 10
    "math",  # math signals: math vocabulary, formulas, LaTeX, operators between numbers (log1p count)
    "code",  # code signals: code vocabulary, fences, operators and punctuation of code (log1p count)
    "proof",  # asks for a proof or a derivation (log1p count of cues)
    "reasoning",  # multi-step reasoning cues: why, explain, compare, step by step, ... (log1p count)
    "constraints",  # instructions that constrain the answer: must, exactly, at least, format, ... (log1p count)
    "writing",  # the ask opens with a writing request: write / compose / draft ... a story, email, poem (0/1)
    "extraction",  # the ask transforms given text: summarize, translate, rewrite, extract, classify (0/1)
    "chat",  # small talk: a greeting, thanks, a short personal question (0/1)
    "has_system",  # a system prompt is present
    "images_log",  # log1p image count
    "tools_log",  # log1p count of tools offered
    "structured_output",  # response_format asks for JSON (object or schema)
    "long_output",  # log2(max_tokens / 512) clipped to [0, 4]: a long answer was asked for
)
# Stored with every outcome the router learns from: features of another version are not comparable.
FEATURE_SET_VERSION = "task-v2-" + hashlib.sha256(",".join(FEATURE_NAMES).encode()).hexdigest()[:8]

# How much of each message is read (the rest only counts towards lengths).
HEAD_CHARS = 3000
TAIL_CHARS = 1000
# Past a few sentences, a longer question is mostly pasted material (a passage to summarize, code to read), which
# does not make the ask harder: length counts up to here. Chosen by the leave-one-source-out table (CARD.md).
ASK_CHARS_CAP = 300
_LONG_OUTPUT_BASE = 512


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


MATH_WORDS = _words(
    "equation equations integral integrals derivative derivatives matrix matrices theorem polynomial polynomials "
    "sqrt log ln sin cos tan limit vector vectors eigenvalue eigenvalues variance median modulo prime primes "
    "factorial fraction fractions integer integers converge convergence series sequence triangle angle radius "
    "circle probability solve calculate compute sum product ratio percent percentage average"
)
CODE_WORDS = _words(
    "def return import class const var let print printf elif lambda async await struct public static void int "
    "char bool null nullptr select join namespace println python javascript typescript java rust golang sql bash "
    "regex api json html css bug compile compiler traceback exception algorithm recursion runtime code script "
    "program implement implementation debug refactor library framework query database"
)

PROOF_WORDS = _words("prove proof proofs derive derivation lemma rigorous rigorously")
REASONING_WORDS = _words(
    "why explain reason reasoning step steps therefore hence implies infer deduce conclude analyze analyse "
    "compare contrast evaluate argue argument assume suppose tradeoff tradeoffs optimal optimize puzzle riddle"
)
CONSTRAINT_WORDS = _words(
    "must exactly least most only without format formatted json yaml table bullet bullets words sentences "
    "paragraphs limit strictly always never cannot required requirement requirements constraint constraints ensure"
)
# Request types are read from how the ask opens (its first words), not from anywhere in it: "describe" inside an
# exam question is not a writing request, "Write a poem about ..." is.
WRITING_VERBS = _words("write compose draft create generate craft pen imagine pretend roleplay")
WRITING_NOUNS = _words(
    "story stories poem poems essay essays email emails letter letters blog post posts article articles song "
    "lyrics speech tweet tweets haiku limerick script dialogue dialog slogan tagline caption captions ad advert "
    "advertisement description review narrative scene fiction joke jokes toast cover outline"
)
EXTRACTION_VERBS = _words(
    "summarize summarise summary translate rewrite rephrase paraphrase extract classify categorize categorise "
    "proofread correct edit shorten simplify list identify tag label convert format"
)
CHAT_OPENERS = _words("hi hello hey thanks thank yo howdy greetings morning evening")
_OPENING_WORDS = 4  # a request type counts when its verb is among the ask's first few words

# Words: punctuation and digits become spaces, then str.split. On UTF-8 bytes, because str.translate leaves its
# fast path at the first non-ASCII character (one curly quote made an 8k prompt take 0.3 ms more); bytes >= 128
# pass unchanged, and the non-ASCII separators below are replaced first, only when present.
_NON_ASCII_SEPARATORS = "“”‘’—–…«»¿¡·•"
_ASCII_SEPARATORS = bytes(32 if chr(b) in string.punctuation + string.digits else b for b in range(256))
# An option line: optional spaces or tabs (never a newline), an optional "(", a letter A-J, "." or ")", a space.
# Anchored at line starts with fixed-width parts around one [ \t]* run: linear on any text.
_OPTION_LINE = re.compile(r"^[ \t]*\(?[A-J][.)][ \t]", re.MULTILINE)
_ANSWER_CUE = "answer:"
# A number: digits, then at most one decimal or thousands part (no repeat inside a repeat: linear).
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
# Operators are found by this one-character class (a fast scan), then their operands are looked at: a number or
# ")" before and a number, "(" or a letter after, at most one space between; between letters only "=" and "^"
# count ("x = y", "x^2"), so hyphenated words are not arithmetic.
_OPERATOR = re.compile(r"[-+*/^=<>]")
_LEFT_OPERANDS = frozenset(string.digits + ")")
_RIGHT_OPERANDS = frozenset(string.digits + "(" + string.ascii_lowercase)
_LETTERS = frozenset(string.ascii_lowercase)
# An enumerated part: after a newline (at most 3 spaces or tabs) a number, (roman numeral) or ROMAN., then a
# space; or a word like "Scenario" followed by its number. Both start with a literal the regex engine jumps to,
# and have bounded quantifiers only: linear. (The text is searched with a newline in front, for its first line.)
_LINE_PART = re.compile(r"\n[ \t]{0,3}(?:\d{1,2}[.)]|\([ivx]{1,4}\)|[IVX]{1,4}\.)[ \t]", re.IGNORECASE)
_NAMED_PART = re.compile(r"\b(?:scenario|statement|part|question)[ \t]?\d")
_PART_WORDS = frozenset({"scenario", "statement", "part", "question"})
_CODE_MARKS = ("```", "=>", "->", "::", "==", "!=", "();", "{\n", "</", "#include", "def ", "import ")
_LATEX_MARKS = ("\\frac", "\\sum", "\\int", "\\sqrt")
_SYMBOL_MARKS = ("∑", "∫", "√", "≤", "≥", "≠", "±", "π")
_PLAIN_MATH_MARKS = ("$$", "^2", "^{")


@dataclass(frozen=True)
class Features:
    """Dense feature values (by name), the distinct words of the question, raw counts, and the task in words."""

    values: dict[str, float]
    words: Set[str]
    counts: dict[str, int] = field(default_factory=dict)  # raw counts, for reasons people read
    task: str = "general"  # the task's kind, named in reasons (see ``task_of``)

    def vector(self) -> list[float]:
        return [self.values[name] for name in FEATURE_NAMES]


def bounded(text: str) -> str:
    """The part of ``text`` the features read: all of it, or its head and tail joined by a newline."""
    if len(text) <= HEAD_CHARS + TAIL_CHARS:
        return text
    return text[:HEAD_CHARS] + "\n" + text[-TAIL_CHARS:]


def question_of(text: str) -> str:
    """``text`` without multiple-choice scaffolding: the options block (two or more option lines) and "Answer:"."""
    options = _OPTION_LINE.finditer(text)
    first = next(options, None)
    if first is not None and next(options, None) is not None:
        text = text[: first.start()]
    stripped = text.rstrip()
    if stripped[-len(_ANSWER_CUE) :].lower() == _ANSWER_CUE:
        text = stripped[: -len(_ANSWER_CUE)]
    return text


def _words_of(lowered: str) -> list[str]:
    for mark in _NON_ASCII_SEPARATORS:
        if mark in lowered:
            lowered = lowered.replace(mark, " ")
    # surrogatepass: a lone surrogate (valid in a JSON string) goes through unchanged.
    encoded = lowered.encode("utf-8", "surrogatepass").translate(_ASCII_SEPARATORS)
    return encoded.decode("utf-8", "surrogatepass").split()


def _count(bag: Counter[str], words: frozenset[str]) -> int:
    return sum(bag[word] for word in words.intersection(bag))


def _operations(lowered: str) -> int:
    count = 0
    end = len(lowered)
    for match in _OPERATOR.finditer(lowered):
        at = match.start()
        left = at - 2 if at >= 2 and lowered[at - 1] == " " else at - 1
        right = at + 2 if at + 2 < end and lowered[at + 1] == " " else at + 1
        if left < 0 or right >= end:
            continue
        before, after = lowered[left], lowered[right]
        if after in _RIGHT_OPERANDS and (before in _LEFT_OPERANDS or (before in _LETTERS and lowered[at] in "=^")):
            count += 1
    return count


def _math_marks(question: str) -> int:
    count = sum(question.count(mark) for mark in _PLAIN_MATH_MARKS)
    if "\\" in question:
        count += sum(question.count(mark) for mark in _LATEX_MARKS)
    if not question.isascii():
        count += sum(question.count(mark) for mark in _SYMBOL_MARKS)
    return count


def _opens_with(opening: list[str], words: frozenset[str]) -> bool:
    return any(word in words for word in opening)


def task_of(counts: dict[str, int], flags: dict[str, bool]) -> str:
    """The kind of task, for reasons: the strongest signal wins, in order of how much a small model falls behind."""
    if counts["tools"]:
        return "tool use"
    if counts["proof"]:
        return "proof"
    if counts["code"] >= 2:
        return "code"
    if counts["math"] >= 2 or (counts["math"] and counts["quantities"] >= 2):
        return "multi-step math" if counts["quantities"] >= 3 else "math"
    if flags["writing"]:
        return "writing"
    if flags["extraction"]:
        return "text transformation"
    if flags["chat"]:
        return "small talk"
    if counts["reasoning"] >= 2:
        return "reasoning"
    if counts["quantities"] >= 3:
        return "word problem"
    return "general question"


@dataclass(frozen=True)
class _Reading:
    """One user turn as the features read it: the question, lowered, and its words."""

    question: str
    lowered: str
    words: list[str]
    bag: Counter[str]

    @classmethod
    def of(cls, text: str) -> _Reading:
        question = question_of(bounded(text))
        lowered = question.lower()
        words = _words_of(lowered)
        return cls(question, lowered, words, Counter(words))

    def cues(self) -> dict[str, int]:
        q, low, bag = self.question, self.lowered, self.bag
        return {
            "math": _count(bag, MATH_WORDS)
            + _math_marks(q)
            + _operations(low)
            + low.count("how many")
            + low.count("how much"),
            "code": _count(bag, CODE_WORDS) + sum(q.count(mark) for mark in _CODE_MARKS),
            "proof": _count(bag, PROOF_WORDS) + low.count("show that"),
            "reasoning": _count(bag, REASONING_WORDS) + low.count("step by step"),
            "constraints": _count(bag, CONSTRAINT_WORDS),
        }

    def opens_with(self, verbs: frozenset[str]) -> bool:
        return _opens_with(self.words[:_OPENING_WORDS], verbs)


def text_features(
    texts: list[str],
    *,
    context_chars: int = 0,
    system: bool = False,
    images: int = 0,
    tools: int = 0,
    structured: bool = False,
) -> Features:
    """Features from the user turns (the last one is the current ask) and the request's shape.

    In a conversation the first user turn usually sets the task ("Write a poem ...", "Prove ...") and later turns
    refine it ("Now make it rhyme"): task cues and request types come from the first and the last turn together;
    the question's length, quantities and parts from the last alone.
    """
    last = _Reading.of(texts[-1] if texts else "")
    readings = [_Reading.of(texts[0]), last] if len(texts) > 1 else [last]
    cues = Counter[str]()
    for reading in readings:
        cues.update(reading.cues())
    flags = {
        "writing": any(r.opens_with(WRITING_VERBS) and bool(WRITING_NOUNS.intersection(r.bag)) for r in readings),
        "extraction": any(r.opens_with(EXTRACTION_VERBS) for r in readings),
        # Small talk is the current ask's: a greeting that opened a conversation says nothing of a later question.
        "chat": _opens_with(last.words[:2], CHAT_OPENERS)
        or (len(last.words) <= 6 and "you" in last.bag and "?" in last.question),
    }
    question, lowered, bag = last.question, last.lowered, last.bag
    # Digits only: counting number words ("two", "half") lowered every left-out source's APGR by 0.002-0.004.
    quantities = len(_NUMBER.findall(question))
    earlier = sum(map(len, texts[:-1]))
    counts = {
        "chars": len(texts[-1] if texts else "") + earlier + context_chars,
        "question_chars": len(question),
        "quantities": quantities,
        "parts": len(_LINE_PART.findall("\n" + question))
        + (len(_NAMED_PART.findall(lowered)) if _PART_WORDS.intersection(bag) else 0),
        **cues,
        "turns": max(0, len(texts) - 1),
        "images": images,
        "tools": tools,
    }
    values = {
        "ask_length": math.log1p(min(len(question), ASK_CHARS_CAP)),
        "quantities": math.log1p(quantities),
        "parts": math.log1p(counts["parts"]),
        "context_log": math.log1p(earlier + context_chars),
        "turns": float(min(counts["turns"], 10)),
        **{name: math.log1p(cues[name]) for name in ("math", "code", "proof", "reasoning", "constraints")},
        "writing": float(flags["writing"]),
        "extraction": float(flags["extraction"]),
        "chat": float(flags["chat"]),
        "has_system": float(system),
        "images_log": math.log1p(images),
        "tools_log": math.log1p(tools),
        "structured_output": float(structured),
        "long_output": 0.0,
    }
    return Features(values=values, words=bag.keys(), counts=counts, task=task_of(counts, flags))


def extract(request: GenerationRequest) -> Features:
    """Features of a whole request. User turns are asks; system, assistant and tool turns are context."""
    asks: list[str] = []
    context = 0
    system = False
    images = 0
    for message in request.messages:
        text = "".join(part.text for part in message.content if isinstance(part, TextPart))
        images += sum(1 for part in message.content if isinstance(part, ImagePart))
        if message.role == "user":
            asks.append(text)
        else:
            system = system or message.role == "system"
            context += len(text)
    response_type = (request.response_format or {}).get("type", "text")
    features = text_features(
        asks,
        context_chars=context,
        system=system,
        images=images,
        tools=len(request.tools or []),
        structured=response_type in ("json_object", "json_schema"),
    )
    max_tokens = request.sampling.max_tokens
    if max_tokens:
        features.values["long_output"] = min(4.0, max(0.0, math.log2(max_tokens / _LONG_OUTPUT_BASE)))
        features.counts["max_tokens"] = max_tokens
    return features
