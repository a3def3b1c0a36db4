"""Speakable text from an LLM's reply: markdown to its words, emoji, URLs, stray symbols.

Home Assistant's LLM replies are markdown, streamed in pieces split anywhere, and read
aloud as they come they say "asterisk", name emoji and spell out URLs. Here the text is
cut into pieces at points that depend only on the text before them (the end of a line,
or a sentence's end with no inline markup open), and each piece is parsed alone with
markdown-it. So a reply cleans the same whole or streamed in any split, and a streamed
reply is held back by at most one sentence. Piper's ``[[ phonemes ]]`` pass untouched.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from urllib.parse import urlsplit

import emoji
from markdown_it import MarkdownIt
from markdown_it.token import Token

_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_URL = re.compile(r"(?:\bhttps?://|\bwww\.)[^\s<>()\[\]\"']+", re.IGNORECASE)
_PHONEMES = re.compile(r"\[\[.*?\]\]", re.DOTALL)
_SPACES = re.compile(r"[ \t]+")
_NUMBERED = re.compile(r"\d+[.)]")
#: Emphasis delimiter runs, of `*` and of `_`: `**` is one, so "a**a" leaves one open.
_STAR_RUNS = re.compile(r"\*+")
_UNDERSCORE_RUNS = re.compile(r"_+")
_SPACE_BEFORE_MARK = re.compile(r"[ \t]+(?=[.,;:!?])")
#: Markup characters that mean nothing spoken once markdown has been read.
_STRAY = frozenset("*_#~`|<>{}^\\[]")
#: Symbols espeak reads as words ("21 °C": "twenty-one degrees Celsius"), kept.
_SPOKEN_SYMBOLS = frozenset("°©®™℃℉")
#: Private-use characters that hold a ``[[ phonemes ]]`` span's place while cleaning.
_HOLD_OPEN, _HOLD_CLOSE = "\ue000", "\ue001"
_MID_LINE = "\ue002"
_SENTENCE_END = ".!?…。！？"
_TRAILING = ".,;:!?)"


class Cleaner:
    """Cleans text fed in any pieces; yields cleaned text as soon as a cut point is sure."""

    def __init__(self, name_emoji: bool = False, eager: bool = False) -> None:
        """``eager`` (for streams) also cuts between words, so the start of the next
        sentence is never held back: the sentence splitter needs it to see a boundary."""
        self._name_emoji = name_emoji
        self._eager = eager
        self._markdown = MarkdownIt("commonmark").disable(["code", "html_block"])
        self._pending = ""
        self._scanned = 0
        self._at_line_start = True
        self._line_plain = True
        self._in_fence = False

    def add(self, chunk: str) -> Iterator[str]:
        self._pending += chunk
        while (cut := self._next_cut()) is not None:
            piece, self._pending = self._pending[:cut], self._pending[cut:]
            self._scanned = 0
            yield self._clean(piece)

    def finish(self) -> Iterator[str]:
        piece, self._pending, self._scanned = self._pending, "", 0
        if piece:
            yield self._clean(piece)

    def _next_cut(self) -> int | None:
        """Where the pending text may be cut: after a newline, or after the space that
        follows a sentence's end while no inline markup is open (never inside a fence)."""
        text = self._pending
        for i in range(self._scanned, len(text)):
            ch = text[i]
            if ch == "\n":
                return i + 1
            if not self._in_fence and ch.isspace() and i > 0 and not text[i - 1].isspace():
                ends_sentence = text[i - 1] in _SENTENCE_END
                plain = _plain_line(text) if self._at_line_start else self._line_plain
                if (ends_sentence or (self._eager and plain)) and _sentence(text[:i]):
                    return i + 1
        self._scanned = max(0, len(text) - 1)  # the last character may still be a cut's
        return None

    def _clean(self, piece: str) -> str:
        at_line_start, self._at_line_start = self._at_line_start, piece.endswith("\n")
        if at_line_start:
            self._line_plain = _plain_line(piece)
        ending = "\n" if piece.endswith("\n") else (" " if piece[-1:].isspace() else "")
        if at_line_start and _FENCE.match(piece):
            self._in_fence = not self._in_fence
            return ending
        if self._in_fence:
            return ending
        held: list[str] = []

        def hold(match: re.Match[str]) -> str:
            held.append(match.group(0))
            return f"{_HOLD_OPEN}{len(held) - 1}{_HOLD_CLOSE}"

        # A piece cut from mid-line is inline text: a placeholder in front keeps a leading
        # "-" or "#" from reading as a list or heading (it is dropped as a stray symbol),
        # and the space after it is the one the cut came after (so "_x_" is emphasis).
        source = _PHONEMES.sub(hold, piece if at_line_start else _MID_LINE + " " + piece.lstrip())
        words = _SPACE_BEFORE_MARK.sub("", _SPACES.sub(" ", self._words(source))).strip()
        for i, span in enumerate(held):
            words = words.replace(f"{_HOLD_OPEN}{i}{_HOLD_CLOSE}", span)
        if not words and not at_line_start and ending == " ":
            return ""  # spaces between two cut pieces: the first piece's space stands
        return words + ending if words else ending

    def _words(self, source: str) -> str:
        out: list[str] = []
        for token in self._markdown.parse(source):
            if token.type == "inline":
                out.append(self._inline(token.children or []))
            elif token.type in ("heading_close", "list_item_close"):
                _end_sentence(out)
        return " ".join(out)

    def _inline(self, children: list[Token]) -> str:
        out: list[str] = []
        for child in children:  # an image's alt text is its own token's: not spoken
            if child.type == "text":
                out.append(self._plain(child.content))
            elif child.type == "code_inline":
                out.append(child.content)
            elif child.type in ("softbreak", "hardbreak"):
                out.append(" ")
        return "".join(out)

    def _plain(self, text: str) -> str:
        text = _URL.sub(_host, text)
        if self._name_emoji:
            text = emoji.replace_emoji(text, replace=_emoji_name)
        else:
            text = emoji.replace_emoji(text, replace=" ")
        return "".join(" " if _stray(ch) else ch for ch in text)


