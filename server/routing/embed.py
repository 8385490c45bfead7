"""A static 256-d text embedding for the learned router: wordllama's bundled token vectors, looked up by word.

``wordllama`` (PyPI, MIT) ships its embedding matrix (``weights/l2_supercat_256.safetensors``, float16) and its
tokenizer (``tokenizers/l2_supercat_tokenizer_config.json``) inside the wheel, so nothing is downloaded. Neither
its code nor its dependencies are imported here: the safetensors header is read with json and the matrix with
numpy, and the tokenizer file only supplies the vocabulary. Running the BPE tokenizer on an 8k-character prompt
costs milliseconds; instead each distinct word the router's features already split out is looked up as a whole
token ("▁word") and the vectors are averaged and normalised (words the vocabulary splits into pieces are skipped).
That keeps the decision well under a millisecond, and on one deployment's own labels it learns as well as the
tokenised embedding did (see docs/learning.md).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import struct
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

NAME = "wordllama-l2-supercat-256-words"
_WEIGHTS = "weights/l2_supercat_256.safetensors"
_TOKENIZER = "tokenizers/l2_supercat_tokenizer_config.json"  # the loader looks under tokenizer/; the wheel has this
_DTYPES = {"F16": np.float16, "F32": np.float32}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    base = 8 + size
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        array = np.frombuffer(raw[base + start : base + end], dtype=_DTYPES[meta["dtype"]])
        out[name] = array.reshape(meta["shape"])
    return out


class WordEmbedder:
    """Words -> a unit vector (mean of the vocabulary's whole-word token vectors)."""

    name = NAME

    def __init__(self, matrix: np.ndarray, lookup: dict[str, int]) -> None:
        self.matrix = matrix.astype(np.float32)
        self.lookup = lookup
        self.dim = int(matrix.shape[1])
        self._zero = [0.0] * self.dim

    @classmethod
    def from_folder(cls, folder: Path) -> WordEmbedder:
        matrix = next(iter(_read_safetensors(folder / _WEIGHTS).values()))
        vocab: dict[str, int] = json.loads((folder / _TOKENIZER).read_text(encoding="utf-8"))["model"]["vocab"]
        # SentencePiece marks a word start with "▁"; only whole alphabetic words, lower-cased as features are.
        lookup: dict[str, int] = {}
        for token, index in vocab.items():
            word = token[1:]
            if token.startswith("▁") and word.isalpha():
                lookup.setdefault(word.lower(), index)
        return cls(matrix, lookup)

    def embed(self, words: Iterable[str]) -> list[float]:
        ids = [index for index in map(self.lookup.get, words) if index is not None]
        if not ids:
            return self._zero
        vector = self.matrix[ids].mean(axis=0)
        norm = float(np.linalg.norm(vector))
        return (vector / norm).tolist() if norm > 0 else self._zero


def package_folder() -> Path | None:
    """Where the installed wordllama package keeps its files, without importing it (or its dependencies)."""
    spec = importlib.util.find_spec("wordllama")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def default_embedder() -> WordEmbedder | None:
    """The bundled embedding, or None when wordllama is not installed (the learner then uses features alone)."""
    folder = package_folder()
    if folder is None or not (folder / _WEIGHTS).is_file() or not (folder / _TOKENIZER).is_file():
        return None
    try:
        return WordEmbedder.from_folder(folder)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("wordllama files at %s unreadable (%s): learning without an embedding", folder, exc)
        return None
