"""Text in: normalise, split into sentences, and bound the size of each piece.

Sentence boundaries come from `sentence-stream` (what Home Assistant uses), the
same splitter for whole texts and for streamed chunks, so a text spoken whole
and the same text streamed in arbitrary pieces are cut identically. Over-long
sentences are cut at clauses, then words, so no piece costs more than
`max_chars` of phonemization and a bounded text-encoder run.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator

from sentence_stream import SentenceBoundaryDetector

#: Longest piece of text phonemized at once: bounds the work and memory of one step.
MAX_SENTENCE_CHARS = 500

#: Where an over-long sentence may be cut: a clause mark before a space (Arabic's comma and
#: semicolon too), a full-width one anywhere (CJK text has no spaces), or a spaced dash.
_CLAUSE_BREAK = re.compile(
    r"[,;:\u2014\u2013\u060c\u061b](?=\s)|[\u3001\uff0c\uff1b\uff1a]|\s[-\u2014\u2013]\s"
)
_SPACE_RUN = re.compile(r"[ \t\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n")


def clean(text: str) -> str:
    """Drop what espeak cannot take: controls, lone surrogates, odd spaces."""
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if ch in "\n\t":
            out.append(ch)
        elif cat == "Cs" or (cat.startswith("C") and cat != "Cf"):
            out.append(" ")
        elif cat == "Cf":
            continue
        else:
            out.append(ch)
    return "".join(out)


def normalize(text: str) -> str:
    """Join lines within a paragraph; keep paragraph breaks as blank lines."""
    text = clean(text).replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = [" ".join(p.split()) for p in _BLANK_LINES.split(text)]
    return "\n\n".join(p for p in paragraphs if p)


def add_punctuation(sentence: str, auto_punctuation: str) -> str:
    """Piper speaks a trailing statement flat unless it ends in punctuation."""
    if auto_punctuation and sentence and sentence[-1] not in auto_punctuation:
        return sentence + auto_punctuation[0]
    return sentence


def split_long(sentence: str, max_chars: int) -> list[str]:
    """Cut at clause marks, then spaces, then anywhere, into pieces of at most max_chars."""
    if len(sentence) <= max_chars:
        return [sentence]
    pieces: list[str] = []
    rest = sentence
    while len(rest) > max_chars:
        window = rest[: max_chars + 1]
        cut = -1
        for match in _CLAUSE_BREAK.finditer(window):
            if match.end() <= max_chars and match.end() > max_chars // 3:
                cut = match.end()
        if cut < 0:
            space = window.rfind(" ", max_chars // 3, max_chars + 1)
            cut = space if space > 0 else max_chars
        head, rest = rest[:cut].strip(), rest[cut:].strip()
        if head:
            pieces.append(head)
    if rest:
        pieces.append(rest)
    return pieces


#: Whole texts are fed to the splitter in pieces this long: the detector rescans its
#: pending text on every boundary, so one 100,000-character feed would be quadratic.
FEED_CHARS = 256


class SentenceSplitter:
    """Feeds text in any pieces; yields bounded sentences as soon as they are complete.

    Text with no sentence boundary cannot grow without bound here: once the
    undecided tail passes `max_chars`, its head is cut off at a clause or word.
    """

    def __init__(self, max_chars: int = MAX_SENTENCE_CHARS) -> None:
        self._max_chars = max_chars
        self._detector = SentenceBoundaryDetector()

    def add(self, chunk: str) -> Iterator[str]:
        for i in range(0, len(chunk), FEED_CHARS):
            yield from self._add(chunk[i : i + FEED_CHARS])

    def _add(self, chunk: str) -> Iterator[str]:
        for sentence in self._detector.add_chunk(clean(chunk)):
            yield from self._bounded(sentence)
        pending = self._detector.current_sentence + self._detector.remaining_text
        if len(pending) > 2 * self._max_chars:
            # A run-on with no boundary: emit what is surely complete, keep the tail.
            pieces = split_long(" ".join(pending.split()), self._max_chars)
            tail = pieces.pop()
            if pending[-1:].isspace():
                tail += " "  # the next chunk starts a new word
            self._detector = SentenceBoundaryDetector()
            self._detector.remaining_text = tail
            yield from pieces

    def finish(self) -> Iterator[str]:
        tail = self._detector.finish()
        self._detector = SentenceBoundaryDetector()
        if tail:
            yield from self._bounded(tail)

    def _bounded(self, sentence: str) -> Iterator[str]:
        sentence = " ".join(sentence.split())
        if sentence:
            yield from split_long(sentence, self._max_chars)


def iter_sentences(normalized: str, max_chars: int = MAX_SENTENCE_CHARS) -> Iterator[str]:
    """Sentences of an already normalised text, lazily, in linear time."""
    splitter = SentenceSplitter(max_chars)
    for paragraph in normalized.split("\n\n"):
        yield from splitter.add(paragraph)
        yield from splitter.finish()


def split_text(text: str, max_chars: int = MAX_SENTENCE_CHARS) -> list[str]:
    """Whole-text splitting with the same rules as streamed text."""
    return list(iter_sentences(normalize(text), max_chars))
