"""Chapters to work: cleaned sentences in groups, a file name and a key per output.

The groups depend only on the text, never on `--jobs`, so a book cut for one
worker and for eight is cut alike: with the engine's fixed chunk plan that is
what makes the output byte-identical. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..synth.cleanup import clean_text
from ..synth.text import add_punctuation, iter_sentences, normalize
from .sources import Book, Chapter

#: Characters per sentence group, the unit of parallel work: a group is ~1 minute of
#: audio (~2-3 s of compute), short enough to keep a few workers busy on one chapter,
#: long enough that each request's overhead (voice hold, lookahead start) is noise.
GROUP_CHARS = 1200
#: Longest title part of a file name.
MAX_NAME_CHARS = 40
_NOT_NAME = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Group:
    """Sentences synthesized as one request; `text` is what the service speaks."""

    text: str
    chars: int


@dataclass(frozen=True)
class Part:
    """One output file's worth of chapters (all of them for `--out FILE`)."""

    name: str
    title: str
    chapters: tuple[tuple[Group, ...], ...]
    """Each chapter's groups, in order; a silence goes between chapters."""
    key: str
    """Hash of the text and every setting that changes the audio: resume compares it."""

    @property
    def chars(self) -> int:
        return sum(g.chars for groups in self.chapters for g in groups)

    @property
    def groups(self) -> list[Group]:
        return [g for groups in self.chapters for g in groups]


@dataclass(frozen=True)
class Plan:
    parts: tuple[Part, ...]
    unspeakable: tuple[str, ...]
    """Titles of chapters with nothing to say: skipped, and said so."""


def sentences(chapter: Chapter, cleanup: bool, name_emoji: bool, punctuation: str) -> list[str]:
    """The chapter's sentences as the speech service would cut them."""
    text = clean_text(chapter.text, name_emoji) if chapter.markdown and cleanup else chapter.text
    return [add_punctuation(s, punctuation) for s in iter_sentences(normalize(text))]


def groups(sentences: Sequence[str], limit: int | None = None) -> tuple[Group, ...]:
    """Consecutive sentences joined up to ``limit`` (`GROUP_CHARS`) characters."""
    limit = GROUP_CHARS if limit is None else limit
    out: list[Group] = []
    pending: list[str] = []
    size = 0
    for sentence in sentences:
        if pending and size + len(sentence) > limit:
            out.append(Group(" ".join(pending), size))
            pending, size = [], 0
        pending.append(sentence)
        size += len(sentence) + 1
    if pending:
        out.append(Group(" ".join(pending), size))
    return tuple(out)


def file_name(index: int, count: int, title: str, ext: str) -> str:
    """``NN-title.ext``: numbered so a directory listing plays in order."""
    ascii_title = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode()
    slug = _NOT_NAME.sub("-", ascii_title.lower()).strip("-")[:MAX_NAME_CHARS].strip("-")
    width = max(2, len(str(count)))
    return f"{index:0{width}d}-{slug or 'chapter'}.{ext}"


def audio_key(texts: Sequence[str], audio: Mapping[str, object]) -> str:
    """A hash of the texts spoken and the settings that shape their audio."""
    payload = json.dumps({"texts": list(texts), "audio": audio}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def make_plan(
    book: Book,
    *,
    single_file: str | None,
    ext: str,
    audio: Mapping[str, object],
    cleanup: bool,
    name_emoji: bool,
    punctuation: str,
) -> Plan:
    """The files to write: ``single_file`` holds every chapter, else one file each."""
    chapters: list[tuple[Chapter, tuple[Group, ...]]] = []
    unspeakable: list[str] = []
    for chapter in book.chapters:
        cut = groups(sentences(chapter, cleanup, name_emoji, punctuation))
        if cut:
            chapters.append((chapter, cut))
        else:
            unspeakable.append(chapter.title)
    if single_file is not None:
        parts = (
            (
                Part(
                    single_file,
                    book.title,
                    tuple(g for _, g in chapters),
                    audio_key([g.text for _, cut in chapters for g in cut], audio),
                ),
            )
            if chapters
            else ()
        )
        return Plan(parts, tuple(unspeakable))
    count = len(chapters)
    return Plan(
        tuple(
            Part(
                file_name(i, count, chapter.title, ext),
                chapter.title,
                (cut,),
                audio_key([g.text for g in cut], audio),
            )
            for i, (chapter, cut) in enumerate(chapters, start=1)
        ),
        tuple(unspeakable),
    )