def clean_text(text: str, name_emoji: bool = False) -> str:
    """The whole text cleaned, exactly as the same text streamed in any pieces would be."""
    cleaner = Cleaner(name_emoji)
    return "".join([*cleaner.add(text), *cleaner.finish()])


def _sentence(text: str) -> bool:
    """A sentence (not a list's "1.") with no inline markup left open in its line: code,
    emphasis (counted in delimiter runs), a link's text or URL."""
    line = text[text.rfind("\n") + 1 :]
    return (
        any(ch.isalpha() for ch in line)
        and line.count("`") % 2 == 0
        and _runs_pair(_STAR_RUNS.findall(line))
        and _runs_pair(_UNDERSCORE_RUNS.findall(line))
        and _unclosed(line, "[", "]") == 0
        and _unclosed(line, "(", ")") == 0
    )


def _runs_pair(runs: list[str]) -> bool:
    """Emphasis runs that pair off: an even number, all of one length. Runs of different
    lengths may not pair at all (CommonMark's rule of three: "a*a**" leaves both open)."""
    return len(runs) % 2 == 0 and len(set(map(len, runs))) <= 1


def _unclosed(line: str, opening: str, closing: str) -> int:
    """Brackets opened and not yet closed (a stray closing one closes nothing)."""
    depth = 0
    for ch in line:
        if ch == opening:
            depth += 1
        elif ch == closing:
            depth = max(0, depth - 1)
    return depth


def _plain_line(text: str) -> bool:
    """The line does not start a heading, list, quote or fence: cutting it between words
    cannot change what its markers mean."""
    text = text.lstrip(" \t")
    return not text.startswith(tuple("#>-*+`~|")) and not _NUMBERED.match(text)


def _end_sentence(out: list[str]) -> None:
    """A heading or list item is spoken as a sentence of its own."""
    if out and out[-1].rstrip() and out[-1].rstrip()[-1] not in _SENTENCE_END + ",;:":
        out[-1] = out[-1].rstrip() + "."


def _host(match: re.Match[str]) -> str:
    url = match.group(0)
    tail = ""
    while url and url[-1] in _TRAILING:
        url, tail = url[:-1], url[-1] + tail
    host = urlsplit(url if "://" in url else f"http://{url}").hostname or ""
    return host.removeprefix("www.") + tail


def _emoji_name(chars: str, data: dict[str, str]) -> str:
    name = str(data.get("en", "")).strip(":").replace("_", " ")
    return f" {name} " if name else " "


def _stray(ch: str) -> bool:
    if ch in _STRAY:
        return True
    if ch in _SPOKEN_SYMBOLS or ch in (_HOLD_OPEN, _HOLD_CLOSE):
        return False
    return unicodedata.category(ch) in ("So", "Sk", "Co")
